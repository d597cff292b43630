"""A contact sheet of samples read back from the shards: look at what was written."""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

from common.cli_types import integer
from common.errors import DataError
from common.limits import MAX_PREVIEW
from common.output_dir import OutputError, resolved, write_file_atomically
from common.shard_format import MANIFEST, decode_gray_png, iter_shard, read_manifest

DESCRIPTION = (
    "Decodes the first --count samples of a split from its shards and writes them, "
    "with their keys, as one PNG: a quick look at what the shards hold."
)


def preview_grid(shard_dir: Path, out: Path, split: str = "train", count: int = 16, columns: int = 8) -> Path:
    """Write the first `count` images of a split (as decoded from its shards) with their keys."""
    manifest = read_manifest(shard_dir)
    if split not in manifest["splits"]:
        known = ", ".join(manifest["splits"])
        raise DataError(f"{shard_dir / MANIFEST}: split '{split}' is not in it (it has {known})")
    if resolved(shard_dir) in resolved(out).parents:
        raise OutputError(f"{out}: inside the shard folder {shard_dir} (the input); write the preview elsewhere")
    size = manifest["image_size"]
    samples = []
    for shard in manifest["splits"][split]["shards"]:
        path = shard_dir / shard["name"]
        try:
            for sample in iter_shard(path):
                samples.append((sample["__key__"], decode_gray_png(sample["png"])))
                if len(samples) == count:
                    break
        except (OSError, tarfile.TarError, KeyError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(
                f"{path}: unreadable shard ({err!r}); `python -m data_tools verify` checks them all"
            ) from None
        if len(samples) == count:
            break
    if not samples:
        raise DataError(f"{shard_dir / MANIFEST}: split '{split}' has no samples")
    rows = -(-len(samples) // columns)
    sheet = Image.new("L", (columns * size, rows * (size + 14)), 0)
    draw = ImageDraw.Draw(sheet)
    for i, (key, pixels) in enumerate(samples):
        x, y = (i % columns) * size, (i // columns) * (size + 14)
        sheet.paste(Image.fromarray(pixels), (x, y))
        draw.text((x + 4, y + size + 1), key, fill=255)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")  # PNG whatever the name's extension
    write_file_atomically(out, buffer.getvalue())
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shard_dir", type=Path, help="folder written by `shard`")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write (outside the shard folder)")
    parser.add_argument("--split", default="train", help="split to show (default: %(default)s)")
    parser.add_argument(
        "--count",
        type=integer(1, MAX_PREVIEW),
        default=16,
        help=f"number of samples, 1 to {MAX_PREVIEW} (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> None:
    print(f"wrote {preview_grid(args.shard_dir, args.out, args.split, args.count)}")
