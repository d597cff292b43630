"""The real OASIS slices in ../shared/oasis: counts per split, subject separation, verify."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.shard_format import read_manifest
from conftest import OASIS_SRC
from data_tools.shard import shard_dataset
from data_tools.verify import verify_shards
from trainer.stage1.data import SliceShards, epoch_batches

pytestmark = pytest.mark.skipif(not OASIS_SRC.is_dir(), reason=f"real OASIS data not found at {OASIS_SRC}")
SUBJECTS_PER_SPLIT = {"train": 12, "validate": 3, "test": 3}  # a subset keeps CI fast; all 32 slices each


@pytest.fixture(scope="module")
def oasis_subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Symlinks to whole subjects from each split, so per-subject structure is real."""
    root = tmp_path_factory.mktemp("oasis") / "keras_png_slices_data"
    splits = json.loads((OASIS_SRC.parent / "splits.json").read_text())
    chosen = {}
    for split, count in SUBJECTS_PER_SPLIT.items():
        folder = root / f"keras_png_slices_{split}"
        folder.mkdir(parents=True)
        chosen[split] = sorted(splits[split])[:count]
        for subject in chosen[split]:
            for image in (OASIS_SRC / f"keras_png_slices_{split}").glob(f"case_{subject}_slice_*.nii.png"):
                os.symlink(image, folder / image.name)
    return root, chosen


def test_oasis_split_sizes_are_as_documented():
    counts = {s: len(list((OASIS_SRC / f"keras_png_slices_{s}").glob("*.png"))) for s in ("train", "validate", "test")}
    assert counts == {"train": 8000, "validate": 544, "test": 544}


def test_oasis_subset_shards_with_counts_and_no_leakage(oasis_subset, tmp_path: Path):
    src, chosen = oasis_subset
    out = tmp_path / "shards"
    manifest = shard_dataset(src, out, samples_per_shard=64, show_progress=False)
    for split, subjects in chosen.items():
        entry = manifest["splits"][split]
        assert entry["num_samples"] == 32 * len(subjects)
        assert entry["subjects"] == subjects
        assert entry["resized"] == 0 and 0.05 < entry["pixel_stats"]["mean"] < 0.3
    subject_sets = [set(e["subjects"]) for e in manifest["splits"].values()]
    train, validate, test = subject_sets
    assert not (train & validate or train & test or validate & test)
    assert verify_shards(out, show_progress=False) == []
    batch = next(epoch_batches(SliceShards(out, "test"), 32))
    assert batch.images.shape == (32, 1, 256, 256) and {m["split"] for m in batch.meta} == {"test"}
    assert read_manifest(out)["image_size"] == 256
