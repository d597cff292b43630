"""The learning-rate schedule both stages follow: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

from trainer.run.train_config import TrainConfig


def lr_schedule(cfg: TrainConfig):
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at max_steps."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
