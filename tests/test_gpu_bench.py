"""bench/gpu.py, the GPU measurement script, runs every part end to end on the CPU (--tiny), so that a lent
GPU only has to run it; and the shard transfer in parts reassembles the shard folder exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_layout

sys.path.insert(0, str(REPO / "bench"))
from gpu_transfer import pack, unpack


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four training slices (one batch of 2 per rank for two ranks), two validation, two test, two per shard:
    the fewest that still give every split several shards and every part a full batch."""
    from data_tools.shard import shard_dataset

    root = tmp_path_factory.mktemp("tiny")
    src = make_layout(root / "src", {"train": ["001", "002"], "validate": ["003"], "test": ["004"]}, slices=2)
    shard_dataset(src, root / "shards", samples_per_shard=2, workers=1, show_progress=False)
    return root / "shards"


def gpu_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=900,
        check=False,
    )


def test_every_part_runs_tiny_on_the_cpu_into_one_json(tiny_shards: Path, tmp_path: Path):
    result = gpu_bench(
        "--device",
        "cpu",
        "--tiny",
        "--shards",
        str(tiny_shards),
        "--json",
        str(tmp_path / "r.json"),
        "--work",
        str(tmp_path / "work"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["kernel"]["mismatches"] <= 8 and r["kernel"]["fused"]["median_wall_s"] > 0  # of 8,192 rows
    assert r["train_speed"]["fp32_eager_images_per_s"] > 0 and r["train_speed"]["bf16_compile_images_per_s"] > 0
    assert r["train_speed"]["bf16_compile_gpu_busy_share"] is None  # measured on a GPU only
    assert r["stage1"]["steps"] == 2 and 0 < r["stage1"]["test_ssim"] <= 1 and r["stage1"]["train_wall_s"] > 0
    assert r["prior_speed"]["fp32_eager_images_per_s"] > 0 and r["prior_speed"]["grid"] == [4, 4]
    assert r["sampling"]["brains"] == 16 and r["sampling"]["images_shape"] == [16, 32, 32]
    assert r["sampling"]["codes_in_range"]
    two = r["two_process"]
    assert [rank["world_size"] for rank in two["ranks"]] == [2, 2] and two["identical_weights"]


def test_bad_parts_or_missing_shards_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    import gpu  # in this process: two more interpreters importing torch would only cost time

    for args, message in (
        (["--parts", "kernel,warp"], "unknown part(s) ['warp']"),
        (["--parts", "stage1", "--shards", str(tmp_path)], "no manifest.json"),
    ):
        monkeypatch.setattr(sys, "argv", ["gpu.py", "--device", "cpu", *args])
        with pytest.raises(SystemExit) as exit_:
            gpu.main()
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_shards_travel_in_parts_and_reassemble(tiny_shards: Path, tmp_path: Path):
    total = sum(f.stat().st_size for f in tiny_shards.iterdir())
    parts = pack(tiny_shards, tmp_path / "parts", max_mib=total / 3 / 2**20)
    assert len(parts) >= 3 and (parts[-1] / "manifest.json").is_file()
    assert unpack(tmp_path / "parts", tmp_path / "there") == []
    assert sorted(f.name for f in (tmp_path / "there").iterdir()) == sorted(f.name for f in tiny_shards.iterdir())
    assert all((tmp_path / "there" / f.name).read_bytes() == f.read_bytes() for f in tiny_shards.iterdir())
