"""The exported models of a model folder (export/runtime/model_dir.py), run by onnxruntime on the CPU:
what the runtime's sampler and reconstructor call instead of the torch modules."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.cli_types import integer
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
            part: ort.InferenceSession(
                str(self.directory / self.info["models"][part]["file"]), options, providers=["CPUExecutionProvider"]
            )
            for part in parts
        }
        for part, session in self.sessions.items():
            self.check_graph(part, session)

    def check_graph(self, part: str, session: ort.InferenceSession) -> None:
        """model.json must describe this graph: the fields recorded in it at export, and the static
        axes the runtime relies on (grid and K), read from the graph itself."""
        path, info = self.directory / MODEL_JSON, self.info
        check_graph_metadata(path, info, part, session.get_modelmeta().custom_metadata_map)
        spec = info["models"][part]
        names = [i.name for i in session.get_inputs()] + [o.name for o in session.get_outputs()]
        if names[: len(spec["inputs"])] != spec["inputs"] or spec["outputs"][0] not in names:
            raise ModelDirError(f"{path}: models.{part} inputs/outputs are not the graph's ({', '.join(names)})")
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


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    cores = usable_cores()
    parser.add_argument(
        "--threads",
        type=integer(0, cores),
        default=0,
        help=f"onnxruntime threads per model, 0 to {cores} (the cores this process may use: more threads only "
        "wait for each other); 0 = onnxruntime's default (default: %(default)s)",
    )
