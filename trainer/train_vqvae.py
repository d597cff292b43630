"""Stage 1: train the VQ-VAE. A plain PyTorch loop that reads top to bottom; Accelerate only wraps
the model and optimizer (devices, DDP, mixed precision) and carries the trackers (wandb).

    python -m trainer vqvae --config configs/vqvae_demo_cpu.yaml            # one process
    accelerate launch -m trainer vqvae --config configs/vqvae_oasis_64.yaml  # N GPUs (see launch.sh)

Training is step-based (`train.max_steps`); every rank streams its share of each epoch, so all
ranks take the same number of steps. Host syncs happen once per `log_every` steps, not per step.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from tqdm import tqdm

from trainer.checkpoint import (list_checkpoints, load_training_state, load_weights, save_checkpoint,
                                set_rng_state)
from trainer.config import TrainConfig, VQVAEConfig, config_to_dict
from trainer.data import SliceShards, epoch_batches, train_batches
from trainer.evaluate import reconstruction_metrics
from trainer.figures import reconstruction_grid
from trainer.quantizer import codebook_stats
from trainer.vqvae import VQVAE


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint."""


def lr_schedule(cfg: TrainConfig):
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at max_steps."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def wandb_mode(mode: str) -> str:
    """'auto' goes online only when an API key is set, so a fresh machine never waits on a login."""
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def is_due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


@torch.no_grad()
def validate(model: VQVAE, cfg: VQVAEConfig, accelerator: Accelerator) -> tuple[dict, tuple | None]:
    """SSIM/PSNR and codebook usage on `eval_batches` batches of the eval split per rank (all ranks
    together); also returns a few examples for the image grid."""
    dataset = SliceShards(cfg.data.shards, cfg.data.eval_split, rank=accelerator.process_index,
                          world_size=accelerator.num_processes)
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
            first = (images[:8, 0].float().cpu().numpy(), recon[:8, 0].float().cpu().numpy(),
                     ssim[:8].cpu().numpy(), batch.keys[:8])
    model.train()
    ssim_sum, psnr_sum, count = accelerator.reduce(totals, "sum").tolist()
    perplexity, used = codebook_stats(accelerator.reduce(counts, "sum"))
    return {"val_ssim": ssim_sum / count, "val_psnr": psnr_sum / count,
            "val_codebook_perplexity": float(perplexity), "val_codes_used": int(used)}, first


def train_vqvae(cfg: VQVAEConfig, resume: bool = False, show_progress: bool = True) -> tuple[Path, VQVAE]:
    """Train stage 1; returns the final checkpoint folder and the trained model (this process's copy)."""
    out = Path(cfg.out_dir)
    checkpoints = out / "checkpoints"
    if list_checkpoints(checkpoints) and not resume:
        raise FileExistsError(f"{checkpoints} already holds checkpoints: pass --resume to continue that run, "
                              f"or choose another out_dir")
    tc = cfg.train
    accelerator = Accelerator(
        # Without cpu=True, Accelerate on a CUDA-less machine ignores torchrun's ranks and every
        # process trains alone; with it, the processes form one gloo job.
        cpu=not torch.cuda.is_available(),
        mixed_precision=tc.mixed_precision,
        log_with="wandb" if cfg.wandb.enabled else None,
        project_dir=str(out),
        # Buffers are kept identical by the quantizer's own all-reduce; DDP's broadcast of rank 0's
        # buffers at every forward would only cost bandwidth.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    set_seed(cfg.seed)
    model = VQVAE(cfg.model, cfg.quantizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(tc))

    start_step, kept_rows = 0, []
    metrics_file = out / "metrics.jsonl"
    if resume and list_checkpoints(checkpoints):
        latest = list_checkpoints(checkpoints)[-1]
        model.load_state_dict(load_weights(latest))
        state = load_training_state(latest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_step = state["step"]
        if metrics_file.is_file():  # drop rows logged after the checkpoint we resume from
            kept_rows = [r for r in metrics_file.read_text().splitlines() if json.loads(r)["step"] <= start_step]
        accelerator.print(f"resuming from {latest} (step {start_step})")

    trained = torch.compile(model) if tc.compile else model
    with warnings.catch_warnings():  # torch renames broadcast_buffers; Accelerate cannot pass the new name yet
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        trained, optimizer = accelerator.prepare(trained, optimizer)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text("".join(r + "\n" for r in kept_rows))
    if cfg.wandb.enabled:
        accelerator.init_trackers(cfg.wandb.project, config=config_to_dict(cfg), init_kwargs={
            "wandb": {"mode": wandb_mode(cfg.wandb.mode), "dir": str(out), "name": out.name}})

    dataset = SliceShards(cfg.data.shards, "train", rank=accelerator.process_index,
                          world_size=accelerator.num_processes, shuffle=True, seed=cfg.seed,
                          shuffle_buffer=cfg.data.shuffle_buffer)
    samples_per_step = cfg.data.batch_size * tc.grad_accum
    batches = train_batches(dataset, cfg.data.batch_size, start_sample=start_step * samples_per_step,
                            num_workers=cfg.data.num_workers)

    window = torch.zeros(4, device=accelerator.device)  # loss, recon, commitment, perplexity sums
    window_steps, window_start = 0, time.perf_counter()
    progress = tqdm(range(start_step, tc.max_steps), initial=start_step, total=tc.max_steps, desc="vqvae",
                    disable=not (show_progress and accelerator.is_main_process))
    model.train()
    for step in progress:
        for micro in range(tc.grad_accum):
            images = next(batches).images.to(accelerator.device, non_blocking=True)
            sync = nullcontext() if micro == tc.grad_accum - 1 else accelerator.no_sync(trained)
            with sync:
                recon, quantized = trained(images)
                recon_loss = F.mse_loss(recon.float(), images)
                loss = recon_loss + quantized.loss
                accelerator.backward(loss / tc.grad_accum)
            window += torch.stack([loss, recon_loss, quantized.commitment_loss, quantized.perplexity]).detach()
        if tc.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window_steps += 1
        done = step + 1

        if any(is_due(done, every, tc.max_steps) for every in (tc.log_every, tc.eval_every, tc.checkpoint_every)):
            means = (accelerator.reduce(window, "mean") / (window_steps * tc.grad_accum)).tolist()  # one sync
            if not all(map(math.isfinite, means)):
                last = list_checkpoints(checkpoints)
                raise TrainingDiverged(
                    f"loss became {means[0]} by step {done}; stopping. Last good checkpoint: "
                    f"{last[-1] if last else 'none'} (lower train.lr, or keep train.grad_clip on)")
            seconds = time.perf_counter() - window_start
            record = {"step": done, "loss": means[0], "recon_loss": means[1], "commitment_loss": means[2],
                      "perplexity": means[3], "lr": scheduler.get_last_lr()[0],
                      "codebook_restarts": int(getattr(model.quantizer, "restart_count", 0)),
                      "images_per_s": window_steps * samples_per_step * accelerator.num_processes / seconds}
            if is_due(done, tc.eval_every, tc.max_steps):
                metrics, sample = validate(model, cfg, accelerator)
                record.update(metrics)
                if accelerator.is_main_process and sample is not None:
                    grid = reconstruction_grid(*sample, out / "figures" / "reconstructions_latest.png")
                    if cfg.wandb.enabled:
                        import wandb
                        accelerator.get_tracker("wandb", unwrap=True).log(
                            {"reconstructions": wandb.Image(str(grid))}, step=done)
            accelerator.log(record, step=done)
            if accelerator.is_main_process:
                with metrics_file.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                progress.set_postfix(loss=f"{means[0]:.4f}", ppl=f"{means[3]:.0f}",
                                     **({"val_ssim": f"{record['val_ssim']:.3f}"} if "val_ssim" in record else {}))
            window.zero_()
            window_steps, window_start = 0, time.perf_counter()

            if is_due(done, tc.checkpoint_every, tc.max_steps):
                if accelerator.is_main_process:
                    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                    save_checkpoint(checkpoints, done, model, state, config_to_dict(cfg), tc.keep_checkpoints)
                accelerator.wait_for_everyone()

    accelerator.end_training()
    final = list_checkpoints(checkpoints)[-1]
    accelerator.print(f"final checkpoint: {final}")
    return final, model
