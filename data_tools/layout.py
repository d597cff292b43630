"""The OASIS `keras_png_slices_data` folder layout, and the checks it must pass before sharding.

    keras_png_slices_data/
        keras_png_slices_train/      case_001_slice_0.nii.png ... (32 slices per subject)
        keras_png_slices_validate/
        keras_png_slices_test/
        keras_png_slices_seg_train/  seg_001_slice_0.nii.png ...  (optional masks)

Everything here is name-level (no pixels are read), so a bad tree fails in a second, before any
output is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from export.runtime.shard_format import DataError

SPLITS = ("train", "validate", "test")
IMAGE_NAME = re.compile(r"^case_(\d+)_slice_(\d+)\.nii\.png$")
MASK_NAME = "seg_{subject}_slice_{slice}.nii.png"


@dataclass(frozen=True)
class SliceFile:
    """One slice on disk: `case_001_slice_7.nii.png` is subject "001", slice 7."""

    split: str
    subject: str
    slice_index: int
    image: Path
    mask: Path | None

    @property
    def key(self) -> str:
        """The WebDataset sample key; no dots, so webdataset splits key and extension correctly."""
        return f"case_{self.subject}_slice_{self.slice_index}"


def find_layout_root(src: Path) -> Path:
    """Accept either the `keras_png_slices_data` folder itself or a folder that contains it."""
    if not src.is_dir():
        raise DataError(f"{src}: source folder does not exist")
    has_splits = any((src / f"keras_png_slices_{split}").is_dir() for split in SPLITS)
    if not has_splits and (src / "keras_png_slices_data").is_dir():
        return src / "keras_png_slices_data"
    return src


def scan_split(root: Path, split: str) -> list[SliceFile]:
    """List one split's slices (sorted by subject, then slice), pairing each with its mask if any."""
    image_dir = root / f"keras_png_slices_{split}"
    mask_dir = root / f"keras_png_slices_seg_{split}"
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: split folder '{split}' is missing")
    has_masks = mask_dir.is_dir()
    slices = []
    for path in image_dir.iterdir():
        if path.name.startswith("."):  # .DS_Store and friends
            continue
        match = IMAGE_NAME.match(path.name)
        if not match or not path.is_file():
            raise DataError(f"{path}: name does not match case_<subject>_slice_<N>.nii.png")
        subject, slice_index = match.group(1), int(match.group(2))
        mask = None
        if has_masks:
            mask = mask_dir / MASK_NAME.format(subject=subject, slice=slice_index)
            if not mask.is_file():
                raise DataError(f"{mask}: mask missing for {path.name} (the split has a mask folder)")
        slices.append(SliceFile(split, subject, slice_index, path, mask))
    if not slices:
        raise DataError(f"{image_dir}: split '{split}' is empty")
    slices.sort(key=lambda s: (int(s.subject), s.subject, s.slice_index))
    return slices


def check_no_subject_leakage(by_split: dict[str, list[SliceFile]]) -> None:
    """A subject in two splits would let the model see test brains in training: refuse it."""
    owner: dict[str, str] = {}
    clashes = []
    for split, slices in by_split.items():
        for subject in sorted({s.subject for s in slices}):
            if subject in owner and owner[subject] != split:
                clashes.append(f"subject {subject} in '{owner[subject]}' and '{split}'")
            owner.setdefault(subject, split)
    if clashes:
        shown = "; ".join(clashes[:10]) + (f"; ... ({len(clashes)} in all)" if len(clashes) > 10 else "")
        raise DataError(f"subject leakage between splits: {shown}")


def scan_layout(src: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, list[SliceFile]]:
    """Scan every requested split and check the tree as a whole."""
    root = find_layout_root(src)
    by_split = {split: scan_split(root, split) for split in splits}
    check_no_subject_leakage(by_split)
    return by_split
