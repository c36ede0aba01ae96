"""What every ``lrscan`` command shares: one-line user errors, the default store path, ``--json``,
and the progress displays.

Kept apart from :mod:`lrscan.cli` so that command modules elsewhere (``lrscan.plot.commands``)
can use it without importing the command group they are added to.
"""

from __future__ import annotations

import errno
import functools
import sys
import time
from pathlib import Path

import click

from lrscan.errors import LrscanError

DEFAULT_STORE_DIR = Path("store")


class UserError(click.ClickException):
    """A one-line error on stderr with exit status 2."""

    exit_code = 2


def user_errors(func):
    """Turn library errors a user can fix into one line and exit status 2, never a traceback:
    lrscan's own, and the operating system's (a read-only store, a full disk) wherever the
    library did not already name them."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LrscanError as err:
            raise UserError(str(err)) from None
        except OSError as err:
            raise UserError(os_error(err)) from None

    return wrapper


def os_error(err: OSError) -> str:
    """An operating-system error as one line that says what to do."""
    where = f" ({err.filename})" if err.filename else ""
    hint = {errno.ENOSPC: "free some space and rerun the same command; finished work is kept",
            errno.EACCES: "the store or its folder is not writable by you",
            errno.EROFS: "the store is on a read-only filesystem"}.get(err.errno, "fix the cause and rerun")
    return f"{err.strerror or err}{where}: {hint}"


def store_argument(store: str | None, default: Path) -> str | Path:
    """The STORE a command was given, or its default; an empty one is refused (it would silently
    mean the default store)."""
    if store is None:
        return default
    if not store.strip():
        raise UserError("the store path is empty; give a path, or leave it out for the default store "
                        f"({default})")
    return store


def json_option(func):
    """``--json``: one JSON document on stdout, the human text on stderr."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as one JSON document on stdout (the human text goes to stderr).")(func)


def emit_json(document) -> None:
    import json
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if hasattr(value, "item") and callable(value.item):  # numpy scalars
            return clean(value.item())
        return value

    click.echo(json.dumps(clean(document), indent=2, default=str))


def default_store(preset: str | None, config: str | None) -> Path:
    from lrscan.spec import DEFAULT_PRESET

    name = Path(config).stem if config else (preset or DEFAULT_PRESET)
    return DEFAULT_STORE_DIR / f"{name}.zarr"


def spec_options(store_suffix: str = ""):
    """The options that choose a sweep spec and its store: ``--preset``, ``--config``,
    ``--store``, ``--set`` (shared by ``train``, ``threshold`` and ``scan``)."""
    options = [
        click.option("--preset", metavar="NAME", help="A shipped preset (default: synthetic); see `lrscan presets`."),
        click.option("--config", metavar="FILE", help="A TOML sweep spec with a [sweep] table."),
        click.option("--store", metavar="PATH",
                     help=f"Store directory (default: store/<preset or config name>{store_suffix}.zarr, "
                          "relative to the current folder; store/synthetic.zarr for the default preset)."),
        click.option("--set", "overrides", metavar="FIELD=VALUE", multiple=True,
                     help="Override a spec field, e.g. --set seeds=3 --set data.n_train=256. Repeatable."),
    ]
    return _stacked(options)


def cluster_options(func):
    """``--workers N`` / ``--scheduler ADDRESS``: where batches of runs execute."""
    return _stacked([
        click.option("--workers", type=click.IntRange(min=1), metavar="N",
                     help="Run batches on a local dask cluster of N worker processes (one per GPU on a GPU machine)."),
        click.option("--scheduler", metavar="ADDRESS",
                     help="Run batches on an existing dask cluster, e.g. tcp://host:8786."),
    ])(func)


def _stacked(options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


class ProgressDisplay:
    """A live bar on a terminal, a plain line every ``every`` seconds otherwise."""

    def __init__(self, every: float = 10.0, stream=None):
        self.stream = stream or sys.stderr
        self.every = every
        self.bar = None
        self.last = 0.0
        self.start = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def update(self, progress) -> None:
        if self.stream.isatty():
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=progress.total, unit=" model-steps", unit_scale=True, file=self.stream,
                                dynamic_ncols=True)
            self.bar.set_description(progress.phase)
            self.bar.update(progress.done - self.bar.n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or progress.done >= progress.total:
            self.last = now
            elapsed = now - self.start
            share = progress.done / progress.total if progress.total else 1.0
            eta = f", about {elapsed / share - elapsed:.0f} s left" if 0 < share < 1 else ""
            print(f"{progress.phase}: {100 * share:5.1f}% of {progress.total:,} model-steps, "
                  f"{elapsed:.0f} s{eta}", file=self.stream, flush=True)


def _count(done: int, total: int) -> str:
    """``done`` of ``total`` solutions, or, in one of several passes over them
    (:func:`lrscan.analyze.progress.passes`), which pass and how far into it."""
    # Here, not at the top: the commands that only list analyzers import none of lrscan.analyze.
    from lrscan.analyze.progress import current_pass

    where = current_pass()
    if where is None:
        return f"{done:,} of {total:,} solutions"
    k, n = where
    per = total // n
    return f"pass {k} of {n}: {done - (k - 1) * per:,} of {per:,} solutions"


class AnalyzerDisplay:
    """Each analyzer's start and finish with its time, and its progress through blocks of
    solutions: one line rewritten in place on a terminal; otherwise plain lines, the first block
    at once and then one every ``every`` s, and the finish."""

    def __init__(self, every: float = 10.0, stream=None):
        self.stream = stream or sys.stderr
        self.every, self.last, self.seconds = every, 0.0, {}
        self.tty = self.stream.isatty()

    def status(self, name: str, status: str, seconds: float) -> None:
        if status == "computing":
            # Plain output says nothing until there is progress to show: an analyzer that
            # refuses its options at once leaves only the error line.
            if self.tty:
                self._line(f"{name:12s} computing ...", final=False)
            self.last = 0.0
            return
        self.seconds[name] = seconds
        self._line(f"{name:12s} {status}" + (f" in {seconds:.1f} s" if status == "computed" else ""), final=True)

    def blocks(self, name: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.tty or now - self.last >= self.every:
            self.last = now
            self._line(f"{name:12s} {_count(done, total)}", final=not self.tty)

    def _line(self, text: str, *, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            self.stream.flush()
        else:
            print(text, file=self.stream, flush=True)
