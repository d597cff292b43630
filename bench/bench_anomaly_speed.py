"""Benchmark: seconds for one slice's anomaly map with onnxruntime on one core, by number of healings (issue 22's goal:
<= 2 s a slice with the prior of configs/prior_oasis_32_transformer_cpu.yaml, 4 layers of width 128).

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
    p.add_argument("--slices", type=int, default=5, help="slices timed, after one warm-up (default: %(default)s)")
    p.add_argument("--healings", default="1,4,8,16", help="healings to time, comma-separated (default: %(default)s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    return p.parse_args()


def time_slices(models: OnnxAnomalyModels, slices: list, conditions: list, options: HealingOptions) -> dict:
    """Mean wall and CPU seconds per slice over `slices` (the first is a warm-up), and codes resampled per slice."""
    wall, cpu, resampled = [], [], []
    for number, (pixels, condition) in enumerate(zip(slices, conditions)):
        started, started_cpu = time.perf_counter(), time.process_time()
        cond = None if condition is None else np.array([condition])
        maps = slice_maps(models, pixels[None], cond, [number], options)
        if number:
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
            resampled.append(int(maps["resample_mask"].sum()))
    return {"wall_s": float(np.mean(wall)), "cpu_s": float(np.mean(cpu)), "codes_resampled": float(np.mean(resampled))}


def main() -> None:
    args = parse_args()
    models = ExportedModels(args.model_dir, threads=1)
    info = models.info
    files = png_files([args.images])[: args.slices + 1]
    slices = [read_slice(f, str(f), info["image_size"]) for f in files]
    conditions = [name_position(f.name) if info["num_conditions"] else None for f in files]
    threshold = threshold_of(info.get("anomaly"), DEFAULT_QUANTILE, str(args.model_dir))
    results = []
    print(f"{len(files) - 1} slices of {args.images}, prior {info['prior_kind']}, threshold {threshold:.3f} nats")
    print("| healings | wall s / slice | CPU s / slice | codes resampled |")
    print("|---|---|---|---|")
    for healings in (int(h) for h in args.healings.split(",")):
        row = {
            "healings": healings,
            **time_slices(OnnxAnomalyModels(models), slices, conditions, HealingOptions(threshold, healings)),
        }
        results.append(row)
        print(f"| {healings} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['codes_resampled']:.1f} |", flush=True)
    if args.json:
        about = {
            "model_dir": str(args.model_dir),
            "affinity": sorted(os.sched_getaffinity(0)),
            "slices": len(files) - 1,
        }
        args.json.write_text(json.dumps({**about, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
