"""Benchmark nearest-code search: fused (chunked + torch.compile) vs naive (cdist + argmin).

Time: median and min wall time of --repeats calls after warm-up (which includes compiling),
and the median CPU time of this process (all threads). The two variants are interleaved call
by call, so background load hits both alike; the 1-minute load average is printed with them.

Peak memory: the extra memory one call needs on top of what is live before it (inputs, the
compiled kernel), measured in a fresh subprocess per variant so the two cannot share a peak.
  cuda: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus the allocated
        bytes before the call.
  cpu:  the process's resident-set high-water mark (VmHWM in /proc/self/status, reset through
        /proc/self/clear_refs just before the call) minus the resident set before the call.
        glibc is told to mmap every allocation of 1 MiB or more (MALLOC_MMAP_THRESHOLD_), so
        freed buffers go back to the OS instead of hiding in the heap. This counts everything
        the OS had to provide, including BLAS workspaces the torch allocator never sees, and
        the int64 result (N x 8 bytes) in both variants. Linux only.

Example:  python bench/bench_nearest_code.py --device cpu --json bench_nearest_code.json
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from trainer.stage1.quantizer import naive_nearest_code, nearest_code


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    p.add_argument("--n", type=int, default=64 * 64 * 64, help="encoder vectors to quantise (default: 64*64*64)")
    p.add_argument("--k", type=int, default=512, help="codebook size (default: 512)")
    p.add_argument("--d", type=int, default=64, help="code dimension (default: 64)")
    p.add_argument("--chunk-size", type=int, default=4096, help="rows per chunk of the fused variant (default: 4096)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per variant, after warm-up (default: 15)")
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed calls per variant first; the first compiles (default: 2)"
    )
    p.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads (default: all cores)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args()
    if args.warmup < 1 or args.repeats < 1:
        p.error("--warmup and --repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but CUDA is not available")
    return args


def make_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(args.n, args.d, generator=g), torch.randn(args.k, args.d, generator=g)
    return z.to(args.device), codebook.to(args.device)


def variants(args: argparse.Namespace) -> dict:
    return {
        "naive": naive_nearest_code,
        "fused": lambda z, codebook: nearest_code(z, codebook, chunk_size=args.chunk_size),
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(args: argparse.Namespace) -> tuple[dict[str, dict[str, list[float]]], int]:
    """Wall and CPU seconds per call of each variant, and how many indices the two disagree on.

    CPU time (all threads of this process) is less disturbed than wall time when other
    processes compete for the cores, so it is reported too.
    """
    z, codebook = make_inputs(args)
    fns = variants(args)
    results = {}
    for name, fn in fns.items():
        for _ in range(args.warmup):
            results[name] = fn(z, codebook)
    mismatches = int((results["naive"] != results["fused"]).sum())
    times = {name: {"wall_s": [], "cpu_s": []} for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            sync(args.device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn(z, codebook)
            sync(args.device)
            times[name]["wall_s"].append(time.perf_counter() - wall)
            times[name]["cpu_s"].append(time.process_time() - cpu)
    return times, mismatches


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_extra_bytes(name: str, args: argparse.Namespace) -> int:
    """Extra bytes at the peak of one call of variant `name` (run in a fresh subprocess)."""
    torch.set_num_threads(args.threads)
    z, codebook = make_inputs(args)
    fn = variants(args)[name]
    for _ in range(args.warmup):
        fn(z, codebook)
    sync(args.device)
    gc.collect()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(z, codebook)
        sync(args.device)
        return torch.cuda.max_memory_allocated() - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = _status_kib("VmRSS")
    fn(z, codebook)
    return (_status_kib("VmHWM") - before) * 1024


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({model or 'unknown model'})"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # other processes on the machine distort CPU timings
    times, mismatches = time_variants(args)
    load_after = os.getloadavg()[0]

    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # read by the subprocesses' glibc
    results = {}
    for name, t in times.items():
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:  # fresh process, clean exit
            peak = pool.submit(peak_extra_bytes, name, args).result()
        results[name] = {
            "median_wall_s": statistics.median(t["wall_s"]),
            "min_wall_s": min(t["wall_s"]),
            "median_cpu_s": statistics.median(t["cpu_s"]),
            "peak_extra_bytes": peak,
            **t,
        }
    naive, fused = results["naive"], results["fused"]
    summary = {
        "speedup_wall": naive["median_wall_s"] / fused["median_wall_s"],
        "speedup_cpu": naive["median_cpu_s"] / fused["median_cpu_s"],
        "memory_reduction": naive["peak_extra_bytes"] / max(fused["peak_extra_bytes"], 1),
        "mismatches": mismatches,
        "load_average_1min": [load_before, load_after],
    }

    print(f"nearest code, N={args.n} K={args.k} D={args.d} fp32, {args.device} ({machine(args.device)}),")
    print(f"torch {torch.__version__}, {args.threads} threads, chunk_size={args.chunk_size}, {args.repeats} repeats\n")
    print(f"{'variant':<8}{'median ms':>11}{'min ms':>9}{'median CPU ms':>15}{'peak extra MiB':>16}")
    for name, r in results.items():
        print(
            f"{name:<8}{r['median_wall_s'] * 1e3:>11.1f}{r['min_wall_s'] * 1e3:>9.1f}"
            f"{r['median_cpu_s'] * 1e3:>15.1f}{r['peak_extra_bytes'] / 2**20:>16.1f}"
        )
    print(
        f"\nspeed-up (naive / fused, median wall time): {summary['speedup_wall']:.2f}x"
        f"  (CPU time: {summary['speedup_cpu']:.2f}x)"
    )
    print(f"peak memory reduction (naive / fused): {summary['memory_reduction']:.1f}x")
    print(f"indices differing between the two: {mismatches} of {args.n} (float near-ties)")
    print(f"1-min load average before / after timing: {load_before:.2f} / {load_after:.2f}")

    if args.json:
        report = {
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "machine": machine(args.device),
            "torch": torch.__version__,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "results": results,
            **summary,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
