"""Stage 2 end to end on tiny models: encode -> train the prior (resume, wandb) -> sample -> evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import DEMO_CONFIG, REPO, free_port, tiny
from trainer.__main__ import main as cli
from trainer.run.checkpoint import list_checkpoints, load_weights
from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.data import SliceShards, epoch_batches, read_split
from trainer.stage1.load import load_vqvae
from trainer.stage2 import evaluate as evaluate_prior
from trainer.stage2.codes import load_codes, read_codes_meta
from trainer.stage2.config import PriorConfig
from trainer.stage2.encode import encode_splits
from trainer.stage2.evaluate import summary_table
from trainer.stage2.generation_metrics import code_histogram_comparison
from trainer.stage2.load import load_prior
from trainer.stage2.pixelcnn import GatedPixelCNN
from trainer.stage2.structure_metrics import structure_metrics
from trainer.stage2.train import code_batches, train_prior
from trainer.stage2.transformer_prior import TransformerPrior
from wandb_log import history

PRIOR_CONFIG = REPO / "configs" / "prior_demo_cpu.yaml"


TINY_MODELS = {  # model overrides per prior kind
    "pixelcnn": ["model.channels=8", "model.layers=2", "model.first_kernel=3", "model.head_channels=16"],
    "transformer": [
        "model.kind=transformer",
        "model.transformer.layers=2",
        "model.transformer.width=16",
        "model.transformer.heads=2",
        "model.transformer.kv_heads=1",
        "model.transformer.mlp_ratio=2",
    ],
}


def tiny_prior(codes: Path, out: Path, *extra: str, kind: str = "pixelcnn") -> PriorConfig:
    """The demo prior config, with a prior of `kind`, shrunk to seconds on a CPU."""
    return load_config(
        PRIOR_CONFIG,
        [
            f"codes.dir={codes}",
            f"out_dir={out}",
            "codes.batch_size=8",
            *TINY_MODELS[kind],
            "train.max_steps=12",
            "train.warmup_steps=2",
            "train.log_every=2",
            "train.eval_every=6",
            "train.checkpoint_every=6",
            "wandb.enabled=false",
            "sample_count=2",
            *extra,
        ],
        cls=PriorConfig,
    )


@pytest.fixture(scope="module")
def codes(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VQ-VAE (16x16 grid, K = 32) trained for a few steps, and its codes of the demo splits."""
    root = tmp_path_factory.mktemp("prior")
    from trainer.stage1.train import train_vqvae

    checkpoint, _ = train_vqvae(
        load_config(DEMO_CONFIG, tiny(demo_shards, root / "vqvae", "model.downsample=16"), cls=VQVAEConfig),
        show_progress=False,
    )
    encode_splits(checkpoint, root / "codes", batch_size=16, show_progress=False)
    return root / "codes"


@pytest.fixture(scope="module", params=list(TINY_MODELS))
def trained_prior(codes: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A briefly trained prior of each kind: every test that uses it runs for both."""
    out = tmp_path_factory.mktemp(f"prior_run_{request.param}") / "run"
    train_prior(
        tiny_prior(
            codes,
            out,
            "train.max_steps=40",
            "train.lr=1e-2",
            "train.eval_every=40",
            "train.checkpoint_every=40",
            kind=request.param,
        ),
        show_progress=False,
    )
    return out


def test_encode_stores_the_encoders_codes_with_keys_and_slices(codes: Path, demo_shards: Path):
    meta = read_codes_meta(codes)
    assert meta["splits"] == {"train": 64, "validate": 32, "test": 32}
    assert (meta["height"], meta["width"], meta["num_codes"], meta["num_slices"]) == (16, 16, 32, 32)
    model, _ = load_vqvae(Path(meta["vqvae_checkpoint"]))
    batch = next(epoch_batches(SliceShards(demo_shards, "test"), 32))
    stored = load_codes(codes, "test")
    assert list(stored.keys) == batch.keys
    assert np.array_equal(stored.codes, model.encode(batch.images).numpy())
    assert list(stored.slices) == [m["slice"] for m in batch.meta]
    assert list(stored.subjects) == [m["subject"] for m in batch.meta]
    assert stored.codes.dtype == np.uint16


def test_encode_resumes_and_redoes_for_another_checkpoint(codes: Path, tmp_path: Path):
    meta = read_codes_meta(codes)
    out = tmp_path / "codes"
    shutil.copytree(codes, out)
    (out / "test.npz").unlink()  # as if interrupted before the last split
    meta["splits"].pop("test")
    (out / "codes.json").write_text(json.dumps(meta))
    before = (out / "train.npz").stat().st_mtime_ns
    encode_splits(Path(meta["vqvae_checkpoint"]), out, show_progress=False)
    assert (out / "train.npz").stat().st_mtime_ns == before  # kept
    assert np.array_equal(load_codes(out, "test").codes, load_codes(codes, "test").codes)  # redone
    meta["checkpoint_sha256"] = "another model"
    (out / "codes.json").write_text(json.dumps(meta))
    encode_splits(Path(meta["vqvae_checkpoint"]), out, show_progress=False)
    assert (out / "train.npz").stat().st_mtime_ns != before  # another model's codes are never reused


def test_code_batches_cover_each_epoch_once_across_ranks_and_resume_exactly():
    ranks = [code_batches(50, 4, rank, 2, seed=3) for rank in range(2)]
    epoch = torch.cat([next(r) for _ in range(6) for r in ranks])  # 50 // 2 // 4 = 6 batches per rank
    assert len(epoch) == 48 and len(set(epoch.tolist())) == 48
    straight = code_batches(50, 4, 1, 2, seed=3)
    seen = [next(straight) for _ in range(15)]
    resumed = code_batches(50, 4, 1, 2, seed=3, start_batch=9)
    assert all(torch.equal(seen[9 + i], next(resumed)) for i in range(6))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        next(code_batches(7, 4, 0, 2, seed=0))


def test_prior_learns_and_logs(trained_prior: Path):
    rows = [json.loads(r) for r in (trained_prior / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bits_per_code"] < rows[0]["bits_per_code"] - 1.0
    assert rows[0]["bits_per_code"] == pytest.approx(5.0, abs=0.5)  # starts near log2(32): uniform
    assert rows[-1]["val_bits_per_code"] < 5.0 and 0 < rows[-1]["val_accuracy"] <= 1
    info = json.loads((list_checkpoints(trained_prior / "checkpoints")[-1] / "prior.json").read_text())
    assert (info["height"], info["width"], info["num_codes"], info["num_conditions"]) == (16, 16, 32, 32)
    assert (trained_prior / "figures" / "samples_latest.png").is_file()


@pytest.mark.parametrize("kind", list(TINY_MODELS))
def test_resumed_prior_run_ends_with_identical_weights(codes: Path, tmp_path: Path, kind: str):
    """Dropout draws from torch's RNG, which the checkpoint restores, so the transformer resumes exactly too."""
    straight = tmp_path / "straight"
    train_prior(tiny_prior(codes, straight, kind=kind), show_progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000012")  # as if stopped after step 6
    train_prior(tiny_prior(codes, resumed, kind=kind), resume=True, show_progress=False)
    a = load_weights(straight / "checkpoints" / "step_0000012")
    b = load_weights(resumed / "checkpoints" / "step_0000012")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(r)["step"] for r in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(2, 13, 2))
    with pytest.raises(FileExistsError, match="--resume"):
        train_prior(tiny_prior(codes, straight, kind=kind), show_progress=False)


def test_checkpoint_records_the_kind_and_one_without_it_loads_as_pixelcnn(trained_prior: Path, tmp_path: Path):
    checkpoint = list_checkpoints(trained_prior / "checkpoints")[-1]
    prior, cfg, _ = load_prior(checkpoint)
    assert yaml.safe_load((checkpoint / "config.yaml").read_text())["model"]["kind"] == cfg.model.kind
    assert type(prior) is {"pixelcnn": GatedPixelCNN, "transformer": TransformerPrior}[cfg.model.kind]
    if cfg.model.kind == "pixelcnn":  # as written before `model.kind` existed
        old = tmp_path / "old"
        shutil.copytree(checkpoint, old)
        config = yaml.safe_load((old / "config.yaml").read_text())
        del config["model"]["kind"], config["model"]["transformer"]
        (old / "config.yaml").write_text(yaml.safe_dump(config))
        loaded, old_cfg, _ = load_prior(old)
        assert old_cfg.model.kind == "pixelcnn" and isinstance(loaded, GatedPixelCNN)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), prior.state_dict().values()))


def test_gradient_accumulation_matches_one_big_batch(codes: Path, tmp_path: Path):
    """Two micro-batches of 4 under accelerator.accumulate take the step one batch of 8 takes: each rank's
    epoch order is cut into consecutive batches, so the two micro-batches hold the big batch's grids."""
    steps = ("train.max_steps=4", "train.eval_every=4", "train.checkpoint_every=4", "train.log_every=4")
    train_prior(tiny_prior(codes, tmp_path / "big", *steps), show_progress=False)
    train_prior(
        tiny_prior(codes, tmp_path / "accumulated", *steps, "codes.batch_size=4", "train.grad_accum=2"),
        show_progress=False,
    )
    big = load_weights(tmp_path / "big" / "checkpoints" / "step_0000004")
    accumulated = load_weights(tmp_path / "accumulated" / "checkpoints" / "step_0000004")
    assert all(torch.allclose(big[k], accumulated[k], rtol=1e-4, atol=1e-5) for k in big)
    train_prior(tiny_prior(codes, tmp_path / "small", *steps, "codes.batch_size=4"), show_progress=False)
    small = load_weights(tmp_path / "small" / "checkpoints" / "step_0000004")  # the check can fail
    assert not all(torch.allclose(big[k], small[k], rtol=1e-4, atol=1e-5) for k in big)


def test_two_processes_train_one_prior(codes: Path, tmp_path: Path):
    """Under torchrun the ranks form one job: identical weights, one metrics log written by the main process."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "tests" / "scripts" / "train_ranks.py"),
        "prior",
        str(PRIOR_CONFIG),
        str(tmp_path),
        f"codes.dir={codes}",
        f"out_dir={tmp_path / 'run'}",
        "codes.batch_size=8",
        "model.channels=8",
        "model.layers=2",
        "model.first_kernel=3",
        "model.head_channels=16",
        "train.max_steps=8",
        "train.log_every=4",
        "train.eval_every=8",
        "train.checkpoint_every=8",
        "wandb.enabled=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert int(rank0.pop("num_processes")) == int(rank1.pop("num_processes")) == 2
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]
    assert rows[-1]["codes_per_s"] > 0 and rows[-1]["val_bits_per_code"] < 5.5


def test_prior_wandb_offline_run_holds_metrics_and_sample_grids(codes: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train_prior(tiny_prior(codes, out, "wandb.enabled=true", "sample_every=6"), show_progress=False)
    rows = history(out)
    logged = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["_step"] for r in rows] == [r["step"] for r in logged]
    assert all(r["bits_per_code"] == pytest.approx(e["bits_per_code"]) for r, e in zip(rows, logged))
    assert [r["_step"] for r in rows if "samples/_type" in r] == [6, 12]
    assert [r["_step"] for r in rows if "val_accuracy" in r] == [6, 12]


def test_sample_cli_writes_reproducible_brains(trained_prior: Path, tmp_path: Path):
    # a hot temperature, since a prior this briefly trained puts most of its mass on the background code
    args = ["sample", "--checkpoint", str(trained_prior), "--n", "3", "--seed", "5", "--temperature", "3", "--quiet"]
    assert cli([*args, "--out", str(tmp_path / "a"), "--slice", "7"]) == 0
    assert cli([*args, "--out", str(tmp_path / "b"), "--slice", "7", "--naive"]) == 0
    assert cli([*args, "--out", str(tmp_path / "c"), "--slice", "20"]) == 0
    a, b, c = (np.load(tmp_path / name / "samples.npz") for name in "abc")
    assert a["codes"].shape == (3, 16, 16) and a["codes"].max() < 32 and len(np.unique(a["codes"])) > 3
    assert np.array_equal(a["codes"], b["codes"])  # the naive sampler draws the same brains
    assert list(a["conditions"]) == [7, 7, 7] and list(c["conditions"]) == [20, 20, 20]
    # the slice position matters (the briefly trained transformer's logits move too little to change a draw)
    prior, _, _ = load_prior(trained_prior)
    grids = torch.from_numpy(a["codes"].astype(np.int64))
    assert not torch.allclose(prior(grids, torch.full((3,), 7)), prior(grids, torch.full((3,), 20)), atol=1e-4)
    code_map = np.asarray(Image.open(tmp_path / "a" / "codes" / "001.png"))
    assert np.array_equal(code_map // (65535 // 31), a["codes"][1])
    image = np.asarray(Image.open(tmp_path / "a" / "images" / "002.png"))
    assert image.shape == (256, 256) and image.dtype == np.uint8
    assert (tmp_path / "a" / "generated.png").is_file()


@pytest.mark.parametrize(
    "option,message",
    [
        (["--temperature", "0"], "temperature"),
        (["--top-k", "33"], "top_k"),
        (["--slice", "32"], "slice"),
        (["--n", "0"], "argument --n"),
    ],
)
def test_sample_cli_refuses_bad_options(trained_prior: Path, tmp_path: Path, capsys, option, message):
    assert cli(["sample", "--checkpoint", str(trained_prior), "--out", str(tmp_path), "--quiet", *option]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_prior_reports_every_metric(
    trained_prior: Path, codes: Path, demo_shards: Path, tmp_path: Path, capsys
):
    out = tmp_path / "eval"
    assert (
        cli(
            [
                "evaluate-prior",
                "--checkpoint",
                str(trained_prior),
                "--out",
                str(out),
                "--n",
                "6",
                "--max-pairs",
                "40",
                "--temperature",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(capsys.readouterr().out)
    assert 0 < summary["test_bits_per_code"] < 5.0 and 0 < summary["test_accuracy"] <= 1
    for key in ("nearest_train_ssim_generated", "nearest_train_ssim_real", "ms_ssim_generated", "ms_ssim_real"):
        assert 0 < summary[key] <= 1, key
    assert summary["frechet_reconstructed_vs_test"] >= 0 and summary["frechet_generated_vs_test"] >= 0
    generated = np.load(out / "samples" / "samples.npz")["codes"]  # the brains the metrics were computed on
    expected = code_histogram_comparison(load_codes(codes, "test").codes, generated, 32)
    assert summary["code_total_variation"] == pytest.approx(expected["total_variation"])
    assert summary["codes_used_generated"] == expected["codes_used_b"] > 1
    for name in ("nearest_train.png", "code_histograms.png", "structure_histograms.png", "samples/generated.png"):
        assert (out / name).is_file(), name
    # structure: the real test slices' numbers are structure_metrics' own; the generated ones are those of the
    # decoded samples; shares are shares and the histograms count every slice
    real = structure_metrics(read_split(demo_shards, "test")[0])
    assert summary["single_component_share_real"] == pytest.approx(real["single_component"].mean())
    assert summary["symmetry_mean_real"] == pytest.approx(real["symmetry"].mean())
    assert summary["symmetry_median_real"] == pytest.approx(np.median(real["symmetry"]))
    assert summary["touches_edge_share_real"] == pytest.approx(real["touches_edge"].mean())
    assert summary["single_component_share_real"] > 0.5 and summary["symmetry_mean_real"] > 0.5  # real heads
    vqvae, _ = load_vqvae(Path(read_codes_meta(codes)["vqvae_checkpoint"]))
    with torch.no_grad():
        decoded = vqvae.decode(torch.from_numpy(generated.astype(np.int64)))
    mine = structure_metrics(decoded.numpy())
    assert summary["single_component_share_generated"] == pytest.approx(mine["single_component"].mean())
    assert summary["symmetry_mean_generated"] == pytest.approx(mine["symmetry"].mean(), abs=1e-6)
    histogram = summary["symmetry_histogram"]
    assert sum(histogram["generated"]) == 6 and sum(histogram["real"]) == len(real["symmetry"]) == 32
    assert len(histogram["edges"]) == len(histogram["real"]) + 1

    texts = Image.open(out / "nearest_train.png").text["Description"].splitlines()
    assert texts[0].startswith("Memorisation check") and {"generated", "nearest training slice"} <= set(texts)
    assert "code's mean decoded intensity" in Image.open(out / "samples" / "generated.png").text["Description"]

    table = summary_table(summary).splitlines()
    assert table[0].startswith(f"test: {summary['test_bits_per_code']:.3f} bits per code")
    rows = {line[:26].strip(): line[26:].split() for line in table[2:]}
    assert rows["nearest-train SSIM, mean"][:2] == [
        f"{summary['nearest_train_ssim_generated']:.3f}",
        f"{summary['nearest_train_ssim_real']:.3f}",
    ]
    assert rows["pairwise MS-SSIM"][:2] == [f"{summary['ms_ssim_generated']:.3f}", f"{summary['ms_ssim_real']:.3f}"]
    assert rows["Frechet to test"][:2] == [
        f"{summary['frechet_generated_vs_test']:.3g}",
        f"{summary['frechet_train_vs_test']:.3g}",
    ]


def test_evaluate_prior_table_option_prints_the_table(monkeypatch, tmp_path, capsys):
    summary = {
        "split": "validate",
        "generated": 8,
        "validate_bits_per_code": 4.25,
        "validate_accuracy": 0.5,
        "nearest_train_ssim_generated": 0.61,
        "nearest_train_ssim_real": 0.7,
        "nearest_train_ssim_generated_max": 0.8,
        "nearest_train_ssim_real_max": 0.9,
        "ms_ssim_generated": 0.2,
        "ms_ssim_real": 0.25,
        "frechet_generated_vs_validate": 12.5,
        "frechet_train_vs_validate": 3.25,
        "frechet_reconstructed_vs_validate": 1.5,
        "single_component_share_generated": 0.5,
        "single_component_share_real": 1.0,
        "symmetry_mean_generated": 0.8,
        "symmetry_mean_real": 0.97,
    }
    monkeypatch.setattr(evaluate_prior, "evaluate_generation", lambda *args, **kwargs: summary)
    assert (
        cli(
            [
                "evaluate-prior",
                "--checkpoint",
                str(tmp_path),
                "--out",
                str(tmp_path / "e"),
                "--split",
                "validate",
                "--table",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        "validate: 4.250 bits per code, top-1 accuracy 0.500; 8 generated brains",
        "                             generated  real validate",
        "nearest-train SSIM, mean         0.610          0.700  memorisation: generated far above real = copies",
        "nearest-train SSIM, max          0.800          0.900",
        "pairwise MS-SSIM                 0.200          0.250  diversity: lower = more varied",
        "Frechet to validate               12.5           3.25  real = train slices; floor (reconstructions) 1.5",
        "one connected brain, share       0.500          1.000  structure: foreground in one piece",
        "left-right symmetry, mean        0.800          0.970  mirror IoU of the brain mask",
    ]
