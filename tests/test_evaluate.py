"""`trainer evaluate`: per-image metrics with the stated SSIM settings, whole-pass codebook usage, figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from conftest import DEMO_CONFIG, DEMO_SRC, tiny
from trainer.__main__ import main as cli
from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.evaluate import evaluate
from trainer.stage1.load import load_vqvae
from trainer.stage1.train import train_vqvae
from wandb_log import history


@pytest.fixture(scope="module")
def trained_run(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evaluate") / "run"
    train_vqvae(load_config(DEMO_CONFIG, tiny(demo_shards, out), cls=VQVAEConfig), show_progress=False)
    return out


def test_evaluate_writes_consistent_csv_summary_and_figures(trained_run: Path, tmp_path: Path):
    out = tmp_path / "eval"
    summary = evaluate(trained_run, "test", out, batch_size=10, show_progress=False)
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == summary["images"] == 32
    ssim = np.array([float(r["ssim"]) for r in rows])
    assert summary["ssim_mean"] == pytest.approx(ssim.mean())
    assert summary["ssim_median"] == pytest.approx(np.median(ssim))
    assert summary["ssim_min"] == pytest.approx(ssim.min())
    assert summary["grid"] == [32, 32] and summary["num_codes"] == 32
    assert 1 <= summary["codes_used"] <= 32 and 1.0 <= summary["codebook_perplexity"] <= summary["codes_used"]
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in ("reconstructions.png", "code_maps.png", "codebook_usage.png", "loss_curves.png"):
        assert Image.open(out / name).size[0] > 100
    shown = Image.open(out / "reconstructions.png").text["Description"].splitlines()
    assert shown[0].startswith("VQ-VAE on the test split: ") and shown[0].endswith("then the 2 worst by SSIM")
    worst = sorted(rows, key=lambda r: float(r["ssim"]))[:2]
    assert [line for line in shown if line.startswith("worst: ")] == [f"worst: {r['key']}" for r in worst]
    levels = [int(line.split("_slice_")[1]) for line in shown if line.startswith("case_")]  # one subject here
    assert len(levels) >= 4 and max(levels) - min(levels) >= 24  # spread over the levels, not slices 0-7
    assert {"original", "reconstruction"} <= set(shown)

    # SSIM of one image, recomputed independently with the documented settings
    model, _ = load_vqvae(trained_run)
    row = rows[5]
    image = np.asarray(Image.open(DEMO_SRC / "keras_png_slices_test" / f"{row['key']}.nii.png"), dtype=np.float32) / 255
    x = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        recon = model.decode(model.encode(x))
    expected = structural_similarity_index_measure(
        recon, x, gaussian_kernel=True, kernel_size=11, sigma=1.5, data_range=1.0
    )
    assert float(row["ssim"]) == pytest.approx(float(expected), abs=1e-5)


def test_evaluate_cli_logs_to_wandb_offline_and_missing_checkpoint(
    trained_run: Path, tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert (
        cli(
            [
                "evaluate",
                "--checkpoint",
                str(trained_run),
                "--split",
                "validate",
                "--out",
                str(tmp_path / "e"),
                "--quiet",
                "--wandb",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["images"] == 32
    (row,) = history(tmp_path / "e")
    assert {"validate/reconstructions/_type", "validate/code_maps/_type", "validate/codebook_usage/_type"} <= set(row)
    assert cli(["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "f")]) == 2
    assert "neither a checkpoint folder nor a run folder" in capsys.readouterr().err
