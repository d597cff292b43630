"""`python -m trainer evaluate-prior`: how good the prior is, in one command: likelihood on held-out
codes and the realism of its brains.

    python -m trainer evaluate-prior --checkpoint runs/prior_oasis32 --out runs/prior_oasis32/eval_test

1. Test bits per code and top-1 accuracy (teacher forcing on the test split's code grids).
2. Generated brains (`--n` of them, fast sampler, seed `--seed`) against real test slices, with no
   downloaded weights (trainer/generation_metrics.py says why each is meaningful):
   a. memorisation: SSIM of each image to its nearest training slice, generated vs real test;
   b. diversity: mean pairwise MS-SSIM, generated vs real test;
   c. Fréchet distance in the frozen VQ-VAE encoder's feature space. The decoder cannot make every
      detail of a real scan, so two references bound it: the test slices' own reconstructions (the
      floor a perfect prior would reach) and a disjoint set of real training slices;
   d. the histogram of codes in generated grids vs the encoder's grids of the test slices;
   e. structure (trainer/structure_metrics.py), because a Fréchet distance does not say what is wrong:
      the share of slices whose brain mask is one connected component, the symmetry (mirror IoU of the
      mask about the anatomical midline, which runs horizontally on these PNGs) and the share whose mask
      touches the image edge, generated vs real. Each generated slice in nearest_train.png is titled
      with its own: components and symmetry.
Everything goes to summary.json (printed too), with figures beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from common.cli import (
    add_batch_size_argument,
    add_checkpoint_argument,
    add_device_argument,
    add_force_argument,
    add_quiet_argument,
    add_sampling_arguments,
)
from common.cli_types import positive_int
from common.figures.generation import code_histograms, nearest_neighbours, structure_histograms
from common.output_dir import atomic_output_dir, check_output_dir
from common.sample_files import write_samples
from trainer.run.checkpoint import resolve_checkpoint
from trainer.run.wandb_logging import log_to_wandb
from trainer.stage1.data import SliceShards, epoch_batches
from trainer.stage1.load import numpy_decoder
from trainer.stage2.codes import load_code_tensors
from trainer.stage2.generate import generate
from trainer.stage2.generation_metrics import (
    code_histogram_comparison,
    encoder_features,
    frechet_distance,
    mean_pairwise_ms_ssim,
    nearest_ssim,
)
from trainer.stage2.load import load_paired_vqvae, load_prior
from trainer.stage2.prior_loss import likelihood_metrics, likelihood_sums
from trainer.stage2.structure_metrics import structure_metrics, summarize

SUMMARY = "summary.json"  # the marker of an evaluation folder: --force replaces only a folder that has it
DESCRIPTION = (
    "Bits per code and top-1 accuracy of the prior on a split's code grids; then sample --n brains and "
    "compare them with that split's real slices: nearest-training-slice SSIM (memorisation), mean "
    "pairwise MS-SSIM (diversity), Frechet distance in the VQ-VAE encoder's feature space, code histograms "
    "and structure (one connected brain, symmetry, edge contact). Prints and writes summary.json, "
    "figures and the samples."
)


def load_images(shards: str, split: str, limit: int = 0, seed: int = 0) -> torch.Tensor:
    """A split's slices as uint8 (N, 1, 256, 256), or `limit` of them chosen with a seed (0: all)."""
    images = torch.cat(
        [batch.images.mul(255).round().to(torch.uint8) for batch in epoch_batches(SliceShards(shards, split), 256)]
    )
    if limit and limit < len(images):
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]]
    return images


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as floats in [0, 1], the models' input."""
    return images.float() / 255.0


def evaluate_generation(
    checkpoint: Path,
    out: Path,
    n: int = 64,
    seed: int = 0,
    split: str = "test",
    batch_size: int = 32,
    device: str = "cpu",
    temperature: float = 1.0,
    top_k: int = 0,
    max_pairs: int = 500,
    log_wandb: bool = False,
    show_progress: bool = True,
    force: bool = False,
) -> dict:
    """Measure, then write summary.json, the figures and the samples into `out` (whole or not at all)."""
    out, checkpoint = Path(out), resolve_checkpoint(Path(checkpoint))
    check_output_dir(out, marker=SUMMARY, force=force, inputs=[checkpoint])
    prior, cfg, info = load_prior(checkpoint, device)
    vqvae, vq_cfg, vqvae_path, _ = load_paired_vqvae(info, None, device)
    inputs = [checkpoint, vqvae_path, *[Path(p) for p in (info.get("codes_dir"), vq_cfg.data.shards) if p]]
    check_output_dir(out, marker=SUMMARY, force=force, inputs=inputs)
    summary: dict = {
        "checkpoint": str(checkpoint),
        "split": split,
        "generated": n,
        "seed": seed,
        "temperature": temperature,
        "top_k": top_k,
    }

    codes, conditions = load_code_tensors(info["codes_dir"], split, prior.shape)
    likelihood = likelihood_metrics(likelihood_sums(prior, codes, conditions, batch_size))
    summary.update({f"{split}_{k}": v for k, v in likelihood.items()})

    started = time.perf_counter()
    generated_codes, generated_conditions, generated = generate(
        prior, vqvae, n, seed, temperature, top_k, batch_size=batch_size, show_progress=show_progress
    )
    summary["sampling_seconds"] = time.perf_counter() - started
    generated = torch.from_numpy(generated)[:, None]

    shards = vq_cfg.data.shards
    real = uint8_to_unit(load_images(shards, split))
    train = load_images(shards, "train")  # uint8: 0.5 GB for OASIS; as floats only once, below
    with torch.no_grad():
        reconstructions = torch.cat(
            [vqvae(real[i : i + batch_size].to(device))[0].clamp(0, 1).cpu() for i in range(0, len(real), batch_size)]
        )

    # (a) memorisation
    train_images = uint8_to_unit(train)
    gen_ssim, gen_nearest = nearest_ssim(generated, train_images)
    real_ssim, _ = nearest_ssim(real, train_images)
    summary.update(
        {
            "nearest_train_ssim_generated": float(gen_ssim.mean()),
            "nearest_train_ssim_generated_max": float(gen_ssim.max()),
            "nearest_train_ssim_real": float(real_ssim.mean()),
            "nearest_train_ssim_real_max": float(real_ssim.max()),
        }
    )
    # (b) diversity
    summary.update(
        {
            "ms_ssim_generated": mean_pairwise_ms_ssim(generated, max_pairs, seed),
            "ms_ssim_real": mean_pairwise_ms_ssim(real, max_pairs, seed),
        }
    )
    # (c) Fréchet distance in the encoder's feature space
    real_features = encoder_features(vqvae, real)
    references = {
        "generated": generated,
        "reconstructed": reconstructions,
        "train": train_images[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(real)]],
    }
    for name, images in references.items():
        summary[f"frechet_{name}_vs_{split}"] = frechet_distance(encoder_features(vqvae, images), real_features)
    # (d) code histograms
    histograms = code_histogram_comparison(codes.numpy(), generated_codes, prior.shape.num_codes)
    summary.update(
        {
            "codes_used_real": histograms["codes_used_a"],
            "codes_used_generated": histograms["codes_used_b"],
            "code_total_variation": histograms["total_variation"],
            "code_jensen_shannon_bits": histograms["jensen_shannon_bits"],
        }
    )
    # (e) structure
    structure = {"generated": structure_metrics(generated.numpy()), "real": structure_metrics(real.numpy())}
    summary.update(structure_summary(structure))

    shown = min(32, n)
    with atomic_output_dir(out, marker=SUMMARY, force=force, inputs=inputs) as tmp:
        write_samples(
            tmp / "samples",
            generated_codes,
            generated_conditions,
            generated[:, 0].numpy(),
            prior.shape.num_codes,
            numpy_decoder(vqvae),
        )
        nearest_neighbours(
            generated[:shown, 0].numpy(),
            train_images[gen_nearest[:shown], 0].numpy(),
            gen_ssim[:shown],
            tmp / "nearest_train.png",
            f"Memorisation check: generated slices, nearest training slices ({shown} of {n})",
            titles=[structure_title(structure["generated"], i) for i in range(shown)],
        )
        structure_histograms(structure["real"], structure["generated"], tmp / "structure_histograms.png")
        code_histograms(
            np.asarray(histograms["counts_a"]),
            np.asarray(histograms["counts_b"]),
            tmp / "code_histograms.png",
            f"Code frequencies: {split} split vs {n} prior samples",
        )
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    if log_wandb:
        log_to_wandb(summary, out, cfg.wandb.project, cfg.wandb.mode, f"evaluate-prior-{split}", prefix=split)
    return summary


def structure_summary(structure: dict[str, dict[str, np.ndarray]]) -> dict:
    """summary.json's structure entries: shares and symmetry per set ("generated", "real"), and the
    symmetry histograms over [0, 1]."""
    summary, histogram = {}, {}
    for name, metrics in structure.items():
        shares = summarize(metrics)
        for key in ("single_component_share", "symmetry_mean", "symmetry_median", "touches_edge_share", "empty_share"):
            summary[f"{key}_{name}"] = shares[key]
        histogram["edges"] = shares["symmetry_histogram"]["edges"]
        histogram[name] = shares["symmetry_histogram"]["counts"]
    return {**summary, "symmetry_histogram": histogram}


def structure_title(metrics: dict[str, np.ndarray], index: int) -> str:
    """One generated slice's structure, short enough for a panel title."""
    parts = int(metrics["components"][index])
    return f"{parts} part{'s' * (parts != 1)}, sym {metrics['symmetry'][index]:.2f}"


def summary_table(summary: dict) -> str:
    """The few numbers to read first, generated beside real: likelihood, memorisation, diversity, Frechet."""
    split = summary["split"]
    rows = [
        ("", "generated", f"real {split}", ""),
        (
            "nearest-train SSIM, mean",
            f"{summary['nearest_train_ssim_generated']:.3f}",
            f"{summary['nearest_train_ssim_real']:.3f}",
            "memorisation: generated far above real = copies",
        ),
        (
            "nearest-train SSIM, max",
            f"{summary['nearest_train_ssim_generated_max']:.3f}",
            f"{summary['nearest_train_ssim_real_max']:.3f}",
            "",
        ),
        (
            "pairwise MS-SSIM",
            f"{summary['ms_ssim_generated']:.3f}",
            f"{summary['ms_ssim_real']:.3f}",
            "diversity: lower = more varied",
        ),
        (
            f"Frechet to {split}",
            f"{summary[f'frechet_generated_vs_{split}']:.3g}",
            f"{summary[f'frechet_train_vs_{split}']:.3g}",
            f"real = train slices; floor (reconstructions) {summary[f'frechet_reconstructed_vs_{split}']:.3g}",
        ),
        (
            "one connected brain, share",
            f"{summary['single_component_share_generated']:.3f}",
            f"{summary['single_component_share_real']:.3f}",
            "structure: foreground in one piece",
        ),
        (
            "left-right symmetry, mean",
            f"{summary['symmetry_mean_generated']:.3f}",
            f"{summary['symmetry_mean_real']:.3f}",
            "mirror IoU of the brain mask",
        ),
    ]
    lines = [
        f"{split}: {summary[f'{split}_bits_per_code']:.3f} bits per code, top-1 accuracy "
        f"{summary[f'{split}_accuracy']:.3f}; {summary['generated']} generated brains"
    ]
    lines += [f"{name:<26}{generated:>12}{real:>15}  {note}".rstrip() for name, generated, real, note in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, "prior")
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json, figures and samples")
    parser.add_argument(
        "--split", default="test", choices=["validate", "test"], help="real split (default: %(default)s)"
    )
    add_sampling_arguments(parser, n=64, slice_option=False)
    parser.add_argument(
        "--max-pairs",
        type=positive_int,
        default=500,
        help="image pairs per set for the MS-SSIM diversity (default: %(default)s)",
    )
    add_batch_size_argument(parser, 32, "batch size for every pass")
    add_device_argument(parser)
    parser.add_argument("--wandb", action="store_true", help="also log the summary and figures to wandb")
    parser.add_argument(
        "--table", action="store_true", help="print a short table of the main numbers instead of the whole summary.json"
    )
    add_quiet_argument(parser)
    add_force_argument(parser)


def run(args: argparse.Namespace) -> None:
    summary = evaluate_generation(
        args.checkpoint,
        args.out,
        n=args.n,
        seed=args.seed,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        temperature=args.temperature,
        top_k=args.top_k,
        max_pairs=args.max_pairs,
        log_wandb=args.wandb,
        show_progress=not args.quiet,
        force=args.force,
    )
    print(summary_table(summary) if args.table else json.dumps(summary, indent=1))
