"""`python -m trainer COMMAND ...`: the data flow of both stages, in order; see each `--help`.

    vqvae -> evaluate -> encode -> prior -> sample -> evaluate-prior
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_tools.layout import DataError
from trainer.config import ConfigError, load_config
from trainer.sampling_rule import add_sampling_arguments


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

    encode = commands.add_parser(
        "encode", help="encode every split with a frozen VQ-VAE into code grids (input of stage 2)",
        description="Run the VQ-VAE's encoder once over every split of the shards and write {split}.npz (codes, "
                    "slice positions, subjects, keys) and codes.json. Splits already encoded by the same checkpoint "
                    "are skipped, so an interrupted run resumes.")
    encode.add_argument("--checkpoint", type=Path, required=True,
                        help="VQ-VAE checkpoint folder, or a run folder (its newest checkpoint)")
    encode.add_argument("--out", type=Path, required=True, help="folder for the code files")
    encode.add_argument("--shards", help="shard folder (default: the one in the checkpoint's config)")
    encode.add_argument("--batch-size", type=int, default=64, help="images per batch (default: %(default)s)")
    encode.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    encode.add_argument("--force", action="store_true", help="re-encode splits that are already there")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")

    prior = commands.add_parser(
        "prior", help="train the gated PixelCNN prior on code grids (stage 2)",
        description="Train the prior on the codes written by `encode`. Run directly for one process, or under "
                    "`accelerate launch` / launch.sh stage2 for several GPUs. All hyper-parameters come from the config.")
    prior.add_argument("--config", type=Path, required=True, help="YAML config (see configs/prior_*.yaml)")
    prior.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value, e.g. --set train.max_steps=200 (repeatable)")
    prior.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in out_dir/checkpoints")
    prior.add_argument("--quiet", action="store_true", help="no progress bar")

    sample = commands.add_parser(
        "sample", help="generate brains: sample code grids from the prior and decode them",
        description="Sample code grids with the exact fast sampler (or --naive), decode them with the VQ-VAE the "
                    "prior was trained on, and write code maps, images, samples.npz and a side-by-side figure.")
    sample.add_argument("--checkpoint", type=Path, required=True, help="prior checkpoint folder or run folder")
    sample.add_argument("--out", type=Path, required=True, help="output folder")
    add_sampling_arguments(sample)
    sample.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    sample.add_argument("--naive", action="store_true",
                        help="run the whole network for every cell (slow reference; gives the same samples)")
    sample.add_argument("--vqvae", type=Path, default=None,
                        help="VQ-VAE checkpoint to decode with (default: the one recorded in the prior)")
    sample.add_argument("--wandb", action="store_true", help="also log the figure to wandb (offline without a key)")

    judge = commands.add_parser(
        "evaluate-prior", help="test bits per code and accuracy, and how real generated brains are",
        description="Bits per code and top-1 accuracy of the prior on a split's code grids; then sample --n brains "
                    "and compare them with that split's real slices: nearest-training-slice SSIM (memorisation), "
                    "mean pairwise MS-SSIM (diversity), Frechet distance in the VQ-VAE encoder's feature space, and "
                    "code histograms. Prints and writes summary.json, figures and the samples.")
    judge.add_argument("--checkpoint", type=Path, required=True, help="prior checkpoint folder or run folder")
    judge.add_argument("--out", type=Path, required=True, help="folder for summary.json, figures and samples")
    judge.add_argument("--split", default="test", choices=["validate", "test"], help="real split (default: %(default)s)")
    judge.add_argument("--n", type=int, default=64, help="brains to generate (default: %(default)s)")
    judge.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    judge.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    judge.add_argument("--top-k", type=int, default=0, help="sampling top-k, 0 = all codes (default: %(default)s)")
    judge.add_argument("--max-pairs", type=int, default=500,
                       help="image pairs per set for the MS-SSIM diversity (default: %(default)s)")
    judge.add_argument("--batch-size", type=int, default=32, help="batch size for every pass (default: %(default)s)")
    judge.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    judge.add_argument("--wandb", action="store_true", help="also log the summary and figures to wandb")
    judge.add_argument("--quiet", action="store_true", help="no progress bar")

    args = parser.parse_args(argv)
    try:
        if args.command == "vqvae":
            from trainer.train_vqvae import train_vqvae

            train_vqvae(load_config(args.config, args.overrides), resume=args.resume, show_progress=not args.quiet)
        elif args.command == "prior":
            from trainer.config import PriorConfig
            from trainer.train_prior import train_prior

            train_prior(load_config(args.config, args.overrides, cls=PriorConfig), resume=args.resume,
                        show_progress=not args.quiet)
        elif args.command == "sample":
            from trainer.sample import run_sampling

            summary = run_sampling(args.checkpoint, args.out, n=args.n, seed=args.seed, temperature=args.temperature,
                                   top_k=args.top_k, slice_index=args.slice, batch_size=args.batch_size,
                                   device=args.device, naive=args.naive, vqvae_checkpoint=args.vqvae,
                                   log_wandb=args.wandb, show_progress=not args.quiet)
            print(f"{summary['n']} brains in {summary['seconds']:.1f} s -> {args.out} (figure: {summary['figure']})")
        elif args.command == "evaluate-prior":
            from trainer.evaluate_prior import evaluate_generation

            summary = evaluate_generation(args.checkpoint, args.out, n=args.n, seed=args.seed, split=args.split,
                                          batch_size=args.batch_size, device=args.device,
                                          temperature=args.temperature, top_k=args.top_k, max_pairs=args.max_pairs,
                                          log_wandb=args.wandb,
                                          show_progress=not args.quiet)
            print(json.dumps(summary, indent=1))
        elif args.command == "encode":
            from trainer.codes import encode_splits

            meta = encode_splits(args.checkpoint, args.out, shards=args.shards, batch_size=args.batch_size,
                                 device=args.device, force=args.force, show_progress=not args.quiet)
            print(f"codes {meta['height']}x{meta['width']} (K = {meta['num_codes']}) in {args.out}: "
                  + ", ".join(f"{split} {count}" for split, count in meta["splits"].items()))
        else:
            from trainer.evaluate import evaluate as run_evaluation

            summary = run_evaluation(args.checkpoint, args.split, args.out, shards=args.shards,
                                     batch_size=args.batch_size, device=args.device, show_progress=not args.quiet,
                                     log_wandb=args.wandb)
            print(json.dumps(summary, indent=1))
    except (ConfigError, DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
