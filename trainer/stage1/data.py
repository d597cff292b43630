"""Batches of slices from the WebDataset shards, split exactly across ranks and DataLoader workers.

Epoch semantics (what `accelerate launch` on N processes gets):
- Every epoch, a permutation seeded by (seed, epoch) assigns each sample of the split to exactly one
  rank (sample g goes to rank perm[g] % world_size). So across all ranks every sample is seen
  exactly once per epoch, ranks differ by at most one sample, and a rank's share changes from epoch
  to epoch. Each rank reads every shard but decodes only its own samples: reading the tar bytes is
  cheap next to decoding PNGs and training, and it keeps the split exact for any number of ranks
  and any shard count.
- Within a rank, shards are dealt to DataLoader workers (shard order shuffled per epoch), and each
  worker shuffles its samples through a buffer. Workers hand small uint8 chunks to the main process,
  which cuts them into batches of exactly `batch_size`.
- `epoch_batches` gives one pass (the last batch may be short): evaluation.
  `train_batches` streams epoch after epoch with full batches that run across epoch boundaries, so
  every rank takes the same number of steps and no sample is dropped: step-based training.
Everything is a function of (seed, epoch, rank, world_size, num_workers), so a run can be replayed.

In memory (`SlicesInMemory`): a split small enough (OASIS train: 8,000 x 256 x 256 bytes = 0.5 GB)
is decoded once into one uint8 tensor, on the training device or in host memory, and every epoch
indexes it in exactly the order the stream would yield (`SliceShards.epoch_order`): the same
batches, without decoding a PNG per sample per epoch.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from common.errors import DataError
from common.shard_format import IMAGE_SIZE, MANIFEST, decode_gray_png, decode_metadata, iter_shard, read_manifest
from trainer.stage1.config import DataConfig

CHUNK = 16  # samples per worker -> main-process hand-over
MEMORY_CHUNK = 256  # samples gathered from memory at a time (then cut into batches)


@dataclass
class Batch:
    images: torch.Tensor  # (B, 1, H, W) float32 in [0, 1]
    keys: list[str]  # "case_001_slice_7"
    meta: list[dict]  # subject, slice, split, source, ...
    masks: torch.Tensor | None = None  # (B, 1, H, W) uint8 label values, when requested

    def __len__(self) -> int:
        return len(self.keys)


class SliceShards(IterableDataset):
    """One split's samples for one rank. Yields chunks {"pixels": uint8 (n,1,H,W), "keys", "meta"[, "masks"]}."""

    def __init__(
        self,
        shard_dir: str | Path,
        split: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 256,
        with_masks: bool = False,
    ):
        manifest = read_manifest(shard_dir)
        if manifest["image_size"] != IMAGE_SIZE:
            raise DataError(
                f"{Path(shard_dir) / MANIFEST}: image_size {manifest['image_size']}; the models take "
                f"{IMAGE_SIZE}x{IMAGE_SIZE} slices (shard again with --size {IMAGE_SIZE})"
            )
        if split not in manifest["splits"]:
            raise DataError(f"{shard_dir}: no split '{split}' (has {sorted(manifest['splits'])})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        entry = manifest["splits"][split]
        if with_masks and not entry["has_masks"]:
            raise DataError(f"{shard_dir}: split '{split}' has no masks")
        self.shard_dir, self.split = Path(shard_dir), split
        self.shards = [s["name"] for s in entry["shards"]]
        self.digests = [s["sha256"] for s in entry["shards"]]
        self.verified: set[int] = set()  # shards whose sha256 this process has checked: once is enough
        self.offsets = np.cumsum([0] + [s["num_samples"] for s in entry["shards"]])
        self.num_samples = int(self.offsets[-1])
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.with_masks = with_masks
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating (DataLoader workers copy the dataset when an epoch starts)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank sees per epoch."""
        return len(range(self.rank, self.num_samples, self.world_size))

    def owners(self) -> np.ndarray:
        """owners[g] = the rank that reads global sample g in this epoch."""
        if not self.shuffle:
            return np.arange(self.num_samples) % self.world_size
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples) % self.world_size

    def _worker_plan(self, worker_id: int, num_workers: int) -> tuple[list[int], random.Random]:
        """The shards a DataLoader worker reads this epoch, in order, and its shuffle-buffer RNG."""
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order[worker_id::num_workers], random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker_id}")

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shards, rng = self._worker_plan(worker_id, num_workers)
        owners = self.owners()

        def mine() -> Iterator[dict]:
            for shard in shards:
                for position, raw in enumerate(self.read_shard(shard)):
                    if owners[self.offsets[shard] + position] == self.rank:
                        yield raw

        samples = buffer_shuffle(mine(), self.shuffle_buffer, rng) if self.shuffle else mine()
        chunk: list[dict] = []
        for raw in samples:
            chunk.append(raw)
            if len(chunk) == CHUNK:
                yield self.decode(chunk)
                chunk = []
        if chunk:
            yield self.decode(chunk)

    def epoch_order(self, num_workers: int = 0) -> np.ndarray:
        """Global indices of this rank's samples in the order `epoch_batches`/`train_batches` yield
        them this epoch with `num_workers` DataLoader workers: the same plan and shuffle as __iter__,
        applied to indices, and the DataLoader's hand-over (one chunk per worker in turn, skipping
        workers that are done)."""
        workers = max(1, num_workers)
        owners = self.owners()
        per_worker = []
        for worker_id in range(workers):
            shards, rng = self._worker_plan(worker_id, workers)
            mine = (
                g
                for shard in shards
                for g in range(self.offsets[shard], self.offsets[shard + 1])
                if owners[g] == self.rank
            )
            order = list(buffer_shuffle(mine, self.shuffle_buffer, rng) if self.shuffle else mine)
            per_worker.append([order[i : i + CHUNK] for i in range(0, len(order), CHUNK)])
        turns = itertools.zip_longest(*per_worker)
        return np.array([g for turn in turns for chunk in turn if chunk for g in chunk], dtype=np.int64)

    def read_shard(self, index: int) -> Iterator[dict]:
        """The raw samples of shard `index`; the first read in this process checks its sha256 against
        the manifest (a hash of bytes already read: cheap next to decoding them), so a corrupt or crafted
        shard is named rather than met as an obscure decoding error."""
        path = self.shard_dir / self.shards[index]
        for raw in iter_shard(path, None if index in self.verified else self.digests[index]):
            self.verified.add(index)
            yield {**raw, "shard": str(path)}

    def decode(self, raws: list[dict]) -> dict:
        """Decode only the entries we write (PNG via PIL, metadata via json): never pickle."""

        def name(raw: dict, entry: str) -> str:
            return f"{raw.get('shard', self.shard_dir)}:{raw['__key__']}.{entry}"

        pixels = np.stack([decode_gray_png(r["png"], name(r, "png")) for r in raws])[:, None]
        out = {
            "pixels": torch.from_numpy(pixels),
            "keys": [r["__key__"] for r in raws],
            "meta": [decode_metadata(r["json"]) for r in raws],
        }
        if self.with_masks:
            out["masks"] = torch.from_numpy(
                np.stack([decode_gray_png(r["seg.png"], name(r, "seg.png")) for r in raws])[:, None]
            )
        return out


def buffer_shuffle(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Classic streaming shuffle: keep `size` items, emit a random one as each new one arrives."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


class _WholeShards(Dataset):
    """Map-style: item i is shard i decoded, so a DataLoader decodes shards in parallel, in order."""

    def __init__(self, dataset: SliceShards):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.shards)

    def __getitem__(self, i: int) -> dict:
        return self.dataset.decode(list(self.dataset.read_shard(i)))


class SlicesInMemory:
    """A split's shards decoded once into a uint8 tensor (N, 1, H, W) on `device`; iterating an epoch
    gathers this rank's samples in the order of `SliceShards.epoch_order`, so batches are identical
    to the stream's (same seed, epoch, rank, world size and num_workers)."""

    def __init__(self, dataset: SliceShards, device: torch.device | str = "cpu", num_workers: int = 0):
        loader = DataLoader(_WholeShards(dataset), batch_size=None, num_workers=num_workers)
        parts = list(loader)
        if sum(len(p["keys"]) for p in parts) != dataset.num_samples:
            raise DataError(
                f"{dataset.shard_dir}: split '{dataset.split}' holds another number of samples "
                f"than its manifest says ({dataset.num_samples})"
            )
        self.dataset = dataset
        self.keys = [k for p in parts for k in p["keys"]]
        self.meta = [m for p in parts for m in p["meta"]]
        self.pixels = _place(torch.cat([p["pixels"] for p in parts]), device)
        self.masks = _place(torch.cat([p["masks"] for p in parts]), device) if dataset.with_masks else None

    def __len__(self) -> int:
        return len(self.dataset)

    def chunks(self, epoch: int, num_workers: int) -> Iterator[dict]:
        self.dataset.set_epoch(epoch)
        order = self.dataset.epoch_order(num_workers)
        for start in range(0, len(order), MEMORY_CHUNK):
            part = order[start : start + MEMORY_CHUNK]
            index = torch.from_numpy(part).to(self.pixels.device)
            chunk = {
                "pixels": self.pixels[index],
                "keys": [self.keys[g] for g in part],
                "meta": [self.meta[g] for g in part],
            }
            if self.masks is not None:
                chunk["masks"] = self.masks[index]
            yield chunk


def _place(pixels: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """On the device; or in host memory, page-locked when a GPU will copy from it."""
    device = torch.device(device)
    if device.type == "cpu" and torch.cuda.is_available():
        return pixels.pin_memory()
    return pixels.to(device)


def split_bytes(dataset: SliceShards) -> int:
    """Bytes a split takes decoded (images, and masks when read)."""
    side = read_manifest(dataset.shard_dir)["image_size"]
    return dataset.num_samples * side * side * (2 if dataset.with_masks else 1)


def training_source(dataset: SliceShards, data: DataConfig, device: torch.device | str) -> SliceShards | SlicesInMemory:
    """What `train_batches` reads: the split decoded into memory (`data.in_memory`: always, or auto
    when it fits in `data.memory_budget_mb`), on the training device or the host (`data.in_memory_on`),
    else the shard stream."""
    fits = split_bytes(dataset) <= data.memory_budget_mb * 2**20
    if data.in_memory == "never" or (data.in_memory == "auto" and not fits):
        return dataset
    return SlicesInMemory(dataset, device if data.in_memory_on == "device" else "cpu", data.num_workers)


def _chunks(dataset: SliceShards | SlicesInMemory, epoch: int, num_workers: int) -> Iterator[dict]:
    if isinstance(dataset, SlicesInMemory):
        yield from dataset.chunks(epoch, num_workers)
        return
    dataset.set_epoch(epoch)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
    try:
        yield from loader
    except DataError as err:  # a worker's error arrives with its traceback in the message: keep the last line
        raise DataError(
            str(err).rstrip().splitlines()[-1].removeprefix(f"{DataError.__module__}.DataError: ")
        ) from None


def _rebatch(chunks: Iterator[dict], batch_size: int, keep_last: bool) -> Iterator[Batch]:
    pending: list[dict] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(chunk["keys"])
        while count >= batch_size:
            merged = _concat(pending)
            yield _to_batch(merged, slice(0, batch_size))
            rest = _slice_chunk(merged, slice(batch_size, None))
            pending, count = ([rest] if rest["keys"] else []), count - batch_size
    if count and keep_last:
        yield _to_batch(_concat(pending), slice(0, count))


def _concat(chunks: list[dict]) -> dict:
    if len(chunks) == 1:
        return chunks[0]
    out = {
        "pixels": torch.cat([c["pixels"] for c in chunks]),
        "keys": [k for c in chunks for k in c["keys"]],
        "meta": [m for c in chunks for m in c["meta"]],
    }
    if "masks" in chunks[0]:
        out["masks"] = torch.cat([c["masks"] for c in chunks])
    return out


def _slice_chunk(chunk: dict, part: slice) -> dict:
    return {k: v[part] for k, v in chunk.items()}


def _to_batch(chunk: dict, part: slice) -> Batch:
    chunk = _slice_chunk(chunk, part)
    return Batch(chunk["pixels"].float().div_(255.0), chunk["keys"], chunk["meta"], chunk.get("masks"))


def epoch_batches(
    dataset: SliceShards | SlicesInMemory, batch_size: int, *, epoch: int = 0, num_workers: int = 0
) -> Iterator[Batch]:
    """One pass over this rank's share of the split; the last batch may be short."""
    yield from _rebatch(_chunks(dataset, epoch, num_workers), batch_size, keep_last=True)


def train_batches(
    dataset: SliceShards | SlicesInMemory, batch_size: int, *, start_sample: int = 0, num_workers: int = 0
) -> Iterator[Batch]:
    """Endless stream of full batches; batches run across epoch boundaries.

    A rank sees exactly len(dataset) samples per epoch, so a position in the stream is one number:
    `start_sample` (= batches consumed x batch_size) resumes a run at exactly the batch it would
    have seen next. Epoch of a position: start_sample // len(dataset).
    """
    if batch_size > len(dataset):
        raise DataError(f"batch size {batch_size} exceeds the {len(dataset)} samples this rank sees per epoch")

    def stream() -> Iterator[dict]:
        epoch, skip = divmod(start_sample, len(dataset))
        while True:
            for chunk in _chunks(dataset, epoch, num_workers):
                if skip >= len(chunk["keys"]):
                    skip -= len(chunk["keys"])
                    continue
                yield _slice_chunk(chunk, slice(skip, None))
                skip = 0
            epoch += 1

    yield from _rebatch(stream(), batch_size, keep_last=False)


def read_split(shard_dir: str | Path, split: str, subjects: set[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """A split's slices as uint8 (N, 1, H, W) in shard order, with each one's subject; given `subjects`, only
    theirs (the others are never decoded)."""
    dataset = SliceShards(shard_dir, split)
    pixels, owners = [], []
    for index in range(len(dataset.shards)):
        raws = [
            raw
            for raw in dataset.read_shard(index)
            if subjects is None or decode_metadata(raw["json"])["subject"] in subjects
        ]
        if raws:
            chunk = dataset.decode(raws)
            pixels.append(chunk["pixels"])
            owners += [meta["subject"] for meta in chunk["meta"]]
    if not pixels:
        raise DataError(f"{shard_dir}: split '{split}' holds no slice of the subjects asked for")
    return torch.cat(pixels), owners
