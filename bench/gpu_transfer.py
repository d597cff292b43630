"""Carry the OASIS shards to a lent GPU machine in parts that each fit one call of the device tool.

The tool carries ignored folders named in `carry`, 64 MiB per call with the working tree (~3 MiB),
and ignored folders stay on the machine between calls while it is warm (docs/gpu.md). OASIS is
about 210 MiB of shards (PNG is already the smallest lossless form we found: raw uint8 is 3.4x
larger, zlib-9 of raw 1.3x, xz of raw 1.1x and 13x slower), so it travels in four parts:

    python bench/gpu_transfer.py pack --shards data/oasis_shards      # here: data/gpu_transfer/part1..N
    python bench/gpu_transfer.py unpack                               # there (bench/gpu.sh does it)

`pack` hard-links (or copies) whole shards into parts of at most --max-mib, the manifest in the last
part; `unpack` moves whatever parts have arrived into data/oasis_shards and says what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"


def pack(shards: Path, out: Path, max_mib: float) -> list[Path]:
    manifest = json.loads((shards / MANIFEST).read_text())
    files = [s["name"] for entry in manifest["splits"].values() for s in entry["shards"]]
    parts: list[list[str]] = [[]]
    size = 0
    for name in files:
        bytes_ = (shards / name).stat().st_size
        if parts[-1] and size + bytes_ > max_mib * 2**20:
            parts.append([])
            size = 0
        parts[-1].append(name)
        size += bytes_
    parts[-1].append(MANIFEST)  # last: its arrival means every shard has been sent
    shutil.rmtree(out, ignore_errors=True)
    folders = []
    for number, names in enumerate(parts, 1):
        folder = out / f"part{number}"
        folder.mkdir(parents=True)
        for name in names:
            try:
                os.link(shards / name, folder / name)
            except OSError:
                shutil.copy2(shards / name, folder / name)
        folders.append(folder)
    return folders


def unpack(parts: Path, shards: Path) -> list[str]:
    """Move arrived shards into `shards`; returns the names still missing (empty: complete)."""
    shards.mkdir(parents=True, exist_ok=True)
    for path in sorted(parts.glob("part*/*")):
        path.replace(shards / path.name)
    if not (shards / MANIFEST).is_file():
        return [MANIFEST]
    manifest = json.loads((shards / MANIFEST).read_text())
    return [
        s["name"]
        for entry in manifest["splits"].values()
        for s in entry["shards"]
        if not (shards / s["name"]).is_file() or (shards / s["name"]).stat().st_size != s["bytes"]
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="split a shard folder into parts of at most --max-mib")
    p.add_argument("--shards", type=Path, default=REPO / "data" / "oasis_shards")
    p.add_argument("--out", type=Path, default=REPO / "data" / "gpu_transfer")
    p.add_argument("--max-mib", type=float, default=58.0, help="per part (default: %(default)s)")
    u = commands.add_parser("unpack", help="move the parts that arrived into the shard folder")
    u.add_argument("--parts", type=Path, default=REPO / "data" / "gpu_transfer")
    u.add_argument("--shards", type=Path, default=REPO / "data" / "oasis_shards")
    args = parser.parse_args()
    if args.command == "pack":
        if not (args.shards / MANIFEST).is_file():
            print(f"error: {args.shards}: no {MANIFEST} (write it with `python -m data_tools shard`)", file=sys.stderr)
            return 2
        if args.max_mib <= 0:
            print("error: --max-mib must be > 0", file=sys.stderr)
            return 2
        for folder in pack(args.shards, args.out, args.max_mib):
            mib = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
            print(
                f"{folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder}: "
                f"{len(list(folder.iterdir()))} files, {mib:.1f} MiB"
            )
        return 0
    missing = unpack(args.parts, args.shards)
    print(
        f"{args.shards}: complete"
        if not missing
        else f"{args.shards}: {len(missing)} file(s) not arrived yet (first: {missing[0]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
