"""The slices a command runs the models on, from any of its three inputs: PNG files (or folders of them), a split of
shards, or the slices of a NIfTI volume. Torch-free, so `export reconstruct`, `export anomaly` and `trainer anomaly`
read their inputs one way and refuse the same bad ones.

Each slice comes with its name and, when the input says it, its slice position (the N of `case_<subject>_slice_<N>`,
0 inferior to 31 superior on OASIS: the condition of a prior trained with `condition_on_slice`):
    PNG file   the file's name (`case_904_slice_7.nii.png`); the position from an OASIS-style name, else none
    shard      the sample key (`case_904_slice_7`); the position from its json's "slice", as `trainer encode` reads it
    NIfTI      `case_<file name>_slice_<index>` for every slice of the kept span; the position is the span binned as
               `data_tools shard --nifti` bins it (common/nifti_options.py, CutVolume.position), not the index
PNG inputs must be 8-bit grayscale PNGs of the models' size: anything else is refused with its name, never converted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.nifti_options import CutVolume, Slicing, cut_volume
from common.png_header import read_slice
from common.shard_format import decode_metadata, iter_shard, read_manifest

# A sample key with its slice position: data_tools/layout.py's OASIS names (subjects are digits there), and the keys
# of NIfTI-made shards (subjects of letters, digits and dashes).
SLICE_KEY = re.compile(r"^case_[A-Za-z0-9-]+_slice_(\d+)$", re.ASCII)


class InputSlice(NamedTuple):
    name: str  # the file's name, the shard sample's key or the volume slice's name
    pixels: np.ndarray  # (size, size) uint8
    position: int | None  # the slice position when the input gives it


def sample_key(name: str) -> str:
    """`case_904_slice_0.nii.png` or `case_904_slice_0.png` (or a key) -> `case_904_slice_0`: the sample key, which
    names a slice's outputs whichever input it came from (shard keys hold no dots: webdataset splits names at them)."""
    return name.removesuffix(".png").removesuffix(".nii")


def output_name(file_name: str) -> str:
    """`case_904_slice_0.nii.png` or `case_904_slice_0.png` -> `case_904_slice_0.png`: the sample key's PNG."""
    return sample_key(file_name) + ".png"


def name_position(name: str) -> int | None:
    """The slice position an OASIS-style name states (`case_904_slice_7.nii.png` -> 7), or None."""
    match = SLICE_KEY.match(sample_key(name))
    return int(match.group(1)) if match else None


def png_files(paths: list[Path]) -> list[Path]:
    """The PNG files named, and those directly inside the folders named, in order; names must be unique."""
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.png"))
            if not found:
                raise FileNotFoundError(f"{path}: no .png files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    names = [output_name(f.name) for f in files]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"two inputs would both be written as {repeated[0]}; their outputs would overwrite each other")
    return files


def shard_slices(shards: Path, split: str, size: int) -> tuple[Iterator[InputSlice], int]:
    """Every slice of a split, in shard order, and the split's sample count."""
    splits = read_manifest(shards)["splits"]
    if split not in splits:
        raise ValueError(f"{shards}: no split '{split}' (has {', '.join(sorted(splits))})")

    def slices() -> Iterator[InputSlice]:
        for shard in splits[split]["shards"]:
            for sample in iter_shard(shards / shard["name"]):
                key, where = sample["__key__"], f"{shards / shard['name']}:{sample['__key__']}"
                position = decode_metadata(sample["json"]).get("slice") if "json" in sample else None
                position = position if type(position) is int else None  # a crafted json's "7" or true is none
                yield InputSlice(key, read_slice(sample["png"], where, size), position)

    return slices(), splits[split]["num_samples"]


def gather(
    inputs: list[Path], shards: Path | None, nifti: Path | None, split: str, size: int, slicing: Slicing | None
) -> tuple[Iterator[InputSlice], int, str, CutVolume | None]:
    """The slices of one input (PNG files and folders, a split of `shards` or a `nifti` volume), their count, a
    phrase naming them, and the cut volume (None unless `nifti`)."""
    if bool(inputs) + (shards is not None) + (nifti is not None) != 1:
        raise ValueError("give one of: PNG files/folders, --shards or --nifti")
    if shards is not None:
        slices, total = shard_slices(Path(shards), split, size)
        return slices, total, f"the {split} split of {shards}", None
    if nifti is not None:
        cut = cut_volume(Path(nifti), slicing or Slicing())
        slices = (InputSlice(name, pixels, cut.position(name)) for name, pixels in cut.slices())
        return slices, len(cut.indices), f"{len(cut.indices)} slices of {Path(nifti).name}", cut
    files = png_files([Path(p) for p in inputs])
    slices = (InputSlice(f.name, read_slice(f, str(f), size), name_position(f.name)) for f in files)
    return slices, len(files), f"{len(files)} input slices", None
