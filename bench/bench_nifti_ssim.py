"""Benchmark: does the NIfTI path give a model trained on the OASIS PNGs the slices it knows? SSIM of an exported
VQ-VAE's reconstructions of the MNI152 template (nilearn's 1 mm T1, read from its wheel: no download), its slices
cut two ways:
  (a) the NIfTI path: common/nifti_volume.py as `data_tools shard --nifti` and `export reconstruct --nifti` cut
      them (canonical RAS, foreground span, 32 positions, per-volume window, square 256x256, OASIS orientation);
  (b) by hand in plain numpy, none of our volume code: the template's array as stored (it is stored RAS, so the
      OASIS orientation needs no flip: `data[:, :, k]` as rows x columns), the same per-volume window (0.5 and 99.5
      percentiles of the voxels above a tenth of the 99th percentile), padded to a square and resized to 256 with
      PIL's bilinear filter; at the slice indices path (a) chose, so only the cutting differs.
Prints both mean SSIMs (common/ssim.py, as `trainer evaluate`) and their difference as JSON; the goal is a
difference within 0.02.

    python bench/bench_nifti_ssim.py --model-dir models/oasis32 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.nifti_options import Slicing, cut_volume  # noqa: E402
from common.nifti_volume import positions  # noqa: E402
from common.ssim import ssim  # noqa: E402
from export.runtime.onnx_models import ExportedModels  # noqa: E402


def template(folder: Path) -> Path:
    """nilearn's MNI152 1 mm T1 template, saved as a .nii.gz (nilearn reads it from files inside its wheel)."""
    from nilearn.datasets import load_mni152_template

    path = folder / "mni152_1mm.nii.gz"
    nib.save(load_mni152_template(resolution=1), str(path))
    return path


def by_hand(path: Path, indices: list[int]) -> np.ndarray:
    """(N, 256, 256) uint8 slices cut with plain numpy and PIL (see the module docstring, (b))."""
    data = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    mask = data > 0.1 * np.percentile(data, 99)
    lo, hi = np.percentile(data[mask], (0.5, 99.5))
    out = []
    for k in indices:
        plane = np.clip((data[:, :, k] - lo) / (hi - lo), 0, 1).astype(
            np.float32
        )  # rows: left -> right, columns: posterior -> anterior
        rows, cols = plane.shape
        scale = 256 / max(rows, cols)  # 1 mm isotropic: square voxels already
        height, width = round(rows * scale), round(cols * scale)
        resized = np.asarray(Image.fromarray(plane, "F").resize((width, height), Image.Resampling.BILINEAR))
        square = np.zeros((256, 256), np.float32)
        top, left = (256 - height) // 2, (256 - width) // 2
        square[top : top + height, left : left + width] = resized
        out.append(np.round(np.clip(square, 0, 1) * 255).astype(np.uint8))
    return np.stack(out)


def mean_ssim(models: ExportedModels, slices: np.ndarray, batch: int = 16) -> float:
    scores = []
    for start in range(0, len(slices), batch):
        images = slices[start : start + batch, None].astype(np.float32) / 255
        recons = models.decode(models.encode(images))
        scores.append(ssim(np.clip(recons[:, 0], 0, 1), images[:, 0]))
    return float(np.concatenate(scores).mean())


def measure(model_dir: Path, threads: int = 0) -> dict:
    models = ExportedModels(model_dir, ("encoder", "decoder"), threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = template(Path(tmp))
        cut = cut_volume(path, Slicing())
        span = list(cut.indices.values())
        indices = [k for k, _ in positions(span[0], span[-1] + 1)]  # the 32 positions `shard --nifti` keeps
        path_slices = {name: pixels for name, pixels in cut.slices() if cut.indices[name] in indices}
        nifti_path = np.stack(list(path_slices.values()))
        hand = by_hand(path, indices)
    a, b = mean_ssim(models, nifti_path), mean_ssim(models, hand)
    return {
        "model_dir": str(model_dir),
        "template": "nilearn MNI152 T1, 1 mm",
        "slices": len(indices),
        "slice_indices": indices,
        "max_pixel_difference": int(np.abs(nifti_path.astype(np.int16) - hand).max()),  # of 255; float rounding
        "ssim_nifti_path": round(a, 4),
        "ssim_by_hand": round(b, 4),
        "difference": round(a - b, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="folder written by `python -m export onnx`")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    result = measure(args.model_dir, args.threads)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
