"""A runtime-only install (`pip install .`, no torch, webdataset...) asked for the training side's help
gets one line naming what to install and exit 2, never a ModuleNotFoundError traceback. The install is
imitated by a sitecustomize that makes the training extra's packages unimportable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = """
import sys

class BlockTrainingExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "accelerate", "webdataset", "onnx", "torchmetrics", "wandb", "yaml"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, BlockTrainingExtra())
"""


def run_without_training_extra(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_blocker_really_blocks_torch(tmp_path):
    result = run_without_training_extra(tmp_path, "-c", "import torch")
    assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["trainer", "--help"],
        ["data_tools", "--help"],
        ["trainer", "vqvae", "--help"],
        ["data_tools", "shard", "--src", "x", "--out", "y"],
    ],
)
def test_training_commands_say_what_to_install(tmp_path, command):
    result = run_without_training_extra(tmp_path, "-m", *command)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install torch==2.13.0 -e '.[train]'" in lines[0]
    assert f"python -m {command[0]}" in lines[0]


def test_runtime_commands_still_work(tmp_path):
    result = run_without_training_extra(tmp_path, "-m", "export", "sample", "--help")
    assert result.returncode == 0 and "--model-dir" in result.stdout
