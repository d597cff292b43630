"""What a training run prints: its own lines, one line from wandb naming where the offline run is, and
how many processes run on which device (with a warning when a launcher started fewer than asked)."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import DEMO_CONFIG, REPO, tiny
from trainer.run.launcher import process_report, requested_processes


def test_training_prints_one_wandb_line_and_its_processes(demo_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    overrides = [a for o in tiny(demo_shards, out, "train.max_steps=4", "wandb.enabled=true") for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_API_KEY")}
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "vqvae", "--config", str(DEMO_CONFIG), "--quiet", *overrides],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    wandb_lines = [line for line in lines if line.startswith("wandb:")]
    assert len(wandb_lines) == 1, lines
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert str(run_dir) in wandb_lines[0]
    assert lines.count("training on 1 process, device cpu") == 1


def test_requested_processes_read_from_the_accelerate_launcher():
    launcher = ["python", "accelerate", "launch", "--cpu", "--num_processes", "4", "-m", "trainer"]
    accelerate_env = {"ACCELERATE_USE_CPU": "True"}
    assert requested_processes(launcher, accelerate_env) == 4
    assert requested_processes(["accelerate", "launch", "--num_processes=3", "x.py"], accelerate_env) == 3
    assert requested_processes(launcher, {}) is None  # not under accelerate
    assert requested_processes(["bash", "launch.sh", "demo"], accelerate_env) is None
    assert requested_processes(["accelerate", "launch", "--num_processes", "many"], accelerate_env) is None
    assert requested_processes(["accelerate", "launch", "--num_processes"], accelerate_env) is None


def test_process_report_warns_only_when_fewer_started():
    assert process_report(1, "cpu", None) == ["training on 1 process, device cpu"]
    assert process_report(2, "cuda:0", 2) == ["training on 2 processes, device cuda:0"]
    first, warning = process_report(1, "cpu", 4)
    assert first == "training on 1 process, device cpu"
    assert warning.startswith("warning: --num_processes 4 was asked for but 1 process started")
    assert "NUM_PROCESSES=4 bash launch.sh" in warning
