"""The stage-2 prior: a gated PixelCNN over code grids (van den Oord et al. 2016, "Conditional Image
Generation with PixelCNN Decoders"), with an exact sampler that costs a small fraction of the naive one.

Each layer has two stacks, so there is no blind spot:
  * the vertical stack sees the rows above (and, inside the stack, the current row; it only ever
    reaches the horizontal stack shifted down by one row, so a cell never sees its own row through it);
  * the horizontal stack sees the cells to the left on the current row, plus the vertical stack.
The first layer is "type A" (its horizontal convolution excludes the current cell); the others are
"type B" (include it, since by then it holds only information from earlier cells). Every convolution
is gated, tanh(a) * sigmoid(b), and the horizontal stack is residual after the first layer. Causality
comes from explicit padding and shifts rather than masked weights, so no weight is ever wasted.

An optional condition (the slice position 0..31 in OASIS) adds a learned bias to every gate.

Why the fast sampler is exact: the logits at cell (i, j) depend only on rows < i through the vertical
stack (a band of `context_rows` rows above, all columns) and on columns < j of row i through the
horizontal stack (a window of `context_columns` cells). So sampling runs the vertical stack once per
row on that band (`row_context`) and the horizontal stack once per cell on that window
(`cell_logits`). Zero padding at the grid's edges is reproduced by cropping the band and window at
the edges instead of padding them, so both give the full forward pass's logits up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.sampling_rule import check_sampling_options
from trainer.stage2.prior_contract import PriorShape, draw


def gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel: int, first: bool, num_conditions: int):
        super().__init__()
        if kernel % 2 == 0 or kernel < 3:
            raise ValueError(f"kernel sizes must be odd and >= 3, got {kernel}")
        self.half = kernel // 2
        self.first = first
        self.vertical = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel))  # rows i-half..i
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, self.half + 1))  # columns j-half..j
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        self.condition = nn.Embedding(num_conditions, 4 * channels) if num_conditions else None

    def condition_bias(self, condition: Tensor | None) -> tuple[Tensor | float, Tensor | float]:
        if self.condition is None:
            return 0.0, 0.0
        bias = self.condition(condition)[:, :, None, None]
        return bias.chunk(2, dim=1)

    def vertical_step(self, v: Tensor, bias: Tensor | float) -> tuple[Tensor, Tensor]:
        """Next vertical features, and this layer's input to the horizontal stack (rows < i only)."""
        pre = self.vertical(F.pad(v, (self.half, self.half, self.half, 0)))
        shifted = F.pad(pre, (0, 0, 1, 0))[:, :, :-1]
        return gate(pre + bias), self.vertical_to_horizontal(shifted)

    def horizontal_step(self, h: Tensor, from_vertical: Tensor, bias: Tensor | float) -> Tensor:
        if self.first:  # type A: shift right by one so column j sees columns j-half-1..j-1
            padded = F.pad(h, (self.half + 1, 0))[..., :-1]
        else:  # type B: columns j-half..j
            padded = F.pad(h, (self.half, 0))
        out = self.horizontal_out(gate(self.horizontal(padded) + from_vertical + bias))
        return out if self.first else h + out


class GatedPixelCNN(nn.Module):
    def __init__(
        self,
        shape: PriorShape,
        channels: int = 128,
        layers: int = 12,
        kernel: int = 3,
        first_kernel: int = 7,
        head_channels: int = 512,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError("a PixelCNN needs at least one layer")
        self.shape = shape
        self.embed = nn.Embedding(shape.num_codes, channels)
        self.layers = nn.ModuleList(
            [GatedLayer(channels, first_kernel, True, shape.num_conditions)]
            + [GatedLayer(channels, kernel, False, shape.num_conditions) for _ in range(layers - 1)]
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, head_channels, 1), nn.ReLU(), nn.Conv2d(head_channels, shape.num_codes, 1)
        )
        halves = [layer.half for layer in self.layers]
        self.context_rows = sum(halves) + 1  # rows above a cell that can reach its logits
        self.context_columns = sum(halves) + 1  # columns left of a cell that can reach its logits

    def forward(self, codes: Tensor, condition: Tensor | None = None) -> Tensor:
        """Codes (B, H, W) -> logits (B, K, H, W); the logits at a cell see only earlier cells."""
        self.shape.check_condition(condition, codes.shape[0])
        v = h = self.embed(codes).permute(0, 3, 1, 2)
        for layer in self.layers:
            v_bias, h_bias = layer.condition_bias(condition)
            v, from_vertical = layer.vertical_step(v, v_bias)
            h = layer.horizontal_step(h, from_vertical, h_bias)
        return self.head(h)

    def row_context(self, band: Tensor, condition: Tensor | None = None) -> Tensor:
        """The vertical stack's input to every layer for the band's last row, all columns.

        `band` is codes (B, rows, W) ending at the row being sampled (whose contents are never
        read), at most `context_rows + 1` rows. Returns (B, layers, 2 * channels, W)."""
        v = self.embed(band).permute(0, 3, 1, 2)
        outputs = []
        for layer in self.layers:
            v_bias, _ = layer.condition_bias(condition)
            v, from_vertical = layer.vertical_step(v, v_bias)
            outputs.append(from_vertical[:, :, -1])
        return torch.stack(outputs, dim=1)

    def cell_logits(self, row: Tensor, context: Tensor, condition: Tensor | None = None) -> Tensor:
        """Logits (B, K) for the last cell of `row`, codes (B, n) of the current row ending at that
        cell (whose own value is never read), with `context` (B, layers, 2 * channels, n) from
        `row_context` for the same columns."""
        h = self.embed(row).permute(0, 2, 1)[:, :, None, :]  # (B, C, 1, n)
        for index, layer in enumerate(self.layers):
            _, h_bias = layer.condition_bias(condition)
            h = layer.horizontal_step(h, context[:, index, :, None, :], h_bias)
        return self.head(h[..., -1:])[:, :, 0, 0]


@torch.no_grad()
def sample(
    prior: GatedPixelCNN,
    uniforms: Tensor,
    condition: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    naive: bool = False,
    progress=None,
    choose: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """Sample code grids (B, H, W) in raster order, one uniform number per cell (`uniforms`
    (B, H, W) in [0, 1)). `naive=True` runs the whole network for every cell, as the keras example
    does; it exists to check and time the fast path, which it must match draw for draw. `choose(t, logits (B, K))`,
    when given, picks the codes (B,) of raster cell t instead of the draw (teacher forcing and healing:
    trainer/stage2/anomaly.py)."""
    batch, height, width = uniforms.shape
    check_sampling_options(temperature, top_k, prior.shape.num_codes)
    prior.shape.check_condition(condition, batch)
    codes = torch.zeros(batch, height, width, dtype=torch.long, device=uniforms.device)
    for i in range(height):
        if not naive:
            band = codes[:, max(0, i - prior.context_rows) : i + 1]
            context = prior.row_context(band, condition)
        for j in range(width):
            if naive:
                logits = prior(codes, condition)[:, :, i, j]
            else:
                start = max(0, j - prior.context_columns)
                logits = prior.cell_logits(codes[:, i, start : j + 1], context[..., start : j + 1], condition)
            if choose is None:
                codes[:, i, j] = draw(logits, uniforms[:, i, j], temperature, top_k)
            else:
                codes[:, i, j] = choose(i * width + j, logits)
        if progress is not None:
            progress.update(1)
    return codes
