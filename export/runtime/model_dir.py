"""The exported model folder: what `python -m export onnx` writes and the onnxruntime side reads.

    DIR/
        encoder.onnx     images (B, 1, S, S) float32 in [0, 1] -> codes (B, H, W) int64
        decoder.onnx     codes (B, H, W) int64 -> images (B, 1, S, S) float32 in [0, 1]
        and the prior, by its kind (model.json's "prior_kind"):
        pixelcnn:
        prior_row.onnx   band (B, rows, W) int64 [, condition (B,) int64] -> context (B, layers, 2C, W)
        prior_cell.onnx  row (B, n) int64, context (B, layers, 2C, n) [, condition] -> logits (B, K)
        transformer:
        prior_step.onnx  one raster step with the key/value cache as inputs (export/transformer_onnx.py)
        model.json       prior kind, grid, K, opset, sha256 of every file and of the source weights, input
                         and output names, what the sampler needs (receptive field, cache sizes): the runtime
                         hard-codes none of them; and "anomaly", the healthy per-code NLL quantiles
                         `export anomaly` thresholds by (common/anomaly_maps.py), when the export had them

A folder written before the transformer existed has no "prior_kind" and is a PixelCNN's; a kind this
runtime does not know is refused, naming it, rather than sampled wrongly.

Torch-free, so that the runtime can check a folder without the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.digest import file_sha256
from common.json_file import read_json_object

MODEL_JSON = "model.json"
FORMAT_VERSION = 1
DEFAULT_OPSET = 20
# The opsets `export onnx` writes every graph at: torch's exporter implements 18 and above (it converts lower
# ones with onnx's version converter, which fails on Pad and others), and this onnxruntime runs up to 23.
SUPPORTED_OPSETS = tuple(range(18, 24))
PARTS = ("encoder", "decoder")
PRIOR_PARTS = {"pixelcnn": ("prior_row", "prior_cell"), "transformer": ("prior_step",)}
KEYS = (
    "format_version",
    "image_size",
    "height",
    "width",
    "num_codes",
    "code_dim",
    "num_conditions",
    "opset",
    "source",
    "models",
)
PRIOR_KEYS = {"pixelcnn": ("context_rows", "context_columns", "layers", "channels"), "transformer": ()}
PART_KEYS = ("file", "sha256", "inputs", "outputs")
# The fields the runtime's behaviour depends on. `export onnx` also writes them into every ONNX file's
# metadata (covered by its sha256), and the runtime compares the two: an edited model.json is refused
# rather than trusted (a smaller context_rows gave wrong samples with exit 0).
SEMANTIC_KEYS = (
    "prior_kind",
    "image_size",
    "height",
    "width",
    "num_codes",
    "code_dim",
    "num_conditions",
    "context_rows",
    "context_columns",
    "layers",
    "channels",
    "anomaly",
)
GRAPH_METADATA = "brain_vqvae.model_json"
STEP_KEYS = ("layers", "kv_heads", "head_dim")  # prior_step's entry: what the sampler allocates the cache from


def parts_of(info: dict) -> tuple[str, ...]:
    """Every model of a folder: the VQ-VAE's two and its prior kind's."""
    return PARTS + PRIOR_PARTS[info["prior_kind"]]


class ModelDirError(ValueError):
    """An export folder is missing or inconsistent; the message names the file and the problem."""


def read_model_json(directory: Path) -> dict:
    """model.json of an export folder, after checking that it has every key and that every
    .onnx file it lists is there with the recorded sha256 (files of two exports never mix)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: no such folder; export one with `python -m export onnx`")
    path = directory / MODEL_JSON
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; is {directory} a folder written by `python -m export onnx`?")
    try:
        info = read_json_object(path)
    except ValueError as err:
        raise ModelDirError(str(err)) from None
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path}: format_version {version} is not {FORMAT_VERSION}; re-export the model")
    kind = info.setdefault("prior_kind", "pixelcnn")
    if not isinstance(kind, str) or kind not in PRIOR_PARTS:
        raise ModelDirError(
            f"{path}: prior_kind {kind!r} is not one this runtime can sample "
            f"({', '.join(PRIOR_PARTS)}); use a newer brain-vqvae or re-export the model"
        )
    missing = [key for key in KEYS + PRIOR_KEYS[kind] if key not in info]
    if missing:
        raise ModelDirError(f"{path}: missing keys {', '.join(missing)}")
    if not isinstance(info["models"], dict):
        raise ModelDirError(f"{path}: models must be an object")
    for part in parts_of(info):
        spec = info["models"].get(part)
        needed = PART_KEYS + (STEP_KEYS if part == "prior_step" else ())
        if not isinstance(spec, dict) or any(key not in spec for key in needed):
            raise ModelDirError(f"{path}: models.{part} must have {', '.join(needed)}")
        name = spec["file"]
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ModelDirError(f"{path}: models.{part}.file {name!r} is not a file name inside the folder")
        onnx_file = directory / spec["file"]
        if not onnx_file.is_file():
            raise ModelDirError(f"{onnx_file}: missing (listed in {path})")
        if file_sha256(onnx_file) != spec["sha256"]:
            raise ModelDirError(f"{onnx_file}: sha256 differs from {path}; the files come from different exports")
    return info


def check_graph_metadata(path: Path, info: dict, part: str, metadata: dict[str, str]) -> None:
    """The semantic fields of model.json (at `path`) must be those `export onnx` wrote into the ONNX
    file of `part` (its custom metadata, `metadata`); the message names the first field that differs."""
    recorded = metadata.get(GRAPH_METADATA)
    if recorded is None:
        raise ModelDirError(f"{path}: {info['models'][part]['file']} carries no model description; re-export the model")
    graph_fields = json.loads(recorded)
    for key in SEMANTIC_KEYS:
        if info.get(key) != graph_fields.get(key):
            raise ModelDirError(
                f"{path}: {key} is {info.get(key)!r} but {info['models'][part]['file']} was exported "
                f"with {graph_fields.get(key)!r}; model.json was edited: re-export the model"
            )
