"""Which NIfTI volumes to shard, whose they are, and which split each subject goes to.

SRC is a folder (searched recursively for *.nii and *.nii.gz), a glob pattern, or a CSV/TSV file with a `path`
column and optional `subject`, `split` and `labels` columns (paths relative to the CSV's folder, or absolute;
a path outside the CSV's folder tree is fine, a missing file is named). Without a subject column the subject is
the BIDS `sub-<label>` in the path, else the file name without its .nii/.nii.gz.

Subject ids go into the sample keys `case_<subject>_slice_<N>`, so they are kept to letters, digits and `-`
(anything else becomes `-`; two names that become one id are an error). One volume per subject: a second volume
of a subject would give the same keys (list one of them, or give sessions as separate CSV rows you choose).

Splits are by subject, never by slice (slices of one brain in train and test make every test figure a lie): a
split column is respected; the other subjects are shuffled with the seed and cut by the ratios. A subject given
two splits is an error.
"""

from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.nifti_volume import is_nifti_name
from data_tools.layout import SPLITS, list_problems, path_problem

BIDS_SUBJECT = re.compile(r"(?:^|[/_])sub-([A-Za-z0-9]+)")


@dataclass(frozen=True)
class VolumeSource:
    path: Path
    subject: str
    split: str | None  # from the CSV, else assigned by `assign_splits`
    labels: Path | None = None
    row: str = ""  # where it was named ("file.csv line 3"), for messages


def subject_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", text.strip()).strip("-")


def subject_from_path(path: Path) -> str:
    match = BIDS_SUBJECT.search(path.as_posix())
    name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    return subject_id(match.group(1) if match else name)


def from_table(table: Path) -> list[VolumeSource]:
    """Rows of a CSV (comma) or TSV (tab) file; every bad row is listed at once."""
    delimiter = "\t" if table.suffix.lower() in (".tsv", ".tab") else ","
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{table}: cannot read the table ({err})") from None
    if not rows or "path" not in rows[0]:
        raise DataError(f"{table}: needs a header with a 'path' column and at least one row")
    sources, problems = [], []
    for line, row in enumerate(rows, start=2):
        where = f"{table} line {line}"
        path = table.parent / (row.get("path") or "").strip()
        labels = (row.get("labels") or "").strip()
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            problems.append(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        problem = path_problem(path) or (labels and path_problem(table.parent / labels))
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        subject = subject_id(row.get("subject") or "") or subject_from_path(path)
        sources.append(VolumeSource(path, subject, split, table.parent / labels if labels else None, where))
    if problems:
        raise DataError(list_problems(f"{len(problems)} problem(s) in {table}", problems))
    return sources


def find_volumes(src: str) -> list[VolumeSource]:
    """The volumes SRC names (a folder, a glob or a table), sorted, with their subjects; checked as a whole."""
    path = Path(src)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".tab"):
        sources = from_table(path)
    else:
        if path.is_dir():
            files = [p for p in path.rglob("*") if is_nifti_name(p.name) and not p.name.startswith(".")]
        elif path.is_file():
            files = [path]
        else:
            files = [Path(p) for p in glob.glob(src, recursive=True) if is_nifti_name(p)]
        sources = [VolumeSource(p, subject_from_path(p), None, None, str(p)) for p in sorted(files)]
    if not sources:
        raise DataError(
            f"{src}: no .nii or .nii.gz volumes found (give a folder, a glob or a CSV/TSV with a path column)"
        )
    check_sources(sources)
    return sorted(sources, key=lambda s: (s.subject, str(s.path)))


def check_sources(sources: list[VolumeSource]) -> None:
    """Every problem at once: empty ids, one subject with two volumes or two splits, two names one id."""
    problems, seen = [], {}
    for source in sources:
        if not source.subject:
            problems.append(f"{source.row}: no usable subject id (letters, digits and '-')")
        elif source.subject in seen:
            first = seen[source.subject]
            if first.split and source.split and first.split != source.split:
                problems.append(f"subject leakage: subject {source.subject} is in '{first.split}' and '{source.split}'")
            else:
                problems.append(
                    f"subject {source.subject}: two volumes ({first.path} and {source.path}) would give the same "
                    "sample keys; shard one volume per subject"
                )
        seen.setdefault(source.subject, source)
    if problems:
        raise DataError(list_problems(f"{len(problems)} problem(s) in the volume list", problems))


def split_counts(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Subjects per split: largest remainders; a split with a positive ratio gets one when there are enough."""
    shares = np.asarray(ratios, np.float64) / sum(ratios) * n
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(counts)):
        if counts[i] == 0 and ratios[i] > 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    return counts.tolist()


def assign_splits(sources: list[VolumeSource], ratios: tuple[float, ...], seed: int) -> dict[str, list[VolumeSource]]:
    """{split: volumes}: given splits kept, the rest shuffled by subject (seeded) and cut by the ratios."""
    free = sorted(s.subject for s in sources if s.split is None)
    order = np.random.default_rng(seed).permutation(len(free))
    counts, assigned, start = split_counts(len(free), ratios), {}, 0
    for split, count in zip(SPLITS, counts):
        assigned.update({free[i]: split for i in order[start : start + count]})
        start += count
    by_split = {split: [] for split in SPLITS}
    for source in sources:
        by_split[source.split or assigned[source.subject]].append(source)
    return {split: found for split, found in by_split.items() if found}
