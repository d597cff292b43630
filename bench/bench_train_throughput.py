"""Stage 1 training throughput: fp32 eager vs bf16 autocast + torch.compile, same model, same run.

    python bench/bench_train_throughput.py --config configs/vqvae_oasis_64.yaml --device cuda --json out.json

Times full optimizer steps (forward, backward, AdamW, EMA codebook update) on random images of the
config's batch size, so the data loader is not what is measured; warm-up steps (compilation
included) are not timed. The goal for a GPU is >= 2.5x; on a CPU bf16 is emulated and slow, so the
CPU ratio says nothing about a GPU.

On a GPU it also reports the GPU's busy share of the bf16 + compile steps: the time covered by GPU
kernels (torch.profiler, union of their intervals) over the wall time of a few profiled steps.
Below 1 means the GPU waited on the host (Python, launches, syncs) or on data.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.vqvae import VQVAE


def images_per_second(
    cfg, device: torch.device, bf16: bool, compile_model: bool, steps: int, warmup: int, backend: str = "inductor"
) -> tuple[float, float | None]:
    """(images/s, GPU busy share or None on a CPU)."""
    torch.manual_seed(0)
    model = VQVAE(cfg.model, cfg.quantizer).to(device).train()
    trained = torch.compile(model, backend=backend) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(cfg.data.batch_size, 1, 256, 256, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            recon, quantized = trained(images)
            loss = F.mse_loss(recon.float(), images) + quantized.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    speed = steps * cfg.data.batch_size / timed(step, steps, warmup, device)
    return speed, busy_share(step, min(steps, 10)) if device.type == "cuda" else None


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `step` after `warmup` untimed ones, the device drained at both ends."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def busy_share(step, steps: int) -> float:
    """Fraction of the wall time of `steps` calls of `step` during which a GPU kernel ran."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type.name == "CUDA")
    busy, reach = 0.0, float("-inf")
    for begin, end in kernels:  # union of intervals, in microseconds
        busy += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    return busy / 1e6 / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/vqvae_oasis_64.yaml"),
        help="stage 1 config giving the model and batch size (default: %(default)s)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set data.batch_size=8",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--steps", type=int, default=50, help="timed optimizer steps per variant (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first, compile included (default: %(default)s)"
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend; 'eager' traces without generating code (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides, cls=VQVAEConfig)
    device = torch.device(args.device)
    cpu = f"{platform.processor() or platform.machine()} CPU"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    fp32, fp32_busy = images_per_second(
        cfg, device, bf16=False, compile_model=False, steps=args.steps, warmup=args.warmup
    )
    fast, fast_busy = images_per_second(
        cfg, device, bf16=True, compile_model=True, steps=args.steps, warmup=args.warmup, backend=args.compile_backend
    )
    results = {
        "device": name,
        "torch": torch.__version__,
        "config": str(args.config),
        "overrides": args.overrides,
        "batch_size": cfg.data.batch_size,
        "compile_backend": args.compile_backend,
        "fp32_eager_images_per_s": fp32,
        "bf16_compile_images_per_s": fast,
        "speedup": fast / fp32,
        "fp32_eager_gpu_busy_share": fp32_busy,
        "bf16_compile_gpu_busy_share": fast_busy,
    }
    busy = f", GPU busy {fp32_busy:.0%} vs {fast_busy:.0%}" if fast_busy is not None else ""
    print(
        f"{name}, batch {cfg.data.batch_size}: fp32 eager {fp32:.1f} img/s, bf16 + compile {fast:.1f} img/s, "
        f"ratio {fast / fp32:.2f}x{busy}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
