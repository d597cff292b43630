"""Stage 2: train the prior (`model.kind`: the gated PixelCNN or the transformer) on the frozen VQ-VAE's code
grids. A plain PyTorch loop; Accelerate wraps the model and optimizer (devices, DDP, mixed precision) and carries wandb.

    python -m trainer encode --checkpoint runs/oasis32 --out runs/oasis32/codes   # once
    python -m trainer prior --config configs/prior_oasis_32.yaml                 # one process
    bash launch.sh stage2 configs/prior_oasis_32.yaml                            # N GPUs

The loss (trainer/stage2/prior_loss.py) is the cross-entropy of every cell's code given the cells before it
(teacher forcing), reported as bits per code; top-1 accuracy is how often the most likely code is the true one.
The code grids are small (8,000 OASIS slices at 32x32 are 16 MB), so they live on the device and
each epoch is a seeded permutation split between ranks: no loader, and resuming is exact.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from common.figures.generation import generated_grid
from common.figures.style import code_intensity
from trainer.run.checkpoint import PRIOR_INFO
from trainer.run.config_file import load_config
from trainer.run.lr_schedule import lr_schedule
from trainer.run.options import TRAINING_INTERRUPT_KEEPS, add_training_arguments
from trainer.run.training_run import TrainingRun, is_due
from trainer.stage1.load import load_vqvae, numpy_decoder
from trainer.stage2.codes import CODES_META, load_code_tensors, read_codes_meta
from trainer.stage2.config import PriorConfig
from trainer.stage2.generate import generate
from trainer.stage2.load import build_prior
from trainer.stage2.prior_contract import PriorShape
from trainer.stage2.prior_loss import LN2, likelihood_metrics, likelihood_sums, prior_loss

INTERRUPT_KEEPS = TRAINING_INTERRUPT_KEEPS
DESCRIPTION = (
    "Train the prior on the codes written by `encode`. Run directly for one process, or under "
    "`accelerate launch` / launch.sh stage2 for several GPUs. All hyper-parameters come from the config."
)


def code_batches(
    num_samples: int, batch_size: int, rank: int, world_size: int, seed: int, start_batch: int = 0
) -> Iterator[torch.Tensor]:
    """Endless sample indices for this rank: epoch e is permutation(seed + e) dealt round-robin to
    the ranks, cut into full batches (the remainder is dropped, so all ranks take the same steps).
    Starting at `start_batch` skips exactly what an earlier run consumed."""
    per_epoch = num_samples // world_size // batch_size
    if per_epoch == 0:
        raise ValueError(
            f"{num_samples} code grids cannot fill one batch of {batch_size} on each of {world_size} ranks"
        )
    epoch, offset = divmod(start_batch, per_epoch)
    while True:
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + epoch))
        mine = order[rank::world_size]
        for b in range(offset, per_epoch):
            yield mine[b * batch_size : (b + 1) * batch_size]
        epoch, offset = epoch + 1, 0


PAIRING_KEYS = ("num_codes", "height", "width", "num_conditions", "vqvae_sha256")  # what a resume must keep


def prior_shape(cfg: PriorConfig) -> tuple[PriorShape, dict]:
    """The grid the prior models, from the codes' codes.json, and the prior.json saved with every checkpoint
    (the grid, and the VQ-VAE whose codes these are). Its paths are absolute, so that `sample` and `export onnx`
    find them from any folder (a relative one in an older codes.json is read from the current folder, as before)."""
    meta = read_codes_meta(cfg.codes.dir)
    shape = PriorShape(
        meta["num_codes"], meta["height"], meta["width"], meta["num_slices"] if cfg.model.condition_on_slice else 0
    )
    info = {
        **vars(shape),
        "vqvae_checkpoint": str(Path(meta["vqvae_checkpoint"]).resolve()),
        "vqvae_sha256": meta["checkpoint_sha256"],
        "codes_dir": str(Path(cfg.codes.dir).resolve()),
    }
    return shape, info


class SampleFigure:
    """Prior samples decoded into a figure while training. The VQ-VAE is loaded on first use, so only the
    process that draws (the main one) ever loads it."""

    def __init__(self, info: dict, shape: PriorShape, device: torch.device, path: Path, count: int):
        self.info, self.shape, self.device, self.path, self.count = info, shape, device, path, count
        self.vqvae = self.code_values = None

    def draw(self, prior: torch.nn.Module, step: int) -> Path:
        if self.vqvae is None:
            self.vqvae, _ = load_vqvae(Path(self.info["vqvae_checkpoint"]), self.device)
            grid = (self.shape.height, self.shape.width)
            self.code_values = code_intensity(numpy_decoder(self.vqvae), self.shape.num_codes, grid)
        prior.eval()
        grids, _, decoded = generate(prior, self.vqvae, self.count, seed=step, show_progress=False)
        prior.train()
        title = f"Prior samples at step {step} (seed {step})"
        return generated_grid(grids, decoded, self.path, self.code_values, title)


def validation_metrics(
    prior: torch.nn.Module, codes: torch.Tensor, conditions: torch.Tensor | None, cfg: PriorConfig, accelerator
) -> dict:
    """Bits per code and accuracy on `eval_batches` batches of the eval split per rank, all ranks together."""
    sums = likelihood_sums(
        prior,
        codes,
        conditions,
        cfg.codes.batch_size,
        accelerator.process_index,
        accelerator.num_processes,
        cfg.train.eval_batches,
        accelerator.autocast,
    )
    metrics = likelihood_metrics(accelerator.reduce(sums, "sum"))
    return {f"val_{key}": value for key, value in metrics.items()}


def train_prior(cfg: PriorConfig, resume: bool = False, show_progress: bool = True) -> tuple[Path, torch.nn.Module]:
    """Train stage 2; returns the final checkpoint folder and the trained prior.

    Longer than 60 lines on purpose: like nanoGPT's loop it reads top to bottom (setup, the step, what a report
    step adds), and the order of the random draws and of the collectives every rank must make is in plain view.
    """
    shape, info = prior_shape(cfg)
    tc = cfg.train
    run = TrainingRun(cfg.out_dir, tc, cfg.wandb, resume)
    accelerator = run.accelerator
    set_seed(cfg.seed)
    prior = build_prior(cfg, shape)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(tc))
    # a resumed run must model the codes its checkpoint was trained on: same grid, K, conditions and VQ-VAE
    pairing = (Path(cfg.codes.dir) / CODES_META, {key: info[key] for key in PAIRING_KEYS})
    trained, optimizer, start_step = run.start(prior, optimizer, scheduler, cfg, facts={PRIOR_INFO: pairing})

    codes, conditions = load_code_tensors(cfg.codes.dir, "train", shape)
    eval_codes, eval_conditions = load_code_tensors(cfg.codes.dir, cfg.codes.eval_split, shape)
    codes = codes.to(accelerator.device)
    conditions = conditions.to(accelerator.device) if conditions is not None else None
    ranks = accelerator.process_index, accelerator.num_processes
    batches = code_batches(len(codes), cfg.codes.batch_size, *ranks, cfg.seed, start_batch=start_step * tc.grad_accum)
    samples = SampleFigure(
        info, shape, accelerator.device, run.out / "figures" / "samples_latest.png", cfg.sample_count
    )

    codes_per_step = cfg.codes.batch_size * tc.grad_accum * accelerator.num_processes * shape.height * shape.width
    progress = tqdm(
        range(start_step, tc.max_steps),
        initial=start_step,
        total=tc.max_steps,
        desc="prior",
        disable=not (show_progress and accelerator.is_main_process),
    )
    prior.train()
    for step in progress:
        for _ in range(tc.grad_accum):
            index = next(batches).to(accelerator.device)
            batch = codes[index]
            with accelerator.accumulate(trained):
                logits = trained(batch, conditions[index] if conditions is not None else None)
                loss, accuracy = prior_loss(logits, batch)
                accelerator.backward(loss)
            run.add_metrics(loss, accuracy)
        run.optimizer_step(prior, optimizer, scheduler)
        done = step + 1

        if run.reports_at(done):
            means, window_steps, seconds = run.take_window(done)
            record = {
                "step": done,
                "loss": means[0],
                "bits_per_code": means[0] / LN2,
                "accuracy": means[1],
                "lr": scheduler.get_last_lr()[0],
                "codes_per_s": window_steps * codes_per_step / seconds,
            }
            if is_due(done, tc.eval_every, tc.max_steps):
                record.update(validation_metrics(prior, eval_codes, eval_conditions, cfg, accelerator))
            sample_due = done == tc.max_steps or (cfg.sample_every and done % cfg.sample_every == 0)
            run.log(
                record, {"samples": samples.draw(prior, done)} if accelerator.is_main_process and sample_due else {}
            )
            if accelerator.is_main_process:
                progress.set_postfix(
                    bits=f"{record['bits_per_code']:.3f}",
                    acc=f"{means[1]:.3f}",
                    **({"val_bits": f"{record['val_bits_per_code']:.3f}"} if "val_bits_per_code" in record else {}),
                )

            if is_due(done, tc.checkpoint_every, tc.max_steps):
                run.save(done, prior, optimizer, scheduler, cfg, extra_json={PRIOR_INFO: info})

    return run.finish(), prior


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "configs/prior_*.yaml")


def run(args: argparse.Namespace) -> None:
    train_prior(
        load_config(args.config, args.overrides, cls=PriorConfig), resume=args.resume, show_progress=not args.quiet
    )
