"""NIfTI in, NIfTI out: `export reconstruct --nifti` on a tiny exported model writes reconstruction.nii.gz in the
input's space (shape and affine exactly, slices back where they came from), refuses a bad volume naming it with
nothing written; and bench/bench_nifti_ssim.py runs on the MNI152 template that nilearn ships."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_nifti import MARKER, grid, phantom

from common.nifti_options import Slicing, cut_volume
from conftest import REPO, save_prior, save_vqvae
from export.__main__ import main as cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nifti_export")
    checkpoint = save_prior(root, save_vqvae(root, seed=0), 0)
    assert cli(["onnx", "--checkpoint", str(checkpoint.parent.parent), "--out", str(root / "onnx")]) == 0
    return root / "onnx"


@pytest.fixture
def tilted_scan(tmp_path: Path) -> Path:
    """An oblique LPS scan with anisotropic voxels and only a qform, the hardest case for an exact affine."""
    affine, shape = grid("LPS", (2.0, 1.5, 3.0), rotation_deg=12)
    path = phantom(tmp_path / "scan.nii.gz", affine, shape)
    image = nib.load(str(path))
    image.set_sform(None, code=0)
    image.set_qform(affine, code=1)
    nib.save(image, str(path))
    return path


def test_reconstruct_writes_the_volume_in_the_inputs_space(model_dir, tilted_scan, tmp_path, capsys):
    out = tmp_path / "recon"
    assert cli(["reconstruct", "--model-dir", str(model_dir), "--out", str(out), "--nifti", str(tilted_scan)]) == 0
    assert "reconstruction.nii.gz" in capsys.readouterr().out
    source, written = nib.load(str(tilted_scan)), nib.load(str(out / "reconstruction.nii.gz"))
    assert np.array_equal(written.affine, source.affine) and written.shape == source.shape
    assert np.array_equal(written.header.get_qform(), source.header.get_qform())
    assert int(written.header["sform_code"]) == 0 and int(written.header["qform_code"]) == 1
    cut = cut_volume(tilted_scan, Slicing())
    pngs = sorted(p.stem for p in (out / "reconstructions").glob("*.png"))
    assert pngs == sorted(cut.indices)
    data = written.get_fdata()
    kept = [cut.volume.file_index(2, k) for k in cut.indices.values()]
    outside = [k for k in range(data.shape[2]) if k not in kept]
    assert outside and not data[:, :, outside].any()  # where the slices go: test_put_back_returns_each_slice...


def test_put_back_returns_each_slice_to_its_voxels(tilted_scan, tmp_path):
    """The identity 'model': the inputs written back land on the voxels they were cut from (a full window, so the
    marker stays the brightest thing)."""
    cut = cut_volume(tilted_scan, Slicing(percentiles=(0.0, 100.0)))
    inputs = {name: pixels / 255.0 for name, pixels in cut.slices()}
    back = nib.load(str(cut.write(inputs, tmp_path / "back.nii.gz"))).get_fdata()
    original = nib.load(str(tilted_scan)).get_fdata()
    window = np.where(original <= cut.window.lo, original.min(), np.clip(original, cut.window.lo, cut.window.hi))
    kept = [cut.volume.file_index(2, k) for k in cut.indices.values()]
    error = np.abs(back[:, :, kept] - window[:, :, kept]).mean()
    assert error < 0.03 * (cut.window.hi - cut.window.lo)  # bilinear edges (0 goes to the minimum) and 8-bit steps
    bright = np.argwhere(back > 200)  # the marker's voxels
    world = bright @ cut.volume.image.affine[:3, :3].T + cut.volume.image.affine[:3, 3]
    assert np.linalg.norm(world.mean(axis=0) - MARKER) < 2.0  # mm: back where it came from, in world space


def test_a_bad_volume_is_named_and_nothing_is_written(model_dir, tmp_path, capsys):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "recon"
    assert cli(["reconstruct", "--model-dir", str(model_dir), "--out", str(out), "--nifti", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: not a NIfTI file") and "\n" not in err
    assert not out.exists()


def test_ssim_bench_runs_on_the_mni152_template(model_dir):
    pytest.importorskip("nilearn", reason="nilearn (the dev extra) ships the MNI152 template")
    sys.path.insert(0, str(REPO / "bench"))
    from bench_nifti_ssim import measure

    result = measure(model_dir, threads=1)
    assert result["slices"] == 32 and result["max_pixel_difference"] <= 1  # the same slices, up to rounding
    assert 0 < result["ssim_nifti_path"] <= 1 and abs(result["difference"]) <= 0.02
