"""Everything a lent GPU should measure, from one command, into ONE JSON (`bash bench/gpu.sh` runs it).

    python bench/gpu.py --device cuda --shards data/oasis_shards                 # all parts, ~20 min on an H100
    python bench/gpu.py --device cuda --parts kernel,train_speed                 # some parts (they merge into the JSON)
    python bench/gpu.py --device cpu --tiny --shards runs/demo/shards            # every part, tiny, on a CPU (a test)

Parts (each adds its own key to --json, so parts run in several calls still end in one file):
  kernel       nearest-code kernel, fused vs naive: time and peak memory (bench/bench_nearest_code.py)
  train_speed  stage-1 training images/s, fp32 eager vs bf16 + compile, and the GPU busy share
               (bench/bench_train_throughput.py)
  stage1       stage 1 on configs/vqvae_oasis_64.yaml from scratch: wall time, images/s, test SSIM (goal 0.96)
  prior_speed  prior training images/s on random code grids of configs/prior_oasis_32.yaml, fp32 eager vs
               bf16 + compile
  sampling     16 brains with the fast sampler on the device (prior_oasis_32 prior, vqvae_oasis_32 decoder;
               random weights: the time does not depend on them)
  two_process  two processes on the one device (torchrun, gloo) train stage 1 briefly and must end with
               identical weights (bench/two_ranks.py)
`--tiny` shrinks every model, batch, grid and step count so that all parts run on a CPU in under a minute of CPU
time (tests/test_gpu_bench.py: 53 s CPU for the whole file, 2-core shared machine at load 7-8).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_train_throughput import timed

from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.config import PriorConfig
from trainer.stage2.generate import generate
from trainer.stage2.load import build_prior
from trainer.stage2.prior_contract import PriorShape

PARTS = ("kernel", "train_speed", "stage1", "prior_speed", "sampling", "two_process")
VQVAE_64, VQVAE_32, PRIOR_32 = (
    REPO / "configs" / name for name in ("vqvae_oasis_64.yaml", "vqvae_oasis_32.yaml", "prior_oasis_32.yaml")
)
TINY_VQVAE = [
    "model.channels=16",
    "model.res_channels=8",
    "model.code_dim=8",
    "quantizer.num_codes=32",
    "data.batch_size=2",
    "data.num_workers=0",
]
TINY_PRIOR = ["model.channels=8", "model.layers=2", "model.head_channels=16", "codes.batch_size=2"]
TINY_STAGE1 = [
    "train.max_steps=2",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.checkpoint_every=2",
    "train.compile=false",
    'train.mixed_precision="no"',
    "quantizer.compile=false",
]
TINY_PRIOR_SHAPE = PriorShape(32, 4, 4, 4)  # num_codes, height, width, slice conditions


def run_script(args: list[str], env: dict | None = None) -> None:
    """Run a bench script with this interpreter; its output goes to ours (the device tool keeps the tail)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args[:1])} failed with exit status {result.returncode}")


def part_kernel(opts: argparse.Namespace, work: Path) -> dict:
    out = work / "nearest_code.json"
    sizes = ["--n", "8192", "--k", "64", "--d", "8", "--repeats", "1", "--warmup", "1"] if opts.tiny else []
    run_script(["bench/bench_nearest_code.py", "--device", opts.device, "--json", str(out), *sizes])
    report = json.loads(out.read_text())
    summary = {key: report[key] for key in ("machine", "settings", "speedup_wall", "memory_reduction", "mismatches")}
    for name in ("naive", "fused"):
        summary[name] = {k: report["results"][name][k] for k in ("median_wall_s", "peak_extra_bytes")}
    return summary


def part_train_speed(opts: argparse.Namespace, work: Path) -> dict:
    out = work / "train_speed.json"
    # quantizer.compile=false: the kernel part already compiles nearest_code; a second compile would only cost time
    tiny = [a for item in [*TINY_VQVAE, "quantizer.compile=false"] for a in ("--set", item)]
    tiny += ["--steps", "1", "--warmup", "1", "--compile-backend", "eager"]
    run_script(
        [
            "bench/bench_train_throughput.py",
            "--config",
            str(VQVAE_64),
            "--device",
            opts.device,
            "--json",
            str(out),
            *(tiny if opts.tiny else []),
        ]
    )
    return json.loads(out.read_text())


def part_stage1(opts: argparse.Namespace, work: Path) -> dict:
    from trainer.stage1.evaluate import evaluate
    from trainer.stage1.train import train_vqvae

    run = work / "stage1"
    shutil.rmtree(run, ignore_errors=True)  # our own scratch run: a rerun starts afresh
    overrides = [
        f"data.shards={opts.shards}",
        f"out_dir={run}",
        "wandb.enabled=false",
        *(TINY_VQVAE + TINY_STAGE1 if opts.tiny else []),
        *opts.stage1_set,
    ]
    cfg = load_config(VQVAE_64, overrides, cls=VQVAEConfig)
    start = time.perf_counter()
    checkpoint, _ = train_vqvae(cfg, show_progress=False)
    train_seconds = time.perf_counter() - start
    summary = evaluate(checkpoint, "test", work / "stage1_test", device=opts.device, show_progress=False)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_s"] for r in rows[1:]] or [rows[-1]["images_per_s"]]  # the first window compiles
    return {
        "config": str(VQVAE_64.relative_to(REPO)),
        "overrides": overrides,
        "steps": cfg.train.max_steps,
        "train_wall_s": train_seconds,
        "median_images_per_s": sorted(speeds)[len(speeds) // 2],
        "test_ssim": summary["ssim_mean"],
        "test_psnr": summary["psnr_mean"],
        "val_ssim": [(r["step"], r["val_ssim"]) for r in rows if "val_ssim" in r],
        "goal_reached": summary["ssim_mean"] >= 0.96,
    }


def prior_setup(opts: argparse.Namespace) -> tuple[PriorConfig, PriorShape]:
    cfg = load_config(PRIOR_32, TINY_PRIOR if opts.tiny else [], cls=PriorConfig)
    return cfg, TINY_PRIOR_SHAPE if opts.tiny else PriorShape(512, 32, 32, 32)


def part_prior_speed(opts: argparse.Namespace, work: Path) -> dict:
    cfg, shape = prior_setup(opts)
    results = {
        "config": str(PRIOR_32.relative_to(REPO)),
        "grid": [shape.height, shape.width],
        "num_codes": shape.num_codes,
        "batch_size": cfg.codes.batch_size,
    }
    for name, fast in (("fp32_eager", False), ("bf16_compile", True)):
        results[f"{name}_images_per_s"] = prior_images_per_second(cfg, shape, opts, fast)
    results["speedup"] = results["bf16_compile_images_per_s"] / results["fp32_eager_images_per_s"]
    return results


def prior_images_per_second(cfg: PriorConfig, shape: PriorShape, opts: argparse.Namespace, fast: bool) -> float:
    """Full optimizer steps on random code grids; fast: bf16 autocast + torch.compile, else fp32 eager."""
    device, batch = torch.device(opts.device), cfg.codes.batch_size
    steps, warmup = (1, 1) if opts.tiny else (50, 5)
    torch.manual_seed(0)
    prior = build_prior(cfg, shape).to(device).train()
    trained = torch.compile(prior, backend="eager" if opts.tiny else "inductor") if fast else prior
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-4)
    codes = torch.randint(shape.num_codes, (batch, shape.height, shape.width), device=device)
    slices = torch.randint(shape.num_conditions, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(trained(codes, slices).float(), codes)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batch * steps / timed(step, steps, warmup, device)


def part_sampling(opts: argparse.Namespace, work: Path) -> dict:
    cfg, shape = prior_setup(opts)
    vqvae_cfg = load_config(VQVAE_32, TINY_VQVAE if opts.tiny else [], cls=VQVAEConfig)
    torch.manual_seed(0)
    prior = build_prior(cfg, shape).to(opts.device).eval()
    vqvae = VQVAE(vqvae_cfg.model, vqvae_cfg.quantizer).to(opts.device).eval()
    n = 16
    if not opts.tiny:  # warm-up: CUDA context, kernels; on a tiny CPU run it would only repeat the timed call
        generate(prior, vqvae, 2, show_progress=False)
    if opts.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    codes, _, images = generate(prior, vqvae, n, seed=0, batch_size=n, show_progress=False)
    seconds = time.perf_counter() - start
    return {
        "brains": n,
        "grid": [shape.height, shape.width],
        "seconds": seconds,
        "brains_per_s": n / seconds,
        "images_shape": list(images.shape),
        "codes_in_range": bool((codes < shape.num_codes).all()),
    }


def part_two_process(opts: argparse.Namespace, work: Path) -> dict:
    out = work / "two_process"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = 2 if opts.tiny else 20
    overrides = [
        f"data.shards={opts.shards}",
        f"out_dir={out / 'run'}",
        "wandb.enabled=false",
        *(TINY_VQVAE + TINY_STAGE1 if opts.tiny else []),
        f"train.max_steps={steps}",
        "train.log_every=2",
        f"train.eval_every={steps}",
        "train.eval_batches=1",
        f"train.checkpoint_every={steps}",
    ]
    start = time.perf_counter()
    run_script(
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            "bench/two_ranks.py",
            str(VQVAE_64),
            str(out),
            *overrides,
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {
        "wall_s": time.perf_counter() - start,
        "ranks": ranks,
        "identical_weights": ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda or cpu (default: cuda if available)",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts (default: all)")
    parser.add_argument(
        "--shards",
        type=Path,
        default=REPO / "data" / "oasis_shards",
        help="OASIS shards for stage1 and two_process (default: %(default)s)",
    )
    parser.add_argument(
        "--stage1-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a value of vqvae_oasis_64.yaml for the stage1 part (repeatable)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "runs" / "gpu" / "gpu_results.json",
        help="results file; parts merge into it (default: %(default)s)",
    )
    parser.add_argument(
        "--work", type=Path, default=REPO / "runs" / "gpu", help="scratch folder (default: %(default)s)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny models and runs (a CPU check of every part)")
    opts = parser.parse_args()
    parts = [p.strip() for p in opts.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    needs_shards = {"stage1", "two_process"} & set(parts)
    if needs_shards and not (opts.shards / "manifest.json").is_file():
        parser.error(f"{opts.shards}: no manifest.json; parts {sorted(needs_shards)} need shards (docs/gpu.md)")

    opts.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(opts.json.read_text()) if opts.json.is_file() else {}
    results["device"] = torch.cuda.get_device_name() if opts.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    results["torch"] = torch.__version__
    for part in parts:
        print(f"=== {part}", flush=True)
        start = time.perf_counter()
        results[part] = {
            **globals()[f"part_{part}"](opts, opts.work),
            "part_wall_s": time.perf_counter() - start,
            "tiny": opts.tiny,
            "load_average_1min": os.getloadavg()[0],
        }
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(results, indent=1) + "\n")  # after every part: a later failure loses nothing
        print(json.dumps(results[part], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
