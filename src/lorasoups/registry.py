"""A generic name -> object registry with "did you mean ...?" suggestions."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for an unknown registry name; the message carries suggestions."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the plain message
        return str(self.args[0]) if self.args else ""


def suggest(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return a ``" (did you mean 'x'?)"`` suffix for ``name`` among ``choices``, or ``""``."""
    close = difflib.get_close_matches(name, sorted(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class Registry(Generic[T]):
    """Maps names to objects. ``kind`` is used in error messages ("unknown method 'x'")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        Raises:
            ValueError: if ``name`` is already registered.
        """
        def _add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        if obj is None:
            return _add
        return _add(obj)

    def get(self, name: str) -> T:
        """Return the object for ``name``.

        Raises:
            UnknownNameError: unknown name, with close matches suggested.
        """
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{suggest(name, list(self._items))}; "
                f"known: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


def lazy_loader(modules: list[str]) -> Callable[[], None]:
    """Return a function that imports ``modules`` once (so their registrations run)."""
    done = {"v": False}

    def _load() -> None:
        if done["v"]:
            return
        import importlib

        for m in modules:
            importlib.import_module(m)
        done["v"] = True

    return _load
