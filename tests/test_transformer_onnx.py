"""The transformer prior's ONNX step model and torch-free sampler: parity with torch, same draws for a seed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from common.kv_cache import write_cache
from common.sampling_rule import sampling_randomness
from conftest import REPO
from export.runtime.transformer_sampler import sample_codes
from export.transformer_onnx import export_step
from trainer.stage2.prior_contract import PriorShape
from trainer.stage2.transformer_prior import TransformerPrior, sample

K, HEIGHT, WIDTH = 16, 5, 4


@pytest.fixture(scope="module", params=[3, 0], ids=["conditional", "unconditional"])
def exported(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[TransformerPrior, ort.InferenceSession, dict]:
    """(prior, onnxruntime session, model.json entry) for a tiny prior, exported once per module."""
    torch.manual_seed(0)
    prior = TransformerPrior(
        PriorShape(K, HEIGHT, WIDTH, request.param), layers=2, width=16, heads=4, kv_heads=2, mlp_ratio=2, dropout=0.1
    ).eval()
    for parameter in prior.parameters():  # logits spread over a few units, so every input matters
        parameter.data.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("transformer_onnx") / "prior_step.onnx"
    spec = export_step(prior, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session.path = path
    return prior, session, spec


def test_the_cache_is_explicit_and_only_batch_and_cache_length_vary(exported):
    prior, session, spec = exported
    graph = onnx.load(str(session.path)).graph
    names = [i.name for i in graph.input]
    assert names == spec["inputs"] and [o.name for o in graph.output] == spec["outputs"]
    assert names[-4:] == ["key_0", "value_0", "key_1", "value_1"] and len(spec["outputs"]) == 5
    assert ("condition" in names) == bool(prior.shape.num_conditions)
    value = next(i for i in graph.input if i.name == "value_1").type.tensor_type.shape.dim
    assert value[0].dim_param and value[2].dim_param and [value[1].dim_value, value[3].dim_value] == [2, 4]
    key = next(i for i in graph.input if i.name == "key_0").type.tensor_type.shape.dim
    assert key[3].dim_param == value[2].dim_param and [key[1].dim_value, key[2].dim_value] == [2, 4]
    assert (spec["layers"], spec["kv_heads"], spec["head_dim"]) == (2, 2, 4)


def test_onnxruntime_step_matches_torch_at_every_cell(exported):
    prior, session, spec = exported
    codes = torch.randint(0, K, (3, HEIGHT * WIDTH), generator=torch.Generator().manual_seed(1))
    condition = torch.tensor([0, 2, 1]) if prior.shape.num_conditions else None
    torch_cache, ort_cache = prior.empty_cache(3), [c.numpy() for c in prior.empty_cache(3)]
    spread = []
    for t in range(HEIGHT * WIDTH):
        previous, position = codes[:, max(t - 1, 0)], torch.tensor([t])
        with torch.no_grad():
            logits, new = prior.step(previous, position, condition, torch_cache)
        feeds = {
            "previous": previous.numpy(),
            "position": position.numpy(),
            **({} if condition is None else {"condition": condition.numpy()}),
            **dict(zip(spec["inputs"][-4:], ort_cache)),
        }
        ort_logits, *ort_new = session.run(spec["outputs"], feeds)
        np.testing.assert_allclose(ort_logits, logits.numpy(), rtol=0, atol=1e-4)
        for ours, theirs in zip(ort_new, new):
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-4)
        write_cache(torch_cache, new, t)
        write_cache(ort_cache, ort_new, t)
        spread.append(logits.std().item())
    assert min(spread) > 0.3  # the comparison is not between near-constant logits


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.8, 4)])
def test_torch_and_onnxruntime_draw_identical_code_maps(exported, temperature, top_k):
    prior, session, spec = exported
    uniforms, conditions = sampling_randomness(6, HEIGHT, WIDTH, prior.shape.num_conditions, seed=5)
    ours = sample_codes(session, spec, {"num_codes": K}, uniforms, conditions, temperature, top_k)
    theirs = sample(
        prior,
        torch.from_numpy(uniforms),
        None if conditions is None else torch.from_numpy(conditions),
        temperature,
        top_k,
    ).numpy()
    assert np.array_equal(ours, theirs)
    assert len({grid.tobytes() for grid in ours}) == 6  # six different grids, not one repeated
    other, _ = sampling_randomness(6, HEIGHT, WIDTH, prior.shape.num_conditions, seed=6)
    assert not np.array_equal(sample_codes(session, spec, {"num_codes": K}, other, conditions), ours)


def test_bad_sampling_options_are_refused(exported):
    _, session, spec = exported
    uniforms = np.zeros((1, HEIGHT, WIDTH), dtype=np.float32)
    for kwargs, match in [({"temperature": 0.0}, "temperature"), ({"top_k": K + 1}, "top_k")]:
        with pytest.raises(ValueError, match=match):
            sample_codes(session, spec, {"num_codes": K}, uniforms, **kwargs)


def test_the_runtime_sampler_never_imports_torch():
    code = (
        "import sys; import export.runtime.transformer_sampler; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
