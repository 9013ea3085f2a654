"""Errors a user can cause and fix. The CLI turns these into one line and exit code 2."""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable

# A whole error line is kept under this many characters: a hostile 5000-character name must not
# turn one line into a screenful.
MAX_MESSAGE = 1000


class UserError(Exception):
    """Bad input: printed as one line by the CLI, never as a traceback."""


class DataUnavailableError(UserError):
    """A named data source cannot be reached; the message says what to pass instead."""


def known_keys_only(obj: Any, allowed: Iterable[str], what: str) -> dict:
    """A copy of a settings object read from JSON or the user, refusing unknown keys.

    Every saved config goes through this, so a typo is reported instead of silently ignored.
    """
    if not isinstance(obj, dict):
        raise UserError(f"{what} must be a JSON object, got {type(obj).__name__}")
    allowed = list(allowed)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        shown = ", ".join(k if len(k) <= 40 and k.isprintable() else clip(k, 40) for k in unknown[:5])
        shown += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UserError(f"{what}: unknown key(s) {shown} (allowed: {', '.join(allowed)})")
    return dict(obj)


def clip(text: Any, limit: int = 80) -> str:
    """``repr(text)`` for an error message, shortened in the middle when it is long (user input
    may be a 5000-character name, and an error echoing it should still be one readable line)."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    head, tail = text[: limit * 2 // 3], text[-(limit // 3):]
    return f"{head!r}...{tail!r} ({len(text)} characters)"


def short(text: Any, limit: int = 120) -> str:
    """``text`` as it is when short and printable (a path in a message), else ``clip(text)``."""
    text = str(text)
    return text if len(text) <= limit and text.isprintable() else clip(text, limit)


def one_line(message: Any, limit: int = MAX_MESSAGE) -> str:
    """An error message as one line of at most ``limit`` characters (the CLI's promise)."""
    text = " ".join(str(message).split())
    if len(text) > limit:
        text = text[: limit - 120] + " ... " + text[-115:]
    return text


def warn(message: str) -> None:
    """One warning line on stderr: damage that was found and repaired, so nothing changes silently.
    (Python's warnings are filtered by the CLI to hide library chatter, so they cannot carry this.)"""
    print(f"prunerzero: warning: {one_line(message)}", file=sys.stderr, flush=True)


def path_kind(path: Any) -> str | None:
    """"dir", "file", "other" or None (missing, or not a usable name: too long, a NUL byte), without
    raising: pathlib's is_dir() raises on a 5000-character name instead of saying False."""
    try:
        st = os.stat(os.path.expanduser(os.fspath(path)))
    except (OSError, ValueError, TypeError):
        return None
    import stat

    return "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
