"""Benchmark: onnxruntime vs PyTorch on the CPU, side by side in one run: sampling and reconstruction.

Sampling a batch of --batch code grids, --grid x --grid, K = 512, with a prior of the PriorModelConfig
defaults (trainer/stage2/config.py) conditioned on 32 slice positions. Random weights: the work per sample
does not depend on them.
  * onnxruntime: export/runtime/prior_sampler.py's sampler (what `python -m export sample` runs), exact and fast:
    one prior_row call per row, one prior_cell call per cell, on windows covering the receptive field;
  * PyTorch fast: trainer.stage2.pixelcnn.sample, the same algorithm in eager torch (checked to draw the
    same codes);
  * PyTorch naive: one full forward pass of the whole grid per cell (sample(naive=True)). Every step
    costs the same (the same tensors go through the same layers), so --naive-steps steps are timed
    and the time for all H*W steps is EXTRAPOLATED from them.
Reconstruction: images/s of encode + decode of --recon-batch random slices, onnxruntime vs PyTorch
eager, for a VQ-VAE shaped like configs/vqvae_oasis_32_cpu.yaml (random weights; the quantizer's
torch.compile is off, so PyTorch runs eagerly).

Run it pinned to one core, as docs/bench_onnx.md was:
    OMP_NUM_THREADS=1 taskset -c 1 python bench/bench_onnx.py --threads 1 --json docs/bench_onnx.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common.sampling_rule import sampling_randomness
from export.onnx_export import export_models
from export.runtime.onnx_models import ExportedModels
from export.runtime.prior_sampler import sample_codes
from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.config import PriorConfig
from trainer.stage2.load import build_prior
from trainer.stage2.pixelcnn import sample
from trainer.stage2.prior_contract import PriorShape, draw

REPO = Path(__file__).resolve().parents[1]
VQVAE_CONFIG = REPO / "configs" / "vqvae_oasis_32_cpu.yaml"
NUM_CODES, NUM_CONDITIONS = 512, 32


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--grid", type=int, default=32, help="code grid side; the VQ-VAE downsamples 256 to it (default: %(default)s)"
    )
    p.add_argument("--batch", type=int, default=16, help="grids sampled together (default: %(default)s)")
    p.add_argument(
        "--threads", type=int, default=1, help="threads for torch and for onnxruntime (default: %(default)s)"
    )
    p.add_argument(
        "--naive-steps",
        type=int,
        default=5,
        help="naive-sampler steps timed (after one warm-up) to extrapolate from (default: %(default)s)",
    )
    p.add_argument("--recon-batch", type=int, default=16, help="slices per encode+decode call (default: %(default)s)")
    p.add_argument(
        "--recon-repeats", type=int, default=5, help="timed encode+decode calls per side (default: %(default)s)"
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args()
    if args.grid < 1 or 256 % args.grid or 256 // args.grid not in (2, 4, 8, 16):
        p.error("--grid must be 256 / 2, 4, 8 or 16")
    if min(args.batch, args.threads, args.naive_steps, args.recon_batch, args.recon_repeats) < 1:
        p.error("--batch, --threads, --naive-steps, --recon-batch and --recon-repeats must be >= 1")
    return args


def timed(fn) -> tuple[dict[str, float], object]:
    """({"wall": s, "cpu": s}, fn()): CPU time of this process too, which other programs on the same
    core disturb less than wall time (with one thread, the two agree on an idle core)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}, result


@torch.no_grad()
def naive_steps(prior, uniforms: torch.Tensor, conditions: torch.Tensor, steps: int) -> list[dict[str, float]]:
    """Seconds of each of `steps` naive-sampler steps (one full forward pass, one draw), after a warm-up."""
    codes = torch.zeros(uniforms.shape, dtype=torch.long)
    times = []
    for step in range(steps + 1):
        i, j = divmod(step, uniforms.shape[2])
        seconds, drawn = timed(lambda: draw(prior(codes, conditions)[:, :, i, j], uniforms[:, i, j]))
        codes[:, i, j] = drawn
        times.append(seconds)
    return times[1:]


def bench_sampling(args: argparse.Namespace, prior, models: ExportedModels) -> dict:
    uniforms, conditions = sampling_randomness(args.batch, args.grid, args.grid, NUM_CONDITIONS, seed=0)
    torch_uniforms, torch_conditions = torch.from_numpy(uniforms), torch.from_numpy(conditions)
    cells = args.grid * args.grid
    print(f"sampling {args.batch} grids of {args.grid}x{args.grid} (K = {NUM_CODES}), seconds per batch:", flush=True)
    onnxruntime, ort_codes = timed(lambda: sample_codes(models, uniforms, conditions))
    print(f"  onnxruntime     wall {onnxruntime['wall']:8.1f}  cpu {onnxruntime['cpu']:8.1f}", flush=True)
    fast, fast_codes = timed(lambda: sample(prior, torch_uniforms, torch_conditions))
    print(f"  PyTorch fast    wall {fast['wall']:8.1f}  cpu {fast['cpu']:8.1f}", flush=True)
    steps = naive_steps(prior, torch_uniforms, torch_conditions, args.naive_steps)
    naive = {kind: statistics.median(step[kind] for step in steps) * cells for kind in ("wall", "cpu")}
    print(
        f"  PyTorch naive   wall {naive['wall']:8.1f}  cpu {naive['cpu']:8.1f}   EXTRAPOLATED: median of "
        f"{len(steps)} timed steps x {cells} steps",
        flush=True,
    )
    return {
        "seconds": {"onnxruntime": onnxruntime, "torch_fast": fast, "torch_naive_extrapolated": naive},
        "naive_step_seconds": steps,
        "naive_steps_timed": len(steps),
        "naive_steps_total": cells,
        "speedup_onnxruntime_vs_naive": {k: naive[k] / onnxruntime[k] for k in naive},
        "speedup_onnxruntime_vs_torch_fast": {k: fast[k] / onnxruntime[k] for k in fast},
        "same_codes_onnxruntime_and_torch_fast": bool((ort_codes == fast_codes.numpy()).all()),
    }


@torch.no_grad()
def bench_reconstruction(args: argparse.Namespace, vqvae: VQVAE, models: ExportedModels) -> dict:
    images = np.random.default_rng(0).random((args.recon_batch, 1, 256, 256), dtype=np.float32)
    torch_images = torch.from_numpy(images)
    sides = {
        "onnxruntime": lambda: models.decode(models.encode(images)),
        "torch_eager": lambda: vqvae.decode(vqvae.encode(torch_images)),
    }
    for fn in sides.values():  # warm-up
        fn()
    seconds = {name: [] for name in sides}
    for _ in range(args.recon_repeats):  # the two sides take turns, so background load hits both
        for name, fn in sides.items():
            seconds[name].append(timed(fn)[0])
    rates = {
        name: {kind: args.recon_batch / statistics.median(t[kind] for t in times) for kind in ("wall", "cpu")}
        for name, times in seconds.items()
    }
    print(
        f"encode+decode of {args.recon_batch} slices, images/s: onnxruntime wall {rates['onnxruntime']['wall']:.1f} "
        f"cpu {rates['onnxruntime']['cpu']:.1f}; PyTorch eager wall {rates['torch_eager']['wall']:.1f} "
        f"cpu {rates['torch_eager']['cpu']:.1f}",
        flush=True,
    )
    return {
        "images_per_second": rates,
        "seconds": seconds,
        "speedup_onnxruntime_vs_torch_eager": {
            k: rates["onnxruntime"][k] / rates["torch_eager"][k] for k in ("wall", "cpu")
        },
    }


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prior = build_prior(PriorConfig(), PriorShape(NUM_CODES, args.grid, args.grid, NUM_CONDITIONS)).eval()
    cfg = load_config(
        VQVAE_CONFIG, [f"model.downsample={256 // args.grid}", "quantizer.compile=false"], cls=VQVAEConfig
    )
    vqvae = VQVAE(cfg.model, cfg.quantizer).eval()
    with tempfile.TemporaryDirectory() as tmp:
        print("exporting ...", flush=True)
        export_models(prior, vqvae, Path(tmp), source={"weights": "random (bench/bench_onnx.py)"})
        models = ExportedModels(Path(tmp), threads=args.threads)
        results = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine(),
            "prior": {
                "config": vars(PriorConfig().model),
                "grid": args.grid,
                "num_codes": NUM_CODES,
                "num_conditions": NUM_CONDITIONS,
            },
            "sampling": bench_sampling(args, prior, models),
            "reconstruction": bench_reconstruction(args, vqvae, models),
        }
    s = results["sampling"]
    print(
        f"onnxruntime sampling: {s['speedup_onnxruntime_vs_naive']['wall']:.0f}x faster than naive PyTorch "
        f"(extrapolated; cpu time: {s['speedup_onnxruntime_vs_naive']['cpu']:.0f}x), "
        f"{s['speedup_onnxruntime_vs_torch_fast']['wall']:.2f}x the fast PyTorch sampler; same codes as the fast "
        f"PyTorch sampler: {s['same_codes_onnxruntime_and_torch_fast']}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
