"""bench/gpu.py, the GPU measurement script, runs every part end to end on the CPU (--tiny), so that a lent
GPU only has to run it; and the shard transfer in parts reassembles the shard folder exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from gpu_transfer import pack, unpack


def gpu_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=900, check=False)


def test_every_part_runs_tiny_on_the_cpu_into_one_json(demo_shards: Path, tmp_path: Path):
    result = gpu_bench("--device", "cpu", "--tiny", "--shards", str(demo_shards), "--json", str(tmp_path / "r.json"),
                       "--work", str(tmp_path / "work"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["kernel"]["mismatches"] <= 8 and r["kernel"]["fused"]["median_wall_s"] > 0  # of 8,192 rows
    assert r["train_speed"]["fp32_eager_images_per_s"] > 0 and r["train_speed"]["bf16_compile_images_per_s"] > 0
    assert r["train_speed"]["bf16_compile_gpu_busy_share"] is None  # measured on a GPU only
    assert r["stage1"]["steps"] == 4 and 0 < r["stage1"]["test_ssim"] <= 1 and r["stage1"]["train_wall_s"] > 0
    assert r["prior_speed"]["fp32_eager_images_per_s"] > 0 and r["prior_speed"]["grid"] == [8, 8]
    assert r["sampling"]["brains"] == 16 and r["sampling"]["images_shape"] == [16, 64, 64]
    assert r["sampling"]["codes_in_range"]
    two = r["two_process"]
    assert [rank["world_size"] for rank in two["ranks"]] == [2, 2] and two["identical_weights"]


def test_bad_parts_or_missing_shards_are_one_line_errors(tmp_path: Path):
    result = gpu_bench("--device", "cpu", "--parts", "kernel,warp")
    assert result.returncode == 2 and "unknown part(s) ['warp']" in result.stderr
    result = gpu_bench("--device", "cpu", "--parts", "stage1", "--shards", str(tmp_path))
    assert result.returncode == 2 and "no manifest.json" in result.stderr


def test_shards_travel_in_parts_and_reassemble(demo_shards: Path, tmp_path: Path):
    total = sum(f.stat().st_size for f in demo_shards.iterdir())
    parts = pack(demo_shards, tmp_path / "parts", max_mib=total / 3 / 2**20)
    assert len(parts) >= 3 and (parts[-1] / "manifest.json").is_file()
    assert unpack(tmp_path / "parts", tmp_path / "there") == []
    assert sorted(f.name for f in (tmp_path / "there").iterdir()) == sorted(f.name for f in demo_shards.iterdir())
    assert all((tmp_path / "there" / f.name).read_bytes() == f.read_bytes() for f in demo_shards.iterdir())
