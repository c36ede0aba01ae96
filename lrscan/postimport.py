"""Code that runs once a module has been imported, whoever imports it first.

``import lrscan`` gives opened stores their ``.lrscan`` accessor, which xarray must be loaded to
register; but the commands that only read a little of a store (``lrscan info``, ``verify``, every
refusal) answer within a second only if they never load xarray (half a second) or dask. So the
accessor is registered when xarray is imported — at once, if it is loaded already; otherwise by
a finder on ``sys.meta_path`` that lets xarray load as usual and then runs the registration.
Every store a user can touch comes from xarray, so it always has the accessor.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Callable


def when_imported(name: str, then: Callable[[], object]) -> None:
    """Call ``then()`` right after top-level module ``name`` is first imported (now, if it is)."""
    if name in sys.modules:
        then()
    else:
        sys.meta_path.insert(0, _Finder(name, then))


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: asked for its module, it asks the other finders and wraps the
    loader they return. It leaves ``sys.meta_path`` once the module has been executed — not when
    it is merely looked for (``importlib.util.find_spec`` probes, which libraries use to see what
    is installed, load nothing)."""

    def __init__(self, name: str, then: Callable[[], object]):
        self.name, self.then, self._asking = name, then, False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self._asking:
            return None
        self._asking = True  # the other finders are asked through sys.meta_path, which holds this one
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._asking = False
        if spec is not None and spec.loader is not None:
            spec.loader = _Then(spec.loader, self._done)
        return spec

    def _done(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.then()


class _Then(importlib.abc.Loader):
    """A loader that runs the wrapped one, then the hook; anything else it is asked (resource
    readers, ``get_source``) goes to the wrapped loader."""

    def __init__(self, loader, then: Callable[[], object]):
        self._loader, self._then = loader, then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._then()

    def __getattr__(self, name):
        return getattr(self._loader, name)
