"""Issue 21, class 1: every consumer of a paired artifact checks the pairing itself, where it uses it. Codes and
the shards they were made from, a prior and the codes it reads, a code file and its codes.json, an exported
graph and model.json: a mismatch is exit 2 with one line naming the files, never a wrong result with exit 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.digest import file_sha256
from conftest import GRID, REPO, K, make_layout, save_prior, save_vqvae
from export.__main__ import main as export_cli
from trainer.__main__ import main as trainer_cli
from trainer.stage2.codes import load_code_tensors, load_codes
from trainer.stage2.prior_contract import PriorShape


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> dict[str, Path]:
    """Two VQ-VAEs, the demo codes of the first, and a second, smaller shard set."""
    from data_tools.shard import shard_dataset

    root = tmp_path_factory.mktemp("pairings")
    vqvae, other = save_vqvae(root, seed=0), save_vqvae(root, seed=3)
    codes = root / "codes"
    assert encode(vqvae, demo_shards, codes) == 0
    layout = make_layout(root / "src", {"train": ["011", "012"], "validate": ["013"], "test": ["014"]}, slices=2)
    other_shards = root / "other_shards"
    shard_dataset(layout, other_shards, samples_per_shard=4, workers=1, show_progress=False)
    return {"root": root, "vqvae": vqvae, "other_vqvae": other, "codes": codes, "other_shards": other_shards}


def encode(checkpoint: Path, shards: Path, out: Path, *extra: str) -> int:
    return trainer_cli(
        ["encode", "--checkpoint", str(checkpoint), "--shards", str(shards), "--out", str(out), "--quiet", *extra]
    )


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ---- codes and the shards they were made from --------------------------------------------------------


def test_encode_into_codes_of_other_shards_re_encodes(pair, tmp_path):
    out = tmp_path / "codes"
    shutil.copytree(pair["codes"], out)
    assert encode(pair["vqvae"], pair["other_shards"], out) == 0
    meta = json.loads((out / "codes.json").read_text())
    assert meta["shards_manifest_sha256"] == file_sha256(pair["other_shards"] / "manifest.json")
    assert meta["splits"] == {"train": 4, "validate": 2, "test": 2}
    assert [k.split("_slice")[0] for k in load_codes(out, "test").keys] == ["case_014", "case_014"]
    # and back: the demo shards' codes again, not those just written
    assert encode(pair["vqvae"], Path(json.loads((pair["codes"] / "codes.json").read_text())["shards"]), out) == 0
    assert np.array_equal(load_codes(out, "test").codes, load_codes(pair["codes"], "test").codes)


# ---- a prior and the codes it reads ------------------------------------------------------------------


def test_evaluate_prior_refuses_codes_re_encoded_by_another_vqvae(pair, demo_shards, tmp_path, capsys):
    codes = tmp_path / "codes"
    assert encode(pair["other_vqvae"], demo_shards, codes) == 0
    prior = save_prior(tmp_path, pair["vqvae"], num_conditions=0)
    info = json.loads((prior / "prior.json").read_text())
    (prior / "prior.json").write_text(json.dumps({**info, "codes_dir": str(codes)}))
    out = tmp_path / "eval"
    assert trainer_cli(["evaluate-prior", "--checkpoint", str(prior), "--out", str(out), "--n", "2", "--quiet"]) == 2
    err = one_error_line(capsys)
    assert str(codes / "codes.json") in err and str(prior / "prior.json") in err and "another VQ-VAE" in err
    assert not out.exists()


def test_evaluate_prior_reads_the_real_slices_from_the_shards_the_codes_were_made_from(
    pair, demo_shards, tmp_path, capsys
):
    shards, codes = tmp_path / "shards", tmp_path / "codes"
    shutil.copytree(demo_shards, shards)
    assert encode(pair["vqvae"], shards, codes) == 0
    prior = save_prior(tmp_path, pair["vqvae"], num_conditions=0)
    info = json.loads((prior / "prior.json").read_text())
    (prior / "prior.json").write_text(json.dumps({**info, "codes_dir": str(codes)}))
    # the VQ-VAE's config names shards that do not exist here: the codes' own are the ones to compare with
    options = ["--n", "2", "--max-pairs", "4", "--quiet"]
    assert trainer_cli(["evaluate-prior", "--checkpoint", str(prior), "--out", str(tmp_path / "e"), *options]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert sum(summary["symmetry_histogram"]["real"]) == 32
    capsys.readouterr()
    (shards / "manifest.json").write_text((shards / "manifest.json").read_text() + " ")  # the shards changed since
    assert trainer_cli(["evaluate-prior", "--checkpoint", str(prior), "--out", str(tmp_path / "f"), *options]) == 2
    err = one_error_line(capsys)
    assert str(codes / "codes.json") in err and str(shards / "manifest.json") in err
    assert not (tmp_path / "f").exists()


PRIOR_SET = [
    "codes.batch_size=8",
    "model.channels=8",
    "model.layers=2",
    "model.first_kernel=3",
    "model.head_channels=16",
    "train.warmup_steps=2",
    "train.log_every=2",
    "train.eval_every=100",
    "train.checkpoint_every=2",
    "wandb.enabled=false",
    "sample_every=0",
    "sample_count=1",
]


def train_prior_cli(codes: Path, out: Path, *extra: str, resume: bool = False) -> int:
    overrides = [f"codes.dir={codes}", f"out_dir={out}", *PRIOR_SET, *extra]
    options = [a for o in overrides for a in ("--set", o)] + ["--resume"] * resume
    return trainer_cli(["prior", "--config", str(REPO / "configs" / "prior_demo_cpu.yaml"), "--quiet", *options])


def test_prior_resume_refuses_codes_re_encoded_by_another_vqvae(pair, demo_shards, tmp_path, capsys):
    codes, out = tmp_path / "codes", tmp_path / "prior"
    shutil.copytree(pair["codes"], codes)
    assert train_prior_cli(codes, out, "train.max_steps=2") == 0
    assert encode(pair["other_vqvae"], demo_shards, codes) == 0
    capsys.readouterr()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert train_prior_cli(codes, out, "train.max_steps=4", resume=True) == 2
    err = one_error_line(capsys)
    assert str(codes / "codes.json") in err and "prior.json" in err and "vqvae_sha256" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


# ---- a code file and its codes.json ------------------------------------------------------------------


def code_folder(tmp_path: Path, codes: np.ndarray, slices: np.ndarray | None = None, **meta) -> Path:
    out = tmp_path / "codes"
    out.mkdir()
    n = len(codes)
    np.savez(
        out / "train.npz",
        codes=codes,
        slices=np.zeros(n, np.int16) if slices is None else slices,
        subjects=np.asarray(["1"] * n),
        keys=np.asarray([f"case_1_slice_{i}" for i in range(n)]),
    )
    fields = {"splits": {"train": n}, "num_codes": K, "height": GRID, "width": GRID, "num_slices": 1}
    (out / "codes.json").write_text(json.dumps({**fields, **meta}))
    return out


@pytest.mark.parametrize(
    "codes, meta, message",
    [
        (np.zeros((2, 8, 8), np.uint16), {}, "8x8 grids, but codes.json says 16x16"),
        (np.full((2, GRID, GRID), K, np.uint16), {}, f"code {K} is beyond"),
        (np.zeros((2, GRID, GRID), np.uint16), {"splits": {"train": 3}}, "2 grids, but codes.json says 3"),
        (np.zeros((2, GRID * GRID), np.uint16), {}, "expected (N, H, W) code grids"),
        (np.zeros((2, GRID, GRID), np.float32), {}, "not integer codes"),
        (np.zeros((2, GRID, GRID), np.uint16), {"slices": np.asarray([0, -1], np.int16)}, "slice -1"),
        (np.zeros((2, GRID, GRID), np.uint16), {"slices": np.asarray([0.5, 1.0])}, "not integer slice positions"),
    ],
)
def test_a_code_file_that_disagrees_with_codes_json_is_named(tmp_path, codes, meta, message):
    out = code_folder(tmp_path, codes, **meta)
    with pytest.raises(ValueError) as caught:
        load_codes(out, "train")
    assert str(out / "train.npz") in str(caught.value) and message in str(caught.value)


def test_codes_of_another_grid_than_the_prior_are_refused(tmp_path):
    out = code_folder(tmp_path, np.zeros((2, GRID, GRID), np.uint16))
    with pytest.raises(ValueError, match=r"codes\.json: 16x16 grids of 32 codes, but the prior models 8x8"):
        load_code_tensors(out, "train", PriorShape(K, 8, 8, 0))


def test_training_on_a_code_file_out_of_range_is_one_line(pair, tmp_path, capsys):
    codes = tmp_path / "codes"
    shutil.copytree(pair["codes"], codes)
    with np.load(codes / "train.npz") as data:
        arrays = dict(data)
    arrays["codes"][0, 0, 0] = K + 5
    np.savez(codes / "train.npz", **arrays)
    assert train_prior_cli(codes, tmp_path / "prior", "train.max_steps=2") == 2
    err = one_error_line(capsys)
    assert str(codes / "train.npz") in err and f"code {K + 5} is beyond" in err


# ---- an exported graph and its model.json ------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_dirs(pair) -> dict[str, Path]:
    """The first VQ-VAE with an unconditional PixelCNN and a conditional transformer prior, exported."""
    result = {}
    for kind, conditions in (("pixelcnn", 0), ("transformer", 3)):
        prior = save_prior(pair["root"], pair["vqvae"], conditions, kind)
        result[kind] = pair["root"] / f"onnx_{kind}"
        assert export_cli(["onnx", "--checkpoint", str(prior), "--out", str(result[kind])]) == 0
    return result


def edited(source: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "onnx"
    shutil.copytree(source, copy)
    info = json.loads((copy / "model.json").read_text())
    change(info, copy)
    (copy / "model.json").write_text(json.dumps(info))
    return copy


def swap(items: list, a: int, b: int) -> None:
    items[a], items[b] = items[b], items[a]


def truncate(info: dict, folder: Path, part: str) -> None:
    path = folder / info["models"][part]["file"]
    path.write_bytes(path.read_bytes()[:2000])
    info["models"][part]["sha256"] = file_sha256(path)


GRAPH_EDITS = {
    "step-outputs-reordered": (
        "transformer",
        lambda info, _: swap(info["models"]["prior_step"]["outputs"], 1, 2),
        "models.prior_step.outputs",
    ),
    "step-inputs-reordered": (
        "transformer",
        lambda info, _: swap(info["models"]["prior_step"]["inputs"], 3, 4),
        "models.prior_step.inputs",
    ),
    "step-layers": ("transformer", lambda info, _: info["models"]["prior_step"].update(layers=3), "layers"),
    "step-kv-heads": ("transformer", lambda info, _: info["models"]["prior_step"].update(kv_heads=2), "kv_heads"),
    "step-head-dim": ("transformer", lambda info, _: info["models"]["prior_step"].update(head_dim=4), "head_dim"),
    "cell-inputs-reordered": (
        "pixelcnn",
        lambda info, _: swap(info["models"]["prior_cell"]["inputs"], 0, 1),
        "models.prior_cell.inputs",
    ),
    "decoder-output-renamed": (
        "pixelcnn",
        lambda info, _: info["models"]["decoder"].update(outputs=["codes"]),
        "models.decoder.outputs",
    ),
    "truncated-step": ("transformer", lambda info, d: truncate(info, d, "prior_step"), "prior_step.onnx"),
    "truncated-decoder": ("pixelcnn", lambda info, d: truncate(info, d, "decoder"), "decoder.onnx"),
}


@pytest.mark.parametrize("edit", list(GRAPH_EDITS))
def test_model_json_is_checked_against_the_graphs_themselves(onnx_dirs, tmp_path, capsys, edit):
    kind, change, field = GRAPH_EDITS[edit]
    model_dir = edited(onnx_dirs[kind], tmp_path, change)
    out = tmp_path / "s"
    assert export_cli(["sample", "--model-dir", str(model_dir), "--n", "2", "--out", str(out), "--quiet"]) == 2
    err = one_error_line(capsys)
    assert field in err and str(model_dir) in err
    assert not out.exists()
