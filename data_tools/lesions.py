"""`python -m data_tools lesions`: a synthetic-lesion set made from one split, to score anomaly maps against.

    python -m data_tools lesions --images ../shared/oasis/keras_png_slices_data --split test --out lesions/test
    python -m data_tools lesions --images data/oasis_shards --split validate --out lesions/validate
    python -m data_tools lesions --images some/folder_of_slices --out lesions/mine

writes
    images/NAME     every slice under its own file name (case_023_slice_7.nii.png, so the slice position is read
                    from it as from the OASIS files): half of them with lesions painted in, the others the input
                    file itself, byte for byte
    masks/NAME      the lesion mask, 0 or 255 (all 0 on a healthy slice)
    heads/NAME      the head mask the lesions were placed in, 0 or 255: the region metrics are computed in
    lesions.json    the generator version and seed, counts, and per slice: healthy or not, and each lesion (kind,
                    edge, centre, radius, shape, contrast, intensities, area); data_tools/lesion_model.py says what
                    those are and how lesions are drawn

Which slices are healthy: half of each subject's slices (odd counts alternate between rounding down and up), drawn
with the seed among the slices that can hold a lesion. A slice that cannot hold even the smallest lesion (one
that is mostly scalp) stays healthy and is recorded as such, so such a subject may have fewer lesion slices.
Deterministic: the same input and seed give the same bytes. Every random generator is seeded by --seed and the name
of the slice (its lesions) or subject (which of its slices get lesions) it serves, never by the order of the work:
a lesion slice's lesions depend on the seed and its name alone. numpy and pillow only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.cli import add_force_argument, add_quiet_argument
from common.cli_types import integer
from common.errors import DataError
from common.limits import MAX_LESIONS, MAX_SEED
from common.output_dir import atomic_output_dir
from common.png_header import read_slice
from common.shard_format import IMAGE_SIZE, MANIFEST, iter_shard, read_manifest
from data_tools.layout import IMAGE_NAME, SPLITS, find_layout_root, list_problems, scan_folder, split_folders
from data_tools.lesion_model import GENERATOR_VERSION, Anatomy, paint_lesions

LESIONS_FILE = "lesions.json"  # the marker: --force replaces only a folder that has it
DESCRIPTION = (
    "Paint synthetic lesions (hyper- and hypo-intense, 2 to 30 pixels in radius, smooth or irregular edges) into "
    "half of the slices of a split, inside the head, and write the slices, their lesion and head masks and "
    "lesions.json: a labelled set to score anomaly maps on. Deterministic for a seed."
)


@dataclass(frozen=True)
class InputSlice:
    name: str  # case_023_slice_7.nii.png
    subject: str
    data: bytes  # the PNG as read (checked): a healthy slice is written back unchanged

    def pixels(self) -> np.ndarray:
        """(256, 256) uint8, decoded again when needed: only the PNG bytes (a third of the pixels' size) are kept."""
        return read_slice(self.data, self.name, IMAGE_SIZE)


def input_slice(name: str, data: bytes, where: str) -> InputSlice:
    """One slice from its file name and PNG bytes, checked; `where` names it in errors."""
    match = IMAGE_NAME.match(name)
    if not match:
        raise DataError(f"{where}: name does not match case_<subject>_slice_<N>.nii.png")
    read_slice(data, where, IMAGE_SIZE)
    return InputSlice(name, match.group(1), data)


def shard_inputs(folder: Path, split: str) -> list[InputSlice]:
    """The slices of one split of a shard folder, named `KEY.nii.png` after their sample keys."""
    splits = read_manifest(folder)["splits"]
    if split not in splits:
        raise DataError(f"{folder / MANIFEST}: no split '{split}' (it has {', '.join(splits)})")
    slices = []
    for shard in splits[split]["shards"]:
        path = folder / shard["name"]
        for sample in iter_shard(path, shard["sha256"]):
            name = f"{sample['__key__']}.nii.png"
            slices.append(input_slice(name, sample.get("png", b""), f"{path}:{name}"))
    return slices


def folder_inputs(folder: Path, split: str) -> list[InputSlice]:
    """The slices of a folder of PNGs named like the OASIS files (subject, then slice order)."""
    files, problems = scan_folder(folder, split)
    if problems:
        raise DataError(problems[0] if len(problems) == 1 else list_problems(f"{folder}: bad slices", problems))
    slices = []
    for item in files:
        try:
            data = item.image.read_bytes()
        except OSError as err:
            raise DataError(f"{item.image}: cannot read it ({err.strerror})") from None
        slices.append(input_slice(item.image.name, data, str(item.image)))
    return slices


def read_inputs(images: Path, split: str | None) -> list[InputSlice]:
    """The slices --images and --split name: a split of a shard folder or of a keras_png_slices_data folder,
    or a folder of slices (no --split)."""
    root = find_layout_root(images)
    has_splits = (root / MANIFEST).is_file() or any(split_folders(root, s)[0].is_dir() for s in SPLITS)
    if has_splits and split is None:
        raise DataError(f"{images}: holds several splits; choose one with --split")
    if not has_splits and split is not None:
        raise DataError(
            f"{images}: a folder of slices, not of splits; --split applies to a shard folder or a "
            "keras_png_slices_data folder"
        )
    if (root / MANIFEST).is_file():
        slices = shard_inputs(root, split)
    else:
        slices = folder_inputs(split_folders(root, split)[0] if has_splits else root, split or root.name)
    if not slices:
        raise DataError(f"{images}: no slices")
    return slices


def named_rng(seed: int, *words: str) -> np.random.Generator:
    """A generator for one purpose and one slice or subject: the same whatever else is in the set."""
    digest = hashlib.sha256("/".join(words).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def choose_lesion_slices(slices: list[InputSlice], can_hold: dict[str, bool], seed: int) -> set[str]:
    """The names of the slices that get lesions: half of each subject's slices, among those that can hold one."""
    by_subject: dict[str, list[str]] = {}
    for item in slices:
        by_subject.setdefault(item.subject, []).append(item.name)
    chosen = set()
    for index, (subject, names) in enumerate(sorted(by_subject.items())):
        wanted = (len(names) + index % 2) // 2
        candidates = sorted(name for name in names if can_hold[name])
        order = named_rng(seed, "lesion slices", subject).permutation(len(candidates))
        chosen |= {candidates[i] for i in order[:wanted]}
    return chosen


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def survey(out: Path, item: InputSlice) -> dict:
    """Write one slice's head mask; returns the start of its lesions.json entry."""
    head = Anatomy.of(item.pixels())
    (out / "heads" / item.name).write_bytes(png_bytes(head.head.astype(np.uint8) * 255))
    return {"subject": item.subject, "can_hold_lesion": head.can_hold_lesion, "head_area": int(head.head.sum())}


def write_slice(out: Path, item: InputSlice, lesion_slice: bool, seed: int, max_lesions: int) -> dict:
    """Write one slice's image and lesion mask; returns the rest of its lesions.json entry."""
    if lesion_slice:
        pixels = item.pixels()
        rng = named_rng(seed, "lesions", item.name)
        image, mask, lesions = paint_lesions(rng, pixels, Anatomy.of(pixels), max_lesions)
        (out / "images" / item.name).write_bytes(png_bytes(image))
    else:
        mask, lesions = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool), []
        (out / "images" / item.name).write_bytes(item.data)
    (out / "masks" / item.name).write_bytes(png_bytes(mask.astype(np.uint8) * 255))
    return {"healthy": not lesions, "lesion_area": int(mask.sum()), "lesions": lesions}


def make_lesion_set(
    images: Path,
    out: Path,
    split: str | None = None,
    seed: int = 0,
    max_lesions: int = 3,
    force: bool = False,
    show_progress: bool = True,
) -> dict:
    """`python -m data_tools lesions`; returns what lesions.json holds."""
    with atomic_output_dir(out, marker=LESIONS_FILE, force=force, inputs=[images]) as tmp:
        slices = read_inputs(Path(images), split)
        for folder in ("images", "masks", "heads"):
            (tmp / folder).mkdir()
        progress = dict(unit="img", disable=not show_progress)
        entries = {item.name: survey(tmp, item) for item in tqdm(slices, "head masks", **progress)}
        chosen = choose_lesion_slices(slices, {name: e["can_hold_lesion"] for name, e in entries.items()}, seed)
        for item in tqdm(slices, "lesions", **progress):
            entries[item.name] |= write_slice(tmp, item, item.name in chosen, seed, max_lesions)
        record = {
            "generator": "data_tools lesions",
            "version": GENERATOR_VERSION,
            "seed": seed,
            "max_lesions": max_lesions,
            "source": str(images),
            "split": split,
            "counts": counts(entries),
            "slices": entries,
        }
        (tmp / LESIONS_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def counts(entries: dict[str, dict]) -> dict:
    lesions = [lesion for entry in entries.values() for lesion in entry["lesions"]]
    return {
        "slices": len(entries),
        "lesion_slices": sum(not entry["healthy"] for entry in entries.values()),
        "healthy_slices": sum(entry["healthy"] for entry in entries.values()),
        "cannot_hold_lesion": sum(not entry["can_hold_lesion"] for entry in entries.values()),
        "lesions": len(lesions),
        "by_kind_and_edge": dict(sorted(Counter(f"{x['kind']} {x['edge']}" for x in lesions).items())),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        type=Path,
        required=True,
        help="a shard folder (written by `shard`), a keras_png_slices_data folder (or one holding it), or a "
        "folder of 256x256 8-bit grayscale slices named case_<subject>_slice_<N>.nii.png",
    )
    parser.add_argument(
        "--split", choices=SPLITS, default=None, help="the split to use, for a shard or keras_png_slices_data folder"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/, masks/, heads/, lesions.json)")
    parser.add_argument(
        "--seed",
        type=integer(0, MAX_SEED),
        default=0,
        help=f"random seed, 0 to {MAX_SEED}; the same seed gives the same files (default: %(default)s)",
    )
    parser.add_argument(
        "--max-lesions",
        type=integer(1, MAX_LESIONS),
        default=3,
        help=f"lesions per lesion slice are drawn from 1 to this, 1 to {MAX_LESIONS} (default: %(default)s)",
    )
    add_force_argument(parser)
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    record = make_lesion_set(
        args.images, args.out, args.split, args.seed, args.max_lesions, args.force, show_progress=not args.quiet
    )
    n = record["counts"]
    print(
        f"wrote {args.out} in {time.perf_counter() - start:.1f} s: {n['slices']} slices, {n['lesion_slices']} with "
        f"{n['lesions']} lesions ({', '.join(f'{v} {k}' for k, v in n['by_kind_and_edge'].items())}), "
        f"{n['healthy_slices']} healthy ({n['cannot_hold_lesion']} could not hold a lesion)"
    )
