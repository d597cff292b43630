"""Rebuild the embedded demo data (`data_tools/demo_data`) from the BSD-licensed Colin27 slices.

    python -m data_tools.make_demo_data --colin27 ../shared/colin27 --out data_tools/demo_data

Colin27 is a single brain, so the demo cuts it into four *pseudo-subjects*: 128 consecutive
axial slices are dealt round-robin (slice i goes to pseudo-subject i % 4), so each pseudo-subject
holds 32 slices from bottom to top, like an OASIS subject (slice index N = level in the brain).
Slices are rotated 90 degrees to the OASIS orientation. Two pseudo-subjects are "train", one
"validate", one "test". Neighbouring slices of one brain are alike, so the demo's validation and
test numbers show that the pipeline works, not how well a model generalises.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

FIRST_SLICE = 21  # the central 128 of Colin27's 170 slices
SUBJECTS = {"901": "train", "902": "validate", "903": "train", "904": "test"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--colin27", type=Path, required=True, help="the shared colin27 folder (axial/ inside)")
    parser.add_argument("--out", type=Path, required=True, help="demo data folder to (re)write")
    args = parser.parse_args()

    root = args.out / "keras_png_slices_data"
    shutil.rmtree(root, ignore_errors=True)
    for i in range(128):
        subject = list(SUBJECTS)[i % 4]
        source = args.colin27 / "axial" / f"ch2_slice_{FIRST_SLICE + i:03d}.png"
        folder = root / f"keras_png_slices_{SUBJECTS[subject]}"
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as img:
            img.convert("L").rotate(90).save(folder / f"case_{subject}_slice_{i // 4}.nii.png", optimize=True)
    shutil.copy(args.colin27 / "debian-copyright.txt", args.out / "debian-copyright.txt")
    print(f"wrote 128 slices to {root}")


if __name__ == "__main__":
    main()
