"""The transformer prior's key/value cache layout, array-library agnostic (torch tensors or numpy arrays),
so that the PyTorch sampler and the torch-free onnxruntime sampler share it.

Per layer: keys (B, kv_heads, head_dim, cells), stored transposed so that queries @ keys is a plain
matrix product, then values (B, kv_heads, cells, head_dim). The samplers grow the cache by one grid
row at a time (`grow_cache` at the start of each row), so a step attends over the cells up to the
end of its own row rather than over the whole grid: about half the attention work of a full-length
cache, for one copy of the cache per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

NEW = "new_"  # the step model's output for a cache tensor is named NEW + its input's name


def cache_names(layers: int) -> list[str]:
    """The step model's cache inputs, in the order of `cache_shapes`: key_0, value_0, key_1, ... Both the exporter
    and the onnxruntime sampler name them from here, so the sampler binds them by name."""
    return [f"{kind}_{n}" for n in range(layers) for kind in ("key", "value")]


def cache_shapes(layers: int, kv_heads: int, head_dim: int, batch: int, cells: int) -> list[tuple[int, ...]]:
    keys, values = (batch, kv_heads, head_dim, cells), (batch, kv_heads, cells, head_dim)
    return [keys, values] * layers


def grow_cache(cache: Sequence, cells: int, zeros: Callable) -> list:
    """The cache lengthened to `cells` (zeros after the old contents); `zeros(shape)` makes a buffer."""
    grown = []
    for index, buffer in enumerate(cache):
        shape = list(buffer.shape)
        old = shape[-1 if index % 2 == 0 else -2]
        shape[-1 if index % 2 == 0 else -2] = cells
        new = zeros(tuple(shape))
        if index % 2 == 0:
            new[..., :old] = buffer
        else:
            new[..., :old, :] = buffer
        grown.append(new)
    return grown


def write_cache(cache: Sequence, new: Sequence, position: int) -> None:
    """Store one step's keys and values, (B, kv_heads, head_dim) per layer and kind, at `position`, in place."""
    for index, (buffer, entry) in enumerate(zip(cache, new)):
        if index % 2 == 0:
            buffer[..., position] = entry
        else:
            buffer[..., position, :] = entry
