"""Stage 1: train the VQ-VAE. A plain PyTorch loop that reads top to bottom; Accelerate only wraps
the model and optimizer (devices, DDP, mixed precision) and carries the trackers (wandb).

    python -m trainer vqvae --config configs/vqvae_demo_cpu.yaml            # one process
    accelerate launch -m trainer vqvae --config configs/vqvae_oasis_64.yaml  # N GPUs (see launch.sh)

Training is step-based (`train.max_steps`); every rank streams its share of each epoch, so all
ranks take the same number of steps. Host syncs happen once per `log_every` steps, not per step.
With `loss.adversarial.weight` above 0 a discriminator trains beside the model (stage1/adversarial.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from common.figures.reconstruction import reconstruction_grid
from trainer.run.config_file import load_config
from trainer.run.lr_schedule import lr_schedule
from trainer.run.options import TRAINING_INTERRUPT_KEEPS, add_training_arguments
from trainer.run.training_run import TrainingRun, is_due
from trainer.stage1.adversarial import WINDOW, AdversarialTraining
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.data import SliceShards, epoch_batches, train_batches, training_source
from trainer.stage1.image_metrics import reconstruction_loss, reconstruction_metrics
from trainer.stage1.load import build_vqvae, load_initial_weights
from trainer.stage1.quantizer import codebook_stats
from trainer.stage1.vqvae import VQVAE

INTERRUPT_KEEPS = TRAINING_INTERRUPT_KEEPS
DESCRIPTION = (
    "Train the VQ-VAE on WebDataset shards. Run directly for one process, or under `accelerate launch` / "
    "launch.sh for several GPUs. All hyper-parameters come from the config."
)


@torch.no_grad()
def validate(model: VQVAE, cfg: VQVAEConfig, accelerator: Accelerator) -> tuple[dict, tuple | None]:
    """SSIM/PSNR and codebook usage on `eval_batches` batches of the eval split per rank (all ranks
    together); also returns a few examples for the image grid."""
    dataset = SliceShards(
        cfg.data.shards, cfg.data.eval_split, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    model.eval()
    totals = torch.zeros(3, device=accelerator.device)  # ssim sum, psnr sum, count
    counts = torch.zeros(cfg.quantizer.num_codes, device=accelerator.device)
    first = None
    for i, batch in enumerate(epoch_batches(dataset, cfg.data.batch_size)):
        if cfg.train.eval_batches and i == cfg.train.eval_batches:
            break
        images = batch.images.to(accelerator.device)
        with accelerator.autocast():
            recon, ssim, psnr, indices = reconstruction_metrics(model, images)
        totals += torch.stack([ssim.sum(), psnr.sum(), torch.tensor(float(len(ssim)), device=ssim.device)])
        counts += torch.bincount(indices.flatten(), minlength=cfg.quantizer.num_codes)
        if first is None:
            first = (
                images[:8, 0].float().cpu().numpy(),
                recon[:8, 0].float().cpu().numpy(),
                ssim[:8].cpu().numpy(),
                batch.keys[:8],
            )
    model.train()
    ssim_sum, psnr_sum, count = accelerator.reduce(totals, "sum").tolist()
    perplexity, used = codebook_stats(accelerator.reduce(counts, "sum"))
    return {
        "val_ssim": ssim_sum / count,
        "val_psnr": psnr_sum / count,
        "val_codebook_perplexity": float(perplexity),
        "val_codes_used": int(used),
    }, first


def training_batches(cfg: VQVAEConfig, accelerator: Accelerator, start_sample: int) -> Iterator:
    """This rank's endless stream of training batches from sample `start_sample` on (resuming mid-epoch):
    held in memory when the split fits, else streamed from the shards."""
    dataset = SliceShards(
        cfg.data.shards,
        "train",
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        shuffle=True,
        seed=cfg.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
    )
    source = training_source(dataset, cfg.data, accelerator.device)
    return train_batches(source, cfg.data.batch_size, start_sample=start_sample, num_workers=cfg.data.num_workers)


def train_vqvae(cfg: VQVAEConfig, resume: bool = False, show_progress: bool = True) -> tuple[Path, VQVAE]:
    """Train stage 1; returns the final checkpoint folder and the trained model (this process's copy).

    Longer than 60 lines on purpose: like nanoGPT's loop it reads top to bottom (setup, the step, what a report
    step adds), and the order of the random draws and of the collectives every rank must make is in plain view.
    """
    tc = cfg.train
    run = TrainingRun(cfg.out_dir, tc, cfg.wandb, resume)
    accelerator, out = run.accelerator, run.out
    set_seed(cfg.seed)
    model = build_vqvae(cfg)
    if cfg.init.checkpoint:  # a resumed run's own checkpoint replaces these weights in run.start
        load_initial_weights(model, cfg.init)
    trainable = [p for p in model.parameters() if p.requires_grad]  # the decoder's alone with init.decoder_only
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(tc))
    adversarial = None
    if cfg.loss.adversarial.weight:
        adversarial = AdversarialTraining(cfg.loss.adversarial, model.last_decoder_layer(), cfg.seed, run)
    companions = [adversarial.companion] if adversarial else []
    trained, optimizer, start_step = run.start(model, optimizer, scheduler, cfg, companions=companions)
    accumulated = [trained, *(c.wrapped for c in companions)]  # the modules whose gradients accumulate
    window = ("loss", "recon_loss", "commitment_loss", "perplexity", *(WINDOW if adversarial else ()))

    samples_per_step = cfg.data.batch_size * tc.grad_accum
    batches = training_batches(cfg, accelerator, start_sample=start_step * samples_per_step)

    progress = tqdm(
        range(start_step, tc.max_steps),
        initial=start_step,
        total=tc.max_steps,
        desc="vqvae",
        disable=not (show_progress and accelerator.is_main_process),
    )
    model.train()
    for step in progress:
        for _ in range(tc.grad_accum):
            images = next(batches).images.to(accelerator.device, non_blocking=True)
            with accelerator.accumulate(*accumulated):
                recon, quantized = trained(images)
                recon_loss = reconstruction_loss(recon, images, cfg.loss.ssim_weight)
                loss = recon_loss + quantized.loss
                if adversarial and adversarial.active(step):
                    loss = loss + adversarial.generator_term(recon, recon_loss)
                    adversarial.backward_discriminator(images, recon)
                accelerator.backward(loss)
            extra = adversarial.window_values(step) if adversarial else ()
            run.add_metrics(loss, recon_loss, quantized.commitment_loss, quantized.perplexity, *extra)
        run.optimizer_step(model, optimizer, scheduler)
        if adversarial and adversarial.active(step):
            adversarial.optimizer_step()
        done = step + 1

        if run.reports_at(done):
            means, window_steps, seconds = run.take_window(done, window)
            record = {
                "step": done,
                "loss": means[0],
                "recon_loss": means[1],
                "commitment_loss": means[2],
                "perplexity": means[3],
                "lr": scheduler.get_last_lr()[0],
                "codebook_restarts": int(getattr(model.quantizer, "restart_count", 0)),
                "images_per_s": window_steps * samples_per_step * accelerator.num_processes / seconds,
                **(adversarial.report(means[4:]) if adversarial else {}),
            }
            images = {}
            if is_due(done, tc.eval_every, tc.max_steps):
                metrics, sample = validate(model, cfg, accelerator)
                record.update(metrics)
                if accelerator.is_main_process and sample is not None:
                    images["reconstructions"] = reconstruction_grid(
                        *sample,
                        out / "figures" / "reconstructions_latest.png",
                        f"VQ-VAE at step {done}: first {cfg.data.eval_split} batch",
                    )
            run.log(record, images)
            if accelerator.is_main_process:
                progress.set_postfix(
                    loss=f"{means[0]:.4f}",
                    ppl=f"{means[3]:.0f}",
                    **({"val_ssim": f"{record['val_ssim']:.3f}"} if "val_ssim" in record else {}),
                )

            if is_due(done, tc.checkpoint_every, tc.max_steps):
                run.save(done, model, optimizer, scheduler, cfg)

    return run.finish(), model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "configs/")


def run(args: argparse.Namespace) -> None:
    train_vqvae(
        load_config(args.config, args.overrides, cls=VQVAEConfig), resume=args.resume, show_progress=not args.quiet
    )
