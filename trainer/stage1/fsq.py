"""Finite scalar quantisation (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

The encoder output is projected to a few channels (one per entry of `levels`), each squashed into a
bounded range and rounded to one of `levels[i]` values. The code of a cell is the tuple of its rounded
values, so the codebook is the implicit grid of all prod(levels) tuples: levels [8, 8, 8] give exactly
512 codes. There is nothing to learn in the codebook, no EMA, no commitment loss and no dead codes; the
rounding passes gradients straight through.

It is a drop-in for `VectorQuantizer` (same `QuantizerOutput`, `encode_indices`, `lookup`, `num_codes`), so
indices, code maps, the prior and the ONNX graphs work unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainer.stage1.quantizer import QuantizerOutput, codebook_stats


class FiniteScalarQuantizer(nn.Module):
    def __init__(self, levels: list[int], code_dim: int):
        super().__init__()
        if not levels or any(level < 2 for level in levels):
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        if code_dim < 1:
            raise ValueError(f"code_dim must be >= 1, got {code_dim}")
        self.levels_list, self.code_dim = list(levels), code_dim
        self.num_codes = math.prod(levels)
        self.project_in = nn.Conv2d(code_dim, len(levels), 1)
        self.project_out = nn.Conv2d(len(levels), code_dim, 1)
        levels_t = torch.tensor(levels, dtype=torch.float32)
        # The mixed-radix place value of each channel: index = sum(digit * basis).
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.long), 0)
        # Even level counts have no middle value: shift by half a step so rounding gives exactly L values.
        offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
        half_range = (levels_t - 1) * (1 + 1e-3) / 2  # a hair wider, so tanh's open range still reaches the ends
        for name, value in [
            ("levels", levels_t),
            ("basis", basis),
            ("offset", offset),
            ("half_range", half_range),
            ("shift", torch.atanh(offset / half_range)),
            ("half_width", (levels_t // 2)),
        ]:
            self.register_buffer(name, value.view(1, -1, 1, 1), persistent=False)

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        if z_e.ndim != 4 or z_e.shape[1] != self.code_dim:
            raise ValueError(f"expected z_e of shape (B, {self.code_dim}, H, W), got {tuple(z_e.shape)}")
        digits = self._digits(z_e, straight_through=True)
        indices = self._indices(digits.detach())
        z_q = self.project_out((digits - self.half_width) / self.half_width)  # codes in [-1, 1]
        counts = torch.zeros(self.num_codes, dtype=torch.long, device=indices.device)
        counts.scatter_add_(0, indices.flatten(), torch.ones_like(indices.flatten()))
        zero = torch.zeros((), device=z_e.device)
        return QuantizerOutput(z_q, indices, zero, zero, zero, codebook_stats(counts)[0])

    def _digits(self, z_e: Tensor, straight_through: bool = False) -> Tensor:
        """(B, len(levels), H, W): each channel rounded to an integer in [0, levels[i] - 1] (float)."""
        z = self.project_in(z_e).float()
        bounded = torch.tanh(z + self.shift) * self.half_range - self.offset
        rounded = torch.round(bounded)
        if straight_through:
            rounded = bounded + (rounded - bounded).detach()
        return rounded + self.half_width

    def _indices(self, digits: Tensor) -> Tensor:
        return (digits.round().long() * self.basis).sum(1)

    def encode_indices(self, z_e: Tensor) -> Tensor:
        """Code indices (B, H, W) for encoder outputs (B, D, H, W); plain tensor ops, so it exports to ONNX."""
        return self._indices(self._digits(z_e))

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors for indices (B, H, W), as the (B, D, H, W) tensor the decoder takes."""
        digits = (indices.unsqueeze(1) // self.basis) % self.levels.long()
        return self.project_out((digits.float() - self.half_width) / self.half_width)
