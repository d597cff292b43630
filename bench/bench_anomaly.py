"""Benchmark: how well do anomaly maps find synthetic lesions? The OASIS slices have no lesion labels, so each
method is scored on the lesion sets `python -m data_tools lesions` paints (data_tools/lesion_model.py):

    python -m data_tools lesions --images ../shared/oasis/keras_png_slices_data --split validate --out les/validate
    python -m data_tools lesions --images ../shared/oasis/keras_png_slices_data --split test --out les/test
    python -m trainer anomaly --checkpoint PRIOR --images les/validate/images --out runs/validate
    python -m trainer anomaly --checkpoint PRIOR --images les/test/images --out runs/test
    python bench/bench_anomaly.py --validate les/validate runs/validate --test les/test runs/test --json out.json

or `--validate les/validate --test les/test --checkpoint PRIOR --runs runs` runs the two anomaly commands itself.

Methods, all read from the anomaly run's maps.npz:
    prior anomaly map   `anomaly`, the prior's map
    VQ-VAE residual     |scan - recon|, against the VQ-VAE's own reconstruction (no smoothing: the anomaly command
                        shares no smoothing function to apply to it)
    raw intensity       `scan` itself: the floor any map must clear

Metrics (common/detection_metrics.py), on the test set:
    slice AUROC         lesion slices against healthy ones, by one slice-score rule for every method: the mean of
                        the highest 1% of the map's values inside the slice's head mask. The prior's own slice score
                        (maps.npz `score`) is also reported, in its own column
    pixel AUPRC         average precision over the pixels inside the head masks of every slice, healthy slices
                        included; best Dice is computed over the same pixels
    best Dice           the largest Dice over all thresholds (Baur et al. 2021): the threshold is fitted on the test
                        pixels themselves, so it is an upper bound
    Dice @ val          the Dice on test at the threshold that maximises Dice on the validation set
Pixels are counted inside the head masks (heads/ of the lesion set, the region lesions were placed in), the same
for every method: outside the head every pixel is healthy by construction and 0 in the scan, so counting those
would only measure how a map treats the background, which says nothing about lesions.

Prints a markdown table and writes the numbers (validation ones too) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.detection_metrics import auroc, average_precision, best_dice, dice_at, ranked_counts  # noqa: E402
from common.json_file import read_json_object  # noqa: E402
from common.png_header import read_slice  # noqa: E402

TOP_SHARE = 0.01  # the slice score: mean of this share of the highest map values inside the head
METHODS = {
    "prior anomaly map": lambda maps: maps["anomaly"],
    "VQ-VAE residual": lambda maps: np.abs(maps["scan"] - maps["recon"]),
    "raw intensity": lambda maps: maps["scan"],
}


class LabelledRun:
    """An anomaly run's maps.npz with the lesion set it was run on: lesion and head masks in the maps' order."""

    def __init__(self, lesion_set: Path, run: Path):
        record = read_json_object(lesion_set / "lesions.json")
        self.paths = [str(lesion_set), str(run)]
        self.maps = np.load(run / "maps.npz")
        self.names = [str(name) for name in self.maps["names"]]
        if sorted(self.names) != sorted(record["slices"]):
            raise SystemExit(f"{run}/maps.npz: its slices are not those of {lesion_set}")
        self.lesion_slice = np.array([not record["slices"][name]["healthy"] for name in self.names])
        self.masks = self.read_pngs(lesion_set / "masks") > 127
        self.heads = self.read_pngs(lesion_set / "heads") > 127
        images = self.read_pngs(lesion_set / "images").astype(np.float32) / 255
        if np.abs(self.maps["scan"] - images).max() > 1 / 255:
            raise SystemExit(f"{run}/maps.npz: its scans differ from the images of {lesion_set}")

    def read_pngs(self, folder: Path) -> np.ndarray:
        """(N, 256, 256) uint8: the slices' files in `folder`, in the maps' order."""
        return np.stack([read_slice(folder / name, str(folder / name), 256) for name in self.names])

    def slice_scores(self, pixel_map: np.ndarray) -> np.ndarray:
        """The shared slice-score rule: the mean of the top TOP_SHARE of the map inside each head mask."""
        scores = []
        for values, head in zip(pixel_map, self.heads):
            inside = values[head] if head.any() else values.ravel()
            top = max(1, math.ceil(TOP_SHARE * inside.size))
            scores.append(np.partition(inside, inside.size - top)[-top:].mean())
        return np.array(scores)


def score(run: LabelledRun, pixel_map: np.ndarray) -> dict:
    """One method's metrics on one set (every pixel threshold from one sort)."""
    counts = ranked_counts(pixel_map[run.heads], run.masks[run.heads])
    dice, threshold = best_dice(counts)
    return {
        "slice_auroc": auroc(run.slice_scores(pixel_map), run.lesion_slice),
        "pixel_auprc": average_precision(counts),
        "best_dice": dice,
        "best_dice_threshold": threshold,
    }


def evaluate(validate: LabelledRun, test: LabelledRun) -> dict:
    """Every method on both sets, and on test the Dice at the validation set's best threshold."""
    results = {}
    for name, pixel_map in METHODS.items():
        on_validate, test_map = score(validate, pixel_map(validate.maps)), pixel_map(test.maps)
        on_test = score(test, test_map)
        threshold = on_validate["best_dice_threshold"]
        on_test["dice_at_validation_threshold"] = dice_at(test_map[test.heads], test.masks[test.heads], threshold)
        results[name] = {"validate": on_validate, "test": on_test}
    for split, run in (("validate", validate), ("test", test)):
        results["prior anomaly map"][split]["slice_auroc_own_score"] = auroc(run.maps["score"], run.lesion_slice)
    return results


def table(results: dict, test: LabelledRun) -> str:
    prevalence = test.masks[test.heads].mean()
    lines = [
        f"Test set: {len(test.names)} slices, {int(test.lesion_slice.sum())} with lesions; lesion pixels are "
        f"{prevalence:.4f} of the head pixels (a random map's AUPRC).",
        "",
        "| method | slice AUROC | slice AUROC (maps.npz score) | pixel AUPRC | best Dice | Dice @ val threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, sets in results.items():
        t = sets["test"]
        own = f"{t['slice_auroc_own_score']:.3f}" if "slice_auroc_own_score" in t else "-"
        lines.append(
            f"| {name} | {t['slice_auroc']:.3f} | {own} | {t['pixel_auprc']:.3f} | {t['best_dice']:.3f} "
            f"| {t['dice_at_validation_threshold']:.3f} |"
        )
    return "\n".join(lines)


def run_anomaly(checkpoint: Path, lesion_set: Path, out: Path) -> Path:
    """`python -m trainer anomaly` on a lesion set's images (a benchmark may call commands; modules never do)."""
    command = ["-m", "trainer", "anomaly", "--checkpoint", str(checkpoint), "--images", str(lesion_set / "images")]
    subprocess.run([sys.executable, *command, "--out", str(out)], cwd=REPO, check=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for split in ("validate", "test"):
        parser.add_argument(
            f"--{split}",
            nargs="+",
            type=Path,
            required=True,
            metavar=("LESION_SET", "RUN"),
            help=f"the {split} lesion set (data_tools lesions --out) and the anomaly run on it (its --out)",
        )
    parser.add_argument("--checkpoint", type=Path, help="a prior checkpoint: run `trainer anomaly` on both sets")
    parser.add_argument("--runs", type=Path, help="with --checkpoint: where its two runs go (RUNS/validate, test)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    runs = {}
    for split in ("validate", "test"):
        given = getattr(args, split)
        if len(given) == 1 and args.checkpoint and args.runs:
            given = [given[0], run_anomaly(args.checkpoint, given[0], args.runs / split)]
        if len(given) != 2:
            parser.error(f"--{split}: give LESION_SET RUN, or LESION_SET with --checkpoint and --runs")
        runs[split] = LabelledRun(*given)
    results = evaluate(runs["validate"], runs["test"])
    print(table(results, runs["test"]))
    if args.json:
        sets = {split: run.paths for split, run in runs.items()}
        args.json.write_text(json.dumps({"sets": sets, "top_share": TOP_SHARE, "results": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
