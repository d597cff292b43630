"""trainer.stage1.data: exact split across ranks and workers, shuffling, resumable streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, free_port
from trainer.stage1.data import SliceShards, epoch_batches, train_batches


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b.keys]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_and_workers_see_every_sample_once(demo_shards: Path, world_size: int, num_workers: int):
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world_size):
            ds = SliceShards(demo_shards, "train", rank=rank, world_size=world_size, shuffle=True, seed=3)
            keys = keys_of(epoch_batches(ds, 5, epoch=epoch, num_workers=num_workers))
            assert len(keys) == len(ds)
            per_rank.append(keys)
        everything = [k for keys in per_rank for k in keys]
        assert len(everything) == len(set(everything)) == 64
        assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


def test_shuffle_changes_order_per_epoch_and_is_reproducible(demo_shards: Path):
    ds = SliceShards(demo_shards, "train", shuffle=True, seed=3)
    first, again = keys_of(epoch_batches(ds, 8, epoch=0)), keys_of(epoch_batches(ds, 8, epoch=0))
    second = keys_of(epoch_batches(ds, 8, epoch=1))
    assert first == again and first != second and sorted(first) == sorted(second)
    plain = keys_of(epoch_batches(SliceShards(demo_shards, "train"), 8))
    assert plain == sorted(plain, key=lambda k: (int(k.split("_")[1]), int(k.split("_")[3])))


def test_rank_shares_change_between_epochs(demo_shards: Path):
    ds = SliceShards(demo_shards, "train", rank=0, world_size=2, shuffle=True, seed=3)
    assert set(keys_of(epoch_batches(ds, 8, epoch=0))) != set(keys_of(epoch_batches(ds, 8, epoch=1)))


def test_train_stream_crosses_epochs_with_full_batches_and_resumes(demo_shards: Path):
    ds = SliceShards(demo_shards, "train", shuffle=True, seed=5)
    stream = train_batches(ds, 24, num_workers=2)
    batches = [next(stream) for _ in range(6)]  # 144 samples = 2.25 epochs
    assert all(len(b) == 24 for b in batches)
    keys = keys_of(batches)
    assert sorted(keys[:64]) == sorted(keys[64:128])  # each epoch is the whole split
    assert keys[:64] == keys_of(epoch_batches(ds, 64, epoch=0, num_workers=2))
    resumed = train_batches(ds, 24, start_sample=72, num_workers=2)  # order depends on num_workers
    assert keys_of(next(resumed) for _ in range(3)) == keys[72:144]


def test_too_large_batch_is_a_clear_error(demo_shards: Path):
    with pytest.raises(Exception, match="exceeds the 32 samples"):
        next(train_batches(SliceShards(demo_shards, "test"), 40))


def test_two_processes_split_every_epoch_exactly(demo_shards: Path, tmp_path: Path):
    """torchrun + Accelerate on CPU (gloo): the ranks' epochs partition the split."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "tests" / "scripts" / "loader_ranks.py"),
        str(demo_shards),
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["len"] for r in ranks] == [32, 32]
    for epoch in (0, 1):
        a, b = ranks[0]["epochs"][epoch], ranks[1]["epochs"][epoch]
        assert len(a) == len(b) == 32 and not set(a) & set(b) and len(set(a) | set(b)) == 64
    for r in ranks:
        stream = [k for batch in r["train"] for k in batch]
        assert stream[:32] == r["epochs"][0] and len(stream) == 80 and all(len(b) == 8 for b in r["train"])
