"""A small name -> factory registry shared by models, datasets and methods."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdlab.core.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """Raised when a registry lookup fails; the message names the close matches."""

    def __str__(self) -> str:
        return str(self.args[0])


def closest(name: str, choices: list[str]) -> str:
    """A ' (did you mean X?)' hint, or an empty string when nothing is close."""
    match = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """Maps explicit names to objects; registration is by decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            names = sorted(self._items)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{closest(name, names)}; known: {', '.join(names)}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
