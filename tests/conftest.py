"""Shared fixtures and helpers: the embedded demo data, synthetic layouts for bad-input tests, real OASIS
paths, the tiny training config and free ports for multi-process tests."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_SRC = REPO / "data_tools" / "demo_data" / "keras_png_slices_data"
OASIS_SRC = REPO.parent / "shared" / "oasis" / "keras_png_slices_data"
DEMO_CONFIG = REPO / "configs" / "vqvae_demo_cpu.yaml"


def tiny(shards: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that shrink the demo config to seconds on a CPU."""
    return [
        f"data.shards={shards}",
        f"out_dir={out}",
        "data.batch_size=8",
        "model.channels=16",
        "model.res_channels=8",
        "model.code_dim=8",
        "quantizer.num_codes=32",
        "quantizer.compile=false",
        "train.max_steps=12",
        "train.warmup_steps=2",
        "train.log_every=2",
        "train.eval_every=6",
        "train.eval_batches=1",
        "train.checkpoint_every=6",
        "wandb.enabled=false",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_layout(root: Path, subjects: dict[str, list[str]], slices: int = 3) -> Path:
    """A small keras_png_slices_data tree made of demo images: {split: [subject ids]}."""
    demo = sorted((DEMO_SRC / "keras_png_slices_train").glob("*.png"))
    for split, ids in subjects.items():
        folder = root / f"keras_png_slices_{split}"
        folder.mkdir(parents=True, exist_ok=True)
        for n, subject in enumerate(ids):
            for i in range(slices):
                shutil.copy(demo[(n * slices + i) % len(demo)], folder / f"case_{subject}_slice_{i}.nii.png")
    return root


@pytest.fixture
def small_layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "src", {"train": ["001", "002"], "validate": ["003"], "test": ["004"]})


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo data sharded small (several shards per split), shared by the read-only tests."""
    from data_tools.shard import shard_dataset

    out = tmp_path_factory.mktemp("demo") / "shards"
    shard_dataset(DEMO_SRC, out, samples_per_shard=12, workers=2, show_progress=False)
    return out
