"""A contact sheet of samples read back from the shards: look at what was written."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from export.runtime.shard_format import decode_gray_png, iter_shard, read_manifest


def preview_grid(shard_dir: Path, out: Path, split: str = "train", count: int = 16, columns: int = 8) -> Path:
    """Write the first `count` images of a split (as decoded from its shards) with their keys."""
    manifest = read_manifest(shard_dir)
    size = manifest["image_size"]
    samples = []
    for shard in manifest["splits"][split]["shards"]:
        for sample in iter_shard(shard_dir / shard["name"]):
            samples.append((sample["__key__"], decode_gray_png(sample["png"])))
            if len(samples) == count:
                break
        if len(samples) == count:
            break
    rows = -(-len(samples) // columns)
    sheet = Image.new("L", (columns * size, rows * (size + 14)), 0)
    draw = ImageDraw.Draw(sheet)
    for i, (key, pixels) in enumerate(samples):
        x, y = (i % columns) * size, (i // columns) * (size + 14)
        sheet.paste(Image.fromarray(pixels), (x, y))
        draw.text((x + 4, y + size + 1), key, fill=255)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
