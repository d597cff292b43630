"""The healthy threshold of the anomaly maps: the per-code NLLs a prior gives the codes of the validation split (healthy
brains it never trained on) and their quantiles (common/anomaly_maps.py, threshold_record). `export onnx` stores
them in model.json and `trainer anomaly` computes them here, the same way, so both sides resample the same codes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.anomaly_maps import THRESHOLD_SPLIT, threshold_record
from trainer.run.checkpoint import PRIOR_INFO
from trainer.stage2.codes import CODES_META, check_codes_vqvae, load_code_tensors, read_codes_meta
from trainer.stage2.pixelcnn import GatedPixelCNN
from trainer.stage2.transformer_prior import TransformerPrior

BATCH = 32  # grids per forward pass: one number, so export and trainer anomaly sum in the same order


@torch.no_grad()
def code_nlls(
    prior: GatedPixelCNN | TransformerPrior, codes: torch.Tensor, conditions: torch.Tensor | None
) -> np.ndarray:
    """Each code's NLL (nats) given the codes before it (teacher forcing), codes (N, h, w) -> (N, h, w) float32."""
    device = next(prior.parameters()).device
    parts = []
    for start in range(0, len(codes), BATCH):
        batch = codes[start : start + BATCH].to(device)
        cond = None if conditions is None else conditions[start : start + BATCH].to(device)
        parts.append(F.cross_entropy(prior(batch, cond).float(), batch, reduction="none").cpu())
    return torch.cat(parts).numpy()


def has_healthy_codes(info: dict) -> bool:
    """Whether the codes folder a prior records (prior.json `info`) is there with a validation split."""
    directory = info.get("codes_dir")
    return (
        bool(directory)
        and (Path(directory) / CODES_META).is_file()
        and THRESHOLD_SPLIT in read_codes_meta(directory).get("splits", {})
    )


def healthy_threshold_record(prior: GatedPixelCNN | TransformerPrior, info: dict, checkpoint: Path) -> dict:
    """model.json's "anomaly" entry for a prior (prior.json `info`, of `checkpoint`): the NLL quantiles of its
    validation codes, which must be those of the VQ-VAE it was trained on."""
    directory = info.get("codes_dir")
    if not has_healthy_codes(info):
        raise FileNotFoundError(
            f"{Path(checkpoint) / PRIOR_INFO}: its codes folder {directory or '(none recorded)'} has no "
            f"{THRESHOLD_SPLIT} split; the anomaly threshold is a quantile of the healthy {THRESHOLD_SPLIT} codes' NLL "
            "(run `python -m trainer encode` into that folder)"
        )
    check_codes_vqvae(directory, info.get("vqvae_sha256"), Path(checkpoint) / PRIOR_INFO)
    codes, conditions = load_code_tensors(directory, THRESHOLD_SPLIT, prior.shape)
    return threshold_record(code_nlls(prior, codes, conditions))
