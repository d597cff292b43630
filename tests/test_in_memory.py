"""The in-memory data path: the same batches as the shard stream, every sample once per epoch, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import REPO
from trainer.run.config_file import ConfigError, load_config
from trainer.stage1.config import DataConfig, VQVAEConfig
from trainer.stage1.data import SliceShards, SlicesInMemory, epoch_batches, train_batches, training_source


def batches_of(stream) -> list[tuple[list[str], torch.Tensor]]:
    return [(b.keys, b.images) for b in stream]


@pytest.mark.parametrize("world_size, num_workers", [(1, 0), (1, 2), (2, 2), (3, 0)])
def test_memory_gives_the_streams_batches(demo_shards: Path, world_size: int, num_workers: int):
    for rank in range(world_size):
        ds = SliceShards(demo_shards, "train", rank=rank, world_size=world_size, shuffle=True, seed=3, shuffle_buffer=8)
        memory = SlicesInMemory(ds)
        for epoch in (0, 1):
            streamed = batches_of(epoch_batches(ds, 5, epoch=epoch, num_workers=num_workers))
            in_memory = batches_of(epoch_batches(memory, 5, epoch=epoch, num_workers=num_workers))
            assert [k for k, _ in streamed] == [k for k, _ in in_memory]
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(streamed, in_memory))


def test_memory_epochs_cover_the_split_once_across_ranks(demo_shards: Path):
    for epoch in (0, 1):
        seen = []
        for rank in range(3):
            memory = SlicesInMemory(SliceShards(demo_shards, "train", rank=rank, world_size=3, shuffle=True, seed=1))
            seen += [k for b in epoch_batches(memory, 7, epoch=epoch) for k in b.keys]
        assert len(seen) == len(set(seen)) == 64


def test_memory_train_stream_resumes_exactly_and_matches_the_shard_stream(demo_shards: Path):
    ds = SliceShards(demo_shards, "train", shuffle=True, seed=5)
    memory = SlicesInMemory(ds, num_workers=2)
    straight = train_batches(memory, 24, num_workers=2)
    keys = [k for _ in range(6) for k in next(straight).keys]  # 144 samples = 2.25 epochs
    streamed = train_batches(ds, 24, num_workers=2)
    assert keys == [k for _ in range(6) for k in next(streamed).keys]
    resumed = train_batches(memory, 24, start_sample=72, num_workers=2)
    assert [k for _ in range(3) for k in next(resumed).keys] == keys[72:144]


def test_training_source_follows_the_config(demo_shards: Path):
    ds = SliceShards(demo_shards, "train")  # 64 slices of 256 x 256 = 4 MiB
    assert isinstance(training_source(ds, DataConfig(), "cpu"), SlicesInMemory)
    assert training_source(ds, DataConfig(memory_budget_mb=3), "cpu") is ds
    assert isinstance(training_source(ds, DataConfig(memory_budget_mb=0, in_memory="always"), "cpu"), SlicesInMemory)
    assert training_source(ds, DataConfig(in_memory="never"), "cpu") is ds
    on_host = training_source(ds, DataConfig(in_memory_on="host"), "cpu")
    assert on_host.pixels.dtype == torch.uint8 and on_host.pixels.shape == (64, 1, 256, 256)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.in_memory=true", "data.in_memory: expected str"),
        ("data.in_memory=sometimes", "data.in_memory: must be auto, always or never"),
        ("data.memory_budget_mb=-1", "data.memory_budget_mb: must be >= 0"),
        ("data.in_memory_on=gpu", "data.in_memory_on: must be device or host"),
    ],
)
def test_bad_in_memory_options_are_clear_errors(override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs" / "vqvae_demo_cpu.yaml", [override], cls=VQVAEConfig)
