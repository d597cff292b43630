"""Export one torch module to a checked ONNX file: the helper every exported model goes through
(export/onnx_export.py's VQ-VAE and PixelCNN parts, export/transformer_onnx.py's step model).

Uses the current exporter (torch.export, `dynamo=True`); every axis that can vary is dynamic.
"""

from __future__ import annotations

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

from common.digest import file_sha256
from export.runtime.model_dir import GRAPH_METADATA


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


def export_graph(
    module: nn.Module,
    examples: tuple,
    dynamic_shapes: tuple,
    inputs: list[str],
    outputs: list[str],
    path: Path,
    opset: int,
    fields: dict,
) -> dict:
    """Export one model with named inputs and outputs and dynamic axes (torch.export's `dynamic_shapes`,
    one entry per argument of `module.forward`) and check it; returns its model.json entry. The semantic
    `fields` of model.json go into the file's metadata too, where the runtime checks model.json against them."""
    with quiet_exporter():
        program = torch.onnx.export(
            module.eval(),
            examples,
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            input_names=inputs,
            output_names=outputs,
            verbose=False,
        )
    program.save(path, external_data=False)
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {GRAPH_METADATA: json.dumps(fields, sort_keys=True)})
    check_opset(graph, path, opset)
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return {"file": path.name, "sha256": file_sha256(path), "inputs": inputs, "outputs": outputs}


def check_opset(graph: onnx.ModelProto, path: Path, opset: int) -> None:
    """The exporter converts below its own opset with onnx's version converter, which fails for some operators
    (it then keeps its own opset and says so only in a log line): refuse a graph not at the opset asked for."""
    written = [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")]
    if written != [opset]:
        raise ValueError(f"{path}: the exporter wrote opset {', '.join(map(str, written))}, not the {opset} asked for")


def export_part(
    module: nn.Module,
    inputs: dict[str, Tensor],
    dynamic: dict[str, dict[int, Dim]],
    output: str,
    path: Path,
    opset: int,
    fields: dict,
) -> dict:
    """export_graph for a model with one output and one tensor per named input."""
    return export_graph(
        module,
        tuple(inputs.values()),
        tuple(dynamic[name] for name in inputs),
        list(inputs),
        [output],
        path,
        opset,
        fields,
    )
