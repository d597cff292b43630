"""Outputs that appear whole or not at all, and never at an input's expense (torch-free, for every command).

A command builds its output folder in a hidden folder beside the target and renames it into place only
when everything is written: a failure, an interrupt or a full disk leaves nothing partial, and an older
output survives until the new one is complete. An existing folder is replaced only with --force and only
when it holds the command's marker file (manifest.json, model.json, ...), so --force cannot delete a
folder the tool did not write; and never when it is, contains or lies inside an input
(`shard --src x --out x --force` once replaced its own input with shards). An OSError while writing (a full
disk names no file) is one line naming the output; the temporary folder or file is removed on any failure.

Several commands mark their folders with the same file (summary.json: `trainer evaluate`, `trainer
evaluate-prior`, `export reconstruct` and both samplers, which write samples.npz too), so those pass their
`kind` (the command's name): it is recorded in the folder (OUTPUT_KIND), and --force replaces only a folder that
records the same kind. A folder with such a marker but no record (written before the record existed, or by hand)
could be any of theirs: it is refused, to be removed by its owner. Commands whose marker no other command writes
(manifest.json, model.json, codes.json) need no kind; they refuse a folder that records one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

OUTPUT_KIND = ".output_kind"  # the command that wrote the folder, for the commands that share a marker
# Errors that are about the place written to, whichever file the OS names (a full disk, a quota, a read-only mount).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class OutputError(Exception):
    """The output path cannot be written, or may not be replaced; the message names it and says why."""


def resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # Python 3.11 raises RuntimeError on a symlink loop
        raise OutputError(f"{path}: cannot resolve the path ({err})") from None


def check_output_dir(
    out: Path, *, marker: str, force: bool, inputs: Iterable[Path] = (), kind: str | None = None
) -> Path:
    """Refuse, before any work, an output folder that may not be (re)written; returns its resolved path."""
    target = resolved(out)
    for item in inputs:
        source = resolved(item)
        relation = (
            "is"
            if target == source
            else "contains"
            if target in source.parents
            else "lies inside"
            if source in target.parents
            else None
        )
        if relation:
            raise OutputError(f"{out}: {relation} the input {item}; write the output elsewhere")
    if target.parent == target:
        raise OutputError(f"{out}: the filesystem root cannot be an output folder")
    if target.exists() and not target.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if target.is_dir():
        try:
            has_entries = any(target.iterdir())
        except OSError as err:
            raise OutputError(f"{out}: cannot read the existing folder ({err.strerror})") from None
        if has_entries:
            check_kind(out, target, marker, kind)
        if has_entries and not force:
            raise OutputError(f"{out}: output folder exists and is not empty (use --force to replace it)")
    return target


def check_kind(out: Path, target: Path, marker: str, kind: str | None) -> None:
    """Refuse a folder another command wrote (by its record, else by a missing `marker`), and one whose marker
    is shared but has no record (see the module docstring)."""
    record = target / OUTPUT_KIND
    try:
        found = record.read_text(encoding="utf-8").strip() if record.is_file() else None
    except (OSError, UnicodeDecodeError) as err:
        raise OutputError(f"{record}: cannot read which command wrote {out} ({err})") from None
    if found is not None and found != kind:
        raise OutputError(
            f"{out}: holds the output of `{found}`, not of `{kind or 'this command'}`; --force replaces only this "
            "command's own output: choose another output folder or remove it yourself"
        )
    if not (target / marker).is_file():
        raise OutputError(
            f"{out}: exists and has no {marker}, so this tool did not write it; "
            "choose another output folder or remove it yourself"
        )
    if found is None and kind is not None:
        raise OutputError(
            f"{out}: has no record of the command that wrote it ({OUTPUT_KIND}), and {marker} is written by several "
            "commands, so it may be another one's output; choose another output folder or remove it yourself"
        )


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old one is removed only once the new one is there."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
    out: Path, *, marker: str, force: bool, inputs: Iterable[Path] = (), kind: str | None = None
) -> Iterator[Path]:
    """Check `out` (see check_output_dir), then yield an empty hidden folder beside it to write into; on
    success it replaces `out`, on any exception it is deleted and `out` is left as it was. The body must
    write `marker`, or the output could never be replaced by a later run; `kind` is recorded here."""
    target = check_output_dir(out, marker=marker, force=force, inputs=inputs, kind=kind)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise OutputError(f"{out}: cannot create the output folder ({err.strerror or err})") from None
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise RuntimeError(f"{out}: the command did not write {marker}; refusing to place an unmarked output")
        if kind:
            (tmp / OUTPUT_KIND).write_text(kind + "\n", encoding="utf-8")
        replace_dir(tmp, target)
    except OSError as err:
        raise writing_error(out, tmp, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def writing_error(out: Path, tmp: Path, err: OSError) -> Exception:
    """An OSError met while an output folder was written, as one line naming the output (and the file, when the
    OS names one): a full disk's write() names no file. An input that cannot be read keeps its own message."""
    name = Path(err.filename) if err.filename else None
    inside = name is not None and (name == tmp or tmp in name.parents)
    if name is not None and not inside and err.errno not in WRITE_ERRNOS:
        return err
    where = f", at {out / name.relative_to(tmp)}" if inside else f", at {name}" if name else ""
    return OutputError(f"{out}: cannot write the output ({err.strerror or err}{where}); nothing was replaced")


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a whole file or nothing, `write` filling an open binary file: a crash, an interrupt or a full disk
    mid-write leaves the old file (or none), not a torn one, and no temporary file."""
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; expected a file name")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path}: cannot write it ({err.strerror or err})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write `data` as a whole file or nothing (see write_atomically)."""
    write_atomically(path, lambda f: f.write(data))
