"""Stage 1's model: built from a VQVAEConfig, or rebuilt from a checkpoint folder with its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.run.checkpoint import PRIOR_INFO, CheckpointError, build_checked, load_state, resolve_checkpoint
from trainer.run.config_file import ConfigError
from trainer.stage1.config import InitConfig, VQVAEConfig
from trainer.stage1.vqvae import VQVAE


def build_vqvae(cfg: VQVAEConfig) -> VQVAE:
    return VQVAE(cfg.model, cfg.quantizer)


def resolve_vqvae_checkpoint(checkpoint: Path) -> Path:
    """A checkpoint folder, or a run folder's newest; a prior's is an error naming it."""
    checkpoint = resolve_checkpoint(checkpoint)
    if (checkpoint / PRIOR_INFO).is_file():
        raise CheckpointError(f"{checkpoint}: a prior checkpoint (it has {PRIOR_INFO}); a VQ-VAE checkpoint is needed")
    return checkpoint


def load_initial_weights(model: VQVAE, init: InitConfig) -> None:
    """`init.checkpoint`'s weights into `model` (built from the run's config), the EMA codebook's statistics with
    them; then, with `init.decoder_only`, freeze everything but the decoder. A checkpoint of another model, or a
    prior's, is an error naming it."""
    load_state(model, resolve_vqvae_checkpoint(Path(init.checkpoint)))
    if init.decoder_only:
        model.freeze_codes()


def load_vqvae(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[VQVAE, VQVAEConfig]:
    """Rebuild the model from a checkpoint's own config and load its weights (safetensors)."""
    checkpoint = resolve_vqvae_checkpoint(checkpoint)
    cfg = build_checked(VQVAEConfig, checkpoint)
    try:  # the sections that shape the model and its codes (K must fit the uint16 code files)
        cfg.model.check()
        cfg.quantizer.check()
    except ConfigError as err:
        raise CheckpointError(f"{checkpoint / 'config.yaml'}: {err}") from None
    model = build_vqvae(cfg)
    load_state(model, checkpoint)
    return model.to(device).eval(), cfg


def numpy_decoder(vqvae: VQVAE):
    """`vqvae.decode` on numpy code grids (B, h, w) -> images (B, 1, H, W): the form the torch-free figures
    (export/runtime/figures.code_intensity) take, as the ONNX decoder's."""
    device = next(vqvae.parameters()).device

    @torch.no_grad()
    def decode(codes: np.ndarray) -> np.ndarray:
        return vqvae.decode(torch.from_numpy(codes).to(device)).float().cpu().numpy()

    return decode
