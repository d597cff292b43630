"""A PNG's real bit depth and size, read from its IHDR chunk before any pixel is decoded, and the one reader of
a slice PNG (`read_slice`) that every command taking PNG files or shard members shares.

Pillow opens some 16-bit PNGs as 8-bit images (16-bit RGB, 16-bit gray+alpha), silently dropping the
low byte, and allocates whatever size a PNG declares (a 100000 x 100000 "decompression bomb" is 10 GB
of pixels from a file of a few bytes). The header is the first 33 bytes: checking it costs nothing.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Formats Pillow would open as readily as a PNG, by their first bytes: a JPEG named .png was read as if it were
# one, its compression artefacts and all.
OTHER_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
MAX_PIXELS = 4096 * 4096  # the slices are 256 x 256; a PNG this large is a mistake or an attack


def check_png_header(path: Path) -> None:
    """Refuse a 16-bit PNG or one that declares more than MAX_PIXELS; a file that is not a PNG at all is
    left to the decoder, which says what it is."""
    with open(path, "rb") as f:
        check_png_bytes(f.read(33), str(path))


def check_png_signature(source: Path | bytes, name: str) -> None:
    """Refuse a file (or the bytes of one) that is not a PNG, whatever its name says: a JPEG named .png is named as
    one. `name` names it in the error."""
    if isinstance(source, Path):
        with open(source, "rb") as f:
            source = f.read(len(PNG_SIGNATURE))
    if source.startswith(PNG_SIGNATURE):
        return
    other = next((kind for magic, kind in OTHER_SIGNATURES.items() if source.startswith(magic)), None)
    if other:
        raise DataError(f"{name}: a {other} image, not a PNG; convert it to an 8-bit grayscale PNG first")
    raise DataError(f"{name}: not an image (no PNG signature)")


def check_png_bytes(head: bytes, path: str) -> None:
    """check_png_header on the first 33 bytes of a PNG read elsewhere (a shard member); `path` names it."""
    if not head.startswith(PNG_SIGNATURE):
        return
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise DataError(f"{path}: truncated or corrupt PNG header")
    width, height, bit_depth = struct.unpack(">IIB", head[16:25])
    if bit_depth == 16:
        raise DataError(f"{path}: 16-bit PNG (16-bit or float images are refused); convert it to 8-bit grayscale first")
    if width * height > MAX_PIXELS:
        raise DataError(
            f"{path}: declares {width}x{height} pixels, more than the {MAX_PIXELS:,} a slice may have "
            "(a decompression bomb?)"
        )


def read_slice(source: Path | bytes, name: str, size: int) -> np.ndarray:
    """(size, size) uint8 pixels of an 8-bit grayscale image; anything else (a truncated file, a 16-bit or
    oversized PNG read from its header before any pixel is decoded) is an error naming it."""
    try:
        check_png_signature(source, name)
        if isinstance(source, Path):
            check_png_header(source)
        else:
            check_png_bytes(source[:33], name)
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as img:
            if img.mode != "L":
                raise ValueError(f"{name}: expected an 8-bit grayscale PNG, got mode {img.mode}")
            if img.size != (size, size):
                raise ValueError(f"{name}: expected {size}x{size} pixels, got {img.size[0]}x{img.size[1]}")
            return np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # PIL: truncated or corrupt data
        raise ValueError(f"{name}: cannot decode the image ({err})") from None
