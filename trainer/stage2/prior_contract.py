"""What every prior honours, whatever its kind: the grid it generates, the draw rule its samplers follow and
the conditions it accepts. Both priors (pixelcnn.py, transformer_prior.py) and the code files import it from here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PriorShape:
    """What a prior generates: K codes on a height x width grid, optionally conditioned."""

    num_codes: int
    height: int
    width: int
    num_conditions: int = 0  # 0: unconditional; else conditions 0..num_conditions-1

    def check_condition(self, condition: Tensor | None, batch: int) -> None:
        if self.num_conditions and (condition is None or condition.shape != (batch,)):
            raise ValueError(
                f"this prior is conditional: pass one condition in 0..{self.num_conditions - 1} "
                f"per sample (shape ({batch},))"
            )
        if not self.num_conditions and condition is not None:
            raise ValueError("this prior is unconditional: pass condition=None")


def draw(logits: Tensor, uniforms: Tensor, temperature: float = 1.0, top_k: int = 0) -> Tensor:
    """Codes (B,) from logits (B, K) and one uniform number per row: inverse-CDF sampling from
    softmax(logits / temperature) over the top_k most likely codes (0: all). The rule of
    common/sampling_rule.py, in torch so that it runs where the logits are: in log space, shifted by each
    row's maximum before the division, so it is exact at any finite temperature > 0 (greedy as it goes to 0)."""
    scaled = logits.double()
    if top_k:
        kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    scaled = (scaled - scaled.amax(dim=-1, keepdim=True)) / temperature
    cdf = scaled.softmax(dim=-1).cumsum(dim=-1)
    targets = uniforms.double()[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, targets, right=True)[:, 0].clamp_(max=logits.shape[-1] - 1)
