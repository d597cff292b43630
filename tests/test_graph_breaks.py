"""The compiled training forward of both models is one graph: no graph breaks, hence no hidden host syncs
(a `.item()`, a data-dependent shape or a Python branch on a tensor would each break it)."""

from __future__ import annotations

import torch
import torch._dynamo

from trainer.stage1.config import ModelConfig, QuantizerConfig
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.pixelcnn import GatedPixelCNN
from trainer.stage2.prior_contract import PriorShape


def graph_breaks(model: torch.nn.Module, *inputs) -> tuple[int, list]:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(*inputs)
    return explanation.graph_break_count, [str(reason) for reason in explanation.break_reasons]


def test_vqvae_training_forward_has_no_graph_breaks():
    model = VQVAE(
        ModelConfig(downsample=4, channels=16, res_blocks=1, res_channels=8, code_dim=8),
        QuantizerConfig(num_codes=32, dead_code_threshold=1.0),
    ).train()
    images = torch.rand(2, 1, 32, 32)
    count, reasons = graph_breaks(model, images)
    assert count == 0, reasons
    assert int(model.quantizer.step) == 1 and bool(model.quantizer.initialized)  # explain ran the real step


def test_gated_pixelcnn_training_forward_has_no_graph_breaks():
    prior = GatedPixelCNN(
        PriorShape(num_codes=16, height=8, width=8, num_conditions=4), channels=8, layers=3, head_channels=16
    ).train()
    codes = torch.randint(16, (2, 8, 8))
    count, reasons = graph_breaks(prior, codes, torch.tensor([0, 3]))
    assert count == 0, reasons
