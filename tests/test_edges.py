"""Issue 21, class 2: numbers at their edges. Sampling is exact in the limit of temperature; every count,
seed, thread number and opset a command takes is bounded at parse time; every config key with a domain is
checked at start-up, naming the file and the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from common import sampling_rule
from common.limits import (
    MAX_BATCH,
    MAX_CODES,
    MAX_LOADER_WORKERS,
    MAX_PAIRS,
    MAX_PREVIEW,
    MAX_SAMPLES,
    MAX_SEED,
    usable_cores,
)
from conftest import REPO, save_prior, save_vqvae
from data_tools.__main__ import main as data_cli
from export.__main__ import main as export_cli
from export.onnx_graph import check_opset
from export.runtime.model_dir import SUPPORTED_OPSETS
from trainer.__main__ import main as trainer_cli
from trainer.run.config_file import ConfigError, load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage2.config import PriorConfig
from trainer.stage2.prior_contract import draw

TINY = [1e-310, 5e-324, 1e-200, 1e-30]  # subnormal, the smallest double, and small normal temperatures


def logit_rows(ties: bool) -> torch.Tensor:
    """Rows of logits of every scale (float32 up to 1e38), some with the maximum shared by several codes."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 16, generator=generator) * torch.logspace(-3, 38, 400)[:, None]
    if ties:
        top = logits[::2].abs().max(dim=1).values * 1.5 + 1  # above every other logit of the row
        logits[::2, 3] = logits[::2, 11] = top
    return logits


@pytest.mark.parametrize("temperature", TINY)
@pytest.mark.parametrize("top_k", [0, 5])
def test_a_tiny_temperature_draws_the_greedy_code(temperature, top_k):
    logits = logit_rows(ties=False)
    uniforms = torch.rand(len(logits), generator=torch.Generator().manual_seed(1))
    greedy = logits.argmax(dim=1).numpy()
    assert np.array_equal(draw(logits, uniforms, temperature, top_k).numpy(), greedy)
    assert np.array_equal(sampling_rule.draw(logits.numpy(), uniforms.numpy(), temperature, top_k), greedy)


@pytest.mark.parametrize("temperature", TINY)
def test_ties_at_a_tiny_temperature_split_as_greedy_top_1_does_in_both_rules(temperature):
    logits = logit_rows(ties=True)
    uniforms = torch.rand(len(logits), generator=torch.Generator().manual_seed(2))
    top_1 = draw(logits, uniforms, 1.0, 1).numpy()
    assert set(top_1[::2]) <= {3, 11} and {3, 11} <= set(top_1[::2])  # the uniform number splits a tie
    assert np.array_equal(draw(logits, uniforms, temperature).numpy(), top_1)
    assert np.array_equal(sampling_rule.draw(logits.numpy(), uniforms.numpy(), temperature), top_1)


@pytest.mark.parametrize("temperature", [1e300, 1.7e308])
def test_a_huge_temperature_draws_uniformly_in_both_rules(temperature):
    logits = logit_rows(ties=False)[:200]  # |logits| up to about 1e20: each divided by T is ~0
    uniforms = torch.rand(len(logits), generator=torch.Generator().manual_seed(3))
    expected = (uniforms.double() * 16).floor().long().numpy()
    assert np.array_equal(draw(logits, uniforms, temperature).numpy(), expected)
    assert np.array_equal(sampling_rule.draw(logits.numpy(), uniforms.numpy(), temperature), expected)


@pytest.mark.parametrize("temperature", ["inf", "-inf", "nan", "0", "-1"])
def test_the_sampling_rule_refuses_a_temperature_outside_its_domain(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        sampling_rule.check_sampling_options(float(temperature), 0, 16)


def test_the_sampling_rule_refuses_more_samples_than_its_bound():
    with pytest.raises(ValueError, match=f"n must be 1 to {MAX_SAMPLES}, got {10**12}"):
        sampling_rule.sampling_randomness(10**12, 32, 32, 0, seed=0)


# ---- the commands, end to end on tiny models -----------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edges")
    vqvae = save_vqvae(root, seed=0)
    prior = save_prior(root, vqvae, num_conditions=0, kind="transformer")
    onnx_dir = root / "onnx"
    assert export_cli(["onnx", "--checkpoint", str(prior), "--out", str(onnx_dir), "--opset", "18"]) == 0
    return {"prior": prior, "onnx": onnx_dir}


def sampled_codes(command: str, where: Path, out: Path, *options: str) -> np.ndarray:
    source = ["--checkpoint", str(where)] if command == "trainer" else ["--model-dir", str(where)]
    cli = trainer_cli if command == "trainer" else export_cli
    assert cli(["sample", *source, "--out", str(out), "--n", "3", "--quiet", *options]) == 0
    with np.load(out / "samples.npz") as samples:
        return samples["codes"]


@pytest.mark.parametrize("command", ["trainer", "export"])
def test_sampling_at_a_subnormal_temperature_is_greedy(models, tmp_path, command):
    where = models["prior"] if command == "trainer" else models["onnx"]
    cold = sampled_codes(command, where, tmp_path / "cold", "--temperature", "1e-310")
    greedy = sampled_codes(command, where, tmp_path / "greedy", "--top-k", "1")
    assert np.array_equal(cold, greedy) and len(np.unique(cold)) > 1  # not every code K - 1


def test_export_writes_every_graph_at_the_opset_asked_for(models):
    info = json.loads((models["onnx"] / "model.json").read_text())
    assert info["opset"] == 18
    for entry in info["models"].values():
        graph = onnx.load(str(models["onnx"] / entry["file"]))
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [18], entry["file"]


def test_a_graph_at_another_opset_is_named(models):
    path = models["onnx"] / "decoder.onnx"
    graph = onnx.load(str(path))
    check_opset(graph, path, 18)
    with pytest.raises(ValueError, match=f"{path}: the exporter wrote opset 18, not the 19 asked for"):
        check_opset(graph, path, 19)


CORES = usable_cores()


@pytest.mark.parametrize(
    "cli, argv, message",
    [
        (trainer_cli, ["sample", "--n", str(10**12)], f"argument --n: must be an integer from 1 to {MAX_SAMPLES}"),
        (trainer_cli, ["sample", "--batch-size", str(10**9)], f"from 1 to {MAX_BATCH}"),
        (
            trainer_cli,
            ["sample", "--seed", str(MAX_SEED + 1)],
            f"argument --seed: must be an integer from 0 to {MAX_SEED}",
        ),
        (
            trainer_cli,
            ["sample", "--top-k", str(10**30)],
            f"argument --top-k: must be an integer from 0 to {MAX_CODES}",
        ),
        (trainer_cli, ["sample", "--temperature", "1e400"], "argument --temperature: must be a finite number > 0"),
        (trainer_cli, ["sample", "--temperature", "1e-400"], "argument --temperature: must be a finite number > 0"),
        (trainer_cli, ["evaluate-prior", "--n", "1"], "argument --n: must be an integer from 2 to"),
        (trainer_cli, ["evaluate-prior", "--max-pairs", str(10**12)], f"from 1 to {MAX_PAIRS}"),
        (
            trainer_cli,
            ["encode", "--batch-size", str(10**9)],
            f"argument --batch-size: must be an integer from 1 to {MAX_BATCH}",
        ),
        (trainer_cli, ["evaluate", "--batch-size", str(10**9)], f"from 1 to {MAX_BATCH}"),
        (export_cli, ["sample", "--n", str(10**12)], f"argument --n: must be an integer from 1 to {MAX_SAMPLES}"),
        (export_cli, ["sample", "--threads", "100000"], f"argument --threads: must be an integer from 0 to {CORES}"),
        (export_cli, ["reconstruct", "--threads", str(CORES + 1)], f"from 0 to {CORES}"),
        (export_cli, ["reconstruct", "--batch-size", str(10**9)], f"from 1 to {MAX_BATCH}"),
        (export_cli, ["onnx", "--opset", "1"], "argument --opset: must be one of"),
        (export_cli, ["onnx", "--opset", "17"], "argument --opset: must be one of"),
        (export_cli, ["onnx", "--opset", str(max(SUPPORTED_OPSETS) + 1)], "argument --opset: must be one of"),
        (data_cli, ["preview", "--count", str(10**9)], f"argument --count: must be an integer from 1 to {MAX_PREVIEW}"),
    ],
)
def test_numbers_past_their_bound_are_refused_at_parse_time(tmp_path, capsys, cli, argv, message):
    command, *options = argv
    where = {
        "sample": ["--checkpoint" if cli is trainer_cli else "--model-dir", str(tmp_path)],
        "reconstruct": ["--model-dir", str(tmp_path)],
        "preview": [str(tmp_path)],
    }.get(command, ["--checkpoint", str(tmp_path)])
    assert cli([command, *where, "--out", str(tmp_path / "o"), *options]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_help_states_the_bounds(capsys):
    assert export_cli(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"1 to {MAX_SAMPLES}" in text and f"0 to {CORES}" in text


# ---- config keys ---------------------------------------------------------------------------------------

VQVAE_DEMO = REPO / "configs" / "vqvae_demo_cpu.yaml"
PRIOR_DEMO = REPO / "configs" / "prior_demo_cpu.yaml"
FSQ = ["quantizer.kind=fsq", "quantizer.compile=false"]


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["seed=-1"], f"seed: must be an integer from 0 to {MAX_SEED}"),
        ([f"seed={MAX_SEED + 1}"], f"seed: must be an integer from 0 to {MAX_SEED}"),
        (["data.shuffle_buffer=0"], "data.shuffle_buffer: must be >= 1"),
        ([f"data.batch_size={10**9}"], f"data.batch_size: must be an integer from 1 to {MAX_BATCH}"),
        (["data.num_workers=100000"], f"data.num_workers: must be an integer from 0 to {MAX_LOADER_WORKERS}"),
        (
            [*FSQ, "quantizer.levels=[256,256,2]", "quantizer.num_codes=131072"],
            f"quantizer.levels: their product (131072) must be at most {MAX_CODES}",
        ),
        ([f"quantizer.num_codes={MAX_CODES + 1}"], f"quantizer.num_codes: must be an integer from 2 to {MAX_CODES}"),
        (["quantizer.codebook_dim=100000"], "quantizer.codebook_dim: must be an integer from 0 to"),
        (["train.lr=.inf"], "train.lr: must be a finite number"),
        (["train.lr=.nan"], "train.lr: must be a finite number"),
        (["loss.ssim_weight=-.inf"], "loss.ssim_weight: must be a finite number"),
        (["train.min_lr_ratio=2"], "train.min_lr_ratio: must be in [0, 1]"),
        (["train.warmup_steps=-1"], "train.warmup_steps: must be >= 0"),
        (["train.grad_clip=-1"], "train.grad_clip: must be >= 0"),
        (["train.weight_decay=-1"], "train.weight_decay: must be >= 0"),
        (["model.channels=1000000000"], "model.channels: must be an integer from 2 to"),
        (["model.res_blocks=100000"], "model.res_blocks: must be an integer from 0 to"),
    ],
)
def test_a_stage1_config_value_outside_its_domain_names_file_and_key(overrides, problem):
    with pytest.raises(ConfigError) as err:
        load_config(VQVAE_DEMO, overrides, cls=VQVAEConfig)
    assert str(err.value).startswith(f"{VQVAE_DEMO}: ") and problem in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["seed=-1"], f"seed: must be an integer from 0 to {MAX_SEED}"),
        ([f"codes.batch_size={10**9}"], f"codes.batch_size: must be an integer from 1 to {MAX_BATCH}"),
        ([f"sample_count={10**9}"], f"sample_count: must be an integer from 1 to {MAX_SAMPLES}"),
        (["model.head_channels=1000000000"], "model.head_channels: must be an integer from 1 to"),
        (["model.layers=100000"], "model.layers: must be an integer from 1 to"),
        (["model.transformer.width=1000000000"], "model.transformer.width: must be an integer from 1 to"),
        (["train.lr=.inf"], "train.lr: must be a finite number"),
    ],
)
def test_a_stage2_config_value_outside_its_domain_names_file_and_key(overrides, problem):
    with pytest.raises(ConfigError) as err:
        load_config(PRIOR_DEMO, overrides, cls=PriorConfig)
    assert str(err.value).startswith(f"{PRIOR_DEMO}: ") and problem in str(err.value), str(err.value)


def test_training_with_a_negative_seed_is_one_line_naming_file_and_key(tmp_path, capsys):
    argv = ["vqvae", "--config", str(VQVAE_DEMO), "--set", "seed=-1", "--set", f"out_dir={tmp_path / 'run'}"]
    assert trainer_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {VQVAE_DEMO}: seed: must be an integer from 0 to {MAX_SEED}, got -1", err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_whose_codes_would_not_fit_uint16_is_refused_before_encoding(tmp_path, capsys):
    checkpoint = save_vqvae(tmp_path, seed=0)
    config = checkpoint / "config.yaml"
    text = config.read_text().replace("kind: vq", "kind: fsq").replace("num_codes: 32", "num_codes: 131072")
    config.write_text(text.replace("- 8\n  - 8\n  - 8\n", "- 256\n  - 256\n  - 2\n"))
    argv = ["encode", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "codes"), "--quiet"]
    assert trainer_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"{config}: quantizer.levels: their product (131072) must be at most {MAX_CODES}" in err, err
    assert not (tmp_path / "codes" / "train.npz").exists()


# ---- class 8's fixes as pure functions (through the commands: tests/test_old_quirks.py) ----


@pytest.mark.parametrize("names", [["short"], ["case_0901_slice_31"] * 3, ["x" * 150, "y"]])
def test_shard_sizes_count_a_stream_written_tar_exactly(tmp_path, names):
    import webdataset as wds

    from common.shard_format import sample_record
    from data_tools.shard_sizes import closed_shard_bytes, record_bytes

    rng = np.random.default_rng(0)
    records = [
        sample_record(f"{name}_{i}", rng.bytes(int(rng.integers(1, 70_000))), {"i": i}, rng.bytes(i * 700) or None)
        for i, name in enumerate(names)
    ]
    path = tmp_path / "shard.tar"
    writer = wds.TarWriter(str(path), encoder=False, mtime=0.0)
    for record in records:
        writer.write(record)
    writer.close()
    assert path.stat().st_size == closed_shard_bytes(sum(record_bytes(record, 0.0) for record in records))


@pytest.mark.parametrize(
    "content, problem",
    [
        ("jpeg", "a JPEG image, not a PNG"),
        ("gif", "a GIF image, not a PNG"),
        ("text", "not an image (no PNG signature)"),
        ("empty", "not an image (no PNG signature)"),
    ],
)
def test_a_file_named_png_that_is_not_one_is_named(tmp_path, content, problem):
    from PIL import Image

    from common.errors import DataError
    from common.png_header import check_png_signature

    path = tmp_path / "case_001_slice_0.nii.png"
    if content in ("jpeg", "gif"):
        Image.new("L", (8, 8)).save(path, format=content.upper())
    else:
        path.write_bytes(b"hello" if content == "text" else b"")
    with pytest.raises(DataError, match=re.escape(f"{path}: {problem}")):
        check_png_signature(path, str(path))
    with pytest.raises(DataError, match=re.escape(f"member: {problem}")):
        check_png_signature(path.read_bytes(), "member")
    Image.new("L", (8, 8)).save(path, format="PNG")
    check_png_signature(path, str(path))
    check_png_signature(path.read_bytes(), str(path))
