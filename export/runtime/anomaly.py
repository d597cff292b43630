"""Anomaly maps with onnxruntime only (no torch): where a scan departs from the healthy brains the prior has learned.

    python -m export anomaly --model-dir runs/prior_oasis32/onnx --images lesions/ --out maps/
    python -m export anomaly --model-dir DIR --shards data/oasis_shards --split test --out maps/
    python -m export anomaly --model-dir DIR --nifti scan.nii.gz --out maps/

The method and its choices are common/anomaly_maps.py's; the options and files common/anomaly_run.py's, the same as
`python -m trainer anomaly`'s, which gives the same maps for a seed. The prior runs by its exact fast sampler
(export/runtime/prior_sampler.py) with the healing rule in place of the draw; the threshold is the healthy NLL
quantile stored in model.json at export, so no data is needed here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.anomaly_run import DESCRIPTION as MAPS_DESCRIPTION
from common.anomaly_run import AnomalyRequest, add_anomaly_arguments, read_inputs, run_anomaly
from export.runtime.onnx_models import ExportedModels, add_threads_argument
from export.runtime.prior_sampler import sample_codes

KIND = "export anomaly"  # recorded in the folder: --force replaces only this command's own maps folders
DESCRIPTION = MAPS_DESCRIPTION + " With the exported models and onnxruntime alone (no torch)."


class OnnxAnomalyModels:
    """An export folder's models as common/anomaly_maps.py's AnomalyModels."""

    def __init__(self, models: ExportedModels):
        self.models = models
        self.num_codes, self.height = models.info["num_codes"], models.info["height"]

    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.models.encode(images)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.models.decode(codes)

    def sample(
        self, shape: tuple[int, int, int], conditions: np.ndarray | None, choose: Callable, progress
    ) -> np.ndarray:
        return sample_codes(self.models, np.zeros(shape, np.float32), conditions, progress=progress, choose=choose)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by `python -m export onnx`")
    add_anomaly_arguments(parser)
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> None:
    request = AnomalyRequest.from_args(args)
    request.check(args.model_dir, KIND)
    models = ExportedModels(args.model_dir, threads=args.threads)
    info = models.info
    inputs = read_inputs(request, info["num_conditions"])
    summary = run_anomaly(request, inputs, OnnxAnomalyModels(models), info.get("anomaly"), args.model_dir, KIND)
    print(
        f"{summary['slices']} slices, {summary['codes_resampled_mean']:.1f} codes resampled per slice, "
        f"{summary['seconds_per_slice']:.2f} s a slice -> {args.out} (figure: {summary['figure']})"
    )
