"""Multi-process cost on this CPU: stage-1 training with 1 rank vs 2 torchrun ranks on the same global batch.

    python bench/bench_scaling.py --json docs/bench_scaling.json

Each run is `torchrun --nproc_per_node N` of this file (gloo, Accelerate, DDP as in training), with
the threads split evenly (2 cores: 1 rank x 2 threads vs 2 ranks x 1 thread), random images, full
optimizer steps of the model of configs/vqvae_oasis_64_cpu.yaml. Per step it reports:
  * DDP's gradient all-reduce: time from each bucket's launch (a communication hook) to its completion,
    summed over buckets; it overlaps the rest of the backward pass, so it is an upper bound on what
    it adds to a step;
  * the quantizer's own collectives (EMA statistics, restart draws), which run inside the forward and
    wait for completion, so they add to the step in full.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.run.config_file import load_config
from trainer.stage1 import quantizer
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.vqvae import VQVAE


def timed_collective(fn, seconds: list[float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result

    return wrapper


def worker(args: argparse.Namespace) -> None:
    from accelerate import Accelerator, DistributedDataParallelKwargs

    accelerator = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    world, rank = accelerator.num_processes, accelerator.process_index
    cfg = load_config(args.config, args.overrides, cls=VQVAEConfig)
    torch.manual_seed(0)
    model = VQVAE(cfg.model, cfg.quantizer).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with warnings.catch_warnings():  # as in trainer/run/training_run.py
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        trained, optimizer = accelerator.prepare(model, optimizer)
    ddp_seconds: list[float] = []
    quantizer_seconds: list[float] = []
    if world > 1:

        def hook(_, bucket):
            start = time.perf_counter()
            future = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()

            def done(f):
                ddp_seconds.append(time.perf_counter() - start)
                return f.value()[0]

            return future.then(done)

        trained.register_comm_hook(None, hook)
        quantizer._all_reduce_sum = timed_collective(quantizer._all_reduce_sum, quantizer_seconds)
        quantizer._all_gather_cat = timed_collective(quantizer._all_gather_cat, quantizer_seconds)
    images = torch.rand(args.global_batch // world, 1, 256, 256, generator=torch.Generator().manual_seed(rank))

    def step() -> None:
        recon, quantized = trained(images)
        accelerator.backward(F.mse_loss(recon, images) + quantized.loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    ddp_seconds.clear()
    quantizer_seconds.clear()
    accelerator.wait_for_everyone()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - start
    if rank == 0:
        Path(args.out).write_text(
            json.dumps(
                {
                    "processes": world,
                    "threads_per_process": torch.get_num_threads(),
                    "global_batch": args.global_batch,
                    "steps": args.steps,
                    "step_s": seconds / args.steps,
                    "images_per_s": args.steps * args.global_batch / seconds,
                    "ddp_allreduce_s_per_step": sum(ddp_seconds) / args.steps,
                    "quantizer_collectives_s_per_step": sum(quantizer_seconds) / args.steps,
                }
            )
        )


def launch(processes: int, args: argparse.Namespace, out: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = max(1, (os.cpu_count() or 1) // processes)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(port),
        __file__,
        "--worker",
        "--out",
        str(out),
        "--config",
        str(args.config),
        "--global-batch",
        str(args.global_batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        *[a for item in args.overrides for a in ("--set", item)],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO / "configs" / "vqvae_oasis_64_cpu.yaml",
        help="stage-1 config giving the model (default: %(default)s)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument(
        "--global-batch", type=int, default=16, help="images per step, all ranks together (default: %(default)s)"
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.global_batch < 2 or args.global_batch % 2 or args.steps < 1 or args.warmup < 0:
        parser.error("--global-batch must be even and >= 2, --steps >= 1, --warmup >= 0")
    load_before = os.getloadavg()[0]
    runs = [launch(n, args, Path(f"/tmp/bench_scaling_{os.getpid()}_{n}.json")) for n in (1, 2)]
    one, two = runs
    config = args.config.resolve()
    results = {
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__}",
        "config": str(config.relative_to(REPO) if config.is_relative_to(REPO) else config),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "runs": runs,
        "speedup_2_vs_1": two["images_per_s"] / one["images_per_s"],
    }
    print(
        f"{'processes':<11}{'threads':>8}{'images/s':>10}{'step s':>8}{'DDP all-reduce s/step':>23}"
        f"{'quantizer collectives s/step':>30}"
    )
    for r in runs:
        print(
            f"{r['processes']:<11}{r['threads_per_process']:>8}{r['images_per_s']:>10.1f}{r['step_s']:>8.2f}"
            f"{r['ddp_allreduce_s_per_step']:>23.3f}{r['quantizer_collectives_s_per_step']:>30.3f}"
        )
    print(
        f"2 ranks vs 1: {results['speedup_2_vs_1']:.2f}x; 1-min load average {load_before:.1f} before, "
        f"{results['load_average_1min'][1]:.1f} after"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
