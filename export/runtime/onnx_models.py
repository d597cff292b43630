"""The exported models of a model folder (export/runtime/model_dir.py), run by onnxruntime on the CPU:
what the runtime's sampler and reconstructor call instead of the torch modules.

model.json is checked against each graph itself, not trusted: its input and output names (in order), the
types of the inputs the runtime feeds, the static axes (grid, K) and the transformer's cache sizes (layers,
kv_heads, head_dim) are read from the loaded graph. An edited model.json would otherwise give wrong cells with
exit 0 (reordered outputs) or onnxruntime tracebacks (edited sizes)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.cli_types import integer
from common.kv_cache import cache_names
from common.limits import usable_cores
from export.runtime.model_dir import (
    MODEL_JSON,
    PRIOR_PARTS,
    ModelDirError,
    check_graph_metadata,
    parts_of,
    read_model_json,
)


class ExportedModels:
    """The ONNX models of an export folder (export/runtime/model_dir.py), run by onnxruntime on the CPU.
    Feeds and fetches use the names in model.json; only the `parts` asked for are loaded (all by default;
    "prior" stands for the models of the folder's prior kind)."""

    def __init__(self, directory: Path, parts: Iterable[str] | None = None, threads: int = 0):
        if not 0 <= threads <= usable_cores():
            raise ValueError(f"--threads must be 0 to {usable_cores()} (0: onnxruntime's default), got {threads}")
        self.directory = Path(directory)
        self.info = read_model_json(self.directory)
        kind = self.info["prior_kind"]
        parts = (
            parts_of(self.info)
            if parts is None
            else [name for part in parts for name in (PRIOR_PARTS[kind] if part == "prior" else (part,))]
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graphs are chains: nothing to run side by side
        self.sessions = {
            part: open_session(self.directory / self.info["models"][part]["file"], options) for part in parts
        }
        for part, session in self.sessions.items():
            self.check_graph(part, session)

    def check_graph(self, part: str, session: ort.InferenceSession) -> None:
        """model.json must describe this graph: the fields recorded in it at export, its inputs and outputs
        (names in order, the input types the runtime feeds), and the static axes the runtime relies on (grid
        and K; the transformer's cache sizes), read from the graph itself."""
        path, info = self.directory / MODEL_JSON, self.info
        check_graph_metadata(path, info, part, session.get_modelmeta().custom_metadata_map)
        spec = info["models"][part]
        check_names_and_types(path, part, spec, session)
        if part == "prior_step":
            check_cache_sizes(path, spec, session.get_inputs())
        static = {
            "decoder": (session.get_inputs()[0].shape[1:], [info["height"], info["width"]], "height/width"),
            "prior_cell": (session.get_outputs()[0].shape[1:], [info["num_codes"]], "num_codes"),
            "prior_step": (session.get_outputs()[0].shape[1:], [info["num_codes"]], "num_codes"),
        }
        if part in static and static[part][0] != static[part][1]:
            shape, expected, field = static[part]
            raise ModelDirError(f"{path}: {field} {expected} does not match {spec['file']}'s axes {shape}")

    def run(self, part: str, *arrays: np.ndarray) -> np.ndarray:
        spec = self.info["models"][part]
        return self.sessions[part].run(spec["outputs"], dict(zip(spec["inputs"], arrays)))[0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Images (B, 1, S, S) in [0, 1] -> codes (B, H, W) int64."""
        return self.run("encoder", images.astype(np.float32, copy=False))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (B, H, W) -> images (B, 1, S, S) float32 in [0, 1]."""
        return self.run("decoder", codes.astype(np.int64, copy=False))

    def row_context(self, band: np.ndarray, conditions: np.ndarray | None) -> np.ndarray:
        return self.run("prior_row", band, *([] if conditions is None else [conditions]))

    def cell_logits(self, row: np.ndarray, context: np.ndarray, conditions: np.ndarray | None) -> np.ndarray:
        return self.run("prior_cell", row, context, *([] if conditions is None else [conditions]))


def open_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """An onnxruntime session of one model file; a file onnxruntime cannot load (truncated, not ONNX) is a
    ModelDirError naming it, whatever its recorded sha256 says."""
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception only
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelDirError(f"{path}: onnxruntime cannot load it ({reason}); re-export the model") from None


def fed_type(name: str) -> str:
    """The type the runtime feeds an input: float32 images, PixelCNN context and transformer cache; int64 codes,
    positions and conditions."""
    floats = name in ("images", "context") or name.split("_")[0] in ("key", "value")
    return "tensor(float)" if floats else "tensor(int64)"


def check_names_and_types(path: Path, part: str, spec: dict, session: ort.InferenceSession) -> None:
    """model.json's inputs and outputs of `part` must be the graph's, in its order, and each input of the type
    the runtime feeds; the message names model.json's field."""
    graph = {"inputs": session.get_inputs(), "outputs": session.get_outputs()}
    for field, arguments in graph.items():
        names = [argument.name for argument in arguments]
        if spec[field] != names:
            raise ModelDirError(
                f"{path}: models.{part}.{field} is {spec[field]}, but {spec['file']} has {names}; "
                "model.json was edited: re-export the model"
            )
    for argument in graph["inputs"]:
        if argument.type != fed_type(argument.name):
            raise ModelDirError(
                f"{path}: models.{part}.inputs: {spec['file']} takes {argument.name} as {argument.type}, "
                f"not the {fed_type(argument.name)} the runtime feeds; re-export the model"
            )


def check_cache_sizes(path: Path, spec: dict, inputs: list) -> None:
    """prior_step's cache sizes in model.json (the sampler allocates the cache from them) must be the graph's:
    its number of key inputs, and the static axes of the first one (B, kv_heads, head_dim, cells)."""
    keys = [argument for argument in inputs if argument.name.startswith("key_")]
    graph = {"layers": len(keys), "kv_heads": keys[0].shape[1] if keys else None}
    graph["head_dim"] = keys[0].shape[2] if keys else None
    for field, value in graph.items():
        if spec[field] != value:
            raise ModelDirError(
                f"{path}: models.prior_step.{field} is {spec[field]!r}, but {spec['file']} has {value!r}; "
                "model.json was edited: re-export the model"
            )
    if keys and spec["inputs"][-len(keys) * 2 :] != cache_names(len(keys)):
        raise ModelDirError(f"{path}: models.prior_step.inputs do not end with the cache {cache_names(len(keys))}")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    cores = usable_cores()
    parser.add_argument(
        "--threads",
        type=integer(0, cores),
        default=0,
        help=f"onnxruntime threads per model, 0 to {cores} (the cores this process may use: more threads only "
        "wait for each other); 0 = onnxruntime's default (default: %(default)s)",
    )
