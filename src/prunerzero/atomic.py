"""Atomic file writes: a killed run leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError, short


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(folder: Path, what: str, shown: Path) -> None:
    """Create and remove a temporary file in `folder`: the only test that also holds for root on
    a read-only filesystem and for ACLs, where os.access guesses."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".prunerzero-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"{what} {short(shown)} is not writable: {exc.strerror or exc}") from None


def check_writable_dir(path: str | Path, what: str) -> None:
    """Fail now, in one line, if `path` cannot be (or become) a folder we can write into, rather
    than after minutes of work. Creates nothing: a missing folder is judged by its nearest
    existing parent."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {short(path)} exists and is not a folder")
        _probe_writable(path, what, path)
        return
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{what} {short(path)} cannot be created: {short(base)} is not a folder")
    _probe_writable(base, what, path)


def check_writable_file(path: str | Path, what: str) -> None:
    """Fail now if a file cannot be written at `path` (a folder there, or an unwritable parent)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {short(path)} is a folder, not a file name")
    if path.exists() and not path.is_file():
        raise UserError(f"{what} {short(path)} exists and is not a regular file")
    check_writable_dir(path.parent, what + " folder")
