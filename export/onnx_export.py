"""Torch -> ONNX: the VQ-VAE as an encoder and a decoder, the prior as the two halves of its exact sampler.

    python -m export onnx --checkpoint runs/prior_oasis32_cpu --out runs/prior_oasis32_cpu/onnx

The prior is exported as `prior_row` (GatedPixelCNN.row_context) and `prior_cell` (cell_logits), not
as the whole network run once per cell, nor as a network that caches activations between cells:
  * bounded windows: a cell's logits depend only on `context_rows` rows above it and
    `context_columns` cells to its left (trainer/pixelcnn.py), so both models take windows that
    cover exactly that receptive field, and the cost per cell is independent of the grid size;
  * the sampler's only state is the code grid: nothing to carry between calls, so the onnxruntime
    loop (export/runtime/sample.py) is the same few lines as trainer.pixelcnn.sample;
  * exact: the logits are the full forward pass's up to float rounding, unlike caching schemes
    that approximate the edges or must rebuild the zero padding by hand.
The full forward pass is not exported: the sampler never runs it, and the tests check the two
halves against it in torch.

Uses the current exporter (torch.export, `dynamo=True`); every axis that can vary is dynamic.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from export.runtime.cli import add_checkpoint_argument, add_force_argument
from export.runtime.cli_types import positive_int
from export.runtime.digest import file_sha256
from export.runtime.model_dir import DEFAULT_OPSET, FORMAT_VERSION, GRAPH_METADATA, MODEL_JSON
from export.runtime.output_dir import atomic_output_dir
from trainer.models import load_paired_vqvae, load_prior, resolve_checkpoint
from trainer.pixelcnn import GatedPixelCNN
from trainer.quantizer import argmin_distance
from trainer.vqvae import VQVAE

IMAGE_SIZE = 256
DESCRIPTION = ("Write encoder.onnx, decoder.onnx, prior_row.onnx and prior_cell.onnx (the two halves of the exact "
               "fast sampler) and model.json (shapes, receptive field, opset, sha256 of every file and of the source "
               "weights) into a new folder. All batch and window axes are dynamic.")


class EncoderGraph(nn.Module):
    """Images -> code indices: the VQ-VAE's encoder, then the quantizer's distance + argmin run
    eagerly on all cells at once (its chunked, compiled training kernel does not export)."""

    def __init__(self, vqvae: VQVAE):
        super().__init__()
        self.encoder, self.quantizer = vqvae.encoder, vqvae.quantizer

    def forward(self, images: Tensor) -> Tensor:
        z = self.encoder(images).permute(0, 2, 3, 1)                    # (B, H, W, D)
        codebook = self.quantizer.codebook
        flat = argmin_distance(z.reshape(-1, z.shape[-1]), codebook, (codebook * codebook).sum(1))
        return flat.reshape(z.shape[:3])


class DecoderGraph(nn.Module):
    """Code indices -> images in [0, 1]: the VQ-VAE's codebook lookup and decoder."""

    def __init__(self, vqvae: VQVAE):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, codes: Tensor) -> Tensor:
        return self.vqvae.decode(codes)


class PriorRowGraph(nn.Module):
    def __init__(self, prior: GatedPixelCNN):
        super().__init__()
        self.prior = prior

    def forward(self, band: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.prior.row_context(band, condition)


class PriorCellGraph(nn.Module):
    def __init__(self, prior: GatedPixelCNN):
        super().__init__()
        self.prior = prior

    def forward(self, row: Tensor, context: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.prior.cell_logits(row, context, condition)


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notes that concern torch itself, not the user's models: that torchvision's
    operators are not registered (we use none), and deprecation warnings from torch.export."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            warnings.filterwarnings("ignore", category=UserWarning, message="# The axis name")
            yield
    finally:
        registration.setLevel(level)


def export_part(module: nn.Module, inputs: dict[str, Tensor], dynamic: dict[str, dict[int, Dim]],
                output: str, path: Path, opset: int, fields: dict) -> dict:
    """Export one model with named, dynamic axes and check it; returns its model.json entry. The semantic
    `fields` of model.json go into the file's metadata too, where the runtime checks model.json against them."""
    with quiet_exporter():
        program = torch.onnx.export(module.eval(), tuple(inputs.values()), dynamo=True, opset_version=opset,
                                    dynamic_shapes=tuple(dynamic[name] for name in inputs),
                                    input_names=list(inputs), output_names=[output], verbose=False)
    program.save(path, external_data=False)
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {GRAPH_METADATA: json.dumps(fields, sort_keys=True)})
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return {"file": path.name, "sha256": file_sha256(path), "inputs": list(inputs), "outputs": [output]}


@torch.no_grad()
def export_models(prior: GatedPixelCNN, vqvae: VQVAE, out: Path, opset: int = DEFAULT_OPSET,
                  source: dict | None = None) -> dict:
    """Write the four models and model.json into the folder `out`; returns model.json's contents.
    `source` records where the weights came from (checkpoints and their sha256)."""
    shape, height, width = prior.shape, prior.shape.height, prior.shape.width
    batch = Dim("batch")
    rows = Dim("rows", min=1, max=prior.context_rows + 1)
    columns = Dim("n", min=1, max=prior.context_columns + 1)
    # Example inputs: batch 2 and windows of 2 (torch.export specialises sizes 0 and 1).
    condition = {"condition": torch.zeros(2, dtype=torch.long)} if shape.num_conditions else {}
    band = torch.zeros(2, 2, width, dtype=torch.long)
    context = prior.row_context(band, condition.get("condition"))[..., :2]
    images = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    codes = torch.zeros(2, height, width, dtype=torch.long)
    fields = {"image_size": IMAGE_SIZE, "height": height, "width": width, "num_codes": shape.num_codes,
              "code_dim": vqvae.quantizer.code_dim, "num_conditions": shape.num_conditions,
              "context_rows": prior.context_rows, "context_columns": prior.context_columns,
              "layers": len(prior.layers), "channels": prior.embed.embedding_dim}
    models = {
        "encoder": export_part(EncoderGraph(vqvae), {"images": images}, {"images": {0: batch}},
                               "codes", out / "encoder.onnx", opset, fields),
        "decoder": export_part(DecoderGraph(vqvae), {"codes": codes}, {"codes": {0: batch}},
                               "images", out / "decoder.onnx", opset, fields),
        "prior_row": export_part(PriorRowGraph(prior), {"band": band, **condition},
                                 {"band": {0: batch, 1: rows}, "condition": {0: batch}},
                                 "context", out / "prior_row.onnx", opset, fields),
        "prior_cell": export_part(PriorCellGraph(prior), {"row": band[:, 0, :2], "context": context, **condition},
                                  {"row": {0: batch, 1: columns}, "context": {0: batch, 3: columns},
                                   "condition": {0: batch}},
                                  "logits", out / "prior_cell.onnx", opset, fields),
    }
    written = onnx.load(str(out / "prior_cell.onnx")).opset_import   # the opset the exporter settled on
    info = {
        "format_version": FORMAT_VERSION, **fields,
        "opset": next(o.version for o in written if o.domain in ("", "ai.onnx")),
        "source": source or {}, "models": models,
    }
    (out / MODEL_JSON).write_text(json.dumps(info, indent=1) + "\n")
    return info


def export_checkpoint(checkpoint: Path, out: Path, vqvae_checkpoint: Path | None = None,
                      opset: int = DEFAULT_OPSET, force: bool = False) -> dict:
    """Export a prior checkpoint (or a run folder's newest) and its VQ-VAE into the folder `out`,
    written as a hidden temporary folder and renamed when complete; returns model.json's contents."""
    out = Path(out)
    checkpoint = resolve_checkpoint(Path(checkpoint))
    prior, _, info = load_prior(checkpoint)
    vqvae, _, vqvae_path, vqvae_sha256 = load_paired_vqvae(info, vqvae_checkpoint)
    source = {"prior_checkpoint": str(checkpoint), "prior_sha256": file_sha256(checkpoint / "model.safetensors"),
              "vqvae_checkpoint": str(vqvae_path), "vqvae_sha256": vqvae_sha256}
    # --force replaces an earlier export only: never the checkpoints' folders (nor one holding them)
    with atomic_output_dir(out, marker=MODEL_JSON, force=force, inputs=[checkpoint, vqvae_path]) as tmp:
        return export_models(prior, vqvae, tmp, opset, source)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, "prior")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to create; written to a temporary folder and renamed when complete")
    parser.add_argument("--vqvae", type=Path, default=None,
                        help="VQ-VAE checkpoint (default: the one recorded in the prior's prior.json); its weights "
                             "must be the ones the prior was trained on")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    add_force_argument(parser)


def run(args: argparse.Namespace) -> None:
    info = export_checkpoint(args.checkpoint, args.out, args.vqvae, args.opset, args.force)
    print(f"{args.out}: {', '.join(m['file'] for m in info['models'].values())}, model.json "
          f"(opset {info['opset']}, grid {info['height']}x{info['width']}, K = {info['num_codes']})")
