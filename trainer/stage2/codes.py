"""The code files: the frozen VQ-VAE's encoding of every slice, written once by `python -m trainer encode`
(trainer/stage2/encode.py) and read by stage 2.

Per split, `{split}.npz` holds
    codes     uint16 (N, H, W)   code indices
    slices    int16 (N,)         slice position (the N in case_XXX_slice_N), the prior's condition
    subjects  str (N,)           subject ids
    keys      str (N,)           sample keys, as in the shards
and `codes.json` the grid, K, the VQ-VAE checkpoint and its weights' sha256. Arrays only, so
loading needs no pickle (`allow_pickle=False`).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.json_file import read_json_object
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


def load_codes(directory: str | Path, split: str) -> CodeSet:
    """A split's codes; only a split that codes.json lists (a file left by another checkpoint is not read)."""
    path = Path(directory) / f"{split}.npz"
    if split not in read_codes_meta(directory)["splits"]:
        raise FileNotFoundError(
            f"{path}: split '{split}' is not listed in {CODES_META}; it was not encoded "
            "by this VQ-VAE (run `python -m trainer encode`)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split '{split}' was not encoded")
    try:
        with np.load(path, allow_pickle=False) as data:
            return CodeSet(data["codes"], data["slices"], data["subjects"], data["keys"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable code file ({err}); encode again with --force") from None


def load_code_tensors(directory: str | Path, split: str, shape: PriorShape) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A split's code grids (N, H, W) int64 and, for a conditional prior, slice positions (N,) int64."""
    code_set = load_codes(directory, split)
    codes = torch.from_numpy(code_set.codes.astype("int64"))
    conditions = torch.from_numpy(code_set.slices.astype("int64")) if shape.num_conditions else None
    if conditions is not None and int(conditions.max()) >= shape.num_conditions:
        raise ValueError(
            f"{directory}/{split}.npz: slice {int(conditions.max())} is beyond the "
            f"{shape.num_conditions} positions seen in train"
        )
    return codes, conditions
