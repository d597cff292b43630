"""The slicing options that `data_tools shard --nifti` and `export reconstruct --nifti` share (defined once, so a
volume is cut the same way on the way in and on the way back), the plan they give for one volume, and
`cut_volume`: a volume cut into model inputs with the way back into its space (CutVolume.write)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from common.cli_types import number
from common.errors import DataError
from common.nifti_volume import (
    AXES,
    MIN_FOREGROUND,
    PERCENTILES,
    POSITIONS,
    Volume,
    Window,
    foreground,
    intensity_window,
    normalised_slice,
    position_of,
    put_back,
    read_volume,
    slice_range,
)


@dataclass(frozen=True)
class Slicing:
    axis: str = "axial"
    slices: tuple[int, int] | None = None  # [start, stop) in canonical order; None: by foreground area
    min_foreground: float = MIN_FOREGROUND
    percentiles: tuple[float, float] = PERCENTILES

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Slicing:
        return cls(args.axis, args.slices, args.min_foreground, args.percentiles)

    def plan(self, volume: Volume) -> tuple[Window, int, int]:
        """The volume's intensity window and the [start, stop) of the slices to keep."""
        mask, threshold = foreground(volume)
        window = intensity_window(volume, mask, threshold, self.percentiles)
        axis = AXES[self.axis]
        if self.slices is None:
            return window, *slice_range(mask, axis, self.min_foreground)
        start, stop = self.slices
        if stop > volume.data.shape[axis]:
            raise DataError(
                f"{volume.path}: --slices {start}:{stop} runs past the {volume.data.shape[axis]} {self.axis} slices"
            )
        return window, start, stop


def slice_span(text: str) -> tuple[int, int]:
    """--slices START:STOP, 0 <= START < STOP."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:STOP (two integers)") from None
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"need 0 <= START < STOP, got {text}")
    return start, stop


def percentile_pair(text: str) -> tuple[float, float]:
    """--percentiles LOW,HIGH, 0 <= LOW < HIGH <= 100."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (two numbers)") from None
    if not (np.isfinite([low, high]).all() and 0 <= low < high <= 100):
        raise argparse.ArgumentTypeError(f"need 0 <= LOW < HIGH <= 100, got {text}")
    return low, high


def fraction(text: str) -> float:
    """--min-foreground: a number in [0, 1]."""
    value = number(low=0)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text}")
    return value


def add_slicing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--axis", choices=list(AXES), default="axial", help="slicing direction (default: %(default)s)")
    parser.add_argument(
        "--slices",
        type=slice_span,
        default=None,
        help="keep slices START:STOP (canonical RAS order: axial 0 is the most inferior) instead of choosing them "
        "by foreground area",
    )
    parser.add_argument(
        "--min-foreground",
        type=fraction,
        default=MIN_FOREGROUND,
        help="keep the span of slices whose foreground area is at least this fraction of the volume's largest "
        "(default: %(default)s: drops the mostly empty caps of the head)",
    )
    parser.add_argument(
        "--percentiles",
        type=percentile_pair,
        default=PERCENTILES,
        help="per-volume intensity window: these percentiles of the foreground voxels map to 0 and 1 "
        f"(default: {PERCENTILES[0]},{PERCENTILES[1]})",
    )


@dataclass
class CutVolume:
    """A volume cut into model inputs, and the way back: what `export reconstruct` (and a later `export anomaly`)
    needs to run 256x256 slices through a model and write the results into the input's space."""

    volume: Volume
    window: Window
    axis: int
    indices: dict[str, int]  # sample name -> canonical slice index

    @property
    def subject(self) -> str:
        name = self.volume.path.name
        stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else self.volume.path.stem
        return re.sub(r"[^A-Za-z0-9-]", "-", stem).strip("-") or "volume"

    def position(self, name: str, count: int = POSITIONS) -> int:
        """The slice position (0..count-1, inferior to superior) of a kept slice: the span binned as `shard
        --nifti` bins it, the condition a prior trained on such shards knows the slice's level by."""
        return position_of(self.indices[name], min(self.indices.values()), max(self.indices.values()) + 1, count)

    def slices(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, 256x256 uint8) of every kept slice, in order."""
        for name, index in self.indices.items():
            yield name, normalised_slice(self.volume, self.window, self.axis, index)[0]

    def write(self, results: dict[str, np.ndarray], path: Path, intensities: bool = True) -> Path:
        """Results ({name: 256x256 in [0, 1]}) as a volume in the input's space (shape, affine and header as read),
        mapped back to the input's units through the window unless `intensities` is False (maps, masks)."""
        slices = {self.indices[name]: image for name, image in results.items()}
        nib.save(put_back(self.volume, slices, self.axis, self.window if intensities else None), str(path))
        return path


def cut_volume(path: Path, slicing: Slicing) -> CutVolume:
    """Read and check a volume, and choose its slices: every slice of the kept span (no binning: the output
    volume is filled over the whole span)."""
    volume = read_volume(Path(path))
    window, start, stop = slicing.plan(volume)
    cut = CutVolume(volume, window, AXES[slicing.axis], {})
    cut.indices = {f"case_{cut.subject}_slice_{k}": k for k in range(start, stop)}
    return cut
