"""Every file prunerzero writes goes through here: atomic replacement, append-only JSON lines, and one
rule for reading JSON lines back.

Atomic writes (``write_text``, ``write_json``, ``write_bytes``, ``atomic_directory``): the content
goes to a temporary file in the same folder, is fsync'd, and replaces the target with ``os.replace``;
then the folder is fsync'd too (best effort), so the rename itself survives a power cut. A kill at
any moment leaves the old file or the new one, never a mix. Files get the usual permissions
(0666 minus the umask), folders 0777 minus the umask.

JSON lines (``append_jsonl``, ``JsonlWriter``; ``scan_jsonl``, ``repair_jsonl``, ``read_jsonl``): one
record per line, appended, flushed and fsync'd before the caller goes on, so a kill during an
append can leave one partial line at the end of the file, and only there. Reading a file back
follows one rule:

* a last line without its newline that is not a whole record is **torn** (the kill hit the
  append): it is set apart (``JsonlScan.torn``), the caller says so in one line, and
  ``repair_jsonl`` cuts it off before the next append, so appends always start on a fresh line;
* a last line without its newline that *is* a whole record only lost its newline: it is kept, and
  ``repair_jsonl`` gives it one;
* a bad line anywhere else is **damage**, and what it means is the file's to say:
  ``after_damage="refuse"`` (a log that is the source of truth: evaluations.jsonl, sweep.jsonl)
  raises one UserError naming the file, the line and what to do; ``after_damage="drop"`` (rows
  that can be measured again: leaderboard.jsonl) keeps the records before it and sets it and
  everything after it apart (``JsonlScan.damaged``), which ``repair_jsonl`` cuts off.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from .errors import UserError, one_line, short

# ----------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: Path | str, data: bytes) -> None:
    """``data`` to ``path``, atomically (module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def write_text(path: Path | str, text: str) -> None:
    """``text`` (UTF-8) to ``path``, atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any, *, indent: int = 2, strict: bool = False) -> None:
    """``obj`` as JSON to ``path``, atomically. ``strict``: NaN, infinities and values JSON has no
    type for are errors (files a run reads back and compares); otherwise such values are written
    as ``str(value)`` (results records)."""
    if strict:
        text = json.dumps(obj, indent=indent, allow_nan=False)
    else:
        text = json.dumps(obj, indent=indent, default=str)
    write_text(path, text + "\n")


@contextmanager
def atomic_directory(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` whole."""
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
    _sync_folder(path.parent)


# ----------------------------------------------------------------------------- checks before the work


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


# ----------------------------------------------------------------------------- reading JSON


def read_json(path: Path | str, hint: str) -> Any:
    """A JSON file; anything unreadable (random bytes, cut short, a folder) is one UserError naming
    the file and ``hint`` (what to do about it)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{short(path)} not found") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{short(path)} is damaged (not UTF-8 text at byte {exc.start}): {hint}") from None
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise UserError(f"{short(path)} is damaged ({one_line(exc, 160)}): {hint}") from None


# ----------------------------------------------------------------------------- JSON lines

# check(record, where) raises UserError when a record is not what the file's writer writes;
# `where` names the file and line ("sweep.jsonl line 3") for its message.
RecordCheck = Callable[[dict[str, Any], str], None]


def append_jsonl(path: Path | str, record: dict[str, Any], *, strict: bool = False) -> None:
    """One record as one line at the end of ``path``, on disk (fsync) before this returns.
    ``strict``: NaN and infinities are errors (``json.dumps(allow_nan=False)``)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, allow_nan=not strict) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class JsonlWriter:
    """``append_jsonl`` with the file kept open, for a log that grows all run long."""

    def __init__(self, path: Path | str, *, strict: bool = False) -> None:
        self._fh = open(path, "a", encoding="utf-8")
        self._strict = strict

    def append(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, allow_nan=not self._strict) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class JsonlScan:
    """What ``scan_jsonl`` found in a JSON-lines file (module doc)."""

    records: list[dict[str, Any]]  # the good records, in file order
    torn: str | None  # text of a torn last line, None if the file ends cleanly
    end: int  # bytes before the torn line or the damage: what a repair keeps
    size: int
    complete_tail: bool  # the last line is a whole record that only lost its newline
    damaged: int | None = None  # after_damage="drop": the first damaged line (1-based); it and the rest set apart


def json_line(raw: bytes) -> Any:
    """The JSON value of one line, or a str saying why it is not one."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text at byte {exc.start}"
    except ValueError as exc:
        return f"not valid JSON: {getattr(exc, 'msg', exc)}"
    except RecursionError:
        return "not valid JSON: nested too deeply"


def scan_jsonl(path: Path | str, check: RecordCheck | None = None, *,
               after_damage: Literal["refuse", "drop"] = "refuse", hint: str = "") -> JsonlScan:
    """The records of a JSON-lines file, with a torn last line and (``after_damage="drop"``) damage
    set apart; see the module doc for the rule. ``check`` validates each record; ``hint`` ends a
    refusal's message (what to do). Reads, never writes."""
    path = Path(path)
    if not path.exists():
        return JsonlScan([], None, 0, 0, False)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {short(path)}: {exc.strerror or exc}") from None
    end = data.rfind(b"\n") + 1  # bytes up to the last complete line
    lines = data[:end].split(b"\n")[:-1]
    records: list[dict[str, Any]] = []

    def good(raw: bytes, number: int) -> dict[str, Any] | str:
        """The line's record, or why it is damaged (raises instead when damage is refused)."""
        record = json_line(raw)
        if not isinstance(record, dict):
            why = record if isinstance(record, str) else "not a JSON object"
            if after_damage == "refuse":
                raise UserError(f"{short(path)} line {number} is damaged ({why})" + (f": {hint}" if hint else ""))
            return why
        if check is not None:
            try:
                check(record, f"{short(path)} line {number}")
            except UserError as exc:
                if after_damage == "refuse":
                    raise
                return str(exc)
        return record

    offset = 0
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            record = good(raw, number)
            if isinstance(record, str):  # "drop": this line and everything after it are set apart
                return JsonlScan(records, None, offset, len(data), False, damaged=number)
            records.append(record)
        offset += len(raw) + 1
    tail, torn, complete = data[end:], None, False
    if tail.strip():
        record = json_line(tail)
        if isinstance(record, dict):  # a whole record that only lost its newline: keep it
            record = good(tail, len(lines) + 1)
            if isinstance(record, str):
                return JsonlScan(records, None, end, len(data), False, damaged=len(lines) + 1)
            records.append(record)
            complete = True
        else:
            torn = tail.decode("utf-8", errors="replace")
    return JsonlScan(records, torn, end, len(data), complete)


def repair_jsonl(path: Path | str, scan: JsonlScan) -> None:
    """Cut off what ``scan`` set apart (a torn last line, or damage and what follows it), so later
    appends start on a fresh line after good records; or give a whole last record its newline."""
    if scan.torn is not None or scan.damaged is not None:
        with open(path, "r+b") as fh:
            fh.truncate(scan.end)
            fh.flush()
            os.fsync(fh.fileno())
    elif scan.complete_tail:
        with open(path, "ab") as fh:
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_jsonl(path: Path | str, check: RecordCheck | None = None, *, repair: bool = False,
               hint: str = "") -> list[dict[str, Any]]:
    """All records of a JSON-lines file (torn last line left out; cut off too if ``repair``); a bad
    line elsewhere is refused."""
    scan = scan_jsonl(path, check, hint=hint)
    if repair:
        repair_jsonl(path, scan)
    return scan.records
