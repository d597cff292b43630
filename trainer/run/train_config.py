"""The config sections both stages share: the optimisation schedule and the wandb dashboard."""

from __future__ import annotations

from dataclasses import dataclass

from common.limits import MAX_SEED
from trainer.run.config_file import require


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    lr: float = 3e-4
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0: off)
    grad_accum: int = 1  # micro-batches per optimizer step
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    compile: bool = False  # torch.compile the whole model
    log_every: int = 20  # also how often NaN/Inf is checked
    eval_every: int = 250
    eval_batches: int = 8  # validation batches per evaluation during training (0: whole split)
    checkpoint_every: int = 250
    keep_checkpoints: int = 3

    def check(self) -> None:
        require(self.max_steps >= 1, "train.max_steps", "must be >= 1")
        require(self.lr > 0, "train.lr", "must be > 0")
        require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        for name in ("grad_clip", "weight_decay"):
            require(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")
        require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        require(
            self.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision", "must be 'no', 'bf16' or 'fp16'"
        )
        for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        require(self.eval_batches >= 0, "train.eval_batches", "must be >= 0")


def check_seed(seed: int) -> None:
    """The top-level `seed` of either stage: accelerate's set_seed hands it to numpy's legacy generator."""
    require(0 <= seed <= MAX_SEED, "seed", f"must be an integer from 0 to {MAX_SEED}, got {seed}")


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "brain-vqvae"
    mode: str = "auto"  # "auto": online if WANDB_API_KEY is set, else offline; or "online"/"offline"

    def check(self) -> None:
        require(self.mode in ("auto", "online", "offline"), "wandb.mode", "must be auto, online or offline")
