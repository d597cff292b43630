"""Stage-1 variants side by side at an equal time budget (issue 13): test SSIM, PSNR and codebook usage, and
optionally the prior's validation bits per code after the same short prior run on each variant's codes.

    python bench/bench_stage1_variants.py --shards data/oasis_shards --out runs/stage1_variants \\
        --budget-minutes 9 --cores 0 1 --prior-steps 150 --prior-for baseline fsq

Each variant is the base config plus overrides (`VARIANTS` below, or `--variant NAME=KEY=V,KEY=V`; every
built-in variant sets the whole loss, so the table does not change when the base config's loss does). Equal
time, not equal steps: an SSIM term or a discriminator costs time per step, and time is what a user has.
So every variant first trains `--probe-steps` steps to measure its speed, then trains the steps that fit the budget
at that speed from scratch (its learning-rate schedule sized to them). A variant with an adversarial term is probed
with the term on from step 0, so the discriminator's cost is in its speed; when its term starts later, a second
probe without the term prices the steps before `loss.adversarial.start_step`. Runs are pinned one per core with
one thread, as many at once as `--cores` lists. Every variant is then evaluated on the whole test split by `trainer
evaluate` (the project's fixed SSIM: Gaussian 11, sigma 1.5, data range 1). With `--prior-steps`, the
variants of `--prior-for` are encoded and the prior config trains that many steps on each one's codes.
Results: `<out>/results.json` and a markdown table on stdout. Finished steps in `<out>` are reused, so an
interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage2.config import PriorConfig

# The base config's loss has the SSIM term (this benchmark's winner); MSE alone. No variant inherits an adversarial
# term from the base config: those that have one say so.
MSE = ["loss.ssim_weight=0", "loss.adversarial.weight=0"]
SSIM = ["loss.ssim_weight=0.1", "loss.adversarial.weight=0"]
# VQGAN's adversarial term at the starting values README suggests for the OASIS 32x32 CPU config
ADVERSARIAL = [
    "loss.adversarial.weight=0.1",
    "loss.adversarial.start_step=300",
    "loss.adversarial.lr=2e-4",
    "loss.adversarial.channels=8",
    "loss.adversarial.layers=3",
]
VARIANTS = {
    "baseline": MSE,
    "ssim": SSIM,
    "cosine8": [*MSE, "quantizer.codebook_dim=8", "quantizer.cosine=true"],
    "fsq": [*MSE, "quantizer.kind=fsq", "quantizer.levels=[8, 8, 8]"],
    "ssim_cosine8": [*SSIM, "quantizer.codebook_dim=8", "quantizer.cosine=true"],
    "ssim_fsq": [*SSIM, "quantizer.kind=fsq", "quantizer.levels=[8, 8, 8]"],
    "ssim_adversarial": [*SSIM, *ADVERSARIAL],
}
WITHOUT = ".without_adversarial"  # the probe of a variant's speed before its adversarial term starts
Job = tuple[list[str], Path]  # (arguments of `python -m`, log file)


def start(args: list[str], core: int, log: Path) -> subprocess.Popen:
    """`python -m args...` pinned to one core with one thread, so that parallel runs do not share one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        return subprocess.Popen(
            ["taskset", "-c", str(core), sys.executable, "-m", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def run_all(jobs: list[Job], cores: list[int]) -> None:
    """Run the jobs, one per core at a time; at the first failure stop the others and exit naming its log."""
    pending, running = list(jobs), {}  # core -> (process, log)
    while pending or running:
        for core in cores:
            if core not in running and pending:
                cmd, log = pending.pop(0)
                running[core] = start(cmd, core, log), log
        time.sleep(2)
        for core, (process, log) in list(running.items()):
            if process.poll() is None:
                continue
            del running[core]
            if process.returncode:
                for other, _ in running.values():
                    other.kill()
                sys.exit(f"{log}: exit {process.returncode}; see that log")


def with_settings(args: list[str], settings: list[str]) -> list[str]:
    return args + [item for setting in settings for item in ("--set", setting)]


def train_job(cfg_path: Path, out: Path, shards: str, overrides: list[str], steps: int, log: Path) -> Job:
    settings = [
        f"out_dir={out}",
        f"data.shards={shards}",
        f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}",
        f"train.log_every={min(10, steps)}",
        "train.eval_batches=2",
        "wandb.enabled=false",
        *overrides,
    ]
    return with_settings(["trainer", "vqvae", "--config", str(cfg_path), "--quiet"], settings), log


def last_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=section.key=value,section.key=value")
    return name, [o for o in overrides.split(",") if o]


def speed_probes(config: Path, variants: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """({probe name: overrides}, {variant: the step its adversarial term starts at}) for these variants: each is
    probed with its term (if any) on from step 0, and one whose term starts later also without it. Loading each
    variant's config checks its overrides before any run starts."""
    probes, starts = {}, {}
    for name, overrides in variants.items():
        adversarial = load_config(config, overrides, cls=VQVAEConfig).loss.adversarial
        starts[name] = adversarial.start_step if adversarial.weight else 0
        probes[name] = overrides + (["loss.adversarial.start_step=0"] if adversarial.weight else [])
        if starts[name]:
            probes[name + WITHOUT] = overrides + ["loss.adversarial.weight=0"]
    return probes, starts


def steps_in(seconds: float, start: int, before: float, after: float) -> int:
    """Optimizer steps that fit in `seconds` when the first `start` run at `before` steps/s and the rest at
    `after` (a variant whose adversarial term starts at step `start`)."""
    if start >= seconds * before:
        return max(1, round(seconds * before))
    return max(1, round(start + (seconds - start / before) * after))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=Path("configs/vqvae_oasis_32_cpu.yaml"), help="base config (%(default)s)"
    )
    parser.add_argument("--shards", required=True, help="shard folder with train, validate and test splits")
    parser.add_argument("--out", type=Path, required=True, help="folder for runs, evaluations, logs, results.json")
    parser.add_argument("--budget-minutes", type=float, required=True, help="training time of every variant")
    parser.add_argument("--cores", type=int, nargs="+", default=[0], help="CPU cores to pin runs to, one run each")
    parser.add_argument("--probe-steps", type=int, default=40, help="steps of the speed probe (%(default)s)")
    parser.add_argument("--probe-only", action="store_true", help="print each variant's speed and stop")
    parser.add_argument("--only", nargs="+", help="run only these variants (default: all)")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], help="extra NAME=KEY=V,KEY=V")
    parser.add_argument("--prior-steps", type=int, default=0, help="prior steps on each --prior-for variant's codes")
    parser.add_argument(
        "--prior-config", type=Path, default=Path("configs/prior_oasis_32_transformer_cpu.yaml"), help="(%(default)s)"
    )
    parser.add_argument("--prior-for", nargs="+", default=[], help="variants whose codes get the short prior run")
    args = parser.parse_args()
    if args.budget_minutes <= 0 or args.probe_steps < 20 or args.prior_steps < 0:
        parser.error("--budget-minutes must be > 0, --probe-steps >= 20 and --prior-steps >= 0")
    variants = {**VARIANTS, **dict(args.variant)}
    names = args.only or list(variants)
    unknown = [n for n in names + args.prior_for if n not in variants]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(variants)}")
    base = load_config(args.config, cls=VQVAEConfig)
    images_per_step = base.data.batch_size * base.train.grad_accum  # one process per variant
    out, logs = args.out, args.out / "logs"

    # 1. Speed probes (steps 21..probe_steps logged, start-up excluded).
    probes, starts = speed_probes(args.config, {n: variants[n] for n in names})
    run_all(
        [
            train_job(args.config, out / "probe" / p, args.shards, probes[p], args.probe_steps, logs / f"probe_{p}.log")
            for p in probes
            if not (out / "probe" / p / "metrics.jsonl").is_file()
        ],
        args.cores,
    )
    speed = {p: last_record(out / "probe" / p)["images_per_s"] for p in probes}
    before = {n: speed.get(n + WITHOUT, speed[n]) for n in names}  # images/s before the adversarial term starts
    seconds = args.budget_minutes * 60
    steps = {n: steps_in(seconds, starts[n], before[n] / images_per_step, speed[n] / images_per_step) for n in names}
    if args.probe_only:
        for n in names:
            without = f" ({before[n]:.1f} without its adversarial term)" if n + WITHOUT in speed else ""
            print(f"{n}: {speed[n]:.1f} images/s{without}, {steps[n]} steps in {args.budget_minutes} minutes")
        return
    # 2. The timed runs, then 3. test evaluations.
    run_all(
        [
            train_job(args.config, out / "runs" / n, args.shards, variants[n], steps[n], logs / f"train_{n}.log")
            for n in names
            if not finished(out / "runs" / n, steps[n])
        ],
        args.cores,
    )
    evaluate = ["trainer", "evaluate", "--split", "test", "--quiet", "--force"]
    run_all(
        [
            (evaluate + ["--checkpoint", str(out / "runs" / n), "--out", str(out / "eval" / n)], logs / f"eval_{n}.log")
            for n in names
            if not (out / "eval" / n / "summary.json").is_file()
        ],
        args.cores,
    )
    # 4. Short prior runs on the codes of --prior-for.
    prior_for = [n for n in args.prior_for if n in names] if args.prior_steps else []
    encode = ["trainer", "encode", "--quiet"]
    run_all(
        [
            (
                encode + ["--checkpoint", str(out / "runs" / n), "--out", str(out / "codes" / n)],
                logs / f"encode_{n}.log",
            )
            for n in prior_for
        ],
        args.cores,
    )
    run_all(
        [
            prior_job(
                args.prior_config, out / "prior" / n, out / "codes" / n, args.prior_steps, logs / f"prior_{n}.log"
            )
            for n in prior_for
            if not finished(out / "prior" / n, args.prior_steps)
        ],
        args.cores,
    )

    results = {}
    for n in names:
        summary = json.loads((out / "eval" / n / "summary.json").read_text())
        results[n] = {
            "overrides": variants[n],
            "images_per_s_probe": speed[n],
            **({"images_per_s_probe_without_adversarial": before[n]} if n + WITHOUT in speed else {}),
            "steps": steps[n],
            "train_seconds": train_seconds(out / "runs" / n, images_per_step),
            **{
                k: summary[k]
                for k in ("ssim_mean", "ssim_median", "ssim_min", "psnr_mean", "codes_used", "codebook_perplexity")
            },
        }
        if n in prior_for:
            results[n]["prior_val_bits_per_code"] = last_record(out / "prior" / n)["val_bits_per_code"]
    setup = {k: str(v) for k, v in vars(args).items() if k != "variant"}
    (out / "results.json").write_text(json.dumps({"setup": setup, "variants": results}, indent=1) + "\n")
    print(markdown_table(results))


def finished(run_dir: Path, steps: int) -> bool:
    return (run_dir / "checkpoints" / f"step_{steps:07d}" / "model.safetensors").is_file()


def prior_job(cfg_path: Path, out: Path, codes: Path, steps: int, log: Path) -> Job:
    eval_every = load_config(cfg_path, cls=PriorConfig).train.eval_every
    settings = [
        f"out_dir={out}",
        f"codes.dir={codes}",
        f"train.max_steps={steps}",
        f"train.eval_every={min(eval_every, steps)}",
        f"train.checkpoint_every={steps}",
        "wandb.enabled=false",
    ]
    return with_settings(["trainer", "prior", "--config", str(cfg_path), "--quiet"], settings), log


def train_seconds(run_dir: Path, images_per_step: int) -> float:
    """Training time from the logged speed of every window (evaluation and start-up excluded)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds, previous = 0.0, 0
    for r in records:
        if "images_per_s" in r:
            seconds += (r["step"] - previous) * images_per_step / r["images_per_s"]
            previous = r["step"]
    return seconds


def markdown_table(results: dict) -> str:
    lines = [
        "| variant | steps | train min | test SSIM (mean / median / min) | PSNR | codes used | perplexity "
        "| prior val bits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in results.items():
        bits = f"{r['prior_val_bits_per_code']:.3f}" if "prior_val_bits_per_code" in r else ""
        lines.append(
            f"| {n} | {r['steps']} | {r['train_seconds'] / 60:.1f} "
            f"| {r['ssim_mean']:.4f} / {r['ssim_median']:.4f} / {r['ssim_min']:.4f} "
            f"| {r['psnr_mean']:.2f} dB | {r['codes_used']} | {r['codebook_perplexity']:.1f} | {bits} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
