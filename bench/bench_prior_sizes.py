"""Benchmark: the training step of transformer priors of several sizes against the config's own, in one run, and
the steps each one gets in the time of the config's `train.max_steps` (or `--budget-steps`): the step counts of an
equal-time comparison of sizes (docs/benchmarks.md, "The prior's size at equal time").

Random codes (the work per step does not depend on them), the config's batch, AdamW, forward + backward + step,
as `trainer prior` trains. The sizes take turns, two steps each per round, and each keeps its fastest round, so
load that comes and goes hits them alike. Run it pinned to one core with nothing else running; the docs' table
(measured when the config had 4 layers) comes from
    OMP_NUM_THREADS=1 taskset -c 1 python bench/bench_prior_sizes.py --set model.transformer.layers=4 \
        --sizes 2:128:4:1,8:128:4:1 --budget-steps 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from bench_onnx import NUM_CODES, NUM_CONDITIONS, REPO, machine
from bench_transformer_sampling import GRID, parse_size

from trainer.run.config_file import ConfigError, load_config
from trainer.stage2.config import PriorConfig
from trainer.stage2.load import build_prior
from trainer.stage2.prior_contract import PriorShape
from trainer.stage2.prior_loss import prior_loss

CONFIG = REPO / "configs" / "prior_oasis_32_transformer_cpu.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=CONFIG, help="a transformer prior config (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value before the sizes are applied, e.g. model.transformer.layers=4 (repeatable)",
    )
    p.add_argument(
        "--sizes",
        default="4:128:4:1,8:128:4:1",
        help="sizes to compare with the config's, layers:width:heads:kv_heads, comma-separated (default: %(default)s)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="rounds of two steps per size, 1 to 100 (default: %(default)s)"
    )
    p.add_argument(
        "--budget-steps",
        type=int,
        default=0,
        help="the config size's steps whose time every size gets; 0 = the config's train.max_steps (default: 0)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    try:
        args.sizes = [parse_size(size) for size in args.sizes.split(",")]
    except ValueError:
        p.error("--sizes: expected layers:width:heads:kv_heads[,...] of integers")
    if not 1 <= args.rounds <= 100:
        p.error("--rounds must be 1 to 100")
    if args.budget_steps < 0:
        p.error("--budget-steps must be >= 0")
    return args


def size_overrides(size: dict) -> list[str]:
    return [f"model.transformer.{key}={value}" for key, value in size.items()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        base = load_config(args.config, args.overrides, cls=PriorConfig)
        if base.model.kind != "transformer":
            raise ConfigError(f"{args.config}: model.kind is {base.model.kind!r}; this benchmark compares transformers")
        sizes = [{key: getattr(base.model.transformer, key) for key in args.sizes[0]}, *args.sizes]
        priors = []
        for size in sizes:
            torch.manual_seed(0)
            config = load_config(args.config, [*args.overrides, *size_overrides(size)], cls=PriorConfig)
            priors.append(build_prior(config, PriorShape(NUM_CODES, GRID, GRID, NUM_CONDITIONS)).train())
    except ValueError as err:  # a config error, or a size the transformer refuses
        print(f"error: {err}", file=sys.stderr)
        return 2
    budget = args.budget_steps or base.train.max_steps
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, NUM_CODES, (base.codes.batch_size, GRID, GRID), generator=generator)
    conditions = torch.randint(0, NUM_CONDITIONS, (base.codes.batch_size,), generator=generator)
    runs = []
    for size, prior in zip(sizes, priors):
        optimizer = torch.optim.AdamW(prior.parameters(), lr=base.train.lr, weight_decay=base.train.weight_decay)
        runs.append({"size": size, "prior": prior, "optimizer": optimizer, "seconds": []})

    def step(run: dict) -> None:
        loss, _ = prior_loss(run["prior"](codes, conditions), codes)
        run["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        run["optimizer"].step()

    for run in runs:  # warm-up: the first step allocates
        step(run)
    for _ in range(args.rounds):
        for run in runs:
            start = time.perf_counter()
            step(run)
            step(run)
            run["seconds"].append((time.perf_counter() - start) / 2)
    print(
        f"training step, batch {base.codes.batch_size}, one thread; equal time = {budget} steps of {args.config.name}"
    )
    rows = []
    reference_seconds = min(runs[0]["seconds"])
    for run in runs:
        seconds = min(run["seconds"])
        row = {
            **run["size"],
            "parameters": sum(p.numel() for p in run["prior"].parameters()),
            "seconds_per_step": seconds,
            "cost_ratio": seconds / reference_seconds,
            "equal_time_steps": round(budget * reference_seconds / seconds),
        }
        rows.append(row)
        print(
            "  {layers} layers x {width} wide, {heads} heads, {kv_heads} kv: {p:5.2f} M parameters, "
            "{s:5.2f} s a step ({r:4.2f}x): {n} steps".format(
                **run["size"], p=row["parameters"] / 1e6, s=seconds, r=row["cost_ratio"], n=row["equal_time_steps"]
            )
        )
    if args.json:
        results = {
            "machine": machine(),
            "config": str(args.config),
            "overrides": args.overrides,
            "budget_steps": budget,
            "rows": rows,
        }
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
