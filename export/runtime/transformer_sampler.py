"""Sample code grids from the transformer prior's exported step model with onnxruntime and numpy only.

The loop is trainer.stage2.transformer_prior.sample's cached path: one `prior_step` call per cell, the
cache held here as numpy buffers that onnxruntime reads in place (grown a row at a time), the new
keys and values written at the step's position. The uniform numbers and the draw rule are
common/sampling_rule.py's, so a seed gives the same code grids as the PyTorch sampler (the logits
agree to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from common.kv_cache import NEW, cache_names, cache_shapes, grow_cache, write_cache
from common.sampling_rule import check_sampling_options, draw


def sample_codes(
    session: ort.InferenceSession,
    spec: dict,
    info: dict,
    uniforms: np.ndarray,
    conditions: np.ndarray | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    progress=None,
    choose: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Code grids (B, H, W) int64 in raster order from one uniform number per cell (B, H, W).
    `spec` is prior_step's model.json entry (export/transformer_onnx.py), checked against the graph
    (export/runtime/onnx_models.py), `info` gives num_codes. Inputs and outputs are bound by name.
    `choose(t, logits (B, K))`, when given, picks the codes (B,) of cell t instead of the draw."""
    check_sampling_options(temperature, top_k, info["num_codes"])
    batch, height, width = uniforms.shape
    codes = np.zeros((batch, height * width), dtype=np.int64)
    cache = [
        np.zeros(shape, dtype=np.float32)
        for shape in cache_shapes(spec["layers"], spec["kv_heads"], spec["head_dim"], batch, 0)
    ]
    fixed = {} if conditions is None else {"condition": conditions.astype(np.int64, copy=False)}
    names = cache_names(spec["layers"])
    fetches = ["logits"] + [NEW + name for name in names]
    for t in range(height * width):
        if t % width == 0:  # one more row of room: attention runs over the rows sampled so far
            cache = grow_cache(cache, t + width, lambda shape: np.zeros(shape, dtype=np.float32))
        feeds = {
            "previous": codes[:, max(t - 1, 0)],
            "position": np.array([t], dtype=np.int64),
            **fixed,
            **dict(zip(names, cache)),
        }
        logits, *new = session.run(fetches, feeds)
        write_cache(cache, new, t)
        if choose is None:
            codes[:, t] = draw(logits, uniforms[:, t // width, t % width], temperature, top_k)
        else:
            codes[:, t] = choose(t, logits)
        if progress is not None and t % width == width - 1:
            progress.update(1)
    return codes.reshape(batch, height, width)
