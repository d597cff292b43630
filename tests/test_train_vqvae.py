"""Stage 1 training: resume exactness, multi-process codebooks, wandb offline, NaN stop, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import trainer.stage1.train as train_module
from conftest import DEMO_CONFIG, REPO, free_port, interrupt_when, tiny
from trainer.__main__ import main as cli
from trainer.run.checkpoint import checkpoint_health, list_checkpoints, load_training_state, load_weights
from trainer.run.config_file import ConfigError, load_config
from trainer.run.training_run import TrainingDiverged
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.train import train_vqvae
from wandb_log import history


def run_cli(overrides: list[str], *flags: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "trainer", "vqvae", "--config", str(DEMO_CONFIG), "--quiet", *flags]
    for item in overrides:
        args += ["--set", item]
    return subprocess.Popen(
        args,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


ADVERSARIAL = [  # a small discriminator that starts training at step 10
    "loss.adversarial.weight=0.5",
    "loss.adversarial.channels=8",
    "loss.adversarial.layers=2",
    "loss.adversarial.start_step=10",
]


@pytest.mark.parametrize("extra", [[], ADVERSARIAL], ids=["plain", "adversarial"])
def test_killed_and_resumed_run_ends_with_identical_weights(demo_shards: Path, tmp_path: Path, extra: list[str]):
    """SIGKILL a run after its step-20 checkpoint (mid-epoch: 8 steps per epoch), resume, compare (with the
    adversarial term: the discriminator and its optimizer too)."""
    steps = ["train.max_steps=40", "train.checkpoint_every=20", "train.eval_every=20", *extra]
    straight = run_cli(tiny(demo_shards, tmp_path / "straight", *steps))
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    killed = run_cli(tiny(demo_shards, tmp_path / "killed", *steps))
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_0000020"
    while not checkpoint.is_dir() and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert list_checkpoints(tmp_path / "killed" / "checkpoints")[-1].name == "step_0000020"
    resumed = run_cli(tiny(demo_shards, tmp_path / "killed", *steps), "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and "resuming from" in output, output

    a = load_weights(tmp_path / "straight" / "checkpoints" / "step_0000040")
    b = load_weights(tmp_path / "killed" / "checkpoints" / "step_0000040")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    state_a = load_training_state(tmp_path / "straight" / "checkpoints" / "step_0000040")
    state_b = load_training_state(tmp_path / "killed" / "checkpoints" / "step_0000040")
    assert state_a["scheduler"] == state_b["scheduler"]
    if extra:
        a = load_weights(tmp_path / "straight" / "checkpoints" / "step_0000040", "discriminator")
        b = load_weights(tmp_path / "killed" / "checkpoints" / "step_0000040", "discriminator")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        torch.testing.assert_close(state_a["companions"], state_b["companions"], rtol=0, atol=0)
        assert state_a["companions"]["discriminator"]["state"]  # it trained
    rows = [json.loads(r) for r in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, 41, 2))  # no duplicated rows after resuming


def test_ctrl_c_mid_run_is_one_line_exit_130_and_keeps_whole_checkpoints(demo_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    args = ["-m", "trainer", "vqvae", "--config", str(DEMO_CONFIG), "--quiet"]
    for item in tiny(demo_shards, out, "train.max_steps=1000", "train.eval_every=1000"):
        args += ["--set", item]
    status, err = interrupt_when(args, lambda stderr: (out / "checkpoints" / "step_0000006").is_dir())
    assert status == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "error: `python -m trainer vqvae` interrupted (Ctrl-C); the checkpoints written so far are kept; "
        "--resume continues from the newest"
    )
    assert not [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("step_")]
    for checkpoint in list_checkpoints(out / "checkpoints"):
        assert load_weights(checkpoint) and load_training_state(checkpoint)["step"] == int(checkpoint.name[5:])


def test_two_processes_keep_identical_codebooks_and_learn(demo_shards: Path, tmp_path: Path):
    config = tmp_path / "cfg.yaml"
    config.write_text(DEMO_CONFIG.read_text())
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "tests" / "scripts" / "train_ranks.py"),
        "vqvae",
        str(config),
        str(tmp_path),
        *tiny(
            demo_shards,
            tmp_path / "run",
            "train.max_steps=30",
            "train.eval_every=30",
            "train.checkpoint_every=30",
            "quantizer.dead_code_threshold=100.0",
        ),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert int(rank0.pop("num_processes")) == int(rank1.pop("num_processes")) == 2
    for key in rank0:  # weights (DDP) and every quantizer buffer (our all-reduce) agree exactly
        assert torch.equal(rank0[key], rank1[key]), key
    assert rank0["quantizer.restart_count"] > 0  # restarts happened, and identically on both ranks
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(2, 31, 2))  # written by the main process only
    assert rows[-1]["recon_loss"] < 0.9 * rows[0]["recon_loss"]  # the shared model learns (30 tiny steps)


def test_wandb_offline_run_holds_the_logged_metrics(demo_shards: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train_vqvae(
        load_config(DEMO_CONFIG, tiny(demo_shards, out, "wandb.enabled=true"), cls=VQVAEConfig), show_progress=False
    )
    rows = history(out)
    logged = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["_step"] for r in rows] == [r["step"] for r in logged]
    for row, expected in zip(rows, logged):
        for key in ("loss", "recon_loss", "commitment_loss", "perplexity", "lr"):
            assert row[key] == pytest.approx(expected[key])
    with_eval = [r for r in rows if "val_ssim" in r]
    assert [r["_step"] for r in with_eval] == [6, 12]
    assert all(0 < r["val_codes_used"] <= 32 for r in with_eval)
    assert all(r["reconstructions/_type"] == "image-file" and 0 < r["val_psnr"] for r in with_eval)


def test_nan_loss_stops_naming_the_last_checkpoint_a_finite_loss_followed(
    demo_shards: Path, tmp_path: Path, monkeypatch, capsys
):
    real_loss, calls = train_module.reconstruction_loss, []

    def poisoned(recon, images, ssim_weight=0.0):
        calls.append(1)
        loss = real_loss(recon, images, ssim_weight)
        return loss * float("nan") if len(calls) > 8 else loss

    monkeypatch.setattr(train_module, "reconstruction_loss", poisoned)
    out = tmp_path / "run"
    cfg = load_config(
        DEMO_CONFIG, tiny(demo_shards, out, "train.checkpoint_every=4", "train.eval_every=100"), cls=VQVAEConfig
    )
    # step 9's loss is the first computed from step 8's weights: NaN, so step_0000008 is not good; step 5's
    # loss (from step 4's weights) was finite, in the window reported at step 6
    with pytest.raises(TrainingDiverged, match=r"loss became nan by step 10.*Last good checkpoint: \S*step_0000004"):
        train_vqvae(cfg, show_progress=False)
    saved = list_checkpoints(out / "checkpoints")
    assert [p.name for p in saved] == ["step_0000004", "step_0000008"]
    assert [checkpoint_health(p)["good"] for p in saved] == [True, False]

    monkeypatch.setattr(train_module, "reconstruction_loss", real_loss)  # e.g. a lower lr: resume
    overrides = ["train.checkpoint_every=4", "train.eval_every=100", "train.max_steps=8"]
    train_vqvae(load_config(DEMO_CONFIG, tiny(demo_shards, out, *overrides), cls=VQVAEConfig), resume=True)
    said = capsys.readouterr().out
    assert "cannot resume from" in said and "step_0000008" in said and "resuming from" in said
    assert "step_0000004 (step 4)" in said


@pytest.mark.parametrize("keep", [1, 2])
def test_pruning_keeps_the_last_good_checkpoint(demo_shards: Path, tmp_path: Path, monkeypatch, keep: int):
    """With keep=1 the newest checkpoint may be the one that diverged: the good one before it stays."""
    real_loss, calls = train_module.reconstruction_loss, []

    def poisoned(recon, images, ssim_weight=0.0):
        calls.append(1)
        loss = real_loss(recon, images, ssim_weight)
        return loss * float("nan") if len(calls) > 6 else loss

    monkeypatch.setattr(train_module, "reconstruction_loss", poisoned)
    out = tmp_path / "run"
    overrides = ["train.checkpoint_every=2", "train.eval_every=100", f"train.keep_checkpoints={keep}"]
    cfg = load_config(DEMO_CONFIG, tiny(demo_shards, out, *overrides), cls=VQVAEConfig)
    with pytest.raises(TrainingDiverged, match=r"by step 8.*Last good checkpoint: \S*step_0000004"):
        train_vqvae(cfg, show_progress=False)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_0000004", "step_0000006"]


def test_a_finished_run_keeps_keep_checkpoints_all_good(demo_shards: Path, tmp_path: Path):
    """The final checkpoint is good by its evaluation (run at the last step, on the weights it saves)."""
    out = tmp_path / "run"
    cfg = load_config(DEMO_CONFIG, tiny(demo_shards, out, "train.keep_checkpoints=1"), cls=VQVAEConfig)
    train_vqvae(cfg, show_progress=False)
    (final,) = list_checkpoints(out / "checkpoints")
    assert final.name == "step_0000012" and checkpoint_health(final)["good"] is True


def test_evaluation_and_checkpoints_run_on_their_own_schedule(demo_shards: Path, tmp_path: Path):
    """eval_every / checkpoint_every need not be multiples of log_every."""
    out = tmp_path / "run"
    cfg = load_config(
        DEMO_CONFIG,
        tiny(
            demo_shards,
            out,
            "train.max_steps=9",
            "train.log_every=4",
            "train.eval_every=3",
            "train.checkpoint_every=5",
            "train.keep_checkpoints=5",
        ),
        cls=VQVAEConfig,
    )
    train_vqvae(cfg, show_progress=False)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_ssim" in r] == [3, 6, 9]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_0000005", "step_0000009"]


def test_refuses_to_overwrite_a_run_without_resume(demo_shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["vqvae", "--config", str(DEMO_CONFIG), "--quiet"] + [
        a for o in tiny(demo_shards, out, "train.max_steps=2") for a in ("--set", o)
    ]
    assert cli(args) == 0
    assert cli(args) == 2 and "pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_step=5", "train.max_step: unknown key; did you mean 'max_steps'?"),
        ("quantizer.update=kmeans", "quantizer.update: must be 'ema' or 'loss'"),
        ("train.lr=fast", "train.lr: expected float, got 'fast'"),
        ("model.downsample=3", "model.downsample: must be 2, 4, 8 or 16"),
        ("train.mixed_precision=fp8", "train.mixed_precision: must be 'no', 'bf16' or 'fp16'"),
    ],
)
def test_wrong_config_key_or_value_is_a_clear_error(override: str, message: str, capsys):
    with pytest.raises(ConfigError, match=str(DEMO_CONFIG).replace(".", r"\.")) as err:
        load_config(DEMO_CONFIG, [override], cls=VQVAEConfig)
    assert message in str(err.value)
    assert cli(["vqvae", "--config", str(DEMO_CONFIG), "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_every_shipped_config_loads():
    for path in sorted((REPO / "configs").glob("vqvae_*.yaml")):
        load_config(path, cls=VQVAEConfig)


def test_tiny_model_overfits_a_few_slices(tmp_path: Path):
    """Capacity and gradients work end to end: two demo slices reach SSIM > 0.9 in 150 steps
    (about 35 s on one core of the 2-core CPU)."""
    from conftest import make_layout
    from data_tools.shard import shard_dataset
    from trainer.stage1.evaluate import evaluate

    src = make_layout(tmp_path / "src", {"train": ["001"], "validate": ["002"], "test": ["003"]}, slices=2)
    shard_dataset(src, tmp_path / "shards", show_progress=False)
    overrides = [
        f"data.shards={tmp_path / 'shards'}",
        f"out_dir={tmp_path / 'run'}",
        "data.batch_size=2",
        "model.downsample=2",
        "model.res_blocks=0",
        "model.code_dim=16",
        "quantizer.compile=false",
        "train.max_steps=150",
        "train.lr=4e-3",
        "train.warmup_steps=10",
        "train.eval_every=150",
        "train.checkpoint_every=150",
        "wandb.enabled=false",
    ]
    train_vqvae(load_config(DEMO_CONFIG, overrides, cls=VQVAEConfig), show_progress=False)
    summary = evaluate(tmp_path / "run", "train", tmp_path / "eval", show_progress=False)
    assert summary["images"] == 2 and summary["ssim_min"] > 0.9, summary
