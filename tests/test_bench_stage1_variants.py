"""bench/bench_stage1_variants.py's bookkeeping: the training time it reports, the variants it parses, and that
every variant fixes the loss itself (so the table does not drift when the base config's loss changes)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from bench_stage1_variants import VARIANTS, parse_variant, train_seconds


def test_train_seconds_sums_every_window_in_images(tmp_path: Path):
    records = [
        {"step": 10, "images_per_s": 16.0},  # 10 steps of 16 images at 16 images/s: 10 s
        {"step": 10, "val_ssim": 0.5},  # an evaluation record: no time
        {"step": 30, "images_per_s": 32.0},  # 20 steps of 16 at 32/s: 10 s
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert train_seconds(tmp_path, images_per_step=16) == pytest.approx(20.0)
    assert train_seconds(tmp_path, images_per_step=8) == pytest.approx(10.0)


def test_every_variant_sets_the_loss():
    for name, overrides in VARIANTS.items():
        assert any(o.startswith("loss.ssim_weight=") for o in overrides), name


def test_parse_variant():
    assert parse_variant("a=loss.ssim_weight=0.2,quantizer.cosine=true") == (
        "a",
        ["loss.ssim_weight=0.2", "quantizer.cosine=true"],
    )
    for bad in ("no_settings", "=loss.ssim_weight=1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected NAME="):
            parse_variant(bad)
