"""Reconstruct slices with onnxruntime only: encode them to code grids, decode those, write both.

    python -m export reconstruct --model-dir DIR --out OUT case_001_slice_0.nii.png more_slices/
    python -m export reconstruct --model-dir DIR --out OUT --shards data/oasis_shards --split test
    python -m export reconstruct --model-dir DIR --out OUT --nifti scan.nii.gz

writes `reconstructions/KEY.png` (8-bit), `codes/KEY.png` (code maps scaled to 16 bits, as
`sample` writes them), `codes.npz` (codes uint16 (N, H, W) and names), `reconstructions.png` and
`code_maps.png` (the figures `trainer evaluate` draws: inputs spread over the set and the worst by SSIM)
and `summary.json` (count, mean MSE, PSNR and SSIM, worst SSIM, seconds, images/s). KEY is the slice's
sample key, `case_904_slice_0`, from a shard or from a file `case_904_slice_0.nii.png` alike: shard keys
hold no dots (webdataset splits names at them), so the key is the name both inputs can give, and the
one `trainer evaluate` reports in per_image.csv.
A NIfTI volume (`--nifti`) is cut as `data_tools shard --nifti` cuts it (common/nifti_volume.py: canonical RAS,
per-volume intensity window, 256x256 slices in the OASIS orientation; every slice of the kept span, named
`case_<file name>_slice_<index>`), and the reconstructions are also written as `reconstruction.nii.gz` in the
input's space: same shape, affine and header, each slice back where it came from, intensities mapped back through
the volume's window, slices outside the span 0; so it overlays the scan in any viewer.
PNG inputs must be 8-bit grayscale PNGs of the model's image size: anything else is refused with its
name, never converted. Shards are read with data_tools' reader, which needs no torch.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.cli import add_batch_size_argument, add_force_argument, add_quiet_argument
from common.figures.reconstruction import ReconstructionExamples, code_maps, reconstruction_grid
from common.figures.style import code_intensity
from common.nifti_options import Slicing, add_slicing_arguments
from common.output_dir import atomic_output_dir, check_output_dir
from common.sample_files import save_code_map, save_image
from common.slice_inputs import InputSlice, gather, output_name
from common.ssim import ssim
from export.runtime.onnx_models import ExportedModels, add_threads_argument

NIFTI_OUT = "reconstruction.nii.gz"
SUMMARY = "summary.json"  # the marker of a reconstruction folder: --force replaces only a folder that has it
DESCRIPTION = (
    "Encode 8-bit grayscale PNG slices (or a split of shards, or the slices of a NIfTI volume) to code grids and "
    "decode them; write reconstructions/, codes/ (16-bit code maps), codes.npz, the figures reconstructions.png and "
    "code_maps.png, summary.json (PSNR, SSIM), and for a volume reconstruction.nii.gz in its space."
)


def reconstruct(
    model_dir: Path,
    out: Path,
    inputs: list[Path] = (),
    shards: Path | None = None,
    split: str = "test",
    batch_size: int = 32,
    threads: int = 0,
    show_progress: bool = True,
    force: bool = False,
    nifti: Path | None = None,
    slicing: Slicing | None = None,
) -> dict:
    """`python -m export reconstruct`: encode + decode PNG files, a split of shards or the slices of a NIfTI volume
    (also written back as a volume); returns the summary."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out)
    sources = [Path(model_dir), *[Path(p) for p in (shards, nifti) if p is not None], *map(Path, inputs)]
    check_output_dir(out, marker=SUMMARY, force=force, inputs=sources, kind="export reconstruct")
    models = ExportedModels(model_dir, ("encoder", "decoder"), threads)
    slices, total, source, cut = gather(inputs, shards, nifti, split, models.info["image_size"], slicing)
    about = {
        "model_dir": str(model_dir),
        "inputs": [str(p) for p in inputs] if inputs else None,
        "shards": None if shards is None else str(shards),
        "split": None if shards is None else split,
        "nifti": None if nifti is None else str(nifti),
        "nifti_out": None if nifti is None else str(out / NIFTI_OUT),
    }
    kept = {} if cut is not None else None
    with atomic_output_dir(out, marker=SUMMARY, force=force, inputs=sources, kind="export reconstruct") as tmp:
        summary = write_reconstructions(models, slices, total, tmp, out, batch_size, show_progress, source, about, kept)
        if cut is not None:
            cut.write(kept, tmp / NIFTI_OUT)
        return summary


def draw_figures(models: ExportedModels, examples: ReconstructionExamples, out: Path, source: str) -> Path:
    """The reconstruction grid and the code maps of the examples kept; returns the grid's path."""
    num_codes = models.info["num_codes"]
    keys, originals, recons, grids, scores = examples.arrays()
    figure = reconstruction_grid(
        originals,
        np.clip(recons, 0, 1),
        scores,
        keys,
        out / "reconstructions.png",
        examples.title(f"ONNX VQ-VAE on {source}"),
        columns=4,
    )
    code_maps(
        originals,
        grids,
        keys,
        out / "code_maps.png",
        code_intensity(models.decode, num_codes, grids.shape[1:]),
        examples.title(f"ONNX VQ-VAE codes of {source}"),
        columns=4,
    )
    return figure


def write_reconstructions(
    models: ExportedModels,
    slices: Iterator[InputSlice],
    total: int,
    out: Path,
    final: Path,
    batch_size: int,
    show_progress: bool,
    source: str,
    about: dict,
    kept: dict[str, np.ndarray] | None = None,
) -> dict:
    """Encode and decode `slices` batch by batch and write every file into `out` (to become `final`); with `kept`,
    each reconstruction in [0, 1] is also stored there by sample key (to be written back into a volume)."""
    num_codes = models.info["num_codes"]
    (out / "reconstructions").mkdir()
    (out / "codes").mkdir()
    names, all_codes, errors, similarities = [], [], [], []
    examples = ReconstructionExamples(total)
    started = time.perf_counter()
    with tqdm(total=total, desc="reconstruct", unit="img", disable=not show_progress) as bar:
        while batch := list(islice(slices, batch_size)):
            batch_names = [output_name(item.name) for item in batch]
            pixels = [item.pixels for item in batch]
            images = np.stack(pixels)[:, None].astype(np.float32) / 255
            codes = models.encode(images)
            recons = models.decode(codes)
            scores = ssim(np.clip(recons[:, 0], 0, 1), images[:, 0])
            for name, image, grid, recon, score in zip(batch_names, images[:, 0], codes, recons[:, 0], scores):
                save_code_map(grid, num_codes, out / "codes" / name)
                save_image(recon, out / "reconstructions" / name)
                examples.add(name.removesuffix(".png"), image, recon, grid, score)
                if kept is not None:
                    kept[name.removesuffix(".png")] = np.clip(recon, 0, 1)
            names += batch_names
            all_codes.append(codes.astype(np.uint16))
            errors.append(((recons - images) ** 2).mean(axis=(1, 2, 3)))
            similarities.append(scores)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    codes = np.concatenate(all_codes)
    mse = np.concatenate(errors).astype(np.float64)
    similarity = np.concatenate(similarities)
    np.savez(out / "codes.npz", codes=codes, names=np.asarray(names, str))
    figure = draw_figures(models, examples, out, source)
    summary = {
        **about,
        "images": len(names),
        "mse_mean": float(mse.mean()),
        "psnr_mean": float((-10 * np.log10(mse)).mean()),
        "ssim_mean": float(similarity.mean()),
        "ssim_min": float(similarity.min()),
        "seconds": seconds,
        "images_per_second": len(names) / seconds,
        "figure": str(final / figure.name),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", type=Path, nargs="*", help="PNG files, or folders of them (not recursive)")
    parser.add_argument(
        "--nifti",
        type=Path,
        default=None,
        metavar="VOLUME",
        help="instead of PNG files: a .nii/.nii.gz volume; its slices are reconstructed and also written as "
        f"{NIFTI_OUT} in its space (same shape and affine)",
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by `python -m export onnx`")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--shards",
        type=Path,
        default=None,
        help="instead of PNG files: a folder written by `python -m data_tools shard`",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "validate", "test"],
        help="split of --shards to reconstruct (default: %(default)s)",
    )
    add_slicing_arguments(parser.add_argument_group("NIfTI volumes (--nifti): slicing, as `data_tools shard --nifti`"))
    add_batch_size_argument(parser, 32)
    add_threads_argument(parser)
    add_quiet_argument(parser)
    add_force_argument(parser)


def run(args: argparse.Namespace) -> None:
    summary = reconstruct(
        args.model_dir,
        args.out,
        args.inputs,
        args.shards,
        args.split,
        args.batch_size,
        args.threads,
        show_progress=not args.quiet,
        force=args.force,
        nifti=args.nifti,
        slicing=Slicing.from_args(args),
    )
    print(
        f"{summary['images']} slices, SSIM {summary['ssim_mean']:.3f} (min {summary['ssim_min']:.3f}), "
        f"PSNR {summary['psnr_mean']:.2f} dB, "
        f"{summary['images_per_second']:.1f} images/s -> {args.out}"
        + (f" (volume: {summary['nifti_out']})" if summary["nifti_out"] else "")
    )
