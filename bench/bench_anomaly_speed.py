"""Benchmark: seconds for one slice's anomaly map with onnxruntime on one core, by number of healings (issue 22's goal:
<= 2 s a slice with the prior of configs/prior_oasis_32_transformer_cpu.yaml; docs/benchmarks.md has its 2 layers
side by side with its former 4).

What `python -m export anomaly` runs per slice, one slice per pass (--batch-size 1): encode, the prior's pass of
1 + healings rows over the 1,024 codes (the scan teacher-forced, its NLL, the healings), decoding and the map
(common/anomaly_maps.py's slice_maps). Reading, the first slice (a warm-up) and writing files are left out.
A prior trained 5 steps maps as fast as a trained one: the work does not depend on the weights (how many codes are
resampled changes only the draws, a small part). Torch-free, as the runtime is. Pinned to one core:

    OMP_NUM_THREADS=1 taskset -c 0 python bench/bench_anomaly_speed.py --model-dir DIR --images PNG_FOLDER \\
        --healings 1,4,8,16 --json /tmp/bench_anomaly.json

Wall and CPU time both: other programs sharing the core slow the wall clock, less the process's CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.anomaly_maps import DEFAULT_QUANTILE, HealingOptions, slice_maps, threshold_of  # noqa: E402
from common.slice_inputs import name_position, png_files, read_slice  # noqa: E402
from export.runtime.anomaly import OnnxAnomalyModels  # noqa: E402
from export.runtime.onnx_models import ExportedModels  # noqa: E402

DEMO_PNGS = REPO / "data_tools" / "demo_data" / "keras_png_slices_data" / "keras_png_slices_test"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="an `export onnx` folder with anomaly thresholds")
    p.add_argument("--images", type=Path, default=DEMO_PNGS, help="PNG slices (default: the demo test slices)")
    p.add_argument("--slices", type=int, default=4, help="slices timed, after a warm-up pass (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="slices per prior pass (--batch-size) (default: %(default)s)")
    p.add_argument("--healings", default="1,4,8,16", help="healings to time, comma-separated (default: %(default)s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    return p.parse_args()


def time_slices(models: OnnxAnomalyModels, slices: list, conditions: list, options: HealingOptions, batch: int) -> dict:
    """Mean wall and CPU seconds per slice, `batch` slices per pass (the first pass is a warm-up), and codes
    resampled per slice."""
    wall, cpu, resampled = [], [], []
    for start in range(0, len(slices) - batch + 1, batch):
        part = slice(start, start + batch)
        cond = None if conditions[0] is None else np.array(conditions[part])
        started, started_cpu = time.perf_counter(), time.process_time()
        maps = slice_maps(models, np.stack(slices[part]), cond, list(range(start, start + batch)), options)
        if start:
            wall.append((time.perf_counter() - started) / batch)
            cpu.append((time.process_time() - started_cpu) / batch)
            resampled += maps["resample_mask"].sum(axis=(1, 2)).tolist()
    return {"wall_s": float(np.mean(wall)), "cpu_s": float(np.mean(cpu)), "codes_resampled": float(np.mean(resampled))}


def main() -> None:
    args = parse_args()
    models = ExportedModels(args.model_dir, threads=1)
    info = models.info
    files = png_files([args.images])[: args.slices + args.batch]
    slices = [read_slice(f, str(f), info["image_size"]) for f in files]
    conditions = [name_position(f.name) if info["num_conditions"] else None for f in files]
    threshold = threshold_of(info.get("anomaly"), DEFAULT_QUANTILE, str(args.model_dir))
    results = []
    print(
        f"{len(files) - args.batch} slices of {args.images} timed, {args.batch} per pass, prior {info['prior_kind']}, "
        f"threshold {threshold:.3f} nats"
    )
    print("| healings | wall s / slice | CPU s / slice | codes resampled |")
    print("|---|---|---|---|")
    for healings in (int(h) for h in args.healings.split(",")):
        options = HealingOptions(threshold, healings)
        row = {"healings": healings, **time_slices(OnnxAnomalyModels(models), slices, conditions, options, args.batch)}
        results.append(row)
        print(f"| {healings} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['codes_resampled']:.1f} |", flush=True)
    if args.json:
        about = {
            "model_dir": str(args.model_dir),
            "affinity": sorted(os.sched_getaffinity(0)),
            "slices": len(files) - args.batch,
            "batch": args.batch,
        }
        args.json.write_text(json.dumps({**about, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
