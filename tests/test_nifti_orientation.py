"""The orientation rule on real volumes: the MNI152 template (nilearn's 1 mm T1, inside its wheel) cut by the NIfTI
path lies as the OASIS PNG slices lie. Its slice at position 16 (of 32, as OASIS's case_*_slice_16) correlates
with the mean of real OASIS slice-16 images better than every transposed or flipped alternative, except the
left-right mirror, which ties exactly because the template is symmetric (nlin_sym): left and right cannot be told
from it, and the rule keeps RAS order. Needs ../shared/oasis (skipped without it); no OASIS image is stored."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.nifti_options import Slicing, cut_volume
from common.nifti_volume import positions
from conftest import OASIS_SRC

ALTERNATIVES = {
    "anterior-posterior flipped": lambda s: s[:, ::-1],
    "rotated 180 degrees": lambda s: s[::-1, ::-1],
    "transposed": lambda s: s.T,
    "transposed, rows flipped": lambda s: s.T[::-1],
    "transposed, columns flipped": lambda s: s.T[:, ::-1],
    "transposed, rotated 180 degrees": lambda s: s.T[::-1, ::-1],
}


@pytest.fixture(scope="module")
def mni_slice_16(tmp_path_factory) -> np.ndarray:
    datasets = pytest.importorskip("nilearn.datasets", reason="nilearn (the dev extra) ships the MNI152 template")
    path = tmp_path_factory.mktemp("mni") / "mni152.nii.gz"
    nib.save(datasets.load_mni152_template(resolution=1), str(path))
    cut = cut_volume(path, Slicing())
    span = list(cut.indices.values())
    index = dict((n, k) for k, n in positions(span[0], span[-1] + 1))[16]
    return dict(cut.slices())[next(name for name, k in cut.indices.items() if k == index)].astype(np.float64)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.skipif(not OASIS_SRC.is_dir(), reason=f"the OASIS PNG slices are not at {OASIS_SRC}")
def test_mni152_through_the_nifti_path_lies_as_the_oasis_slices_do(mni_slice_16):
    files = sorted((OASIS_SRC / "keras_png_slices_train").glob("case_*_slice_16.nii.png"))[:100]
    mean = np.mean([np.asarray(Image.open(Path(f)), np.float64) for f in files], axis=0)
    ours = correlation(mni_slice_16, mean)
    assert ours > 0.8
    assert correlation(mni_slice_16[::-1], mean) == pytest.approx(ours, abs=1e-6)  # left-right: a symmetric template
    for name, change in ALTERNATIVES.items():
        assert correlation(change(mni_slice_16), mean) < ours - 0.01, name
