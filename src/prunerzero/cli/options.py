"""What every subcommand shares: the parser that fails in one line, the value parsers, and the
options made from the settings' own declarations (``settings.option``: flag, default, help).

An option made by ``add_settings`` defaults to ``NOT_GIVEN``, so a command knows what the command
line said (``given``) and hands it to ``settings.resolve``, the one precedence rule
(command line > config file > defaults); the defaults themselves live only on the dataclasses.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields
from typing import Any, Callable, Iterable, NoReturn

from ..errors import clip, one_line


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()  # the default of every option made from a settings field


# ----------------------------------------------------------------------------- text -> value


def nonempty(text: str) -> str:
    """A value that is not empty or blank (an empty --metric or --save must not silently mean
    "not given")."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty value")
    return text


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {clip(text, 40)}") from None


def none_or_text(text: str) -> str | None:
    """'none' -> None (e.g. --eval-data none: skip perplexity), any other non-blank text as it is."""
    return None if text.lower() == "none" else nonempty(text)


def comma_list(item: type = str, *, empty_ok: bool = False, none_word: str | None = None) -> Callable[[str], tuple]:
    """A parser of comma lists of ``item`` (str, int or float): "a, b,c" -> ("a", "b", "c").
    An empty list is an error unless ``empty_ok`` (it must not quietly mean the default);
    ``none_word`` (e.g. "none") means no items."""
    what = {str: "names", int: "integers", float: "numbers"}[item]

    def parse(text: str) -> tuple:
        if none_word is not None and text.strip().lower() == none_word:
            return ()
        parts = [v.strip() for v in text.split(",") if v.strip()]
        try:
            values = tuple(parts if item is str else (item(v) for v in parts))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma list of {what}: {clip(text, 60)}") from None
        if not values and not empty_ok:
            raise argparse.ArgumentTypeError("empty list")
        return values

    parse.__name__ = f"comma list of {what}"
    return parse


def value_parser(hint: Any, meta: typing.Mapping[str, Any]) -> Callable[[str], Any]:
    """How the command line reads a settings field of type ``hint`` (its ``option`` metadata)."""
    if meta.get("items") is not None:
        return comma_list(meta["items"], empty_ok=meta.get("empty_ok", False), none_word=meta.get("none"))
    types = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    base = types[0]
    if base is str:
        return none_or_text if meta.get("none") else nonempty
    if base is float:
        return number
    if base is int:
        return int
    raise TypeError(f"no command-line parser for {hint!r}")


# ----------------------------------------------------------------------------- options from settings


def add_settings(parser: argparse.ArgumentParser, cls: type, names: Iterable[str], *, defaults: bool = False,
                 **changes: dict[str, Any]) -> None:
    """Offer the fields ``names`` of the settings dataclass ``cls`` as options, from their declarations.
    ``defaults``: the field's default instead of NOT_GIVEN (for commands that read ``args`` directly);
    ``changes``: per field, argparse keywords that differ for this command (help, required, ...)."""
    declared = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names:
        f, meta = declared[name], dict(declared[name].metadata)
        kwargs: dict[str, Any] = {"dest": name, "help": _help(meta.get("help"), f.default),
                                  "default": f.default if defaults and f.default is not MISSING else NOT_GIVEN}
        if hints[name] is bool:
            kwargs["action"] = "store_true"
        elif meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["type"] = value_parser(hints[name], meta)
        kwargs.update(changes.get(name, {}))
        parser.add_argument(meta.get("flag") or "--" + name.replace("_", "-"), **kwargs)


def _help(text: str | None, default: Any) -> str | None:
    """The declared help, with the default when it says something (argparse: % doubled)."""
    text = text or ""
    if not (default is None or default is False or default is MISSING or default in ((), "")) and "default" not in text:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else f"{default:g}" \
            if isinstance(default, float) else str(default)
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    return text.replace("%", "%%") or None


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the command line gave a value."""
    return {f.name: getattr(args, f.name) for f in fields(cls)
            if getattr(args, f.name, NOT_GIVEN) is not NOT_GIVEN}


def parse_text(cls: type, name: str, text: str) -> Any:
    """``text`` for field ``name`` read as the command line reads it (e.g. "none" -> None)."""
    meta = {f.name: f.metadata for f in fields(cls)}[name]
    if meta.get("choices"):
        return text
    return value_parser(typing.get_type_hints(cls)[name], meta)(text)
