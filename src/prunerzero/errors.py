"""Errors a user can cause and fix. The CLI turns these into one line and exit code 2."""
from __future__ import annotations

from typing import Any, Iterable


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
        raise UserError(f"{what}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")
    return dict(obj)
