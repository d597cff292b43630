"""What `trainer anomaly` (torch) and `export anomaly` (onnxruntime) share around their models: the options, the inputs
and their slice positions, the run in batches, and the files (torch-free; the maps are common/anomaly_maps.py's).

    OUT/
        maps.npz        exactly these arrays: names (N,) str (input file names, shard keys or the volume's slice
                        names), scan, recon (the VQ-VAE's reconstruction, no prior: a baseline), healed (the mean of
                        the healings), anomaly (N, 256, 256) float32, nll (N, h, w) float32 (nats),
                        resample_mask (N, h, w) bool, score (N,) float32
        scores.csv      name, slice position, score, codes resampled: one line per slice
        png/            KEY_scan.png, KEY_healed.png (8-bit gray), KEY_map.png, KEY_overlay.png (the map in colour,
                        alone and over the scan, on common/figures/anomaly.py's fixed scale), KEY the sample key
        anomaly.png     the first FIGURE_COUNT slices, rows scan / healed / map / overlay
        summary.json    the options, the threshold, the counts and the time
        anomaly.nii.gz  for a NIfTI input (--nifti): the maps in the volume's space (CutVolume.write), and
        healed.nii.gz   the healed slices, mapped back to its intensities
The maps of every slice are held in memory until written (about 1 MiB a slice).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.anomaly_maps import (
    DEFAULT_HEALINGS,
    DEFAULT_QUANTILE,
    QUANTILES,
    AnomalyModels,
    HealingOptions,
    slice_maps,
    threshold_of,
)
from common.cli import add_batch_size_argument, add_draw_arguments, add_force_argument, add_quiet_argument
from common.cli_types import integer, non_negative_int
from common.errors import DataError
from common.figures.anomaly import anomaly_grid, map_colours, overlay, save_rgb
from common.limits import MAX_BATCH, MAX_HEALINGS
from common.nifti_options import CutVolume, Slicing, add_slicing_arguments
from common.output_dir import atomic_output_dir, check_output_dir
from common.sample_files import save_image
from common.shard_format import IMAGE_SIZE, MANIFEST
from common.slice_inputs import InputSlice, gather, sample_key

MAPS_FILE = "maps.npz"  # the marker of an anomaly folder; each command records its kind, and --force keeps to its own
ARRAYS = ("names", "scan", "recon", "healed", "anomaly", "nll", "resample_mask", "score")
FIGURE_COUNT = 8
DESCRIPTION = (
    "Anomaly maps of brain slices (PNG files or folders, a split of shards, or a NIfTI volume): score each code of a "
    "slice by the prior, resample those less likely than the healthy validation codes' --quantile, conditioned on the "
    "codes kept, decode and average the healings, and map |scan - healed| where codes were resampled. Writes "
    "maps.npz, scores.csv, png/ (scan, healed, map, overlay per slice), anomaly.png and summary.json "
    "(and for a volume anomaly.nii.gz, healed.nii.gz in its space)."
)


@dataclass(frozen=True)
class AnomalyRequest:
    """What a user asked of either command (its options)."""

    out: Path
    inputs: tuple[Path, ...]
    shards: Path | None
    split: str
    nifti: Path | None
    slicing: Slicing
    slice_index: int | None
    healings: int
    quantile: float
    seed: int
    temperature: float
    top_k: int
    batch_size: int
    show_progress: bool
    force: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AnomalyRequest:
        return cls(
            Path(args.out),
            tuple(Path(p) for p in args.images),
            args.shards,
            args.split,
            args.nifti,
            Slicing.from_args(args),
            args.slice,
            args.healings,
            args.quantile,
            args.seed,
            args.temperature,
            args.top_k,
            args.batch_size,
            not args.quiet,
            args.force,
        )

    def sources(self, *models: Path) -> list[Path]:
        """Everything read (`models`: the model files' folders): the output may be none of them, nor hold or lie
        inside one."""
        return [*map(Path, models), *self.inputs, *[Path(p) for p in (self.shards, self.nifti) if p is not None]]

    def check(self, model: Path, kind: str) -> None:
        """Refuse, before any model is loaded, an output folder that may not be (re)written and a prior pass of more
        rows than MAX_BATCH (each row holds a key/value cache or a PixelCNN band: 4,096 are GiBs)."""
        rows = self.batch_size * (1 + self.healings)
        if rows > MAX_BATCH:
            raise ValueError(
                f"--batch-size {self.batch_size} x (1 + --healings {self.healings}) is {rows} rows per prior pass, "
                f"more than {MAX_BATCH}; map fewer slices per pass"
            )
        check_output_dir(self.out, marker=MAPS_FILE, force=self.force, inputs=self.sources(model), kind=kind)


def quantile_choice(text: str) -> float:
    """--quantile: one of the QUANTILES stored with the model."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value not in QUANTILES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, QUANTILES))}, got {text}")
    return value


def add_anomaly_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both anomaly commands take (each adds its model's: --checkpoint or --model-dir)."""
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        default=[],
        help="PNG files or folders of them (8-bit gray, 256x256), or one shards folder (with manifest.json; --split)",
    )
    parser.add_argument("--shards", type=Path, default=None, help="instead: a folder written by `data_tools shard`")
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "validate", "test"],
        help="split of --shards (default: %(default)s)",
    )
    parser.add_argument("--nifti", type=Path, default=None, metavar="VOLUME", help="instead: a .nii/.nii.gz volume")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--slice",
        type=non_negative_int,
        default=None,
        help="slice position (0..31 on OASIS) of the inputs whose name (case_<subject>_slice_<N>) or shard metadata "
        "gives none; needed only by a prior conditioned on the position",
    )
    parser.add_argument(
        "--healings",
        type=integer(1, MAX_HEALINGS),
        default=DEFAULT_HEALINGS,
        help=f"healings averaged per slice, 1 to {MAX_HEALINGS}; each one more row of every prior step "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--quantile",
        type=quantile_choice,
        default=DEFAULT_QUANTILE,
        help=f"resample the codes whose NLL is above this quantile of the healthy validation codes' NLLs, one of "
        f"{', '.join(map(str, QUANTILES))} (default: %(default)s: a healthy code is resampled 1 time in 100)",
    )
    add_draw_arguments(parser, "maps")
    add_slicing_arguments(parser.add_argument_group("NIfTI volumes (--nifti): slicing, as `data_tools shard --nifti`"))
    add_batch_size_argument(parser, 4, "slices per prior pass")
    add_quiet_argument(parser)
    add_force_argument(parser)


def conditions_of(slices: list[InputSlice], num_conditions: int, slice_index: int | None) -> np.ndarray | None:
    """The prior's condition of each slice: its position from its name or metadata, else --slice; None for an
    unconditional prior. A slice with no known position, or one the prior never saw, is an error naming it."""
    if not num_conditions:
        if slice_index is not None:
            raise ValueError("--slice: this prior was trained without slice conditioning; do not pass a slice")
        return None
    conditions = []
    for item in slices:
        position = item.position if item.position is not None else slice_index
        if position is None:
            raise DataError(
                f"{item.name}: no slice position (the prior is conditioned on it): name the file "
                "case_<subject>_slice_<N>.png or pass --slice N"
            )
        if not 0 <= position < num_conditions:
            raise DataError(f"{item.name}: slice position {position} is not one of the prior's 0..{num_conditions - 1}")
        conditions.append(position)
    return np.asarray(conditions, np.int64)


def map_slices(
    models: AnomalyModels,
    slices: list[InputSlice],
    conditions: np.ndarray | None,
    options: HealingOptions,
    batch_size: int,
    show_progress: bool,
) -> dict[str, np.ndarray]:
    """maps.npz's arrays (and the healed codes) of every slice, `batch_size` slices per prior pass."""
    parts = []
    batches = range(0, len(slices), batch_size)
    with tqdm(total=models.height * len(batches), desc="anomaly", unit="row", disable=not show_progress) as bar:
        for start in batches:
            numbers = list(range(start, min(start + batch_size, len(slices))))  # their healings' randomness
            pixels = np.stack([slices[n].pixels for n in numbers])
            condition = None if conditions is None else conditions[numbers]
            parts.append(slice_maps(models, pixels, condition, numbers, options, bar))
    maps = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return {"names": np.asarray([item.name for item in slices], str), **maps}


def write_pngs(out: Path, maps: dict[str, np.ndarray]) -> None:
    """png/KEY_scan.png, _healed.png, _map.png and _overlay.png of every slice."""
    (out / "png").mkdir()
    for name, scan, healed, anomaly in zip(maps["names"], maps["scan"], maps["healed"], maps["anomaly"]):
        key = sample_key(str(name))
        save_image(scan, out / "png" / f"{key}_scan.png")
        save_image(healed, out / "png" / f"{key}_healed.png")
        save_rgb(map_colours(anomaly), out / "png" / f"{key}_map.png")
        save_rgb(overlay(scan, anomaly), out / "png" / f"{key}_overlay.png")


def write_outputs(out: Path, maps: dict[str, np.ndarray], positions: list[int | None], title: str) -> Path:
    """maps.npz, scores.csv, png/ and the figure into `out`; returns the figure's path."""
    np.savez(out / MAPS_FILE, **{key: maps[key] for key in ARRAYS})
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "slice_position", "score", "codes_resampled"])
        for name, position, score, mask in zip(maps["names"], positions, maps["score"], maps["resample_mask"]):
            writer.writerow([name, "" if position is None else position, f"{score:.6g}", int(mask.sum())])
    write_pngs(out, maps)
    shown = slice(0, FIGURE_COUNT)
    return anomaly_grid(
        maps["scan"][shown],
        maps["healed"][shown],
        maps["anomaly"][shown],
        [str(name) for name in maps["names"][shown]],
        maps["score"][shown],
        out / "anomaly.png",
        title,
    )


def write_volumes(out: Path, cut: CutVolume, maps: dict[str, np.ndarray]) -> None:
    """anomaly.nii.gz (the maps) and healed.nii.gz (the healed slices, in the scan's intensities) in the volume's
    space: CutVolume.write puts each slice back where it was cut from."""
    names = [str(name) for name in maps["names"]]
    cut.write(dict(zip(names, maps["anomaly"])), out / "anomaly.nii.gz", intensities=False)
    cut.write(dict(zip(names, np.clip(maps["healed"], 0, 1))), out / "healed.nii.gz")


@dataclass(frozen=True)
class AnomalyInputs:
    slices: list[InputSlice]
    conditions: np.ndarray | None  # the prior's condition of each slice (conditions_of)
    source: str  # a phrase naming them
    cut: CutVolume | None  # the volume they were cut from (--nifti)


def read_inputs(request: AnomalyRequest, num_conditions: int) -> AnomalyInputs:
    """Every input slice, read and checked whole (with its position, for a prior of `num_conditions`) before the
    models' work, so a bad file costs no time and leaves no output."""
    inputs, shards = list(request.inputs), request.shards
    if shards is None and len(inputs) == 1 and (inputs[0] / MANIFEST).is_file():  # --images SHARDS
        inputs, shards = [], inputs[0]
    found, _, source, cut = gather(inputs, shards, request.nifti, request.split, IMAGE_SIZE, request.slicing)
    slices = list(found)
    if not slices:
        raise DataError(f"{source}: no slices")
    return AnomalyInputs(slices, conditions_of(slices, num_conditions, request.slice_index), source, cut)


def run_anomaly(
    request: AnomalyRequest,
    inputs: AnomalyInputs,
    models: AnomalyModels,
    record: dict | None,
    model: Path,
    kind: str,
    also_read: tuple[Path, ...] = (),
) -> dict:
    """Map every input slice with `models` (a side's: torch or onnxruntime, loaded from `model`, which also read
    `also_read`), thresholding by `record` (the healthy NLL quantiles), and write the folder, whole or not at all;
    returns the summary."""
    threshold = threshold_of(record, request.quantile, str(model))
    options = HealingOptions(threshold, request.healings, request.seed, request.temperature, request.top_k)
    slices, conditions = inputs.slices, inputs.conditions
    started = time.perf_counter()
    maps = map_slices(models, slices, conditions, options, request.batch_size, request.show_progress)
    seconds = time.perf_counter() - started
    summary = {
        "model": str(model),
        "inputs": inputs.source,
        "slices": len(slices),
        **{key: getattr(request, key) for key in ("healings", "quantile", "seed", "temperature", "top_k")},
        "threshold_nats": threshold,
        "codes_resampled_mean": float(maps["resample_mask"].sum(axis=(1, 2)).mean()),
        "score_mean": float(maps["score"].mean()),
        "seconds": seconds,
        "seconds_per_slice": seconds / len(slices),
    }
    positions = [item.position for item in slices] if conditions is None else conditions.tolist()
    title = f"{kind} on {inputs.source} (healthy NLL quantile {request.quantile:g}, {request.healings} healings)"
    outputs = {"marker": MAPS_FILE, "force": request.force, "inputs": request.sources(model, *also_read), "kind": kind}
    with atomic_output_dir(request.out, **outputs) as tmp:
        summary["figure"] = str(request.out / write_outputs(tmp, maps, positions, title).name)
        if inputs.cut is not None:
            write_volumes(tmp, inputs.cut, maps)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
