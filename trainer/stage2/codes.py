"""The code files: the frozen VQ-VAE's encoding of every slice, written once by `python -m trainer encode`
(trainer/stage2/encode.py) and read by stage 2.

Per split, `{split}.npz` holds
    codes     uint16 (N, H, W)   code indices
    slices    int16 (N,)         slice position (the N in case_XXX_slice_N), the prior's condition
    subjects  str (N,)           subject ids
    keys      str (N,)           sample keys, as in the shards
and `codes.json` the grid, K, the VQ-VAE checkpoint and its weights' sha256, and the shards they were made from
with the sha256 of their manifest.json. Arrays only, so loading needs no pickle (`allow_pickle=False`).

Each pairing is checked here, where the codes are read, not trusted: a split file must hold what codes.json
says (its count, grid and codes below K), a prior must model the grid codes.json describes and be trained on
the VQ-VAE that made them (prior.json's vqvae_sha256).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.digest import file_sha256
from common.json_file import read_json_object
from common.shard_format import MANIFEST
from trainer.stage2.prior_contract import PriorShape

CODES_META = "codes.json"
SPLITS = ("train", "validate", "test")


@dataclass
class CodeSet:
    codes: np.ndarray  # uint16 (N, H, W)
    slices: np.ndarray  # int16 (N,)
    subjects: np.ndarray  # str (N,)
    keys: np.ndarray  # str (N,)


def read_codes_meta(directory: str | Path) -> dict:
    path = Path(directory) / CODES_META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no codes here; run `python -m trainer encode` first")
    meta = read_json_object(path)
    if not isinstance(meta.get("splits"), dict):
        raise ValueError(f"{path}: no 'splits' object; encode again with --force")
    return meta


def codes_grid(directory: str | Path, meta: dict) -> tuple[int, int, int]:
    """(K, height, width) of the codes codes.json (`meta`, read from `directory`) describes."""
    values = tuple(meta.get(key) for key in ("num_codes", "height", "width"))
    if not all(type(v) is int and v >= 1 for v in values):
        raise ValueError(f"{Path(directory) / CODES_META}: num_codes, height and width must be positive integers")
    return values


def check_codes_vqvae(directory: str | Path, vqvae_sha256: str | None, prior_info: Path) -> None:
    """The codes in `directory` must be those of the VQ-VAE a prior was trained on (`vqvae_sha256`, from its
    prior.json at `prior_info`): codes re-encoded by another VQ-VAE would be scored or trained on without a word."""
    path = Path(directory) / CODES_META
    made_by = read_codes_meta(directory).get("checkpoint_sha256")
    if vqvae_sha256 is not None and made_by != vqvae_sha256:
        raise ValueError(
            f"{path}: these codes were made by another VQ-VAE (weights' sha256 {str(made_by)[:12]}...) than the "
            f"one {prior_info} was trained on ({vqvae_sha256[:12]}...); re-encode with that VQ-VAE"
        )


def codes_shards(directory: str | Path, fallback: str) -> str:
    """The shards the codes in `directory` were made from, as codes.json records them, still the same (the sha256
    of their manifest.json): the real slices to compare with the codes are those. `fallback` for a codes.json
    written before the shards' sha256 was recorded."""
    path = Path(directory) / CODES_META
    meta = read_codes_meta(directory)
    if meta.get("shards_manifest_sha256") is None:
        return fallback
    manifest = Path(str(meta.get("shards"))) / MANIFEST
    if not manifest.is_file() or file_sha256(manifest) != meta["shards_manifest_sha256"]:
        raise ValueError(
            f"{path}: the codes were made from the shards of {manifest}, which is gone or has changed since; "
            "encode again"
        )
    return meta["shards"]


def load_codes(directory: str | Path, split: str) -> CodeSet:
    """A split's codes; only a split that codes.json lists (a file left by another checkpoint is not read)."""
    path = Path(directory) / f"{split}.npz"
    meta = read_codes_meta(directory)
    if split not in meta["splits"]:
        raise FileNotFoundError(
            f"{path}: split '{split}' is not listed in {CODES_META}; it was not encoded "
            "by this VQ-VAE (run `python -m trainer encode`)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split '{split}' was not encoded")
    try:
        with np.load(path, allow_pickle=False) as data:
            code_set = CodeSet(data["codes"], data["slices"], data["subjects"], data["keys"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable code file ({err}); encode again with --force") from None
    check_code_set(path, code_set, codes_grid(directory, meta), meta["splits"][split])
    return code_set


def check_code_set(path: Path, code_set: CodeSet, grid: tuple[int, int, int], count: object) -> None:
    """A split file must hold what codes.json says: `count` grids of its size (`grid`: K, height, width), every
    code below K, one slice, subject and key per grid. A mismatch would train on wrong grids or fail deep in
    the model."""
    codes, k, grid = code_set.codes, grid[0], grid[1:]
    redo = "encode again with --force"
    if codes.ndim != 3:
        raise ValueError(f"{path}: codes of shape {codes.shape}, expected (N, H, W) code grids; {redo}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{path}: codes of type {codes.dtype}, not integer codes; {redo}")
    if codes.shape[1:] != grid:
        raise ValueError(
            f"{path}: {codes.shape[1]}x{codes.shape[2]} grids, but {CODES_META} says {grid[0]}x{grid[1]}; {redo}"
        )
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= k):
        bad = int(codes.max()) if int(codes.max()) >= k else int(codes.min())
        raise ValueError(f"{path}: code {bad} is beyond the K = {k} codes of {CODES_META}; {redo}")
    slices = code_set.slices
    if slices.ndim != 1 or not np.issubdtype(slices.dtype, np.integer):
        raise ValueError(f"{path}: slices of type {slices.dtype}, not integer slice positions; {redo}")
    if slices.size and int(slices.min()) < 0:
        raise ValueError(f"{path}: slice {int(slices.min())} is not a slice position (>= 0); {redo}")
    lengths = {len(codes), len(code_set.slices), len(code_set.subjects), len(code_set.keys)}
    if lengths != {count}:
        raise ValueError(
            f"{path}: {len(codes)} grids, but {CODES_META} says {count} (or the slices, subjects and keys "
            f"are not one per grid); {redo}"
        )


def load_code_tensors(directory: str | Path, split: str, shape: PriorShape) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A split's code grids (N, H, W) int64 and, for a conditional prior, slice positions (N,) int64; the codes
    must be of the grid and K the prior models (`shape`)."""
    k, height, width = codes_grid(directory, read_codes_meta(directory))
    if (k, height, width) != (shape.num_codes, shape.height, shape.width):
        raise ValueError(
            f"{Path(directory) / CODES_META}: {height}x{width} grids of {k} codes, "
            f"but the prior models {shape.height}x{shape.width} grids of {shape.num_codes} codes"
        )
    code_set = load_codes(directory, split)
    codes = torch.from_numpy(code_set.codes.astype("int64"))
    conditions = torch.from_numpy(code_set.slices.astype("int64")) if shape.num_conditions else None
    if conditions is not None and int(conditions.max()) >= shape.num_conditions:
        raise ValueError(
            f"{directory}/{split}.npz: slice {int(conditions.max())} is beyond the "
            f"{shape.num_conditions} positions seen in train"
        )
    return codes, conditions
