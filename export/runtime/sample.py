"""Generate brains with onnxruntime only: no torch, so a CPU box needs no training stack.

    python -m export sample --model-dir runs/prior_oasis32_cpu/onnx --n 16 --seed 0 --out samples/

The loop is the torch sampler's exact fast path for the folder's prior kind (export/runtime/prior_sampler.py): for
the PixelCNN, trainer.stage2.pixelcnn.sample's (one `prior_row` call per row on a band of rows above it, one
`prior_cell` call per cell on a window of columns); for the transformer, trainer.stage2.transformer_prior.sample's
(one `prior_step` call per cell with the key/value cache, export/runtime/transformer_sampler.py).
The random numbers and the draw rule are common/sampling_rule.py's, so a seed gives the same
code grids as `python -m trainer sample`. (The logits agree to float rounding, ~1e-7, so a draw could only differ
if a uniform number fell that close to a step of the CDF.) The outputs are the same files too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.cli import add_batch_size_argument, add_force_argument, add_quiet_argument, add_sampling_arguments
from common.output_dir import atomic_output_dir, check_output_dir
from common.sample_files import SAMPLES_FILE, write_samples
from common.sampling_rule import sampling_randomness
from export.runtime.onnx_models import ExportedModels, add_threads_argument
from export.runtime.prior_sampler import sample_codes

KIND = "export sample"  # recorded in the folder: --force replaces only this command's own samples folders
DESCRIPTION = (
    "Sample code grids with the exported prior and decode them; the same options, semantics and output "
    "files as `python -m trainer sample`, and the same brains for the same seed."
)


def generate(
    models: ExportedModels,
    n: int,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    slice_index: int | None = None,
    batch_size: int = 16,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(codes (n, H, W), conditions (n,) or None, images (n, S, S) in [0, 1]): trainer.stage2.sample.generate's
    results for the same arguments."""
    info = models.info
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    uniforms, conditions = sampling_randomness(
        n, info["height"], info["width"], info["num_conditions"], seed, slice_index
    )
    codes, images = [], []
    rows = info["height"] * -(-n // batch_size)
    with tqdm(total=rows, desc="sample", unit="row", disable=not show_progress) as bar:
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            grid = sample_codes(
                models,
                uniforms[part],
                None if conditions is None else conditions[part],
                temperature,
                top_k,
                progress=bar,
            )
            codes.append(grid)
            images.append(models.decode(grid)[:, 0])
    return np.concatenate(codes), conditions, np.concatenate(images)


def run_sampling(
    model_dir: Path,
    out: Path,
    n: int = 16,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    slice_index: int | None = None,
    batch_size: int = 16,
    threads: int = 0,
    show_progress: bool = True,
    force: bool = False,
) -> dict:
    """`python -m export sample`: generate, write the files and summary.json (the folder appears whole or
    not at all); returns the summary."""
    out = Path(out)
    check_output_dir(out, marker=SAMPLES_FILE, force=force, inputs=[Path(model_dir)], kind=KIND)
    models = ExportedModels(model_dir, ("prior", "decoder"), threads)
    started = time.perf_counter()
    codes, conditions, images = generate(models, n, seed, temperature, top_k, slice_index, batch_size, show_progress)
    seconds = time.perf_counter() - started
    with atomic_output_dir(out, marker=SAMPLES_FILE, force=force, inputs=[Path(model_dir)], kind=KIND) as tmp:
        figure = write_samples(tmp, codes, conditions, images, models.info["num_codes"], models.decode)
        summary = {
            "n": n,
            "seed": seed,
            "temperature": temperature,
            "top_k": top_k,
            "slice": slice_index,
            "sampler": "onnxruntime",
            "seconds": seconds,
            "figure": str(out / figure.name),
            "model_dir": str(model_dir),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by `python -m export onnx`")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: codes/NNN.png, images/NNN.png, samples.npz, generated.png, summary.json",
    )
    add_sampling_arguments(parser)
    add_batch_size_argument(parser, 16, "grids sampled together")
    add_quiet_argument(parser)
    add_threads_argument(parser)
    add_force_argument(parser)


def run(args: argparse.Namespace) -> None:
    summary = run_sampling(
        args.model_dir,
        args.out,
        n=args.n,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        slice_index=args.slice,
        batch_size=args.batch_size,
        threads=args.threads,
        show_progress=not args.quiet,
        force=args.force,
    )
    print(f"{summary['n']} brains in {summary['seconds']:.1f} s -> {args.out} (figure: {summary['figure']})")
