"""Shared fixtures: the embedded demo data, synthetic layouts for bad-input tests, real OASIS paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_SRC = REPO / "data_tools" / "demo_data" / "keras_png_slices_data"
OASIS_SRC = REPO.parent / "shared" / "oasis" / "keras_png_slices_data"


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
