"""`python -m trainer vqvae|evaluate ...`: stage 1 training and evaluation; see each `--help`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_tools.layout import DataError
from trainer.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    vqvae = commands.add_parser(
        "vqvae", help="train the VQ-VAE (stage 1)",
        description="Train the VQ-VAE on WebDataset shards. Run directly for one process, or under "
                    "`accelerate launch` / launch.sh for several GPUs. All hyper-parameters come from the config.")
    vqvae.add_argument("--config", type=Path, required=True, help="YAML config (see configs/)")
    vqvae.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value, e.g. --set train.max_steps=200 (repeatable)")
    vqvae.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in out_dir/checkpoints (model, optimizer, "
                            "scheduler, RNG, step, EMA codebook)")
    vqvae.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser(
        "evaluate", help="SSIM/PSNR, codebook usage and figures of a trained VQ-VAE on a split",
        description="Reconstruct every image of a split; write per_image.csv, summary.json (mean, median, min "
                    "SSIM, mean PSNR, codebook perplexity and codes used over the whole pass) and figures.")
    evaluate.add_argument("--checkpoint", type=Path, required=True,
                          help="a checkpoint folder (step_NNNNNNN) or a run folder (its newest checkpoint)")
    evaluate.add_argument("--split", default="test", choices=["train", "validate", "test"],
                          help="split to evaluate (default: %(default)s)")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for the CSV, summary and figures")
    evaluate.add_argument("--shards", help="shard folder (default: the one in the checkpoint's config)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    evaluate.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    evaluate.add_argument("--wandb", action="store_true",
                          help="also log the summary and figures to wandb (offline unless WANDB_API_KEY is set)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")

    args = parser.parse_args(argv)
    try:
        if args.command == "vqvae":
            from trainer.train_vqvae import train_vqvae

            train_vqvae(load_config(args.config, args.overrides), resume=args.resume, show_progress=not args.quiet)
        else:
            from trainer.evaluate import evaluate as run_evaluation

            summary = run_evaluation(args.checkpoint, args.split, args.out, shards=args.shards,
                                     batch_size=args.batch_size, device=args.device, show_progress=not args.quiet,
                                     log_wandb=args.wandb)
            print(json.dumps(summary, indent=1))
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
