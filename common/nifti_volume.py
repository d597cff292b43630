"""NIfTI volumes <-> 256x256 slices oriented like the OASIS PNGs, and back (torch-free: data_tools shards with it,
the onnxruntime `export reconstruct` reads and writes volumes with it).

What is done to a volume, and why:
- Read with nibabel and checked: not a NIfTI file, a truncated file, a 2D or 4D volume (a 4D volume holding one
  volume is squeezed, and the metadata says so), NaN/Inf or all-zero data are errors naming the file.
- Reoriented to the closest canonical RAS orientation by axis permutations and flips only (no resampling, so an
  oblique scan keeps its voxels): every scan then lies the same way whatever its file order (LPS, LAS, ...).
- Slices along one canonical axis (axial by default). OASIS orientation rule, found on the MNI152 template against
  the mean of real OASIS slices (tests/test_nifti_orientation.py): an axial RAS slice `data[:, :, k]` used as the
  image array as it is, no transpose, no flip: rows run from the subject's left (top) to right (bottom), columns
  from posterior (left) to anterior (right), and slice 0 is the most inferior. The midline runs horizontally, as
  on the OASIS PNGs. (Left/right cannot be told from the symmetric template; this keeps RAS order.) Coronal and
  sagittal slices use the same rule: the two remaining canonical axes, in order, as rows and columns.
- Foreground: voxels above FOREGROUND_FRACTION of the volume's 99th percentile (works for skull-stripped and for
  raw scans with a noisy background). Slice range: the span of slices whose foreground area is at least
  `min_foreground` of the largest (default 0.5: drops the caps of the head and the skull base, mostly background;
  the OASIS slices all lie where the MNI152 cross-section is >= 0.9 of its largest), or the range given.
- Intensities normalised per volume, never per slice (per-slice scaling would make every slice equally bright and
  erase the contrast between levels): the `percentiles` (default 0.5, 99.5) of the foreground voxels map to 0 and
  1, clipped. The window is saved, so outputs can be mapped back to scanner units.
- Each slice is resampled to square pixels (anisotropic voxels keep the anatomy's aspect), its longer side to
  256 pixels, and padded to 256x256 in the centre; bilinear for images, nearest neighbour for label volumes.
The inverse (`put_back`) undoes each step for 256x256 slices and writes them into the input's voxel grid with its
affine and header, so a result overlays the scan in any viewer.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from PIL import Image

from common.errors import DataError
from common.shard_format import IMAGE_SIZE

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # canonical RAS axis index of each slicing direction
FOREGROUND_FRACTION = 0.1  # of the 99th percentile
MIN_FOREGROUND = 0.5
PERCENTILES = (0.5, 99.5)
POSITIONS = 32  # slices per volume, like the 32 per subject of OASIS; 0 keeps every slice
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_name(path: Path | str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


@dataclass
class Volume:
    """A volume in canonical RAS voxel order, with what is needed to put results back into its file's space."""

    path: Path
    data: np.ndarray  # float32, canonical RAS order
    image: nib.Nifti1Image  # the file as read (its affine, header and shape are the output's)
    to_canonical: np.ndarray  # nibabel orientation transform: file voxel axes -> RAS
    squeezed: bool  # a 4D file with one volume, read as 3D

    @property
    def orientation(self) -> str:
        return "".join(orientations.aff2axcodes(self.image.affine))

    @property
    def spacing(self) -> list[float]:
        """Voxel sizes (mm) along the canonical axes; columns of the affine, so oblique scans are right too."""
        sizes = np.linalg.norm(self.image.affine[:3, :3], axis=0)
        return [float(sizes[int(axis)]) for axis in self.to_canonical[:, 0].argsort()]

    def file_index(self, axis: int, index: int) -> int:
        """The slice's index along the matching axis of the file's own voxel grid."""
        file_axis = int(np.flatnonzero(self.to_canonical[:, 0] == axis)[0])
        flipped = self.to_canonical[file_axis, 1] < 0
        return self.data.shape[axis] - 1 - index if flipped else index


def load_image(path: Path, what: str = "image") -> nib.Nifti1Image:
    """The file as nibabel reads it, data loaded; a file that is not NIfTI or is truncated is a DataError."""
    if not is_nifti_name(path):
        raise DataError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        image = nib.load(str(path))
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(f"{path}: not a NIfTI file ({type(image).__name__})")
        image.get_fdata(dtype=np.float32)  # read it all now: a truncated file fails here, not later
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file does not exist") from None
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as err:
        raise DataError(f"{path}: not a NIfTI file ({' '.join(str(err).split())})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as err:
        raise DataError(f"{path}: truncated or corrupt NIfTI file ({' '.join(str(err).split())})") from None
    return image


def read_volume(path: Path, what: str = "image") -> Volume:
    """Read and check one volume; returns it in canonical RAS voxel order."""
    image = load_image(path, what)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    squeezed = data.ndim == 4 and data.shape[3] == 1
    if squeezed:
        data = data[..., 0]
    if data.ndim != 3:
        extra = " (a 4D file is read only when it holds one volume)" if data.ndim == 4 else ""
        raise DataError(f"{path}: {data.ndim}D {what} of shape {data.shape}; expected a 3D volume{extra}")
    if min(data.shape) < 2:
        raise DataError(f"{path}: shape {data.shape} is a 2D slice, not a 3D volume")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: {what} holds NaN or infinite values")
    if what == "image" and not data.any():
        raise DataError(f"{path}: all-zero volume")
    to_canonical = orientations.ornt_transform(
        orientations.io_orientation(image.affine), orientations.axcodes2ornt("RAS")
    )
    canonical = np.ascontiguousarray(orientations.apply_orientation(data, to_canonical))
    return Volume(Path(path), canonical, image, to_canonical, squeezed)


def check_labels(labels: Volume, image: Volume) -> None:
    """A label volume must share its image's voxel grid: same shape and affine (tolerance 1e-4 mm)."""
    if labels.image.shape[:3] != image.image.shape[:3]:
        raise DataError(f"{labels.path}: label shape {labels.image.shape} differs from its image's {image.image.shape}")
    if not np.allclose(labels.image.affine, image.image.affine, atol=1e-4):
        raise DataError(f"{labels.path}: label affine differs from its image's ({image.path})")
    if labels.data.min() < 0 or labels.data.max() > 255 or not np.array_equal(labels.data, np.round(labels.data)):
        raise DataError(f"{labels.path}: labels must be whole numbers from 0 to 255")


@dataclass(frozen=True)
class Window:
    """The per-volume intensity window: `lo` maps to 0, `hi` to 1."""

    lo: float
    hi: float
    threshold: float  # foreground: voxels above it
    percentiles: tuple[float, float]

    def as_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "foreground_threshold": self.threshold, "percentiles": self.percentiles}


def foreground(volume: Volume) -> tuple[np.ndarray, float]:
    threshold = FOREGROUND_FRACTION * float(np.percentile(volume.data, 99))
    return volume.data > threshold, threshold


def intensity_window(volume: Volume, mask: np.ndarray, threshold: float, percentiles=PERCENTILES) -> Window:
    lo, hi = (float(v) for v in np.percentile(volume.data[mask], percentiles))
    if not hi > lo:
        raise DataError(f"{volume.path}: no intensity range inside the foreground (constant volume?)")
    return Window(lo, hi, threshold, tuple(percentiles))


def slice_range(mask: np.ndarray, axis: int, min_foreground: float) -> tuple[int, int]:
    """[start, stop) spanning the slices whose foreground area is >= min_foreground of the largest."""
    area = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    kept = np.flatnonzero(area >= min_foreground * area.max())
    return int(kept[0]), int(kept[-1]) + 1


def positions(start: int, stop: int, count: int = POSITIONS) -> list[tuple[int, int]]:
    """(slice index, position N) of the slices kept from [start, stop). With `count` (32, as OASIS), N is the
    slice's place in the range binned to `count` positions, one slice per position (the one nearest the bin's
    centre; with fewer slices than positions, every slice in its own bin), so N means the same level whatever the
    slice spacing; with 0, every slice is kept and N is its index."""
    n = stop - start
    if count == 0:
        return [(k, k) for k in range(start, stop)]
    if n <= count:
        return [(k, position_of(k, start, stop, count)) for k in range(start, stop)]
    return [(start + int((i + 0.5) * n / count), i) for i in range(count)]


def position_of(index: int, start: int, stop: int, count: int = POSITIONS) -> int:
    """The position N of slice `index` of [start, stop) binned to `count` positions: the one `positions` gives it
    when it keeps it, and the bin it lies in when it does not (a slice between two kept ones), so every slice of
    the span gets the level a prior conditioned on the positions knows."""
    return int(count * (index - start + 0.5) / (stop - start))


def plane(data: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A slice in the OASIS orientation (the module docstring's rule): the remaining axes as rows and columns."""
    return np.take(data, index, axis=axis)


def plane_spacing(volume: Volume, axis: int) -> tuple[float, float]:
    rows, cols = (volume.spacing[a] for a in range(3) if a != axis)
    return rows, cols


@dataclass(frozen=True)
class Geometry:
    """Where a (rows, cols) slice lies inside the 256x256 square: resized to (height, width), offset (top, left)."""

    rows: int
    cols: int
    height: int
    width: int
    top: int
    left: int


def square_geometry(shape: tuple[int, int], spacing: tuple[float, float], size: int = IMAGE_SIZE) -> Geometry:
    """Square pixels, the longer physical side to `size`, centred."""
    extent = (shape[0] * spacing[0], shape[1] * spacing[1])
    scale = size / max(extent)
    height, width = (min(size, max(1, round(e * scale))) for e in extent)
    return Geometry(shape[0], shape[1], height, width, (size - height) // 2, (size - width) // 2)


def resize(image: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    if image.shape == (height, width):
        return image.astype(np.float32)
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image.astype(np.float32), "F").resize((width, height), method))


def to_square(image: np.ndarray, geometry: Geometry, nearest: bool = False, size: int = IMAGE_SIZE) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    resized = resize(image, geometry.height, geometry.width, nearest)
    out[geometry.top : geometry.top + geometry.height, geometry.left : geometry.left + geometry.width] = resized
    return out


def from_square(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """to_square undone: the slice's region, resized back to the slice's voxel grid."""
    region = image[geometry.top : geometry.top + geometry.height, geometry.left : geometry.left + geometry.width]
    return resize(region, geometry.rows, geometry.cols)


def to_uint8(image01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8)


def normalised_slice(volume: Volume, window: Window, axis: int, index: int) -> tuple[np.ndarray, Geometry]:
    """One slice as the models see it: 256x256 uint8, per-volume window, OASIS orientation."""
    raw = plane(volume.data, axis, index)
    geometry = square_geometry(raw.shape, plane_spacing(volume, axis))
    scaled = np.clip((raw - window.lo) / (window.hi - window.lo), 0, 1)
    return to_uint8(to_square(scaled, geometry)), geometry


def label_slice(labels: Volume, axis: int, index: int, geometry: Geometry) -> np.ndarray:
    return to_square(plane(labels.data, axis, index), geometry, nearest=True).astype(np.uint8)


def put_back(volume: Volume, slices: dict[int, np.ndarray], axis: int, window: Window | None) -> nib.Nifti1Image:
    """256x256 slices in [0, 1] ({canonical index: slice}) written into the input's voxel grid (same shape, affine
    and header), mapped back through the window to the input's units (0 to the volume's minimum, usually its
    background, rather than to the window's low end, so the result overlays without a grey box); slices not given
    are 0."""
    canonical = np.zeros(volume.data.shape, np.float32)
    for index, image in slices.items():
        raw = plane(volume.data, axis, index)
        values = from_square(image, square_geometry(raw.shape, plane_spacing(volume, axis)))
        if window is not None:  # what the input's 8-bit slice held as 0 (at or below lo) goes back to the minimum
            scaled = window.lo + values * (window.hi - window.lo)
            values = np.where(values < 0.5 / 255, float(volume.data.min()), scaled)
        np.moveaxis(canonical, axis, 0)[index] = values
    back = orientations.ornt_transform(
        orientations.axcodes2ornt("RAS"), orientations.io_orientation(volume.image.affine)
    )
    data = orientations.apply_orientation(canonical, back).reshape(volume.image.shape)
    header = volume.image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1, 0)
    return type(volume.image)(data, None, header)  # no affine given: the header's qform and sform stay as read
