"""How many bytes a shard takes on disk, exactly, so that `--max-shard-mb` is a hard cap.

A shard is a tar written as a stream (webdataset's TarWriter, tarfile mode "w|", tarfile's default pax
format): each member is its header (512 bytes, plus a 1,024-byte pax header when a field does not fit
ustar, as the float mtime webdataset sets does not) and its data padded to a multiple of 512 bytes;
closing adds two 512-byte zero blocks and pads the file to a multiple of tarfile's 10,240-byte record.
Counting the data plus 512 bytes per member missed the pax headers, the padding and the closing blocks:
shards came out 7 % above the cap. Here the header is built by tarfile itself, so the count is exact.
"""

from __future__ import annotations

import tarfile

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10,240: a stream-written tar is padded to a multiple of this when closed


def padded(size: int, unit: int) -> int:
    return -(-size // unit) * unit


def member_bytes(name: str, size: int, mtime: float) -> int:
    """The bytes one member takes in the tar: its headers as tarfile writes them for webdataset's TarWriter
    (the name, size and mtime decide their length), and its data padded to 512."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, mtime, 0o444, "bigdata", "bigdata"
    header = info.tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape")
    return len(header) + padded(size, BLOCK)


def record_bytes(record: dict, mtime: float) -> int:
    """The bytes one sample's members take inside the tar; `__key__` names the members and is not one."""
    key = record["__key__"]
    return sum(member_bytes(f"{key}.{ext}", len(value), mtime) for ext, value in record.items() if ext != "__key__")


def closed_shard_bytes(member_bytes: int) -> int:
    """The file size of a shard whose members take `member_bytes` (record_bytes summed), once closed."""
    return padded(member_bytes + 2 * BLOCK, RECORD)
