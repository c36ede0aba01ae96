"""Progress of the analyzer running now: how many of its solutions it has worked through.

:func:`lrscan.analyze.run.analyze` sets who hears it (:func:`reporting`); the evaluation
blocks (:func:`lrscan.analyze.evaluate.blocks`) report to them (:func:`block_done`). An
analyzer that goes through the same solutions several times declares its passes
(:func:`passes`), so that the count runs once from start to end rather than once per pass.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

_REPORT: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar("blocks", default=None)
_PASS: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("pass", default=None)


@contextlib.contextmanager
def reporting(report: Callable[[int, int], None] | None) -> Iterator[None]:
    """Send the :func:`block_done` reports made inside the block to ``report(done, total)``."""
    token = _REPORT.set(report)
    try:
        yield
    finally:
        _REPORT.reset(token)


def block_done(done: int, total: int) -> None:
    """Report that the running analyzer has worked through ``done`` of ``total`` solutions."""
    report = _REPORT.get()
    if report is not None:
        report(done, total)


@contextlib.contextmanager
def passes(n: int) -> Iterator[None]:
    """Report the blocks of the ``n`` passes over the same solutions made inside the block as
    one count: pass k's ``done`` of ``total`` as ``k * total + done`` of ``n * total`` (k from
    0). While a pass runs, :func:`current_pass` says which it is."""
    report = _REPORT.get()
    if report is None:
        yield
        return
    finished = 0

    def counted(done: int, total: int) -> None:
        nonlocal finished
        k = min(finished, n - 1)
        token = _PASS.set((k + 1, n))
        try:
            report(k * total + done, n * total)
        finally:
            _PASS.reset(token)
        if done == total:
            finished += 1

    token = _REPORT.set(counted)
    try:
        yield
    finally:
        _REPORT.reset(token)


def current_pass() -> tuple[int, int] | None:
    """(k, n): the report being made is of pass k of n over the same solutions (k from 1), or
    ``None`` outside :func:`passes`. A display uses it to say so."""
    return _PASS.get()
