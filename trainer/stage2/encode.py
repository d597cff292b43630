"""`python -m trainer encode`: code grids, the frozen VQ-VAE's encoding of every slice, computed once
for stage 2.

    python -m trainer encode --checkpoint runs/oasis32 --out runs/oasis32/codes

writes, per split, `{split}.npz` and `codes.json` (the format: trainer/stage2/codes.py). Each split file is
written to a temporary name and renamed when complete; rerunning skips the splits already encoded
by the same checkpoint from the same shards, so an interrupted run resumes where it stopped. What the codes were
made from is recorded (the weights' sha256, the sha256 of the shards' manifest.json, absolute paths) and compared
at every rerun: codes of another checkpoint or of other shards are deleted and every split encoded again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.cli import add_batch_size_argument, add_checkpoint_argument, add_device_argument, add_quiet_argument
from common.digest import file_sha256
from common.json_file import read_json_object
from common.output_dir import check_output_dir, write_atomically, write_file_atomically
from common.shard_format import IMAGE_SIZE, MANIFEST, read_manifest
from trainer.run.checkpoint import resolve_checkpoint
from trainer.stage1.data import SliceShards, epoch_batches
from trainer.stage1.load import load_vqvae
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.codes import CODES_META, SPLITS

INTERRUPT_KEEPS = "the splits encoded so far are kept, none partly; run it again to continue"
DESCRIPTION = (
    "Run the VQ-VAE's encoder once over every split of the shards and write {split}.npz (codes, slice "
    "positions, subjects, keys) and codes.json. Splits already encoded by the same checkpoint from the same "
    "shards (the sha256 of their manifest.json) are skipped, so an interrupted run resumes; codes of another "
    "checkpoint or of other shards are deleted and every split is encoded again."
)


def encode_splits(
    checkpoint: Path,
    out: Path,
    shards: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    force: bool = False,
    show_progress: bool = True,
) -> dict:
    """Encode every split of the shards with the VQ-VAE checkpoint; returns the codes.json contents."""
    out, checkpoint = Path(out), resolve_checkpoint(Path(checkpoint)).resolve()
    # The folder is filled split by split (so that a run resumes): never an input, nor a folder of other files.
    check_output_dir(out, marker=CODES_META, force=True, inputs=[checkpoint])
    model, cfg = load_vqvae(checkpoint, device)
    shards = shards or cfg.data.shards
    check_output_dir(out, marker=CODES_META, force=True, inputs=[checkpoint, Path(shards)])
    splits = [s for s in SPLITS if s in read_manifest(shards)["splits"]]
    source = {
        "checkpoint_sha256": file_sha256(checkpoint / "model.safetensors"),
        "shards_manifest_sha256": file_sha256(Path(shards) / MANIFEST),
    }
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / CODES_META
    meta = resumable_meta(out, meta_path, source, force)
    side = IMAGE_SIZE // cfg.model.downsample
    meta.update(
        {
            # absolute, so that a prior trained on these codes finds its VQ-VAE from any folder
            "vqvae_checkpoint": str(checkpoint),
            **source,
            "shards": str(Path(shards).resolve()),
            "num_codes": cfg.quantizer.num_codes,
            "code_dim": cfg.model.code_dim,
            "height": side,
            "width": side,
        }
    )

    for split in splits:
        target = out / f"{split}.npz"
        if split in meta["splits"] and target.is_file():
            continue
        codes, slices, subjects, keys = encode_split(model, shards, split, batch_size, device, show_progress)
        arrays = {
            "codes": np.concatenate(codes),
            "slices": np.asarray(slices, np.int16),
            "subjects": np.asarray(subjects, str),
            "keys": np.asarray(keys, str),
        }
        write_atomically(target, lambda f, arrays=arrays: np.savez(f, **arrays))
        meta["splits"][split] = len(keys)
        if split == "train":
            meta["num_slices"] = int(max(slices)) + 1
        write_file_atomically(meta_path, json.dumps(meta, indent=1).encode())
    return meta


def resumable_meta(out: Path, meta_path: Path, source: dict, force: bool) -> dict:
    """codes.json as an earlier run from the same `source` (checkpoint and shards, by sha256) left it, so that its
    splits are skipped; otherwise an empty one, and the split files beside it are deleted so that codes of
    another model or of other shards are never reused (a codes.json that predates the shards' sha256 is redone)."""
    # --force starts over without reading codes.json, so a damaged one can be replaced
    meta = read_json_object(meta_path) if meta_path.is_file() and not force else {}
    if any(meta.get(key) != value for key, value in source.items()) or not isinstance(meta.get("splits"), dict):
        meta = {"splits": {}}  # another source's codes (or --force): start over, and never reuse their files
        for split in SPLITS:
            (out / f"{split}.npz").unlink(missing_ok=True)
    return meta


def encode_split(
    model: VQVAE, shards: str, split: str, batch_size: int, device: str, show_progress: bool
) -> tuple[list[np.ndarray], list[int], list[str], list[str]]:
    """One split's code grids (uint16 batches, compact for stage 2), slice positions, subjects and keys."""
    dataset = SliceShards(shards, split)
    codes, slices, subjects, keys = [], [], [], []
    with tqdm(total=len(dataset), desc=f"encode {split}", unit="img", disable=not show_progress) as bar:
        for batch in epoch_batches(dataset, batch_size):
            codes.append(model.encode(batch.images.to(device)).to("cpu", torch.int32).numpy().astype(np.uint16))
            slices += [m["slice"] for m in batch.meta]
            subjects += [m["subject"] for m in batch.meta]
            keys += batch.keys
            bar.update(len(batch.keys))
    return codes, slices, subjects, keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, "VQ-VAE")
    parser.add_argument("--out", type=Path, required=True, help="folder for the code files")
    parser.add_argument("--shards", help="shard folder (default: the one in the checkpoint's config)")
    add_batch_size_argument(parser, 64)
    add_device_argument(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="re-encode every split without reading the codes.json there (a damaged one is replaced); without it, "
        "splits of the same checkpoint and shards are kept and codes of others are re-encoded",
    )
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> None:
    meta = encode_splits(
        args.checkpoint,
        args.out,
        shards=args.shards,
        batch_size=args.batch_size,
        device=args.device,
        force=args.force,
        show_progress=not args.quiet,
    )
    print(
        f"codes {meta['height']}x{meta['width']} (K = {meta['num_codes']}) in {args.out}: "
        + ", ".join(f"{split} {count}" for split, count in meta["splits"].items())
    )
