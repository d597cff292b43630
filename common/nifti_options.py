"""The slicing options that `data_tools shard --nifti` and `export reconstruct --nifti` share (defined once, so a
volume is cut the same way on the way in and on the way back), and the plan they give for one volume."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from common.cli_types import number
from common.errors import DataError
from common.nifti_volume import (
    AXES,
    MIN_FOREGROUND,
    PERCENTILES,
    Volume,
    Window,
    foreground,
    intensity_window,
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
