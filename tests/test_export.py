"""ONNX export and the onnxruntime runtime: parity with the torch models and samplers, no torch at
run time, clear errors. Tiny random-weight models, exported once for the whole module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from common.digest import file_sha256
from common.sampling_rule import sampling_randomness
from conftest import DEMO_SRC, GRID, REPO, SLICES, K, save_prior, save_vqvae, slices
from export.__main__ import main as cli
from export.runtime.model_dir import PARTS, PRIOR_PARTS
from export.runtime.onnx_models import ExportedModels
from export.runtime.prior_sampler import sample_codes
from trainer.stage1.image_metrics import SSIM_SETTINGS
from trainer.stage1.load import load_vqvae
from trainer.stage2.load import load_prior
from trainer.stage2.pixelcnn import sample
from trainer.stage2.sample import run_sampling

DEMO_PNGS = sorted((DEMO_SRC / "keras_png_slices_test").glob("*.png"))[:6]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[int | str, tuple[Path, Path]]:
    """{num_conditions: (prior checkpoint, export folder)} for a conditional and an unconditional PixelCNN
    over the same VQ-VAE, and {"transformer": ...} for a conditional transformer prior, exported through the
    CLI; the second replaces a stale folder with --force."""
    root = tmp_path_factory.mktemp("export")
    vqvae = save_vqvae(root, seed=0)
    result = {}
    for key, force in ((SLICES, []), (0, ["--force"]), ("transformer", [])):
        num_conditions, kind = (SLICES, key) if key == "transformer" else (key, "pixelcnn")
        checkpoint, out = save_prior(root, vqvae, num_conditions, kind), root / f"onnx_{key}"
        if force:
            out.mkdir()  # an earlier export (it has model.json): --force may replace it
            (out / "model.json").write_text("{}")
            (out / "stale.txt").write_text("from an earlier export")
        assert cli(["onnx", "--checkpoint", str(checkpoint.parent.parent), "--out", str(out), *force]) == 0
        result[key] = checkpoint, out
    return result


def test_export_writes_checked_models_with_dynamic_axes_and_model_json(exported):
    checkpoint, out = exported[SLICES]
    prior, _, info = load_prior(checkpoint)
    model = json.loads((out / "model.json").read_text())
    assert {k: model[k] for k in ("height", "width", "num_codes", "num_conditions")} == {
        k: info[k] for k in ("height", "width", "num_codes", "num_conditions")
    }
    assert (model["context_rows"], model["context_columns"], model["layers"], model["channels"]) == (
        prior.context_rows,
        prior.context_columns,
        3,
        8,
    )
    assert model["code_dim"] == 8 and model["image_size"] == 256 and model["opset"] == 20
    assert model["source"]["prior_sha256"] == file_sha256(checkpoint / "model.safetensors")
    assert model["source"]["vqvae_sha256"] == info["vqvae_sha256"]
    dynamic = {
        "encoder": {"images": [0]},
        "decoder": {"codes": [0]},
        "prior_row": {"band": [0, 1], "condition": [0]},
        "prior_cell": {"row": [0, 1], "context": [0, 3], "condition": [0]},
    }
    assert model["prior_kind"] == "pixelcnn"
    for part in PARTS + PRIOR_PARTS["pixelcnn"]:
        proto = onnx.load(str(out / model["models"][part]["file"]))
        onnx.checker.check_model(proto, full_check=True)
        inputs = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
        assert list(inputs) == model["models"][part]["inputs"]
        for name, axes in dynamic[part].items():
            assert all(inputs[name][axis] for axis in axes), f"{part}.{name}: {inputs[name]}"
    unconditional = exported[0][1]
    assert json.loads((unconditional / "model.json").read_text())["models"]["prior_row"]["inputs"] == ["band"]
    assert not (unconditional / "stale.txt").exists()  # --force replaced the folder


def test_encoder_and_decoder_match_the_vqvae(exported):
    checkpoint, out = exported[SLICES]
    vqvae, _ = load_vqvae(Path(json.loads((checkpoint / "prior.json").read_text())["vqvae_checkpoint"]))
    models = ExportedModels(out, ("encoder", "decoder"))
    noise = np.random.default_rng(0).random((2, 1, 256, 256), dtype=np.float32)
    images = np.concatenate([slices(DEMO_PNGS[:5]), noise])
    codes = models.encode(images)
    assert codes.dtype == np.int64 and codes.shape == (7, GRID, GRID)
    assert (codes == vqvae.encode(torch.from_numpy(images)).numpy()).mean() >= 0.999
    grids = np.random.default_rng(1).integers(0, K, (3, GRID, GRID))
    decoded = models.decode(grids)
    assert decoded.shape == (3, 1, 256, 256)
    np.testing.assert_allclose(decoded, vqvae.decode(torch.from_numpy(grids)).numpy(), atol=1e-4)


@pytest.mark.parametrize("num_conditions", [SLICES, 0], ids=["conditional", "unconditional"])
def test_prior_halves_match_the_torch_modules_and_the_full_forward_pass(exported, num_conditions):
    checkpoint, out = exported[num_conditions]
    prior, _, _ = load_prior(checkpoint)
    models = ExportedModels(out, ("prior_row", "prior_cell"))
    rng = np.random.default_rng(2)
    codes = rng.integers(0, K, (3, GRID, GRID))
    conditions = rng.integers(0, SLICES, 3) if num_conditions else None
    torch_conditions = None if conditions is None else torch.from_numpy(conditions)
    with torch.no_grad():
        full = prior(torch.from_numpy(codes), torch_conditions).numpy()
    for i in range(GRID):
        band = codes[:, max(0, i - prior.context_rows) : i + 1]
        context = models.row_context(band, conditions)
        with torch.no_grad():
            expected = prior.row_context(torch.from_numpy(band), torch_conditions).numpy()
        np.testing.assert_allclose(context, expected, atol=1e-4)
        for j in range(GRID):
            start = max(0, j - prior.context_columns)
            logits = models.cell_logits(codes[:, i, start : j + 1], context[..., start : j + 1], conditions)
            with torch.no_grad():
                expected = prior.cell_logits(
                    torch.from_numpy(codes[:, i, start : j + 1]),
                    torch.from_numpy(context[..., start : j + 1]),
                    torch_conditions,
                )
            np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
            np.testing.assert_allclose(logits, full[:, :, i, j], atol=1e-4)


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 5)])
@pytest.mark.parametrize("num_conditions", [SLICES, 0], ids=["conditional", "unconditional"])
def test_onnxruntime_sampler_draws_what_the_torch_sampler_draws(exported, num_conditions, temperature, top_k):
    checkpoint, out = exported[num_conditions]
    prior, _, _ = load_prior(checkpoint)
    uniforms, conditions = sampling_randomness(3, GRID, GRID, num_conditions, seed=3)
    expected = sample(
        prior,
        torch.from_numpy(uniforms),
        None if conditions is None else torch.from_numpy(conditions),
        temperature,
        top_k,
    )
    codes = sample_codes(ExportedModels(out, ("prior_row", "prior_cell")), uniforms, conditions, temperature, top_k)
    np.testing.assert_array_equal(codes, expected.numpy())


@pytest.mark.parametrize(
    "key, extra",
    [(SLICES, ["--slice", "2"]), (0, []), ("transformer", ["--slice", "2"]), ("transformer", [])],
    ids=["conditional-slice", "unconditional", "transformer-slice", "transformer"],
)
def test_sample_cli_writes_the_files_trainer_sample_writes(exported, tmp_path, key, extra):
    checkpoint, out = exported[key]
    num_conditions = 0 if key == 0 else SLICES
    options = {"n": 3, "seed": 4, "temperature": 0.9, "top_k": 8, "batch_size": 2}
    reference = run_sampling(
        checkpoint, tmp_path / "torch", slice_index=2 if extra else None, show_progress=False, **options
    )
    assert (
        cli(
            [
                "sample",
                "--model-dir",
                str(out),
                "--out",
                str(tmp_path / "onnx"),
                "--n",
                "3",
                "--seed",
                "4",
                "--temperature",
                "0.9",
                "--top-k",
                "8",
                "--batch-size",
                "2",
                "--quiet",
                *extra,
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "onnx" / "summary.json").read_text())
    assert summary["sampler"] == "onnxruntime" and summary["seconds"] > 0
    assert {k: summary[k] for k in ("n", "seed", "temperature", "top_k", "slice")} == {
        k: reference[k] for k in ("n", "seed", "temperature", "top_k", "slice")
    }
    with np.load(tmp_path / "torch" / "samples.npz") as a, np.load(tmp_path / "onnx" / "samples.npz") as b:
        assert sorted(a.files) == sorted(b.files) == (["codes", "conditions"] if num_conditions else ["codes"])
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
    for i in range(3):
        assert (tmp_path / "torch" / "codes" / f"{i:03d}.png").read_bytes() == (
            tmp_path / "onnx" / "codes" / f"{i:03d}.png"
        ).read_bytes()
        torch_image, onnx_image = (
            np.asarray(Image.open(tmp_path / side / "images" / f"{i:03d}.png"), np.int16) for side in ("torch", "onnx")
        )
        assert np.abs(torch_image - onnx_image).max() <= 1
    assert Image.open(tmp_path / "onnx" / "generated.png").size[0] > 100


def test_reconstruct_pngs_and_shards_matches_the_vqvae(exported, demo_shards, tmp_path):
    checkpoint, out = exported[SLICES]
    vqvae, _ = load_vqvae(Path(json.loads((checkpoint / "prior.json").read_text())["vqvae_checkpoint"]))
    folder = tmp_path / "pngs"
    folder.mkdir()
    for path in DEMO_PNGS[1:4]:
        shutil.copy(path, folder / path.name)
    assert (
        cli(
            [
                "reconstruct",
                "--model-dir",
                str(out),
                "--out",
                str(tmp_path / "png_out"),
                str(DEMO_PNGS[0]),
                str(folder),
                "--batch-size",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "png_out" / "summary.json").read_text())
    assert summary["images"] == 4 and summary["images_per_second"] > 0
    images = slices(DEMO_PNGS[:4])
    with torch.no_grad():
        expected_codes = vqvae.encode(torch.from_numpy(images))
        expected = vqvae.decode(expected_codes).numpy()[:, 0]
    keys = [p.name.removesuffix(".nii.png") for p in DEMO_PNGS[:4]]  # case_904_slice_0.nii.png -> case_904_slice_0
    with np.load(tmp_path / "png_out" / "codes.npz") as saved:
        assert list(saved["names"]) == [f"{key}.png" for key in keys]
        assert (saved["codes"] == expected_codes.numpy()).mean() >= 0.999
    for key, image in zip(keys, expected):
        written = np.asarray(Image.open(tmp_path / "png_out" / "reconstructions" / f"{key}.png"), np.int16)
        assert np.abs(written - np.round(image * 255)).max() <= 1
    mse = ((expected - images[:, 0]) ** 2).mean(axis=(1, 2))
    assert summary["mse_mean"] == pytest.approx(mse.mean(), rel=1e-3)
    ssim = structural_similarity_index_measure(
        torch.from_numpy(expected)[:, None].clamp(0, 1), torch.from_numpy(images), reduction="none", **SSIM_SETTINGS
    )
    assert summary["ssim_mean"] == pytest.approx(float(ssim.mean()), abs=2e-3)  # ONNX vs torch decoder: ~1/255
    assert summary["ssim_min"] == pytest.approx(float(ssim.min()), abs=2e-3)
    description = Image.open(tmp_path / "png_out" / "reconstructions.png").text["Description"].splitlines()
    assert description[0] == "ONNX VQ-VAE on 4 input slices: 2 slices spread over the inputs, then the 2 worst by SSIM"
    worst = [keys[i] for i in np.argsort(ssim.numpy())[:2]]  # each slice shown once: the rest as spread
    assert [line for line in description if line.startswith(("worst: ", "case_"))] == [
        *[key for key in keys if key not in worst],
        *[f"worst: {key}" for key in worst],
    ]
    assert {"original", "reconstruction"} <= set(description)

    assert (
        cli(
            [
                "reconstruct",
                "--model-dir",
                str(out),
                "--out",
                str(tmp_path / "shard_out"),
                "--shards",
                str(demo_shards),
                "--split",
                "test",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "shard_out" / "summary.json").read_text())
    manifest = json.loads((demo_shards / "manifest.json").read_text())
    assert (
        summary["images"]
        == manifest["splits"]["test"]["num_samples"]
        == len(list((tmp_path / "shard_out" / "reconstructions").glob("*.png")))
    )
    for key in keys:  # one naming for both inputs
        assert (tmp_path / "shard_out" / "reconstructions" / f"{key}.png").is_file()
    assert "code's mean decoded intensity" in Image.open(tmp_path / "shard_out" / "code_maps.png").text["Description"]
    description = Image.open(tmp_path / "shard_out" / "reconstructions.png").text["Description"].splitlines()
    assert description[0].endswith("slices spread over the inputs, then the 2 worst by SSIM")
    assert sum(line.startswith("worst: case_") for line in description) == 2


NO_TORCH = """
import sys
from export.__main__ import main
try:
    main(["sample", "--help"])
except SystemExit as done:
    assert done.code == 0
assert main(["sample", "--model-dir", sys.argv[1], "--out", sys.argv[2] + "/s", "--n", "2", "--quiet"]) == 0
assert main(["reconstruct", "--model-dir", sys.argv[1], "--out", sys.argv[2] + "/r", sys.argv[3], "--quiet"]) == 0
assert "torch" not in sys.modules, "the runtime imported torch"
print("ok")
"""


def test_sample_and_reconstruct_never_import_torch(exported, tmp_path):
    command = [sys.executable, "-c", NO_TORCH, str(exported[SLICES][1]), str(tmp_path), str(DEMO_PNGS[0])]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
    assert (tmp_path / "s" / "generated.png").is_file() and (tmp_path / "r" / "code_maps.png").is_file()


def broken_copy(out: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    change(copy)
    return copy


MODEL_DIR_ERRORS = {
    "missing-folder": (lambda d: shutil.rmtree(d), "no such folder"),
    "missing-model-json": (lambda d: (d / "model.json").unlink(), "model.json: missing"),
    "missing-onnx": (lambda d: (d / "prior_cell.onnx").unlink(), "prior_cell.onnx: missing"),
    "mismatched-onnx": (
        lambda d: shutil.copy(d / "prior_row.onnx", d / "prior_cell.onnx"),
        "prior_cell.onnx: sha256 differs",
    ),
    "old-format": (
        lambda d: (d / "model.json").write_text(
            json.dumps({**json.loads((d / "model.json").read_text()), "format_version": 0})
        ),
        "format_version 0",
    ),
    "unknown-kind": (
        lambda d: (d / "model.json").write_text(
            json.dumps({**json.loads((d / "model.json").read_text()), "prior_kind": "pixelsnail"})
        ),
        "prior_kind 'pixelsnail' is not one this runtime can sample (pixelcnn, transformer)",
    ),
    "kind-not-a-string": (
        lambda d: (d / "model.json").write_text(
            json.dumps({**json.loads((d / "model.json").read_text()), "prior_kind": ["transformer"]})
        ),
        "prior_kind ['transformer'] is not one this runtime can sample",
    ),
    "missing-step-entry": (
        lambda d: (d / "model.json").write_text(
            json.dumps({**json.loads((d / "model.json").read_text()), "prior_kind": "transformer"})
        ),
        "models.prior_step must have",
    ),
}


@pytest.mark.parametrize("problem", list(MODEL_DIR_ERRORS))
def test_broken_model_folder_is_a_clear_error(exported, tmp_path, capsys, problem):
    change, message = MODEL_DIR_ERRORS[problem]
    model_dir = broken_copy(exported[SLICES][1], tmp_path, change)
    assert cli(["sample", "--model-dir", str(model_dir), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(model_dir) in err


@pytest.mark.parametrize(
    "num_conditions, options, message",
    [
        (SLICES, ["--temperature", "0"], "argument --temperature: must be a finite number > 0"),
        (SLICES, ["--top-k", "33"], "top_k must be in 0..32"),
        (SLICES, ["--slice", "4"], "slice must be in 0..3"),
        (0, ["--slice", "0"], "trained without slice conditioning"),
        (SLICES, ["--n", "0"], "argument --n: must be an integer from 1 to"),
        (SLICES, ["--batch-size", "0"], "argument --batch-size: must be an integer from 1 to"),
        (SLICES, ["--threads", "-1"], "argument --threads: must be an integer from 0 to"),
    ],
)
def test_bad_sampling_option_is_a_clear_error(exported, tmp_path, capsys, num_conditions, options, message):
    assert (
        cli(
            [
                "sample",
                "--model-dir",
                str(exported[num_conditions][1]),
                "--out",
                str(tmp_path / "s"),
                "--quiet",
                *options,
            ]
        )
        == 2
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.new("L", (128, 128)), "expected 256x256 pixels, got 128x128"),
        (Image.new("RGB", (256, 256)), "expected an 8-bit grayscale PNG, got mode RGB"),
        (Image.new("I;16", (256, 256)), "16-bit PNG (16-bit or float images are refused)"),
    ],
)
def test_bad_input_png_is_a_clear_error(exported, tmp_path, capsys, image, message):
    path = tmp_path / "bad.png"
    image.save(path)
    assert (
        cli(
            ["reconstruct", "--model-dir", str(exported[SLICES][1]), "--out", str(tmp_path / "r"), str(path), "--quiet"]
        )
        == 2
    )
    assert f"{path}: {message}" in capsys.readouterr().err


def test_folder_without_prior_kind_samples_as_pixelcnn_and_transformer_folder_holds_its_step(exported, tmp_path):
    """Folders exported before the transformer existed have no prior_kind: they are PixelCNN folders."""
    old = broken_copy(
        exported[SLICES][1],
        tmp_path,
        lambda d: (d / "model.json").write_text(
            json.dumps({k: v for k, v in json.loads((d / "model.json").read_text()).items() if k != "prior_kind"})
        ),
    )
    assert cli(["sample", "--model-dir", str(old), "--out", str(tmp_path / "old"), "--n", "2", "--quiet"]) == 0
    assert (
        cli(["sample", "--model-dir", str(exported[SLICES][1]), "--out", str(tmp_path / "new"), "--n", "2", "--quiet"])
        == 0
    )
    with np.load(tmp_path / "old" / "samples.npz") as a, np.load(tmp_path / "new" / "samples.npz") as b:
        np.testing.assert_array_equal(a["codes"], b["codes"])
    checkpoint, out = exported["transformer"]
    model = json.loads((out / "model.json").read_text())
    prior, _, _ = load_prior(checkpoint)
    assert model["prior_kind"] == "transformer" and set(model["models"]) == {"encoder", "decoder", "prior_step"}
    step = model["models"]["prior_step"]
    assert (step["layers"], step["kv_heads"], step["head_dim"]) == (2, 1, 8) and len(prior.blocks) == 2
    assert "context_rows" not in model and not (out / "prior_row.onnx").exists()


def test_export_refuses_to_overwrite_and_checks_the_vqvae(exported, tmp_path, capsys):
    checkpoint, out = exported[SLICES]
    assert cli(["onnx", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert f"{out}: output folder exists and is not empty (use --force" in capsys.readouterr().err
    other = save_vqvae(tmp_path, seed=5)
    assert cli(["onnx", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--vqvae", str(other)]) == 2
    assert "not the ones the prior was trained on" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
