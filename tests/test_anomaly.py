"""Anomaly maps (issue 22): `trainer anomaly` (torch) and `export anomaly` (onnxruntime) give the same maps for a seed,
for both prior kinds; a kept code is never resampled; a planted anomaly is found where it was planted; the healthy
thresholds stored at export are those `trainer anomaly` computes; bad inputs are one line, exit 2, no output.
Tiny models: a random VQ-VAE, its demo codes, and priors trained a few dozen steps on them (module fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from test_nifti import grid, phantom

from common.anomaly_maps import (
    QUANTILES,
    HealingOptions,
    anomaly_map,
    dilate,
    slice_maps,
    smooth,
    threshold_of,
)
from common.anomaly_run import ARRAYS
from common.png_header import read_slice
from common.sampling_rule import healing_randomness
from conftest import DEMO_SRC, GRID, REPO, K, save_prior, save_vqvae
from export.__main__ import main as export_cli
from export.runtime.anomaly import OnnxAnomalyModels
from export.runtime.onnx_models import ExportedModels
from trainer.__main__ import main as trainer_cli
from trainer.stage2.anomaly import TorchAnomalyModels
from trainer.stage2.healthy_nll import healthy_threshold_record
from trainer.stage2.load import load_paired_vqvae, load_prior

PNGS = [DEMO_SRC / "keras_png_slices_test" / f"case_904_slice_{n}.nii.png" for n in (16, 17, 18)]  # mid-brain
POSITIONS = np.array([16, 17, 18])
KINDS = ("transformer", "pixelcnn")
STEPS = {"transformer": 60, "pixelcnn": 40}  # enough for a rare code to be unlikely (checked below)


@pytest.fixture(scope="module")
def priors(tmp_path_factory: pytest.TempPathFactory, demo_shards: Path) -> dict[str, tuple[Path, Path]]:
    """{kind: (prior checkpoint, export folder)}: conditional priors (32 slice positions) trained briefly on the demo
    codes of a tiny VQ-VAE, exported with their healthy thresholds."""
    root = tmp_path_factory.mktemp("anomaly")
    vqvae, codes = save_vqvae(root, seed=0, visible=True), root / "codes"
    command = ["encode", "--checkpoint", str(vqvae), "--shards", str(demo_shards), "--out", str(codes), "--quiet"]
    assert trainer_cli(command) == 0
    result = {}
    for kind in KINDS:
        checkpoint, out = save_prior(root, vqvae, 32, kind, codes, steps=STEPS[kind]), root / f"onnx_{kind}"
        assert export_cli(["onnx", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
        result[kind] = checkpoint, out
    return result


def sides(priors, kind: str) -> tuple[TorchAnomalyModels, OnnxAnomalyModels, float]:
    """Both sides' models of a kind, and the threshold at the 0.9 quantile (many codes resampled: a real test)."""
    checkpoint, out = priors[kind]
    prior, _, info = load_prior(checkpoint)
    torch_models = TorchAnomalyModels(prior, load_paired_vqvae(info)[0])
    onnx_models = ExportedModels(out, threads=1)
    return torch_models, OnnxAnomalyModels(onnx_models), threshold_of(onnx_models.info["anomaly"], 0.9, "test")


def pixels() -> np.ndarray:
    return np.stack([read_slice(p, p.name, 256) for p in PNGS])


def run_both(priors, kind: str, out: Path, *extra: str) -> tuple[int, int]:
    checkpoint, model_dir = priors[kind]
    common = ["--images", *map(str, PNGS), "--quiet", *extra]
    return (
        trainer_cli(["anomaly", "--checkpoint", str(checkpoint), "--out", str(out / "torch"), *common]),
        export_cli(["anomaly", "--model-dir", str(model_dir), "--out", str(out / "onnx"), *common]),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_torch_and_onnxruntime_write_the_same_maps_for_a_seed(priors, tmp_path, kind):
    options = ["--healings", "3", "--quantile", "0.9", "--seed", "5", "--batch-size", "2"]
    assert run_both(priors, kind, tmp_path, *options) == (0, 0)
    with np.load(tmp_path / "torch" / "maps.npz") as t, np.load(tmp_path / "onnx" / "maps.npz") as o:
        assert sorted(t.files) == sorted(o.files) == sorted(ARRAYS)
        torch_maps, onnx_maps = dict(t), dict(o)
    n, h = len(PNGS), GRID
    shapes = {"names": (n,), "score": (n,), "nll": (n, h, h), "resample_mask": (n, h, h)}
    for key, value in onnx_maps.items():
        assert value.shape == shapes.get(key, (n, 256, 256)), key
        assert value.dtype == {"names": value.dtype, "resample_mask": bool}.get(key, np.float32), key
    assert list(onnx_maps["names"]) == list(torch_maps["names"]) == [p.name for p in PNGS]
    assert np.array_equal(onnx_maps["resample_mask"], torch_maps["resample_mask"])
    assert 0.05 < onnx_maps["resample_mask"].mean() < 0.3  # the 0.9 quantile: about a tenth of the codes
    assert np.array_equal(onnx_maps["scan"], torch_maps["scan"])
    for key in ("nll", "recon", "healed", "anomaly", "score"):
        np.testing.assert_allclose(onnx_maps[key], torch_maps[key], rtol=0, atol=1e-4, err_msg=key)
    assert np.abs(onnx_maps["healed"] - onnx_maps["recon"]).max() > 0.05  # the healings changed something
    assert (onnx_maps["anomaly"] > 0).any() and onnx_maps["score"].min() > 0
    out = tmp_path / "onnx"
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "name,slice_position,score,codes_resampled" and len(rows) == n + 1
    assert rows[1].startswith(f"{PNGS[0].name},16,") and rows[1].endswith(f",{onnx_maps['resample_mask'][0].sum()}")
    stems = [p.name.removesuffix(".nii.png") for p in PNGS]
    assert sorted(p.name for p in (out / "png").iterdir()) == sorted(
        f"{stem}_{part}.png" for stem in stems for part in ("scan", "healed", "map", "overlay")
    )
    assert Image.open(out / "png" / f"{stems[0]}_overlay.png").mode == "RGB"
    description = Image.open(out / "anomaly.png").text["Description"]
    assert all(label in description for label in ("scan", "healed", "anomaly map", "map over the scan"))
    summaries = [json.loads((tmp_path / side / "summary.json").read_text()) for side in ("torch", "onnx")]
    assert summaries[0]["threshold_nats"] == pytest.approx(summaries[1]["threshold_nats"], rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_a_kept_code_is_never_resampled_and_both_sides_heal_with_the_same_codes(priors, kind):
    torch_models, onnx_models, threshold = sides(priors, kind)
    options = HealingOptions(threshold, healings=4, seed=1)
    ours, theirs = (
        slice_maps(models, pixels(), POSITIONS, [0, 1, 2], options) for models in (onnx_models, torch_models)
    )
    mask, codes, healed = ours["resample_mask"], ours["codes"], np.moveaxis(ours["healed_codes"], 1, -1)
    assert np.array_equal(mask, ours["nll"] > threshold) and mask.any() and not mask.all()
    assert (healed[~mask] == codes[~mask][:, None]).all()  # every healing keeps every kept code
    assert (healed[mask] != codes[mask][:, None]).mean() > 0.3  # and redraws the others, often to another code
    assert np.array_equal(ours["healed_codes"], theirs["healed_codes"]) and np.array_equal(codes, theirs["codes"])
    np.testing.assert_allclose(ours["nll"], theirs["nll"], rtol=0, atol=1e-4)


class Planted:
    """A side's models whose encoder returns planted codes: the scan is their decoding."""

    def __init__(self, models: OnnxAnomalyModels, codes: np.ndarray):
        self.codes, self.num_codes, self.height = codes, models.num_codes, models.height
        self.decode, self.sample = models.decode, models.sample

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.codes


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_anomaly_has_a_high_nll_and_the_map_is_concentrated_on_it(priors, kind):
    _, onnx_models, _ = sides(priors, kind)
    threshold = threshold_of(onnx_models.models.info["anomaly"], 0.99, "test")
    codes = onnx_models.encode(pixels()[:, None].astype(np.float32) / 255)
    rare = np.argsort(np.bincount(codes.ravel(), minlength=K))[:2]  # codes the demo slices (and the prior) rarely see
    region = (slice(None), slice(5, 10), slice(5, 10))
    codes[region] = np.where(
        np.indices((5, 5)).sum(axis=0) % 2 == 0, rare[0], rare[1]
    )  # a checkerboard: no run to learn
    scan = np.round(np.clip(onnx_models.decode(codes)[:, 0], 0, 1) * 255).astype(np.uint8)
    maps = slice_maps(Planted(onnx_models, codes), scan, POSITIONS, [0, 1, 2], HealingOptions(threshold))
    inside = np.zeros((GRID, GRID), bool)
    inside[5:10, 5:10] = True
    nll, mask = maps["nll"], maps["resample_mask"]
    assert nll[:, inside].mean() > threshold > 2 * nll[:, ~inside].mean()
    assert mask[:, inside].mean() > 0.4 and mask[:, ~inside].mean() < 0.05
    window = np.kron(dilate(inside), np.ones((16, 16))).astype(bool)  # the region, one code around, in pixels
    anomaly = maps["anomaly"]
    assert anomaly[:, window].sum() > 0.6 * anomaly.sum()
    assert anomaly[:, window].mean() > 10 * anomaly[:, ~window].mean()


@pytest.mark.parametrize("kind", KINDS)
def test_the_thresholds_stored_at_export_are_those_trainer_anomaly_computes(priors, kind):
    checkpoint, out = priors[kind]
    stored = json.loads((out / "model.json").read_text())["anomaly"]
    prior, _, info = load_prior(checkpoint)
    assert stored == healthy_threshold_record(prior, info, checkpoint)
    values = [stored["nll_quantiles"][f"{q:g}"] for q in QUANTILES]
    assert stored["split"] == "validate" and stored["codes"] == 32 * GRID * GRID and values == sorted(values)
    assert values[0] > 0.1 and values[-1] > values[0] + 1  # a spread, not a constant


def test_shards_and_a_nifti_volume_are_mapped(priors, demo_shards, tmp_path):
    _, model_dir = priors["transformer"]
    common = ["anomaly", "--model-dir", str(model_dir), "--healings", "1", "--batch-size", "32", "--quiet"]
    shards = ["--images", str(demo_shards), "--split", "validate"]  # a shards folder given as --images: its split
    assert export_cli([*common, *shards, "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s" / "maps.npz") as maps:
        assert len(maps["names"]) == 32 and str(maps["names"][0]).startswith("case_")
    affine, shape = grid("RAS", (1.0, 1.0, 1.5))
    volume = phantom(tmp_path / "scan.nii.gz", affine, shape)
    assert export_cli([*common, "--nifti", str(volume), "--slices", "10:14", "--out", str(tmp_path / "v")]) == 0
    source = nib.load(str(volume))
    for name in ("anomaly.nii.gz", "healed.nii.gz"):
        written = nib.load(str(tmp_path / "v" / name))
        assert written.shape == source.shape and np.array_equal(written.affine, source.affine)
    positions = [line.split(",")[1] for line in (tmp_path / "v" / "scores.csv").read_text().splitlines()[1:]]
    assert positions == ["4", "12", "20", "28"]  # 4 slices binned to the prior's 32 positions, as shard --nifti bins
    maps = nib.load(str(tmp_path / "v" / "anomaly.nii.gz")).get_fdata()
    with np.load(tmp_path / "v" / "maps.npz") as saved:
        assert maps.min() >= 0 and maps.max() == pytest.approx(float(saved["anomaly"].max()), rel=0.05)


BAD_INPUTS = {
    "missing folder": (lambda d: ["--images", str(d / "nowhere")], "nowhere: no such file or folder"),
    "not a PNG": (lambda d: ["--images", str(write(d / "case_1_slice_3.png", b"hello"))], "not an image"),
    "wrong size": (lambda d: ["--images", str(png(d / "case_1_slice_3.png", 128))], "expected 256x256 pixels"),
    "no slice position": (lambda d: ["--images", str(png(d / "brain.png", 256))], "brain.png: no slice position"),
    "position past the prior's": (
        lambda d: ["--images", str(png(d / "case_1_slice_40.png", 256))],
        "slice position 40",
    ),
    "no healings": (lambda d: ["--images", str(PNGS[0]), "--healings", "0"], "argument --healings: must be an integer"),
    "huge healings": (lambda d: ["--images", str(PNGS[0]), "--healings", "10000000"], "argument --healings: must be"),
    "quantile off the table": (lambda d: ["--images", str(PNGS[0]), "--quantile", "0.97"], "argument --quantile"),
    "a pass too large": (lambda d: ["--images", str(PNGS[0]), "--batch-size", "4096"], "20480 rows per prior pass"),
}


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def png(path: Path, size: int) -> Path:
    Image.new("L", (size, size), 60).save(path)
    return path


@pytest.mark.parametrize("command", ["trainer", "export"])
@pytest.mark.parametrize("problem", list(BAD_INPUTS))
def test_a_bad_input_is_one_line_exit_2_and_no_output(priors, tmp_path, capsys, command, problem):
    arguments, message = BAD_INPUTS[problem]
    checkpoint, model_dir = priors["pixelcnn"]
    model = ["--checkpoint", str(checkpoint)] if command == "trainer" else ["--model-dir", str(model_dir)]
    cli = trainer_cli if command == "trainer" else export_cli
    assert cli(["anomaly", *model, "--out", str(tmp_path / "out"), "--quiet", *arguments(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    if "argument --" in message:  # argparse's: its usage, then one line naming the option
        err = err.splitlines()[-1]
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_slice_option_gives_the_position_a_file_name_does_not(priors, tmp_path):
    brain = tmp_path / "brain.png"
    brain.write_bytes(PNGS[0].read_bytes())
    command = ["anomaly", "--model-dir", str(priors["pixelcnn"][1]), "--images", str(brain), str(PNGS[1])]
    assert export_cli([*command, "--slice", "5", "--healings", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    rows = (tmp_path / "o" / "scores.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:2] for row in rows] == [["brain.png", "5"], [PNGS[1].name, "17"]]


def test_a_folder_exported_without_thresholds_is_refused(tmp_path, capsys):
    vqvae = save_vqvae(tmp_path, seed=0)
    checkpoint = save_prior(tmp_path, vqvae, 0, "transformer")  # no codes folder: no validation codes
    assert export_cli(["onnx", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "onnx")]) == 0
    assert "no anomaly thresholds" in capsys.readouterr().out
    command = ["anomaly", "--model-dir", str(tmp_path / "onnx"), "--images", str(PNGS[0]), "--out", str(tmp_path / "o")]
    assert export_cli([*command, "--quiet"]) == 2
    assert "no anomaly thresholds" in capsys.readouterr().err and not (tmp_path / "o").exists()


NO_TORCH = """
import sys
from export.__main__ import main
assert main(["anomaly", "--model-dir", sys.argv[1], "--out", sys.argv[2], "--images", sys.argv[3], "--quiet"]) == 0
assert "torch" not in sys.modules, "export anomaly imported torch"
print("ok")
"""


def test_export_anomaly_never_imports_torch(priors, tmp_path):
    command = [sys.executable, "-c", NO_TORCH, str(priors["transformer"][1]), str(tmp_path / "m"), str(PNGS[0])]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
    assert (tmp_path / "m" / "maps.npz").is_file()


def test_the_map_is_zero_outside_the_resampled_codes_dilated_and_smoothing_keeps_its_mass():
    mask = np.zeros((32, 32), bool)
    mask[10, 20] = True
    assert dilate(mask).sum() == 9 and dilate(mask)[9:12, 19:22].all()
    scan, healed = np.full((256, 256), 0.5, np.float32), np.zeros((256, 256), np.float32)
    anomaly = anomaly_map(scan, healed, mask)
    window, margin = np.zeros((256, 256), bool), np.zeros((256, 256), bool)
    window[72:96, 152:176] = True  # code (10, 20) and its 8 neighbours, 8 pixels each
    margin[64:104, 144:184] = True  # and 8 pixels (4 sigma) around them
    assert anomaly[window].min() > 0.15 and anomaly[window].sum() > 0.85 * anomaly.sum()
    assert anomaly[~margin].max() < 1e-3 * anomaly.max()
    assert anomaly.sum() == pytest.approx(0.5 * window.sum(), rel=1e-3)  # smoothing moves intensity, keeps its mass
    image = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    assert smooth(image).std() < 0.3 * image.std() and smooth(image).mean() == pytest.approx(image.mean(), rel=1e-3)


def test_healing_k_of_a_slice_is_the_same_whatever_the_number_of_healings():
    assert np.array_equal(healing_randomness(3, 2, 4, 5, seed=7), healing_randomness(3, 6, 4, 5, seed=7)[:2])
    assert not np.array_equal(healing_randomness(3, 2, 4, 5, seed=7), healing_randomness(4, 2, 4, 5, seed=7))


def test_a_threshold_table_without_the_quantile_asked_for_is_named():
    record = {"nll_quantiles": {"0.9": 3.0}}
    assert threshold_of(record, 0.9, "x") == 3.0
    with pytest.raises(ValueError, match="x: no NLL threshold for --quantile 0.99 \\(has 0.9\\)"):
        threshold_of(record, 0.99, "x")
    with pytest.raises(ValueError, match="x: no anomaly thresholds"):
        threshold_of(None, 0.99, "x")
