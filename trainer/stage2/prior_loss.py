"""How well a prior predicts code grids: cross-entropy of every cell's code given the cells before it
(teacher forcing), reported as bits per code, and top-1 accuracy (how often the most likely code is the
true one). Training, validation during training and `evaluate-prior` all measure it here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

LN2 = math.log(2)


def prior_loss(logits: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy in nats per code, fraction of cells whose most likely code is right)."""
    loss = F.cross_entropy(logits.float(), codes)
    accuracy = (logits.argmax(dim=1) == codes).float().mean()
    return loss, accuracy


@torch.no_grad()
def likelihood_sums(
    prior: torch.nn.Module,
    codes: torch.Tensor,
    conditions: torch.Tensor | None,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int = 0,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """(nats sum, correct sum, cells) over rank `rank`'s share of a split (every world_size-th grid),
    on the prior's device: sum them over ranks, then `likelihood_metrics`."""
    device = next(prior.parameters()).device
    was_training = prior.training
    prior.eval()
    totals = torch.zeros(3, device=device)  # nats sum, correct sum, cells
    mine = torch.arange(rank, len(codes), world_size)
    for number, start in enumerate(range(0, len(mine), batch_size)):
        if max_batches and number == max_batches:
            break
        index = mine[start : start + batch_size]
        batch = codes[index].to(device)
        cond = conditions[index].to(device) if conditions is not None else None
        with autocast():
            logits = prior(batch, cond).float()
        totals += torch.stack(
            [
                F.cross_entropy(logits, batch, reduction="sum"),
                (logits.argmax(dim=1) == batch).sum().float(),
                torch.tensor(batch.numel(), device=batch.device).float(),
            ]
        )
    prior.train(was_training)
    return totals


def likelihood_metrics(sums: torch.Tensor) -> dict:
    """Bits per code and top-1 accuracy from `likelihood_sums` (summed over ranks)."""
    nats, correct, cells = sums.tolist()
    return {"bits_per_code": nats / max(cells, 1) / LN2, "accuracy": correct / max(cells, 1)}
