"""Named tables filled by decorators (`Registry`); a miss names every valid choice.

Not to be confused with the MLflow Model Registry, which medxp.promotion speaks to: a
`Registry` here is an in-process table from a name (a model, a data layout, an optimizer)
to what that name builds.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, Iterator, TypeVar

from medxp.errors import MedxpError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories (models, data sources, demo generators, ...).

    Args:
        kind: What the registry holds, used in error messages ("model", "data layout").
        declared: The names medxp's own modules register, known before those modules are
            imported: config validation reads them (`known_names`) without importing torch.
            A test checks they match what the modules register; a plug-in registered later
            is known too.
    """

    def __init__(self, kind: str, declared: Iterable[str] = ()) -> None:
        self.kind = kind
        self.declared = tuple(declared)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that files the decorated object under `name`."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """Returns the entry for `name`, or raises MedxpError listing the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise MedxpError(f"unknown {self.kind} '{name}'; valid: {valid}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def known_names(self) -> list[str]:
        """The declared names and every registered one, sorted: what a config may name."""
        return sorted({*self.declared, *self._entries})

    def in_registration_order(self) -> tuple[str, ...]:
        """Registered names in the order they were registered (a default that uses them all keeps it)."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
