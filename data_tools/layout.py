"""The OASIS `keras_png_slices_data` folder layout, and the checks it must pass before sharding.

    keras_png_slices_data/
        keras_png_slices_train/      case_001_slice_0.nii.png ... (32 slices per subject)
        keras_png_slices_validate/
        keras_png_slices_test/
        keras_png_slices_seg_train/  seg_001_slice_0.nii.png ...  (optional masks, named like their image)

Everything here is name-level (no pixels are read), so a bad tree fails in a second, before any
output is written.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from common.errors import DataError

SPLITS = ("train", "validate", "test")
IMAGE_NAME = re.compile(r"^case_(\d+)_slice_(\d+)\.nii\.png$", re.ASCII)  # ASCII: "٩" is a digit too


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


def list_problems(header: str, problems: list[str], limit: int = 20) -> str:
    """One error message listing every problem (the first `limit` of them), so one run shows them all."""
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{header}:\n  " + "\n  ".join(problems[:limit]) + more


def path_problem(path: Path, kind: str = "file", missing: str = "does not exist") -> str | None:
    """Why `path` is not a readable file (or folder), or None: a symlink loop or a dangling link is said
    as such, not mistaken for a missing or badly named file."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{path}: symlink loop"
        if path.is_symlink():
            return f"{path}: broken symlink (its target {os.readlink(path)} does not exist)"
        return f"{path}: {missing}" if isinstance(err, FileNotFoundError) else f"{path}: {err.strerror}"
    wanted = stat.S_ISDIR if kind == "folder" else stat.S_ISREG
    return None if wanted(mode) else f"{path}: not a {kind}"


def find_layout_root(src: Path) -> Path:
    """Accept either the `keras_png_slices_data` folder itself or a folder that contains it."""
    problem = path_problem(src, "folder", missing="source folder does not exist")
    if problem:
        raise DataError(problem)
    has_splits = any((src / f"keras_png_slices_{split}").is_dir() for split in SPLITS)
    if not has_splits and (src / "keras_png_slices_data").is_dir():
        return src / "keras_png_slices_data"
    return src


def split_folders(root: Path, split: str) -> tuple[Path, Path]:
    """The image folder and the (optional) mask folder of a split."""
    return root / f"keras_png_slices_{split}", root / f"keras_png_slices_seg_{split}"


def scan_split(root: Path, split: str) -> tuple[list[SliceFile], list[str]]:
    """One split's slices (sorted by subject, then slice), each paired with its mask if the split has
    masks, and every problem found on the way."""
    image_dir, mask_dir = split_folders(root, split)
    return scan_folder(image_dir, split, mask_dir)


def scan_folder(image_dir: Path, split: str, mask_dir: Path | None = None) -> tuple[list[SliceFile], list[str]]:
    """scan_split on one folder of slices (`split` names it in the slices and the problems); masks are paired
    from `mask_dir` when it exists, never when it is None."""
    problem = path_problem(image_dir, "folder", missing=f"split folder '{split}' is missing")
    if problem:
        return [], [problem]
    try:
        entries = sorted(p for p in image_dir.iterdir() if not p.name.startswith("."))  # .DS_Store and friends
    except OSError as err:
        return [], [f"{image_dir}: cannot list the split folder ({err.strerror})"]
    has_masks = mask_dir is not None and mask_dir.is_dir()
    if mask_dir is not None and not has_masks and mask_dir.is_symlink():  # behind a broken link is not "no masks"
        return [], [path_problem(mask_dir, "folder")]
    slices, problems, by_key = [], [], {}
    for path in entries:
        match = IMAGE_NAME.match(path.name)
        problem = path_problem(path) if match or path.is_symlink() else None
        if problem or not match:
            problems.append(problem or f"{path}: name does not match case_<subject>_slice_<N>.nii.png")
            continue
        subject, slice_index = match.group(1), int(match.group(2))
        mask = mask_dir / ("seg_" + path.name.removeprefix("case_")) if has_masks else None
        problem = mask and path_problem(mask, missing=f"mask missing for {path.name} (the split has a mask folder)")
        if problem:
            problems.append(problem)
            continue
        item = SliceFile(split, subject, slice_index, path, mask)
        if item.key in by_key:
            problems.append(f"{image_dir}: {by_key[item.key].name} and {path.name} give the same sample key {item.key}")
            continue
        by_key[item.key] = path
        slices.append(item)
    if not entries:
        problems.append(f"{image_dir}: split '{split}' is empty")
    slices.sort(key=lambda s: (int(s.subject), s.subject, s.slice_index))
    return slices, problems


def subject_problems(by_split: dict[str, list[SliceFile]]) -> list[str]:
    """Subjects are numbers: "0901" in test and "901" in train is one brain in two splits (leakage, which
    would let the model see test brains in training); both spellings in one split is ambiguous."""
    spellings: dict[int, dict[str, set[str]]] = {}
    for split, slices in by_split.items():
        for s in slices:
            spellings.setdefault(int(s.subject), {}).setdefault(split, set()).add(s.subject)
    problems = []
    for number, in_splits in sorted(spellings.items()):
        if len(in_splits) > 1:
            first, places = None, []
            for split, v in in_splits.items():
                spelled = "/".join(sorted(v))
                places.append(f"'{split}'" if spelled == first else f"{spelled} in '{split}'")
                first = first or spelled
            problems.append(f"subject leakage: subject {' and '.join(places)}")
        for split, v in in_splits.items():
            if len(v) > 1:
                problems.append(
                    f"subject {number} is written {' and '.join(sorted(v))} in '{split}'; "
                    "rename the files so that one subject has one id"
                )
    return problems


def scan_layout(src: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, list[SliceFile]]:
    """Scan every requested split and check the tree as a whole; every problem is reported at once."""
    root = find_layout_root(src)
    by_split, problems = {}, []
    for split in splits:
        by_split[split], found = scan_split(root, split)
        problems += found
    problems += subject_problems(by_split)
    if problems:
        raise DataError(list_problems(f"{len(problems)} problem(s) in {root}", problems))
    return by_split
