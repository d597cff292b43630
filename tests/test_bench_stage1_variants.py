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
from bench_stage1_variants import VARIANTS, WITHOUT, parse_variant, speed_probes, steps_in, train_seconds


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
        assert any(o.startswith("loss.adversarial.weight=") for o in overrides), name


def test_an_adversarial_variant_is_probed_with_its_discriminator_and_without_it_before_it_starts():
    config = REPO / "configs" / "vqvae_oasis_32_cpu.yaml"
    variants = {
        "ssim": VARIANTS["ssim"],
        "adv": ["loss.adversarial.weight=0.1", "loss.adversarial.start_step=300"],
        "adv_at_once": ["loss.adversarial.weight=0.1"],
    }
    probes, starts = speed_probes(config, variants)
    assert starts == {"ssim": 0, "adv": 300, "adv_at_once": 0}
    assert probes == {
        "ssim": VARIANTS["ssim"],
        "adv": [*variants["adv"], "loss.adversarial.start_step=0"],  # the discriminator's cost from the first step
        "adv" + WITHOUT: [*variants["adv"], "loss.adversarial.weight=0"],
        "adv_at_once": [*variants["adv_at_once"], "loss.adversarial.start_step=0"],
    }


def test_steps_in_the_budget_price_the_steps_before_the_term_at_the_speed_without_it():
    assert steps_in(100, 0, before=3.0, after=3.0) == 300  # no term: the budget times the speed
    assert steps_in(100, 0, before=3.0, after=1.0) == 100  # a term from the first step: every step at its cost
    assert steps_in(100, 150, before=3.0, after=1.0) == 150 + 50  # 50 s at 3 steps/s, then 50 s at 1 step/s
    assert steps_in(100, 600, before=3.0, after=1.0) == 300  # the term would start after the budget ends
    assert steps_in(0.01, 0, before=3.0, after=1.0) == 1


def test_parse_variant():
    assert parse_variant("a=loss.ssim_weight=0.2,quantizer.cosine=true") == (
        "a",
        ["loss.ssim_weight=0.2", "quantizer.cosine=true"],
    )
    for bad in ("no_settings", "=loss.ssim_weight=1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected NAME="):
            parse_variant(bad)
