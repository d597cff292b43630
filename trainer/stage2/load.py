"""Model building and checkpoint loading: the one place that turns a config (and, for a prior, the
shape of its code grids) into a model, and a checkpoint folder back into a trained one.

    build_vqvae(cfg)          stage 1, from a VQVAEConfig
    build_prior(cfg, shape)   stage 2, from a PriorConfig and the PriorShape its codes have
    load_vqvae / load_prior   the same, from a checkpoint's own config.yaml (and prior.json), with its weights

Every command that needs a model (train, evaluate, encode, sample, export) comes here, so the commands
never import each other and a new kind of prior is built and loaded by adding it to `build_prior`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.digest import file_sha256
from common.json_file import read_json_object
from common.shard_format import IMAGE_SIZE
from trainer.run.checkpoint import PRIOR_INFO, CheckpointError, build_checked, load_state, resolve_checkpoint
from trainer.run.config_file import config_to_dict
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.load import load_vqvae
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.config import PriorConfig
from trainer.stage2.pixelcnn import GatedPixelCNN
from trainer.stage2.prior_contract import PriorShape
from trainer.stage2.transformer_prior import TransformerPrior


def build_prior(cfg: PriorConfig, shape: PriorShape) -> GatedPixelCNN | TransformerPrior:
    """The untrained prior `cfg.model` describes (`model.kind`), for code grids of `shape`."""
    m = cfg.model
    if m.kind == "transformer":
        t = m.transformer
        return TransformerPrior(
            shape,
            layers=t.layers,
            width=t.width,
            heads=t.heads,
            kv_heads=t.kv_heads,
            mlp_ratio=t.mlp_ratio,
            dropout=t.dropout,
        )
    return GatedPixelCNN(
        shape,
        channels=m.channels,
        layers=m.layers,
        kernel=m.kernel,
        first_kernel=m.first_kernel,
        head_channels=m.head_channels,
    )


def load_prior(
    checkpoint: Path, device: str | torch.device = "cpu"
) -> tuple[GatedPixelCNN | TransformerPrior, PriorConfig, dict]:
    """The prior of a checkpoint (or a run folder's newest), its config and its prior.json (grid,
    K, conditions, and the VQ-VAE checkpoint whose codes it models). The kind comes from the checkpoint's
    config.yaml; one written before `model.kind` existed has none and is a PixelCNN (the default)."""
    checkpoint = resolve_checkpoint(checkpoint)
    info_path = checkpoint / PRIOR_INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: missing; is {checkpoint} a stage-2 (prior) checkpoint?")
    info = read_json_object(info_path)
    cfg = build_checked(PriorConfig, checkpoint)
    try:
        shape = PriorShape(info["num_codes"], info["height"], info["width"], info["num_conditions"])
    except KeyError as err:
        raise CheckpointError(f"{info_path}: missing {err}") from None
    prior = build_prior(cfg, shape)
    load_state(prior, checkpoint)
    return prior.to(device).eval(), cfg, info


def load_paired_vqvae(
    info: dict, vqvae_checkpoint: Path | None = None, device: str | torch.device = "cpu"
) -> tuple[VQVAE, VQVAEConfig, Path, str]:
    """The VQ-VAE whose codes a prior models (its prior.json `info`): the one recorded there, or
    `vqvae_checkpoint`, which must make the same grid with the same K from the same weights; the one check
    `trainer sample`, `evaluate-prior` and `export onnx` share. Returns (model, config, folder, weights' sha256)."""
    path = resolve_checkpoint(Path(vqvae_checkpoint or info["vqvae_checkpoint"]))
    vqvae, cfg = load_vqvae(path, device)
    sha256 = file_sha256(path / "model.safetensors")
    grid = IMAGE_SIZE // vqvae.downsample
    if (info["height"], info["width"]) != (grid, grid) or info["num_codes"] != vqvae.quantizer.num_codes:
        raise ValueError(
            f"{path}: makes {grid}x{grid} grids of {vqvae.quantizer.num_codes} codes, but the "
            f"prior models {info['height']}x{info['width']} grids of {info['num_codes']} codes"
        )
    if info.get("vqvae_sha256") not in (None, sha256) and not makes_recorded_codes(vqvae, cfg, info):
        raise ValueError(
            f"{path}: its weights (sha256 {sha256[:12]}...) are not the ones the prior was trained on "
            f"({info['vqvae_sha256'][:12]}..., prior.json), nor a decoder trained alone on them "
            "(init.decoder_only); pass the right --vqvae"
        )
    return vqvae, cfg, path, sha256


def makes_recorded_codes(vqvae: VQVAE, cfg: VQVAEConfig, info: dict) -> bool:
    """Whether `vqvae` gives every slice the codes the prior was trained on, though its weights file differs: its
    encoder and quantizer (weights, codebook, EMA statistics, config) are those of the VQ-VAE prior.json records,
    whose file must still be the one recorded. A decoder trained alone (init.decoder_only) keeps them."""
    recorded_path = resolve_checkpoint(Path(info["vqvae_checkpoint"]))
    if file_sha256(recorded_path / "model.safetensors") != info["vqvae_sha256"]:
        return False
    recorded, recorded_cfg = load_vqvae(recorded_path)
    if config_to_dict(recorded_cfg.model) != config_to_dict(cfg.model) or {
        **config_to_dict(recorded_cfg.quantizer),
        "compile": None,
    } != {**config_to_dict(cfg.quantizer), "compile": None}:
        return False
    ours, theirs = vqvae.state_dict(), recorded.state_dict()
    coding = [k for k in theirs if not k.startswith("decoder.")]
    return all(k in ours and torch.equal(ours[k].cpu(), theirs[k]) for k in coding)
