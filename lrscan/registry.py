"""Name-keyed registries that third-party packages extend through entry points."""

from __future__ import annotations

import difflib
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, Iterator, Mapping, TypeVar

from lrscan.errors import LrscanError

T = TypeVar("T")


def closest(name: str, choices) -> str:
    """Return a ' (did you mean ...?)' hint naming the closest choice, or '' when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """Entries registered in code, built-in entries named by where they are defined, and those
    advertised under an entry-point group.

    Built-in entries and entry points load on first lookup, so that knowing the names imports
    nothing and a plugin that fails to import only breaks the lookups that need it.

    Parameters
    ----------
    kind
        What an entry is, for error messages (``"analyzer"``).
    group
        The entry-point group of third-party entries.
    builtins
        Built-in entries by name, each as an entry point's object reference
        (``"module:attribute"``).
    """

    def __init__(self, kind: str, group: str, builtins: Mapping[str, str] | None = None):
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins or {})
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
            if ep.name not in self._entries and ep.name not in self._builtins:
                self._entries[ep.name] = ep.load()

    def __getitem__(self, name: str) -> T:
        if name not in self._entries and name in self._builtins:
            self._entries[name] = EntryPoint(name, self._builtins[name], self.group).load()
        if name not in self._entries:
            self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(set(self._entries) | set(self._builtins))
            raise LrscanError(f"unknown {self.kind} {name!r}{closest(name, known)}; known: {', '.join(known)}") from None

    def __contains__(self, name: str) -> bool:
        if name in self._builtins:
            return True
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(sorted(set(self._entries) | set(self._builtins)))
