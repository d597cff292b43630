"""The on-disk shard format, in one place for the writer (data_tools/shard.py), `verify`, the trainer's
loader and the onnxruntime reconstructor (torch-free, so the runtime can read shards).

A shard is a plain tar (no compression: gzip headers carry timestamps) of samples
`<key>.png`, `<key>.json` and optionally `<key>.seg.png`. Readers decode exactly these entries
with PIL and json: nothing is unpickled, whatever a tar file contains.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ENTRIES = ("png", "json", "seg.png")
IMAGE_SIZE = 256  # the only slice size the models, codes and ONNX runtime support
BLOCK = 512  # tar block size
EMPTY_BLOCK = bytes(BLOCK)  # two of them end a tar


def sample_record(key: str, png: bytes, metadata: dict, mask_png: bytes | None) -> dict:
    record = {"__key__": key, "png": png, "json": json.dumps(metadata, sort_keys=True).encode()}
    if mask_png is not None:
        record["seg.png"] = mask_png
    return record


def iter_shard(path: str | Path, sha256: str | None = None) -> Iterator[dict]:
    """Raw samples of one shard, in file order: {"__key__", "png", "json"[, "seg.png"]} as bytes.

    Members with any other extension are skipped unread, so a foreign tar cannot smuggle in
    something that a later stage would decode. The grouping is WebDataset's (consecutive members
    sharing a key). The tar headers are parsed here, on the shard read whole (a few MiB), rather
    than by `tarfile`, which spent about 0.1-0.4 ms per sample on them, as much as a third of the
    PNG decoding (bench/bench_data.py); the standard library only, so the CPU runtime, which reads
    shards too, needs neither webdataset nor the torch it imports. With `sha256` (the manifest's), a
    shard whose bytes differ is refused before any sample is decoded.
    """
    sample: dict = {}
    for name, data in _tar_files(Path(path), sha256):
        key, _, entry = name.rpartition("/")[2].partition(".")
        if entry not in ENTRIES:
            continue
        if sample and sample["__key__"] != key:
            yield sample
            sample = {}
        sample.setdefault("__key__", key)
        sample[entry] = data
    if sample:
        yield sample


def _tar_files(path: Path, sha256: str | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, content) of the regular files of an uncompressed POSIX tar (ustar, pax, GNU long names)."""
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(
            f"{path}: sha256 differs from {MANIFEST}; the shard is corrupt or was replaced "
            "(`python -m data_tools verify` checks them all)"
        )
    position, long_name = 0, None
    while position + BLOCK <= len(data):
        header = data[position : position + BLOCK]
        if header == EMPTY_BLOCK:
            return
        try:
            size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            raise DataError(f"{path}: not a tar file (bad header at byte {position})") from None
        start = position + BLOCK
        position = start + -(-size // BLOCK) * BLOCK
        if start + size > len(data):
            raise DataError(f"{path}: truncated tar (a member runs past the end)")
        content, kind = data[start : start + size], header[156:157]
        if kind == b"x":  # pax extended header: may carry the next member's path
            long_name = _pax_path(content) or long_name
        elif kind == b"L":  # GNU long name
            long_name = content.rstrip(b"\0").decode("utf-8")
        elif kind in (b"0", b"\0"):
            prefix, name = header[345:500].rstrip(b"\0"), header[:100].split(b"\0", 1)[0]
            yield long_name or (prefix + b"/" + name if prefix else name).decode("utf-8"), content
            long_name = None
        else:  # directories, links, global headers: nothing of ours
            long_name = None
    if position < len(data):
        raise DataError(f"{path}: truncated tar (ends inside a header)")


def _pax_path(records: bytes) -> str | None:
    """The `path` record of a pax extended header ("<length> path=<name>\n" records)."""
    for record in records.decode("utf-8").splitlines():
        field = record.partition(" ")[2]
        if field.startswith("path="):
            return field[len("path=") :]
    return None


def decode_gray_png(data: bytes, name: str = "PNG") -> np.ndarray:
    """PNG bytes -> (H, W) uint8; anything but 8-bit grayscale is an error (shards hold only that). A crafted
    shard's oversized or 16-bit PNG is refused from its header before any pixel is decoded; `name` (the shard
    and the key) is in every error."""
    from common.png_header import check_png_bytes  # here, not at the top: png_header imports DataError

    check_png_bytes(data[:33], name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode != "L":
                raise ValueError(f"expected an 8-bit grayscale PNG, got mode {img.mode}")
            return np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # PIL: not a PNG, truncated, corrupt
        raise DataError(f"{name}: cannot decode the PNG ({err})") from None


def decode_metadata(data: bytes) -> dict:
    return json.loads(data.decode("utf-8"))


def read_manifest(shard_dir: str | Path) -> dict:
    """The manifest of a shard folder, checked field by field, so that every reader can trust its
    shape: a damaged or crafted manifest fails here, naming the file, instead of deep in a reader."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest; is this a folder written by `python -m data_tools shard`?")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    problem = manifest_problem(manifest)
    if problem:
        raise DataError(f"{path}: {problem}")
    return manifest


def manifest_problem(manifest) -> str | None:
    """What is wrong with a parsed manifest's structure, or None."""

    def wrong(value, kind: type) -> bool:
        return not isinstance(value, kind) or (kind is int and isinstance(value, bool))

    if not isinstance(manifest, dict):
        return f"expected a JSON object, got {type(manifest).__name__}"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"format_version {manifest.get('format_version')!r} is not {FORMAT_VERSION}"
    if wrong(manifest.get("image_size"), int) or wrong(manifest.get("splits"), dict):
        return "'image_size' (an integer) and 'splits' (an object) are required"
    for split, entry in manifest["splits"].items():
        fields = {"num_samples": int, "subjects": list, "has_masks": bool, "pixel_stats": dict, "shards": list}
        missing = [k for k, kind in fields.items() if not isinstance(entry, dict) or wrong(entry.get(k), kind)]
        if missing or not all(isinstance(subject, str) for subject in entry["subjects"]):
            return f"split {split!r}: {', '.join(missing) or 'subjects'} missing or of the wrong type"
        for shard in entry["shards"]:
            fields = {"name": str, "num_samples": int, "sha256": str}
            missing = [k for k, kind in fields.items() if not isinstance(shard, dict) or wrong(shard.get(k), kind)]
            if missing:
                return f"split {split!r}: a shard's {', '.join(missing)} missing or of the wrong type"
            name = shard["name"]
            if Path(name).name != name or name in ("", ".", ".."):  # stays inside the shard folder
                return f"split {split!r}: shard name {name!r} is not a file name inside the folder"
    return None


def pixel_stats(histogram: np.ndarray) -> dict:
    """Statistics in the loader's units ([0, 1]); exact, since they come from integer counts."""
    values = np.arange(256) / 255.0
    total = int(histogram.sum())
    mean = float((histogram * values).sum() / total)
    var = float((histogram * (values - mean) ** 2).sum() / total)
    nonzero = np.flatnonzero(histogram)
    return {
        "mean": round(mean, 8),
        "std": round(math.sqrt(var), 8),
        "min": int(nonzero[0]),
        "max": int(nonzero[-1]),
        "histogram": [int(c) for c in histogram],
    }
