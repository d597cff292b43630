"""Torch -> ONNX: the VQ-VAE as an encoder and a decoder, the prior as what its exact fast sampler runs.

    python -m export onnx --checkpoint runs/prior_oasis32_cpu --out runs/prior_oasis32_cpu/onnx

model.json's "prior_kind" says which prior the folder holds, and its "anomaly" the healthy per-code NLL quantiles
`export anomaly` thresholds by (trainer/stage2/healthy_nll.py: from the prior's validation codes, when its codes
folder is there; a folder without them cannot map anomalies, and the export says so). The transformer is exported as one
`prior_step` model with its key/value cache as explicit inputs and outputs (export/transformer_onnx.py).
The gated PixelCNN is exported as `prior_row` (GatedPixelCNN.row_context) and `prior_cell` (cell_logits), not
as the whole network run once per cell, nor as a network that caches activations between cells:
  * bounded windows: a cell's logits depend only on `context_rows` rows above it and
    `context_columns` cells to its left (trainer/stage2/pixelcnn.py), so both models take windows that
    cover exactly that receptive field, and the cost per cell is independent of the grid size;
  * the sampler's only state is the code grid: nothing to carry between calls, so the onnxruntime
    loop (export/runtime/prior_sampler.py) is the same few lines as trainer.stage2.pixelcnn.sample;
  * exact: the logits are the full forward pass's up to float rounding, unlike caching schemes
    that approximate the edges or must rebuild the zero padding by hand.
The full forward pass is not exported: the sampler never runs it, and the tests check the two
halves against it in torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from common.cli import add_checkpoint_argument, add_force_argument, add_vqvae_argument
from common.cli_types import one_of
from common.digest import file_sha256
from common.output_dir import atomic_output_dir, check_output_dir
from common.shard_format import IMAGE_SIZE
from export.onnx_graph import export_part
from export.runtime.model_dir import DEFAULT_OPSET, FORMAT_VERSION, MODEL_JSON, SUPPORTED_OPSETS
from export.transformer_onnx import export_step
from trainer.run.checkpoint import resolve_checkpoint
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.healthy_nll import has_healthy_codes, healthy_threshold_record
from trainer.stage2.load import load_paired_vqvae, load_prior
from trainer.stage2.pixelcnn import GatedPixelCNN
from trainer.stage2.transformer_prior import TransformerPrior

DESCRIPTION = (
    "Write encoder.onnx, decoder.onnx, the prior's models (PixelCNN: prior_row.onnx and prior_cell.onnx, "
    "the two halves of the exact fast sampler; transformer: prior_step.onnx, one step with the key/value "
    "cache as inputs) and model.json (prior kind, shapes, opset, sha256 of every file and of the source "
    "weights) into a new folder. All batch, window and cache axes are dynamic."
)


class EncoderGraph(nn.Module):
    """Images -> code indices: the VQ-VAE's encoder, then the quantizer's `encode_indices` (for a codebook:
    distance + argmin on all cells at once; its chunked, compiled training kernel does not export)."""

    def __init__(self, vqvae: VQVAE):
        super().__init__()
        self.encoder, self.quantizer = vqvae.encoder, vqvae.quantizer

    def forward(self, images: Tensor) -> Tensor:
        return self.quantizer.encode_indices(self.encoder(images))


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


@torch.no_grad()
def model_fields(prior: GatedPixelCNN | TransformerPrior, vqvae: VQVAE, anomaly: dict | None = None) -> dict:
    """What the runtime must know about the models before it runs them (model.json's semantic fields, also
    written into every graph): the prior's kind and sizes, the grid, K, the code width, the conditions, and the
    anomaly maps' healthy NLL thresholds (`anomaly`, trainer/stage2/healthy_nll.py) when there are any."""
    shape = prior.shape
    if isinstance(prior, TransformerPrior):
        kind, details = "transformer", {}
    else:
        kind, details = (
            "pixelcnn",
            {
                "context_rows": prior.context_rows,
                "context_columns": prior.context_columns,
                "layers": len(prior.layers),
                "channels": prior.embed.embedding_dim,
            },
        )
    return {
        "prior_kind": kind,
        "image_size": IMAGE_SIZE,
        "height": shape.height,
        "width": shape.width,
        "num_codes": shape.num_codes,
        "code_dim": vqvae.quantizer.code_dim,
        "num_conditions": shape.num_conditions,
        **details,
        **({} if anomaly is None else {"anomaly": anomaly}),
    }


def export_models(
    prior: GatedPixelCNN | TransformerPrior,
    vqvae: VQVAE,
    out: Path,
    opset: int = DEFAULT_OPSET,
    source: dict | None = None,
    anomaly: dict | None = None,
) -> dict:
    """Write the VQ-VAE's two models, the prior's (by its kind) and model.json into the folder `out`;
    returns model.json's contents. `source` records where the weights came from (checkpoints and their sha256),
    `anomaly` the healthy NLL thresholds of the anomaly maps."""
    fields = model_fields(prior, vqvae, anomaly)
    kind, height, width = fields["prior_kind"], fields["height"], fields["width"]
    batch = Dim("batch")
    images = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    codes = torch.zeros(2, height, width, dtype=torch.long)
    models = {
        "encoder": export_part(
            EncoderGraph(vqvae),
            {"images": images},
            {"images": {0: batch}},
            "codes",
            out / "encoder.onnx",
            opset,
            fields,
        ),
        "decoder": export_part(
            DecoderGraph(vqvae), {"codes": codes}, {"codes": {0: batch}}, "images", out / "decoder.onnx", opset, fields
        ),
    }
    if kind == "transformer":
        models["prior_step"] = export_step(prior, out / "prior_step.onnx", opset, fields)
    else:
        models.update(export_pixelcnn(prior, out, opset, fields))
    written = onnx.load(str(out / "decoder.onnx")).opset_import  # the opset the exporter settled on
    info = {
        "format_version": FORMAT_VERSION,
        **fields,
        "opset": next(o.version for o in written if o.domain in ("", "ai.onnx")),
        "source": source or {},
        "models": models,
    }
    (out / MODEL_JSON).write_text(json.dumps(info, indent=1) + "\n")
    return info


def export_pixelcnn(prior: GatedPixelCNN, out: Path, opset: int, fields: dict) -> dict:
    """prior_row.onnx and prior_cell.onnx, the two halves of the PixelCNN's exact fast sampler; their entries."""
    batch = Dim("batch")
    rows = Dim("rows", min=1, max=prior.context_rows + 1)
    columns = Dim("n", min=1, max=prior.context_columns + 1)
    # Example inputs: batch 2 and windows of 2 (torch.export specialises sizes 0 and 1).
    condition = {"condition": torch.zeros(2, dtype=torch.long)} if prior.shape.num_conditions else {}
    band = torch.zeros(2, 2, prior.shape.width, dtype=torch.long)
    context = prior.row_context(band, condition.get("condition"))[..., :2]
    return {
        "prior_row": export_part(
            PriorRowGraph(prior),
            {"band": band, **condition},
            {"band": {0: batch, 1: rows}, "condition": {0: batch}},
            "context",
            out / "prior_row.onnx",
            opset,
            fields,
        ),
        "prior_cell": export_part(
            PriorCellGraph(prior),
            {"row": band[:, 0, :2], "context": context, **condition},
            {"row": {0: batch, 1: columns}, "context": {0: batch, 3: columns}, "condition": {0: batch}},
            "logits",
            out / "prior_cell.onnx",
            opset,
            fields,
        ),
    }


def export_checkpoint(
    checkpoint: Path, out: Path, vqvae_checkpoint: Path | None = None, opset: int = DEFAULT_OPSET, force: bool = False
) -> dict:
    """Export a prior checkpoint (or a run folder's newest) and its VQ-VAE into the folder `out`,
    written as a hidden temporary folder and renamed when complete; returns model.json's contents."""
    out = Path(out)
    checkpoint = resolve_checkpoint(Path(checkpoint))
    prior, _, info = load_prior(checkpoint)
    vqvae, _, vqvae_path, vqvae_sha256 = load_paired_vqvae(info, vqvae_checkpoint)
    source = {
        "prior_checkpoint": str(checkpoint.resolve()),  # absolute: model.json says where from, read anywhere
        "prior_sha256": file_sha256(checkpoint / "model.safetensors"),
        "vqvae_checkpoint": str(vqvae_path.resolve()),
        "vqvae_sha256": vqvae_sha256,
    }
    check_output_dir(out, marker=MODEL_JSON, force=force, inputs=[checkpoint, vqvae_path])
    anomaly = healthy_threshold_record(prior, info, checkpoint) if has_healthy_codes(info) else None
    # --force replaces an earlier export only: never the checkpoints' folders (nor one holding them)
    with atomic_output_dir(out, marker=MODEL_JSON, force=force, inputs=[checkpoint, vqvae_path]) as tmp:
        return export_models(prior, vqvae, tmp, opset, source, anomaly)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, "prior")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to create; written to a temporary folder and renamed when complete",
    )
    add_vqvae_argument(parser)
    parser.add_argument(
        "--opset",
        type=one_of(SUPPORTED_OPSETS),
        default=DEFAULT_OPSET,
        help=f"ONNX opset of every graph, {min(SUPPORTED_OPSETS)} to {max(SUPPORTED_OPSETS)}, those the exporter "
        "writes (default: %(default)s)",
    )
    add_force_argument(parser)


def run(args: argparse.Namespace) -> None:
    info = export_checkpoint(args.checkpoint, args.out, args.vqvae, args.opset, args.force)
    thresholds = (
        f"anomaly thresholds from {info['anomaly']['codes']:,} {info['anomaly']['split']} codes"
        if "anomaly" in info
        else "no anomaly thresholds: the prior's codes folder has no validate split, so `export anomaly` refuses it"
    )
    print(
        f"{args.out}: {', '.join(m['file'] for m in info['models'].values())}, model.json "
        f"(opset {info['opset']}, grid {info['height']}x{info['width']}, K = {info['num_codes']}; {thresholds})"
    )
