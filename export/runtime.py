"""Generate brains with onnxruntime only: no torch, so a CPU box needs no training stack.

    python -m export sample --model-dir runs/prior_oasis32_cpu/onnx --n 16 --seed 0 --out samples/

The loop is trainer.pixelcnn.sample's exact fast sampler (one `prior_row` call per row on a band of
rows above it, one `prior_cell` call per cell on a window of columns), and the random numbers and
the draw rule are trainer/sampling_rule.py's, so a seed gives the same code grids as
`python -m trainer sample`. (The logits agree to float rounding, ~1e-7, so a draw could only differ
if a uniform number fell that close to a step of the CDF.) The outputs are the same files too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from export.model_dir import PARTS, read_model_json
from trainer.sample_files import write_samples
from trainer.sampling_rule import check_sampling_options, draw, sampling_randomness


class ExportedModels:
    """The ONNX models of an export folder (export/model_dir.py), run by onnxruntime on the CPU.
    Feeds and fetches use the names in model.json; only the `parts` asked for are loaded."""

    def __init__(self, directory: Path, parts: Iterable[str] = PARTS, threads: int = 0):
        if threads < 0:
            raise ValueError(f"--threads must be >= 0 (0: onnxruntime's default), got {threads}")
        self.directory = Path(directory)
        self.info = read_model_json(self.directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1   # the graphs are chains: nothing to run side by side
        self.sessions = {part: ort.InferenceSession(str(self.directory / self.info["models"][part]["file"]),
                                                    options, providers=["CPUExecutionProvider"])
                         for part in parts}

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


def sample_codes(models: ExportedModels, uniforms: np.ndarray, conditions: np.ndarray | None = None,
                 temperature: float = 1.0, top_k: int = 0, progress: tqdm | None = None) -> np.ndarray:
    """Code grids (B, H, W) int64 in raster order from one uniform number per cell (B, H, W)."""
    info = models.info
    check_sampling_options(temperature, top_k, info["num_codes"])
    batch, height, width = uniforms.shape
    codes = np.zeros((batch, height, width), dtype=np.int64)
    for i in range(height):
        context = models.row_context(codes[:, max(0, i - info["context_rows"]): i + 1], conditions)
        for j in range(width):
            start = max(0, j - info["context_columns"])
            logits = models.cell_logits(codes[:, i, start: j + 1], context[..., start: j + 1], conditions)
            codes[:, i, j] = draw(logits, uniforms[:, i, j], temperature, top_k)
        if progress is not None:
            progress.update(1)
    return codes


def generate(models: ExportedModels, n: int, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
             slice_index: int | None = None, batch_size: int = 16,
             show_progress: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(codes (n, H, W), conditions (n,) or None, images (n, S, S) in [0, 1]): trainer.sample.generate's
    results for the same arguments."""
    info = models.info
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    uniforms, conditions = sampling_randomness(n, info["height"], info["width"], info["num_conditions"], seed,
                                               slice_index)
    codes, images = [], []
    rows = info["height"] * -(-n // batch_size)
    with tqdm(total=rows, desc="sample", unit="row", disable=not show_progress) as bar:
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            grid = sample_codes(models, uniforms[part], None if conditions is None else conditions[part],
                                temperature, top_k, progress=bar)
            codes.append(grid)
            images.append(models.decode(grid)[:, 0])
    return np.concatenate(codes), conditions, np.concatenate(images)


def run_sampling(model_dir: Path, out: Path, n: int = 16, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
                 slice_index: int | None = None, batch_size: int = 16, threads: int = 0,
                 show_progress: bool = True) -> dict:
    """`python -m export sample`: generate, write the files and summary.json; returns the summary."""
    models = ExportedModels(model_dir, ("prior_row", "prior_cell", "decoder"), threads)
    started = time.perf_counter()
    codes, conditions, images = generate(models, n, seed, temperature, top_k, slice_index, batch_size, show_progress)
    seconds = time.perf_counter() - started
    figure = write_samples(Path(out), codes, conditions, images, models.info["num_codes"])
    summary = {"n": n, "seed": seed, "temperature": temperature, "top_k": top_k, "slice": slice_index,
               "sampler": "onnxruntime", "seconds": seconds, "figure": str(figure), "model_dir": str(model_dir)}
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
