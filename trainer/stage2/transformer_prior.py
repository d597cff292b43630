"""The stage-2 prior that sees the whole grid: a decoder-only transformer over the code grid in raster
order (GPT-style, as the VQ-VAE + transformer brain generators of Tudosiu et al. 2022 and Pinaya et al. 2022).

Why: the gated PixelCNN's logits at a cell see a bounded window (about 14 rows above it with the CPU
config on a 32x32 grid), so the lower half of a brain is drawn without seeing the upper half. Here
every cell attends to every earlier cell.

The cell t = i * W + j is predicted from one token: the code of cell t - 1 (a learned start vector
at t = 0), plus learned embeddings of the row i and the column j of the cell being predicted, plus
the slice condition's embedding (added to every token: one learned bias per slice position, the role
it plays in the PixelCNN's gates). Pre-LayerNorm blocks of causal self-attention and an MLP, dropout
on the embeddings and on both residual branches, then a K-way linear head. No dropout on the
attention weights: it forces scaled_dot_product_attention off its fused (flash) kernels onto the
path that materialises every T x T weight matrix: a training step of 8 grids of the 4-layer,
width-128 prior took 4.6 s with it and 1.5 s without (CPU time, one core of the busy 2-core dev box;
drawing the random masks alone was a fifth of the time).

Grouped-query attention (`kv_heads` divides `heads`): groups of query heads share one key/value head.
Why: sampling on a CPU is bound by reading the key/value cache (batch x layers x 2 x kv_heads x
head_dim floats per earlier cell, every step), and fewer key/value heads shrink it in proportion
while every query head stays. kv_heads = heads is ordinary multi-head attention.

Exact cached sampling (`step`): the cache holds, per layer, the keys (B, kv_heads, head_dim, cells)
stored transposed and the values (B, kv_heads, cells, head_dim) of the cells sampled so far and some
zeroed room after them (common/kv_cache.py: the samplers grow it a grid row at a time). A step gets
the position t, attends to the cached cells < t (the rest is masked) and to its own token's key and
value, and returns those for the caller to write at t. Why this layout: in the ONNX step model
(export/transformer_onnx.py) nothing is concatenated or copied (onnxruntime reads the sampler's
numpy buffers in place) and both attention products are plain matrix products. Sampling a grid
costs about one forward pass's work.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.kv_cache import cache_shapes, grow_cache, write_cache
from common.sampling_rule import check_sampling_options
from trainer.stage2.prior_contract import PriorShape, draw


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.qkv = nn.Linear(width, (heads + 2 * kv_heads) * self.head_dim)
        self.proj = nn.Linear(width, width)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., width) -> queries (..., heads, head_dim), keys and values (..., kv_heads, head_dim)."""
        q, k, v = self.qkv(x).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1
        )
        return (
            q.unflatten(-1, (self.heads, self.head_dim)),
            k.unflatten(-1, (self.kv_heads, self.head_dim)),
            v.unflatten(-1, (self.kv_heads, self.head_dim)),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, width) -> (B, T, width); position t attends to positions <= t."""
        q, k, v = (part.transpose(1, 2) for part in self.split(x))  # (B, heads or kv_heads, T, d)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).flatten(2))

    def step(self, x: Tensor, mask: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One position: x (B, width), mask (N,) True where a cached cell may be attended to,
        keys (B, kv_heads, d, N), values (B, kv_heads, N, d). Returns the output (B, width) and this
        position's key and value (B, kv_heads, d) for the cache."""
        q, k, v = self.split(x)
        q = q.unflatten(1, (self.kv_heads, -1))  # (B, kv_heads, group, d)
        scale = 1.0 / math.sqrt(self.head_dim)
        cached = (q @ keys).masked_fill(~mask, float("-inf"))  # (B, kv_heads, group, N)
        own = (q * k[:, :, None]).sum(-1, keepdim=True)  # (B, kv_heads, group, 1)
        weights = (torch.cat([cached, own], dim=-1) * scale).softmax(dim=-1)
        out = weights[..., :-1] @ values + weights[..., -1:] * v[:, :, None]
        return self.proj(out.flatten(1)), k, v


class Block(nn.Module):
    def __init__(self, width: int, heads: int, kv_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, kv_heads)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.dropout(self.mlp(self.norm2(x)))

    def step(self, x: Tensor, mask: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, k, v = self.attention.step(self.norm1(x), mask, keys, values)
        x = x + out
        return x + self.mlp(self.norm2(x)), k, v


class TransformerPrior(nn.Module):
    def __init__(
        self,
        shape: PriorShape,
        layers: int = 6,
        width: int = 256,
        heads: int = 8,
        kv_heads: int = 8,
        mlp_ratio: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        if layers < 1 or width < 1 or heads < 1 or mlp_ratio < 1:
            raise ValueError("a transformer prior needs layers, width, heads and mlp_ratio >= 1")
        if width % heads or kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"heads ({heads}) must divide width ({width}) and kv_heads ({kv_heads}) divide heads")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.shape = shape
        self.start = nn.Parameter(torch.zeros(width))
        self.embed = nn.Embedding(shape.num_codes, width)
        self.row = nn.Embedding(shape.height, width)
        self.column = nn.Embedding(shape.width, width)
        self.condition = nn.Embedding(shape.num_conditions, width) if shape.num_conditions else None
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(width, heads, kv_heads, mlp_ratio, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, shape.num_codes)
        self.apply(self.init_weights)
        for name, parameter in self.named_parameters():  # GPT-2: residual branches scaled by depth
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def add_condition(self, x: Tensor, condition: Tensor | None) -> Tensor:
        """x (B, ..., width) plus each sample's condition embedding."""
        if self.condition is None:
            return x
        bias = self.condition(condition)
        return x + bias.view(bias.shape[0], *(1,) * (x.dim() - 2), -1)

    def forward(self, codes: Tensor, condition: Tensor | None = None) -> Tensor:
        """Codes (B, H, W) -> logits (B, K, H, W); the logits at a cell see only earlier cells."""
        batch, height, width = codes.shape
        self.shape.check_condition(condition, batch)
        previous = self.embed(codes.flatten(1)[:, :-1])
        x = torch.cat([self.start.expand(batch, 1, -1), previous], dim=1)
        position = self.row.weight[:height, None] + self.column.weight[None, :width]
        x = self.dropout(self.add_condition(x + position.flatten(0, 1), condition))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)).transpose(1, 2).unflatten(2, (height, width))

    def empty_cache(
        self, batch: int, dtype: torch.dtype = torch.float32, device=None, cells: int | None = None
    ) -> list[Tensor]:
        """Zeroed cache for `step` (common/kv_cache.py), room for `cells` cells (default: the whole grid)."""
        attention = self.blocks[0].attention
        cells = self.shape.height * self.shape.width if cells is None else cells
        shapes = cache_shapes(len(self.blocks), attention.kv_heads, attention.head_dim, batch, cells)
        return [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]

    def step(
        self, previous: Tensor, position: Tensor, condition: Tensor | None, cache: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """Logits (B, K) of the cell at raster `position` (int64 (1,)) from the code of the cell before
        it (`previous` (B,), ignored at position 0) and the cache of all cells before it. Returns the
        logits and this cell's keys and values, (B, kv_heads, head_dim) per layer, for `write_cache`."""
        token = torch.where(position == 0, self.start, self.embed(previous))
        x = token + self.row(position // self.shape.width) + self.column(position % self.shape.width)
        x = self.add_condition(x, condition)
        mask = torch.arange(cache[0].shape[-1], device=position.device) < position
        new = []
        for block, keys, values in zip(self.blocks, cache[0::2], cache[1::2]):
            x, k, v = block.step(x, mask, keys, values)
            new += [k, v]
        return self.head(self.norm(x)), new


@torch.no_grad()
def sample(
    prior: TransformerPrior,
    uniforms: Tensor,
    condition: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    naive: bool = False,
    progress=None,
    choose: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """Sample code grids (B, H, W) in raster order, one uniform number per cell, with trainer.stage2.pixelcnn.sample's
    arguments and rule (`choose` included). `naive=True` runs the whole network for every cell, to check the cached
    path."""
    batch, height, width = uniforms.shape
    check_sampling_options(temperature, top_k, prior.shape.num_codes)
    prior.shape.check_condition(condition, batch)
    codes = torch.zeros(batch, height, width, dtype=torch.long, device=uniforms.device)
    dtype = next(prior.parameters()).dtype
    cache = prior.empty_cache(batch, dtype, uniforms.device, cells=0)

    def zeros(shape: tuple[int, ...]) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=uniforms.device)

    flat = codes.view(batch, -1)
    for t in range(height * width):
        if naive:
            logits = prior(codes, condition)[:, :, t // width, t % width]
        else:
            if t % width == 0:
                cache = grow_cache(cache, t + width, zeros)  # one more row of room
            position = torch.tensor([t], device=uniforms.device)
            logits, new = prior.step(flat[:, max(t - 1, 0)], position, condition, cache)
            write_cache(cache, new, t)
        if choose is None:
            flat[:, t] = draw(logits, uniforms[:, t // width, t % width], temperature, top_k)
        else:
            flat[:, t] = choose(t, logits)
        if progress is not None and t % width == width - 1:
            progress.update(1)
    return codes
