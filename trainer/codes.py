"""Code grids: the frozen VQ-VAE's encoding of every slice, computed once for stage 2.

    python -m trainer encode --checkpoint runs/oasis32 --out runs/oasis32/codes

writes, per split, `{split}.npz` holding
    codes     uint16 (N, H, W)   code indices
    slices    int16 (N,)         slice position (the N in case_XXX_slice_N), the prior's condition
    subjects  str (N,)           subject ids
    keys      str (N,)           sample keys, as in the shards
and `codes.json` with the grid, K, the VQ-VAE checkpoint and its weights' sha256. Arrays only, so
loading needs no pickle (`allow_pickle=False`). Each split file is written to a temporary name and
renamed when complete; rerunning skips the splits already encoded by the same checkpoint, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data_tools.sample_format import read_manifest
from trainer.data import SliceShards, epoch_batches
from trainer.evaluate import load_vqvae, resolve_checkpoint

CODES_META = "codes.json"
SPLITS = ("train", "validate", "test")


@dataclass
class CodeSet:
    codes: np.ndarray       # uint16 (N, H, W)
    slices: np.ndarray      # int16 (N,)
    subjects: np.ndarray    # str (N,)
    keys: np.ndarray        # str (N,)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_codes_meta(directory: str | Path) -> dict:
    path = Path(directory) / CODES_META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no codes here; run `python -m trainer encode` first")
    return json.loads(path.read_text())


def load_codes(directory: str | Path, split: str) -> CodeSet:
    path = Path(directory) / f"{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split '{split}' was not encoded")
    with np.load(path, allow_pickle=False) as data:
        return CodeSet(data["codes"], data["slices"], data["subjects"], data["keys"])


def encode_splits(checkpoint: Path, out: Path, shards: str | None = None, batch_size: int = 64,
                  device: str = "cpu", force: bool = False, show_progress: bool = True) -> dict:
    """Encode every split of the shards with the VQ-VAE checkpoint; returns the codes.json contents."""
    checkpoint = resolve_checkpoint(checkpoint)
    model, cfg = load_vqvae(checkpoint, device)
    shards = shards or cfg.data.shards
    splits = [s for s in SPLITS if s in read_manifest(shards)["splits"]]
    sha = file_sha256(checkpoint / "model.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / CODES_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("checkpoint_sha256") != sha or force:   # another model's codes: start over
        meta = {"splits": {}}
    side = 256 // cfg.model.downsample
    meta.update({"vqvae_checkpoint": str(checkpoint), "checkpoint_sha256": sha, "shards": str(shards),
                 "num_codes": cfg.quantizer.num_codes, "code_dim": cfg.model.code_dim,
                 "height": side, "width": side})

    for split in splits:
        target = out / f"{split}.npz"
        if split in meta["splits"] and target.is_file():
            continue
        dataset = SliceShards(shards, split)
        codes, slices, subjects, keys = [], [], [], []
        with tqdm(total=len(dataset), desc=f"encode {split}", unit="img", disable=not show_progress) as bar:
            for batch in epoch_batches(dataset, batch_size):
                codes.append(model.encode(batch.images.to(device)).to("cpu", torch.int32).numpy().astype(np.uint16))
                slices += [m["slice"] for m in batch.meta]
                subjects += [m["subject"] for m in batch.meta]
                keys += batch.keys
                bar.update(len(batch.keys))
        tmp = out / f".{split}.tmp.npz"
        np.savez(tmp, codes=np.concatenate(codes), slices=np.asarray(slices, np.int16),
                 subjects=np.asarray(subjects, str), keys=np.asarray(keys, str))
        os.replace(tmp, target)
        meta["splits"][split] = len(keys)
        if split == "train":
            meta["num_slices"] = int(max(slices)) + 1
        meta_path.write_text(json.dumps(meta, indent=1))
    return meta
