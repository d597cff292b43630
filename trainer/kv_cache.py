"""The transformer prior's key/value cache layout, array-library agnostic (torch tensors or numpy arrays),
so that the PyTorch sampler and the torch-free onnxruntime sampler share it.

Per layer: keys (B, kv_heads, head_dim, N), stored transposed so that queries @ keys is a plain
matrix product, then values (B, kv_heads, N, head_dim); N = H * W cells, allocated once.
"""

from __future__ import annotations

from collections.abc import Sequence


def cache_shapes(layers: int, kv_heads: int, head_dim: int, batch: int, cells: int) -> list[tuple[int, ...]]:
    keys, values = (batch, kv_heads, head_dim, cells), (batch, kv_heads, cells, head_dim)
    return [keys, values] * layers


def write_cache(cache: Sequence, new: Sequence, position: int) -> None:
    """Store one step's keys and values, (B, kv_heads, head_dim) per layer and kind, at `position`, in place."""
    for index, (buffer, entry) in enumerate(zip(cache, new)):
        if index % 2 == 0:
            buffer[..., position] = entry
        else:
            buffer[..., position, :] = entry
