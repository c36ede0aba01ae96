"""Name-keyed registries that third-party packages extend through entry points."""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Generic, Iterator, TypeVar

from lrscan.errors import LrscanError

T = TypeVar("T")


def closest(name: str, choices) -> str:
    """Return a ' (did you mean ...?)' hint naming the closest choice, or '' when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """Entries registered in code, plus those advertised under an entry-point group.

    Entry points load on first lookup, so a plugin that fails to import only
    breaks the lookups that need it.
    """

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._entries: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.load()

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise LrscanError(
                f"unknown {self.kind} {name!r}{closest(name, self._entries)}; "
                f"known: {', '.join(sorted(self._entries))}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(sorted(self._entries))
