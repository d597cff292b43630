"""`python -m trainer evaluate-prior`: how good the prior is, in one command: likelihood on held-out
codes and the realism of its brains.

    python -m trainer evaluate-prior --checkpoint runs/prior_oasis32 --out runs/prior_oasis32/eval_test

1. Test bits per code and top-1 accuracy (teacher forcing on the test split's code grids).
2. Generated brains (`--n` of them, fast sampler, seed `--seed`) against real test slices, with no
   downloaded weights (trainer/stage2/generation_metrics.py says why each is meaningful):
   a. memorisation: SSIM of each image to its nearest training slice, generated vs real test;
   b. diversity: mean pairwise MS-SSIM, generated vs real test;
   c. Fréchet distance in the frozen VQ-VAE encoder's feature space. The decoder cannot make every
      detail of a real scan, so two references bound it: the test slices' own reconstructions (the
      floor a perfect prior would reach) and a disjoint set of real training slices;
   d. the histogram of codes in generated grids vs the encoder's grids of the test slices;
   e. structure (trainer/stage2/structure_metrics.py), because a Fréchet distance does not say what is wrong:
      the share of slices whose brain mask is one connected component, the symmetry (mirror IoU of the
      mask about the anatomical midline, which runs horizontally on these PNGs) and the share whose mask
      touches the image edge, generated vs real. Each generated slice in nearest_train.png is titled
      with its own: components and symmetry;
   f. realism (trainer/stage1/realism.py): the held-out accuracy of a classifier telling the generated
      slices from real training slices (0.5 = indistinguishable), and from the split's reconstructions (both
      out of the same decoder: what it finds is the prior's doing), beside real against real training slices.
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
    add_vqvae_argument,
)
from common.cli_types import integer
from common.figures.generation import code_histograms, nearest_neighbours, structure_histograms
from common.limits import MAX_PAIRS
from common.output_dir import atomic_output_dir, check_output_dir
from common.sample_files import write_samples
from trainer.run.checkpoint import PRIOR_INFO, resolve_checkpoint
from trainer.run.wandb_logging import log_to_wandb
from trainer.stage1.data import read_split
from trainer.stage1.load import numpy_decoder
from trainer.stage1.realism import (
    DEFAULT_OPTIONS,
    TURNED_OFF,
    RealismOptions,
    add_realism_arguments,
    as_uint8,
    frechet_distance,
    realism_options,
    realism_report,
    train_reference,
)
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.codes import check_codes_vqvae, codes_shards, load_code_tensors
from trainer.stage2.config import PriorConfig
from trainer.stage2.generate import generate
from trainer.stage2.generation_metrics import (
    code_histogram_comparison,
    encoder_features,
    mean_pairwise_ms_ssim,
    nearest_ssim,
)
from trainer.stage2.load import load_paired_vqvae, load_prior
from trainer.stage2.pixelcnn import GatedPixelCNN
from trainer.stage2.prior_loss import likelihood_metrics, likelihood_sums
from trainer.stage2.structure_metrics import structure_metrics, summarize
from trainer.stage2.transformer_prior import TransformerPrior

SUMMARY = "summary.json"  # the marker of an evaluation folder: --force replaces only a folder that has it
KIND = "trainer evaluate-prior"  # recorded in the folder: --force replaces only its own summary.json folders
DESCRIPTION = (
    "Bits per code and top-1 accuracy of the prior on a split's code grids; then sample --n brains and "
    "compare them with that split's real slices: nearest-training-slice SSIM (memorisation), mean "
    "pairwise MS-SSIM (diversity), Frechet distance in the VQ-VAE encoder's feature space, code histograms, "
    "structure (one connected brain, symmetry, edge contact) and the realism test (held-out accuracy of a "
    "classifier telling generated from real slices, 0.5 = indistinguishable). Prints and writes summary.json, "
    "figures and the samples."
)


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
    realism: RealismOptions | None = DEFAULT_OPTIONS,
    vqvae_checkpoint: Path | None = None,
) -> dict:
    """Measure, then write summary.json, the figures and the samples into `out` (whole or not at all).
    `vqvae_checkpoint` decodes instead of the prior's own VQ-VAE: one that makes the same codes (load_paired_vqvae)."""
    out, checkpoint = Path(out), resolve_checkpoint(Path(checkpoint))
    prior, cfg, info, vqvae, shards, inputs = load_models(checkpoint, out, device, force, vqvae_checkpoint)
    summary: dict = {"checkpoint": str(checkpoint), "vqvae": str(inputs[1]), "split": split}  # inputs[1]: its folder
    summary.update(generated=n, seed=seed, temperature=temperature, top_k=top_k)

    codes, conditions = load_code_tensors(info["codes_dir"], split, prior.shape)
    likelihood = likelihood_metrics(likelihood_sums(prior, codes, conditions, batch_size))
    summary.update({f"{split}_{k}": v for k, v in likelihood.items()})

    real, reconstructions, train_images, subjects = real_images(vqvae, shards, split, batch_size, device)
    generated_codes, generated_conditions, generated, summary["sampling_seconds"] = sample_brains(
        prior, vqvae, n, seed, temperature, top_k, batch_size, show_progress
    )

    memorisation, gen_ssim, gen_nearest = memorisation_metrics(generated, real, train_images)
    summary.update(memorisation)
    summary.update(diversity_metrics(generated, real, max_pairs, seed))
    summary.update(frechet_metrics(vqvae, real, generated, reconstructions, train_images, split, seed))
    histograms = code_histogram_comparison(codes.numpy(), generated_codes, prior.shape.num_codes)
    summary.update(code_histogram_summary(histograms))
    structure = {"generated": structure_metrics(generated.numpy()), "real": structure_metrics(real.numpy())}
    summary.update(structure_summary(structure))
    summary["realism"] = generation_realism(
        generated, real, reconstructions, subjects, shards, realism, device, show_progress
    )

    with atomic_output_dir(out, marker=SUMMARY, force=force, inputs=inputs, kind=KIND) as tmp:
        write_samples(
            tmp / "samples",
            generated_codes,
            generated_conditions,
            generated[:, 0].numpy(),
            prior.shape.num_codes,
            numpy_decoder(vqvae),
        )
        write_figures(tmp, generated, train_images, gen_nearest, gen_ssim, structure, histograms, split, n)
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    if log_wandb:
        log_to_wandb(summary, out, cfg.wandb.project, cfg.wandb.mode, f"evaluate-prior-{split}", prefix=split)
    return summary


def load_models(
    checkpoint: Path, out: Path, device: str, force: bool, vqvae_checkpoint: Path | None = None
) -> tuple[GatedPixelCNN | TransformerPrior, PriorConfig, dict, VQVAE, str, list[Path]]:
    """The prior with its config and prior.json, its paired VQ-VAE, the shards its codes were made from, and every
    input `out` must not be: `out` is checked before anything loads, so a wrong --out fails at once, and again
    once the VQ-VAE, codes and shards are known. The codes must be those of the prior's VQ-VAE."""
    check_output_dir(out, marker=SUMMARY, force=force, inputs=[checkpoint], kind=KIND)
    prior, cfg, info = load_prior(checkpoint, device)
    vqvae, vq_cfg, vqvae_path, _ = load_paired_vqvae(info, vqvae_checkpoint, device)
    check_codes_vqvae(info["codes_dir"], info.get("vqvae_sha256"), checkpoint / PRIOR_INFO)
    shards = codes_shards(info["codes_dir"], vq_cfg.data.shards)
    inputs = [checkpoint, vqvae_path, *[Path(p) for p in (info.get("codes_dir"), shards) if p]]
    check_output_dir(out, marker=SUMMARY, force=force, inputs=inputs, kind=KIND)
    return prior, cfg, info, vqvae, shards, inputs


def sample_brains(
    prior: GatedPixelCNN | TransformerPrior,
    vqvae: VQVAE,
    n: int,
    seed: int,
    temperature: float,
    top_k: int,
    batch_size: int,
    show_progress: bool,
) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor, float]:
    """`n` brains from the fast sampler, timed because its speed is reported beside its quality: their codes,
    conditions, images as (n, 1, 256, 256) floats, and the seconds sampling took."""
    started = time.perf_counter()
    codes, conditions, images = generate(
        prior, vqvae, n, seed, temperature, top_k, batch_size=batch_size, show_progress=show_progress
    )
    seconds = time.perf_counter() - started
    return codes, conditions, torch.from_numpy(images)[:, None], seconds


def real_images(
    vqvae: VQVAE, shards: str, split: str, batch_size: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """What the generated slices are measured against, as floats in [0, 1]: the split's real slices, their
    reconstructions by the VQ-VAE (what a perfect prior could reach at best) and every training slice; and the
    subject of each real slice."""
    pixels, subjects = read_split(shards, split)
    real = uint8_to_unit(pixels)
    if len(real) < 2:  # checked before sampling: the pairwise and Frechet metrics compare at least two slices
        raise ValueError(f"{shards}: split '{split}' holds {len(real)} slice(s); evaluate-prior needs at least 2")
    train = read_split(shards, "train")[0]  # uint8: 0.5 GB for OASIS; as floats only once, on return
    with torch.no_grad():
        reconstructions = torch.cat(
            [vqvae(real[i : i + batch_size].to(device))[0].clamp(0, 1).cpu() for i in range(0, len(real), batch_size)]
        )
    return real, reconstructions, uint8_to_unit(train), subjects


def generation_realism(
    generated: torch.Tensor,
    real: torch.Tensor,
    reconstructions: torch.Tensor,
    subjects: list[str],
    shards: str,
    options: RealismOptions | None,
    device: str,
    show_progress: bool,
) -> dict:
    """(f) summary.json's `realism`: the classifier two-sample test of the generated slices against as many whole
    real training subjects as the split holds, and against the split's reconstructions (both sets come out of
    the same decoder, so what it finds is the prior's); beside them the split's real slices against the same
    training subjects (real against real: about 0.5). Each generated slice is a group of its own."""
    if options is None:
        return dict(TURNED_OFF)
    train, train_subjects = train_reference(shards, len(set(subjects)), options.seed)
    brains = as_uint8(generated[:, 0])
    own = [f"generated {i}" for i in range(len(brains))]
    comparisons = {
        "generated_vs_train": (brains, own, train, train_subjects),
        "generated_vs_reconstructions": (brains, own, as_uint8(reconstructions[:, 0]), subjects),
        "real_vs_train": (as_uint8(real[:, 0]), subjects, train, train_subjects),
    }
    reference = {"split": "train", "subjects": len(set(train_subjects)), "images": len(train)}
    return {"reference": reference, **realism_report(comparisons, options, device, show_progress)}


def memorisation_metrics(
    generated: torch.Tensor, real: torch.Tensor, train_images: torch.Tensor
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """(a) SSIM to the nearest training slice, generated beside real: only generated far above real means copies.
    Also each generated slice's SSIM and nearest training slice, which nearest_train.png shows."""
    gen_ssim, gen_nearest = nearest_ssim(generated, train_images)
    real_ssim, _ = nearest_ssim(real, train_images)
    metrics = {
        "nearest_train_ssim_generated": float(gen_ssim.mean()),
        "nearest_train_ssim_generated_max": float(gen_ssim.max()),
        "nearest_train_ssim_real": float(real_ssim.mean()),
        "nearest_train_ssim_real_max": float(real_ssim.max()),
    }
    return metrics, gen_ssim, gen_nearest


def diversity_metrics(generated: torch.Tensor, real: torch.Tensor, max_pairs: int, seed: int) -> dict[str, float]:
    """(b) Mean pairwise MS-SSIM of each set: the real slices' value is the variety the prior should match."""
    return {
        "ms_ssim_generated": mean_pairwise_ms_ssim(generated, max_pairs, seed),
        "ms_ssim_real": mean_pairwise_ms_ssim(real, max_pairs, seed),
    }


def frechet_metrics(
    vqvae: VQVAE,
    real: torch.Tensor,
    generated: torch.Tensor,
    reconstructions: torch.Tensor,
    train_images: torch.Tensor,
    split: str,
    seed: int,
) -> dict[str, float]:
    """(c) Fréchet distance to the real slices in the encoder's feature space: of the generated slices, and of the
    two references that bound it, the reconstructions (the floor) and as many real training slices."""
    real_features = encoder_features(vqvae, real)
    train_subset = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[: len(real)]
    references = {"generated": generated, "reconstructed": reconstructions, "train": train_images[train_subset]}
    return {
        f"frechet_{name}_vs_{split}": frechet_distance(encoder_features(vqvae, images), real_features)
        for name, images in references.items()
    }


def code_histogram_summary(histograms: dict) -> dict:
    """(d) summary.json's code histogram entries, named for the sets that code_histogram_comparison calls a and b."""
    return {
        "codes_used_real": histograms["codes_used_a"],
        "codes_used_generated": histograms["codes_used_b"],
        "code_total_variation": histograms["total_variation"],
        "code_jensen_shannon_bits": histograms["jensen_shannon_bits"],
    }


def write_figures(
    folder: Path,
    generated: torch.Tensor,
    train_images: torch.Tensor,
    gen_nearest: np.ndarray,
    gen_ssim: np.ndarray,
    structure: dict[str, dict[str, np.ndarray]],
    histograms: dict,
    split: str,
    n: int,
) -> None:
    """nearest_train.png (at most 32 generated slices, each titled with its structure, beside its nearest
    training slice), structure_histograms.png and code_histograms.png, so the numbers can be seen."""
    shown = min(32, n)
    nearest_neighbours(
        generated[:shown, 0].numpy(),
        train_images[gen_nearest[:shown], 0].numpy(),
        gen_ssim[:shown],
        folder / "nearest_train.png",
        f"Memorisation check: generated slices, nearest training slices ({shown} of {n})",
        titles=[structure_title(structure["generated"], i) for i in range(shown)],
    )
    structure_histograms(structure["real"], structure["generated"], folder / "structure_histograms.png")
    code_histograms(
        np.asarray(histograms["counts_a"]),
        np.asarray(histograms["counts_b"]),
        folder / "code_histograms.png",
        f"Code frequencies: {split} split vs {n} prior samples",
    )


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
    realism = {name: r.get("accuracy") for name, r in summary.get("realism", {}).items() if isinstance(r, dict)}
    if realism.get("generated_vs_train") is not None and realism.get("real_vs_train") is not None:
        rows.append(
            (
                "realism vs train, accuracy",
                f"{realism['generated_vs_train']:.3f}",
                f"{realism['real_vs_train']:.3f}",
                "a classifier on held-out slices: 0.5 = indistinguishable",
            )
        )
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
    add_sampling_arguments(parser, n=64, slice_option=False, min_n=2, why_min=" (pairwise metrics need 2)")
    add_vqvae_argument(parser)
    parser.add_argument(
        "--max-pairs",
        type=integer(1, MAX_PAIRS),
        default=500,
        help=f"image pairs per set for the MS-SSIM diversity, 1 to {MAX_PAIRS} (default: %(default)s)",
    )
    add_batch_size_argument(parser, 32, "batch size for every pass")
    add_device_argument(parser)
    add_realism_arguments(
        parser, "the generated slices against real training slices and against the split's reconstructions"
    )
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
        realism=realism_options(args),
        vqvae_checkpoint=args.vqvae,
    )
    print(summary_table(summary) if args.table else json.dumps(summary, indent=1))
