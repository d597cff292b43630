"""argparse types for numeric options, shared by every command (torch-free: data_tools is the lowest layer).

A value outside its range fails at parse time, before any work, with exit status 2 and one line that
names the option: argparse prefixes an ArgumentTypeError's message with `argument --option:`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An int option in [low, high] (either end may be open)."""
    if low is not None and high is not None:
        requirement = f"an integer from {low} to {high}"
    else:
        requirement = (
            "an integer" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
        )

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
        return value

    return parse


def one_of(values: tuple[int, ...]) -> Callable[[str], int]:
    """An int option that takes only the listed values (e.g. the ONNX opsets the exporter supports)."""
    listed = ", ".join(map(str, values))

    def parse(text: str) -> int:
        value = integer()(text)
        if value not in values:
            raise argparse.ArgumentTypeError(f"must be one of {listed}, got {value}")
        return value

    return parse


def number(low: float | None = None, above: float | None = None) -> Callable[[str], float]:
    """A finite float option, >= low or > above; nan and inf are refused (they pass any comparison-free path)."""
    requirement = (
        "a finite number" + (f" >= {low:g}" if low is not None else "") + (f" > {above:g}" if above is not None else "")
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (low is not None and value < low) or (above is not None and value <= above):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


positive_int = integer(low=1)
non_negative_int = integer(low=0)
positive_float = number(above=0)
