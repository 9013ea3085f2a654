"""A tiny name -> object registry whose unknown-name error suggests the closest name."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError, clip

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            usable = isinstance(name, str) and len(name) < 200  # difflib on a 5000-character name is slow
            close = difflib.get_close_matches(name, list(self._items), n=1) if usable else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"unknown {self.kind} {clip(name, 60)}{hint} "
                            f"(choose from {', '.join(sorted(self._items))})")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
