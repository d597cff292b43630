"""Torch -> ONNX for the transformer prior: one `prior_step` model, the key/value cache as explicit inputs.

    prior_step.onnx  previous (B,) int64, position (1,) int64 [, condition (B,) int64],
                     key_0 (B, kv_heads, head_dim, cells), value_0 (B, kv_heads, cells, head_dim), key_1, ...
                     -> logits (B, K), new_key_0 (B, kv_heads, head_dim), new_value_0, new_key_1, ...

TransformerPrior.step exported as it is (trainer/stage2/transformer_prior.py says why its cache has this
layout): only the batch and the cache length (cells, at most H * W) vary; the sampler
(export/runtime/transformer_sampler.py) owns the cache buffers, passes them in, and writes each step's new
keys and values at the step's position. One tensor per layer and kind, not one for the whole cache,
because slicing a layer out of a graph input is a copy in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim

from common.kv_cache import NEW, cache_names
from export.onnx_graph import export_graph
from export.runtime.model_dir import DEFAULT_OPSET
from trainer.stage2.transformer_prior import TransformerPrior


class PriorStep(nn.Module):
    """TransformerPrior.step with flat tensor inputs and outputs, as an exported graph needs them."""

    def __init__(self, prior: TransformerPrior):
        super().__init__()
        self.prior = prior

    def forward(self, previous: Tensor, position: Tensor, *condition_and_cache: Tensor) -> tuple[Tensor, ...]:
        conditional = bool(self.prior.shape.num_conditions)
        condition = condition_and_cache[0] if conditional else None
        logits, new = self.prior.step(previous, position, condition, list(condition_and_cache[conditional:]))
        return logits, *new


def step_names(layers: int, conditional: bool) -> tuple[list[str], list[str]]:
    """Input and output names of prior_step, in order."""
    cache = cache_names(layers)
    return (
        ["previous", "position"] + ["condition"] * conditional + cache,
        ["logits"] + [NEW + name for name in cache],
    )


@torch.no_grad()
def export_step(prior: TransformerPrior, path: Path, opset: int = DEFAULT_OPSET, fields: dict | None = None) -> dict:
    """Write prior_step.onnx to `path` and check it; returns its model.json entry, with what the
    sampler needs to allocate the cache. The prior's parameters must be float32, as the sampler's cache is.
    `fields`: model.json's semantic fields, recorded in the file (see export_graph)."""
    conditional = bool(prior.shape.num_conditions)
    inputs, outputs = step_names(len(prior.blocks), conditional)
    batch, cells = Dim("batch"), Dim("cells", max=prior.shape.height * prior.shape.width)
    # Example batch and cache length of 2: torch.export specialises sizes 0 and 1.
    examples = [torch.zeros(2, dtype=torch.long), torch.tensor([1])] + [torch.zeros(2, dtype=torch.long)] * conditional
    examples += prior.empty_cache(2, cells=2)
    cache_axes = [{0: batch, 3: cells}, {0: batch, 2: cells}] * len(prior.blocks)
    dynamic = ({0: batch}, None, tuple([{0: batch}] * conditional + cache_axes))  # *condition_and_cache: one argument
    entry = export_graph(PriorStep(prior), tuple(examples), dynamic, inputs, outputs, Path(path), opset, fields or {})
    attention = prior.blocks[0].attention
    return {**entry, "layers": len(prior.blocks), "kv_heads": attention.kv_heads, "head_dim": attention.head_dim}
