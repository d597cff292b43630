"""Model building and checkpoint loading: the one place that turns a config (and, for a prior, the
shape of its code grids) into a model, and a checkpoint folder back into a trained one.

    build_vqvae(cfg)          stage 1, from a VQVAEConfig
    build_prior(cfg, shape)   stage 2, from a PriorConfig and the PriorShape its codes have
    load_vqvae / load_prior   the same, from a checkpoint's own config.yaml (and prior.json), with its weights

Every command that needs a model (train, evaluate, encode, sample, export) comes here, so the commands
never import each other and a new kind of prior is built and loaded by adding it to `build_prior`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.checkpoint import list_checkpoints, load_checkpoint_config, load_weights
from trainer.config import PriorConfig, VQVAEConfig, build
from trainer.pixelcnn import GatedPixelCNN, PriorShape
from trainer.transformer_prior import TransformerPrior
from trainer.vqvae import VQVAE

PRIOR_INFO = "prior.json"   # in a stage-2 checkpoint: grid, K, conditions, and the VQ-VAE whose codes it models


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    if (path / "model.safetensors").is_file():
        return path
    found = list_checkpoints(path / "checkpoints")
    if not found:
        raise FileNotFoundError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints/")
    return found[-1]


def build_vqvae(cfg: VQVAEConfig) -> VQVAE:
    return VQVAE(cfg.model, cfg.quantizer)


def build_prior(cfg: PriorConfig, shape: PriorShape) -> GatedPixelCNN | TransformerPrior:
    """The untrained prior `cfg.model` describes (`model.kind`), for code grids of `shape`."""
    m = cfg.model
    if m.kind == "transformer":
        t = m.transformer
        return TransformerPrior(shape, layers=t.layers, width=t.width, heads=t.heads, kv_heads=t.kv_heads,
                                mlp_ratio=t.mlp_ratio, dropout=t.dropout)
    return GatedPixelCNN(shape, channels=m.channels, layers=m.layers, kernel=m.kernel,
                         first_kernel=m.first_kernel, head_channels=m.head_channels)


def load_vqvae(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[VQVAE, VQVAEConfig]:
    """Rebuild the model from a checkpoint's own config and load its weights (safetensors)."""
    checkpoint = resolve_checkpoint(checkpoint)
    cfg = build(VQVAEConfig, load_checkpoint_config(checkpoint), "")
    model = build_vqvae(cfg)
    model.load_state_dict(load_weights(checkpoint))
    return model.to(device).eval(), cfg


def load_prior(checkpoint: Path, device: str | torch.device = "cpu"
               ) -> tuple[GatedPixelCNN | TransformerPrior, PriorConfig, dict]:
    """The prior of a checkpoint (or a run folder's newest), its config and its prior.json (grid,
    K, conditions, and the VQ-VAE checkpoint whose codes it models). The kind comes from the checkpoint's
    config.yaml; one written before `model.kind` existed has none and is a PixelCNN (the default)."""
    checkpoint = resolve_checkpoint(checkpoint)
    info_path = checkpoint / PRIOR_INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: missing; is {checkpoint} a stage-2 (prior) checkpoint?")
    info = json.loads(info_path.read_text())
    cfg = build(PriorConfig, load_checkpoint_config(checkpoint), "")
    shape = PriorShape(info["num_codes"], info["height"], info["width"], info["num_conditions"])
    prior = build_prior(cfg, shape)
    prior.load_state_dict(load_weights(checkpoint))
    return prior.to(device).eval(), cfg, info
