"""`python -m trainer anomaly`: anomaly maps with PyTorch: where a scan departs from the healthy brains a prior learned.

    python -m trainer anomaly --checkpoint runs/prior_oasis32 --images lesions/ --out maps/
    python -m trainer anomaly --checkpoint runs/prior_oasis32 --shards data/oasis_shards --split test --out maps/

The method and its choices are common/anomaly_maps.py's; the options and files common/anomaly_run.py's, the same as
`python -m export anomaly`'s, which gives the same maps for a seed. The prior runs by its exact fast sampler
(trainer/stage2/generate.py's sampler_for) with the healing rule in place of the draw. The threshold's healthy NLL
quantiles are computed here from the prior's validation codes (its prior.json's codes_dir), as `export onnx` computes
the ones it stores (trainer/stage2/healthy_nll.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from common.anomaly_run import DESCRIPTION as MAPS_DESCRIPTION
from common.anomaly_run import AnomalyRequest, add_anomaly_arguments, read_inputs, run_anomaly
from common.cli import add_checkpoint_argument, add_device_argument, add_vqvae_argument
from trainer.run.checkpoint import resolve_checkpoint
from trainer.stage1.load import numpy_decoder
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.generate import sampler_for
from trainer.stage2.healthy_nll import healthy_threshold_record
from trainer.stage2.load import load_paired_vqvae, load_prior
from trainer.stage2.pixelcnn import GatedPixelCNN
from trainer.stage2.transformer_prior import TransformerPrior

KIND = "trainer anomaly"  # recorded in the folder: --force replaces only this command's own maps folders
DESCRIPTION = MAPS_DESCRIPTION + " With the PyTorch checkpoints; the healthy thresholds come from the prior's codes."


class TorchAnomalyModels:
    """A prior and its VQ-VAE as common/anomaly_maps.py's AnomalyModels (numpy in and out)."""

    def __init__(self, prior: GatedPixelCNN | TransformerPrior, vqvae: VQVAE):
        self.prior, self.vqvae = prior, vqvae
        self.device = next(prior.parameters()).device
        self.num_codes, self.height = prior.shape.num_codes, prior.shape.height
        self.decode = numpy_decoder(vqvae)

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.vqvae.encode(torch.from_numpy(images).to(self.device)).cpu().numpy()

    def sample(
        self, shape: tuple[int, int, int], conditions: np.ndarray | None, choose: Callable, progress
    ) -> np.ndarray:
        def torch_choose(t: int, logits: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(choose(t, logits.float().cpu().numpy())).to(logits.device)

        condition = None if conditions is None else torch.from_numpy(conditions).to(self.device)
        uniforms = torch.zeros(shape, device=self.device)
        codes = sampler_for(self.prior)(self.prior, uniforms, condition, progress=progress, choose=torch_choose)
        return codes.cpu().numpy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, "prior")
    add_anomaly_arguments(parser)
    add_vqvae_argument(parser)
    add_device_argument(parser)


def run(args: argparse.Namespace) -> None:
    request = AnomalyRequest.from_args(args)
    checkpoint = resolve_checkpoint(Path(args.checkpoint))
    request.check(checkpoint, KIND)
    prior, _, info = load_prior(checkpoint, args.device)
    vqvae, _, vqvae_path, _ = load_paired_vqvae(info, args.vqvae, args.device)
    inputs = read_inputs(request, prior.shape.num_conditions)
    record = healthy_threshold_record(prior, info, checkpoint)
    read = (vqvae_path, Path(info["codes_dir"]))
    summary = run_anomaly(request, inputs, TorchAnomalyModels(prior, vqvae), record, checkpoint, KIND, read)
    print(
        f"{summary['slices']} slices, {summary['codes_resampled_mean']:.1f} codes resampled per slice, "
        f"{summary['seconds_per_slice']:.2f} s a slice -> {args.out} (figure: {summary['figure']})"
    )
