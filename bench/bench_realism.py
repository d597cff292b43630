"""Benchmark: can a classifier tell two sets of images apart? The realism test of `trainer evaluate` and
`trainer evaluate-prior` (trainer/stage1/realism.py: a small CNN trained from scratch, grouped k-fold
cross-validation, held-out accuracy; 0.5 = indistinguishable) on any two sets:

    python bench/bench_realism.py SET_A SET_B [--folds 5] [--seed 0] [--device cpu] [--json out.json]

A set is a folder of PNGs (8-bit grayscale, all of one size, at least --size pixels a side) or a .npz file with
an `images` array (N, H, W) or (N, 1, H, W), uint8 or floats in [0, 1], and optionally `keys` (a name per image).
Images whose file name or key holds an OASIS subject (`case_XXX`) are grouped by subject, so the slices of one
brain never straddle a fold (one subject in both sets is one group); any other image is a group of its own.
For a fair real-against-real baseline, compare whole subjects (all their slices) on both sides.
Prints the result as JSON (and writes it with --json), with each set's `fine_detail` (trainer/stage1/realism.py: the
mean absolute Laplacian inside the head, which blur lowers); a bad set is exit 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.cli_types import integer  # noqa: E402
from common.limits import MAX_FOLDS, MAX_SEED  # noqa: E402
from trainer.stage1.realism import SIZE, fine_detail, realism_test, subject_groups  # noqa: E402


def read_set(path: Path) -> tuple[np.ndarray, list[str]]:
    """A set's images and their group ids (see the module docstring)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data:
                raise ValueError(f"{path}: no `images` array (has {sorted(data.files)})")
            images = data["images"]
            names = [str(key) for key in data["keys"]] if "keys" in data else [f"#{i}" for i in range(len(images))]
        return images, subject_groups(names)
    files = sorted(path.glob("*.png")) if path.is_dir() else []
    if not files:
        raise ValueError(f"{path}: neither a folder of PNGs nor a .npz file")
    images = []
    for file in files:
        with Image.open(file) as image:
            if image.mode != "L":
                raise ValueError(f"{file}: mode {image.mode}; 8-bit grayscale (L) PNGs only")
            images.append(np.asarray(image))
    if len({image.shape for image in images}) > 1:
        raise ValueError(f"{path}: the PNGs differ in size")
    return np.stack(images), subject_groups([file.name for file in files])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="the first set: a folder of PNGs or a .npz with `images`")
    parser.add_argument("b", type=Path, help="the second set, the same way")
    parser.add_argument("--folds", type=integer(2, MAX_FOLDS), default=5, help="folds (default: %(default)s)")
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0, help="seed (default: %(default)s)")
    parser.add_argument("--size", type=integer(8, 4096), default=SIZE, help="side classified (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    try:
        a, a_groups = read_set(args.a)
        b, b_groups = read_set(args.b)
        result = realism_test(
            a,
            a_groups,
            b,
            b_groups,
            folds=args.folds,
            seed=args.seed,
            size=args.size,
            device=args.device,
            progress="realism",
        )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"a": str(args.a), "b": str(args.b), "groups": [len(set(a_groups)), len(set(b_groups))]}
    report.update(result.as_dict())
    report["fine_detail"] = [fine_detail(a), fine_detail(b)]  # the Laplacian inside the head, set a then b
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
