"""The exported prior's exact samplers in onnxruntime, both kinds behind one call: the gated PixelCNN's loop here
(trainer.stage2.pixelcnn.sample's fast path: one `prior_row` call per row on a band of rows above it, one
`prior_cell` call per cell on a window of columns), the transformer's in export/runtime/transformer_sampler.py.

`export sample` draws every cell by common/sampling_rule.py; `export anomaly` passes `choose`, which replaces the
draw with its own rule (teacher forcing and healing, common/anomaly_maps.py), so both run the same loops.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from common.sampling_rule import check_sampling_options, draw
from export.runtime.onnx_models import ExportedModels
from export.runtime.transformer_sampler import sample_codes as transformer_sample_codes


def sample_codes(
    models: ExportedModels,
    uniforms: np.ndarray,
    conditions: np.ndarray | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    progress: tqdm | None = None,
    choose: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Code grids (B, H, W) int64 in raster order from one uniform number per cell (B, H, W), by the
    sampler of the folder's prior kind. `choose(t, logits (B, K))`, when given, picks the codes (B,) of raster
    cell t instead of the draw."""
    info = models.info
    if info["prior_kind"] == "transformer":
        return transformer_sample_codes(
            models.sessions["prior_step"],
            info["models"]["prior_step"],
            info,
            uniforms,
            conditions,
            temperature,
            top_k,
            progress,
            choose,
        )
    check_sampling_options(temperature, top_k, info["num_codes"])
    batch, height, width = uniforms.shape
    codes = np.zeros((batch, height, width), dtype=np.int64)
    for i in range(height):
        context = models.row_context(codes[:, max(0, i - info["context_rows"]) : i + 1], conditions)
        for j in range(width):
            start = max(0, j - info["context_columns"])
            logits = models.cell_logits(codes[:, i, start : j + 1], context[..., start : j + 1], conditions)
            if choose is None:
                codes[:, i, j] = draw(logits, uniforms[:, i, j], temperature, top_k)
            else:
                codes[:, i, j] = choose(i * width + j, logits)
        if progress is not None:
            progress.update(1)
    return codes
