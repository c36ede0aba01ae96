"""Run analyzers over a store and persist their results under ``/analysis/<name>``."""

from __future__ import annotations

import collections.abc
import hashlib
import inspect
import json
import os
import time
import types
import typing
from typing import Any, Callable, Iterable, Mapping

import xarray as xr
import zarr

from lrscan.analyze import ANALYZERS
from lrscan.analyze.progress import reporting
from lrscan.analyze.solutions import require_complete
from lrscan.errors import LrscanError
from lrscan.registry import closest
from lrscan.spec import toml_value
from lrscan.store import attach, open_store, runs_digest
from lrscan.units import label
from lrscan.version import __version__ as lrscan_version


def fingerprint(tree: xr.DataTree, name: str, options: dict, runs: str | None = None) -> str:
    """What a persisted result depends on: the store, the analyzer, its options, lrscan, the
    runs it reads as they are now (their checksums: retrained or repaired runs make it stale;
    ``runs`` is their :func:`~lrscan.store.runs_digest` when the caller has it already), and
    the persisted results it reads (so it is recomputed when they are)."""
    stored = tree["analysis"].children if "analysis" in tree.children else {}
    options = effective_options(name, options)
    key = {
        "runs": runs_digest(tree, ANALYZERS[name].needs) if runs is None else runs,
        "store_created": tree.attrs.get("created"),
        "spec": tree.attrs["spec"],
        "analyzer": name,
        "options": options,
        "lrscan": lrscan_version,
        "inputs": {dep: stored[dep].attrs.get("lrscan_fingerprint") for dep in ANALYZERS[name].after if dep in stored},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def effective_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of analyzer ``name``: its defaults, then ``options`` over them. A result
    depends on these, defaults included (a changed default makes results stale)."""
    params = _parameters(ANALYZERS[name].func)
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty} | dict(options)


def _parameters(func: Callable) -> list[inspect.Parameter]:
    """The options of an analyzer function: its parameters after the tree."""
    return list(inspect.signature(func).parameters.values())[1:]


def parse_option(item: str) -> tuple[str, str, Any]:
    """Split ``NAME.OPTION=VALUE`` into (analyzer, option, value).

    The value is read as a TOML value (``5``, ``"all"``, ``[["ft_low", "swa=5"]]``), or as a
    bare string when it is not one, as the spec's ``--set`` reads its values.
    """
    name, sep, raw = item.partition("=")
    analyzer, dot, option = name.strip().partition(".")
    if not sep or not dot or not analyzer or not option:
        raise LrscanError(f"--set expects ANALYZER.OPTION=VALUE (e.g. barriers.n_points=5), got {item!r}")
    return analyzer, option.strip(), toml_value(raw)


def parse_options(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``NAME.OPTION=VALUE`` strings as ``{analyzer: {option: value}}`` (a later one wins)."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        analyzer, option, value = parse_option(item)
        options.setdefault(analyzer, {})[option] = value
    return options


def check_options(options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Check analyzer options against the analyzers' signatures.

    Parameters
    ----------
    options
        ``{analyzer: {option: value}}``.

    Returns
    -------
    dict
        The same options, with whole numbers given for a float option made floats (so that
        ``window=20`` and the default ``20.0`` are one result).

    Raises
    ------
    LrscanError
        For an unknown analyzer or option (naming the closest), or a value whose type the
        option's annotation rules out.
    """
    checked: dict[str, dict[str, Any]] = {}
    for name, given in options.items():
        func = ANALYZERS[name].func  # an unknown analyzer raises, naming the closest
        params = {p.name: p for p in _parameters(func)
                  if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(func))
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # a plugin's annotation lrscan cannot resolve: the analyzer checks its values
            hints = {}
        checked[name] = {}
        for option, value in given.items():
            if option not in params and not open_ended:
                known = ", ".join(params) or "none"
                raise LrscanError(f"unknown option {option!r} of analyzer {name!r}{closest(option, params)}; "
                                  f"its options: {known}")
            hint = hints.get(option, Any)
            try:
                checked[name][option] = _fit(value, hint)
            except TypeError:
                raise LrscanError(f"{name}.{option} must be {_describe(hint)}, got {value!r}") from None
    return checked


def _fit(value: Any, hint: Any) -> Any:
    """``value`` as an option annotated ``hint`` takes it; TypeError when the hint rules it out.

    Only the types a TOML value can have are checked; any other annotation passes the value on.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        exact = [a for a in args if _is(value, a)]  # an int stays an int where int is allowed
        for arg in exact + [a for a in args if a not in exact]:
            try:
                return _fit(value, arg)
            except TypeError:
                continue
        raise TypeError
    if hint is type(None):
        if value is None:
            return value
        raise TypeError
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str):
        if _is(value, hint):
            return value
        raise TypeError
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        if not isinstance(value, list):
            raise TypeError
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TypeError
            return [_fit(v, a) for v, a in zip(value, args)]
        return [_fit(v, args[0]) for v in value] if args else value
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise TypeError
        return value
    if isinstance(hint, type) and not isinstance(value, hint):  # e.g. a Dataset, which no TOML value is
        raise TypeError
    return value


def _is(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, hint) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return hint is type(None) and value is None


_NAMES = {bool: ("true or false", "true/false values"), int: ("a whole number", "whole numbers"),
          float: ("a number", "numbers"), str: ("a string", "strings")}


def _describe(hint: Any, plural: bool = False) -> str:
    """An annotation in words, for messages: ``int | None`` is "a whole number"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args if a is not type(None))
    if hint in _NAMES:
        return _NAMES[hint][plural]
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        if plural:
            return "lists"
        return "a list" + (f" of {_describe(args[0], True)}" if args and args[0] is not Any else "")
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    return text.replace("typing.", "").replace("collections.abc.", "")


def plan_analyzers(tree: xr.DataTree, only: Iterable[str] | None = None) -> list[str]:
    """The analyzers to run, dependencies first; raises on names or stores that cannot work."""
    names = list(only or [])
    for name in names:
        missing = ANALYZERS[name].missing(tree)  # unknown names raise with a suggestion
        if missing:
            raise LrscanError(f"analyzer {name!r} {missing}")
    if not names:
        if "finetune" not in tree.children:
            raise LrscanError("the store has no fine-tuning data (finetune_epochs = 0); the study's analyses compare "
                              "fine-tuned solutions — retrain with finetune_epochs > 0, or pick analyzers with --only")
        names = [n for n in ANALYZERS if ANALYZERS[n].default and ANALYZERS[n].applies(tree)]
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        for dep in ANALYZERS[name].after:
            if dep in names:
                visit(dep)
        ordered.append(name)

    for name in names:
        visit(name)
    return ordered


def analyze(
    store: str | os.PathLike,
    only: Iterable[str] | None = None,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str, str, float], None] | None = None,
    blocks: Callable[[str, int, int], None] | None = None,
) -> dict[str, str]:
    """Compute and persist analyzers over a finished store.

    Results already stored for the same store, options and lrscan version are kept as
    they are; a result computed with other options is recomputed. Training data is never
    written: results go to ``/analysis/<name>`` only, and each is marked complete (its
    fingerprint, which covers its options) after its data.

    Parameters
    ----------
    store
        Path of a finished store.
    only
        Analyzer names (default: every analyzer that applies to the store, except the
        expensive extras registered with ``default=False``, such as ``sharpness``).
    options
        ``{analyzer: {option: value}}``: keyword arguments of the analyzers that run (see
        :func:`check_options`), e.g. ``{"barriers": {"n_points": 5}}``. An option of an
        analyzer that does not run is an error.
    progress
        Called as ``progress(name, status, seconds)``: with status "computing" (0 s) when an
        analyzer starts, then "computed" or "up to date".
    blocks
        Called as ``blocks(name, done, total)`` as an analyzer that runs the model works
        through its solutions block by block (:func:`lrscan.analyze.evaluate.blocks`).

    Returns
    -------
    dict
        Status of each analyzer run.
    """
    options = check_options(options or {})
    tree = open_store(store, settled=True)  # opened once; each result is attached as it is written
    require_complete(tree)
    names = plan_analyzers(tree, only)
    for name in options:
        if name not in names:
            raise LrscanError(f"options given for analyzer {name!r}, which does not run: {_why_not(tree, name, only)}")
    status = {}
    digests: dict[tuple[str, ...], str] = {}  # the runs do not change while a finished store is analysed
    for name in names:
        start = time.perf_counter()
        needs = tuple(sorted(ANALYZERS[name].needs))
        if needs not in digests:
            digests[needs] = runs_digest(tree, needs)
        key = fingerprint(tree, name, options.get(name, {}), digests[needs])
        stored = tree["analysis"].children if "analysis" in tree.children else {}
        if name in stored and stored[name].attrs.get("lrscan_fingerprint") == key:
            status[name] = "up to date"
            if name not in tree["analysis"].attrs.get("lrscan_inputs", {}):  # killed before it was recorded
                record_inputs(store, name, digests[needs], ANALYZERS[name].needs)
        else:
            if progress is not None:
                progress(name, "computing", 0.0)
            with reporting(None if blocks is None else (lambda done, total, name=name: blocks(name, done, total))):
                result = ANALYZERS[name](tree, **options.get(name, {}))
            # The options beside the result, for readers; the fingerprint is what decides.
            used = json.dumps(effective_options(name, options.get(name, {})), sort_keys=True, default=str)
            result.attrs = {**result.attrs, "lrscan_analyzer": name, "lrscan_options": used}
            persist(store, name, result, key)
            record_inputs(store, name, digests[needs], ANALYZERS[name].needs)
            tree = attach(tree, store, f"analysis/{name}")  # later analyzers may read this result
            status[name] = "computed"
        if progress is not None:
            progress(name, status[name], time.perf_counter() - start)
    if "metrics" in status:
        record_best(store, tree)
    return status


def record_inputs(store: str | os.PathLike, name: str, runs: str, needs: Iterable[str]) -> None:
    """Record beside the results what ``name`` was computed from — the digest of the runs it
    read, their stages, the lrscan version — in the ``/analysis`` group's ``lrscan_inputs``
    attribute, which ``lrscan info`` compares to tell a stale result without loading any analyzer."""
    try:
        group = zarr.open_group(str(store), path="analysis", mode="r+")
        inputs = dict(group.attrs.get("lrscan_inputs", {}))
        inputs[name] = {"runs": runs, "needs": list(needs), "version": lrscan_version}
        group.attrs["lrscan_inputs"] = inputs
    except OSError as err:
        raise LrscanError(f"could not write to the store at {store}: {err.strerror or err}") from None


def record_best(store: str | os.PathLike, tree: xr.DataTree | None = None) -> None:
    """Record the best PLR of each kind (:func:`lrscan.analyze.best.best`) in the ``/analysis``
    group's ``lrscan_best`` attribute, bound to the metrics' fingerprint it was judged from, so
    that ``lrscan info`` shows it without loading any analyzer. ``tree`` is the store opened
    already, with its analyses as they are now."""
    from lrscan.analyze.best import KINDS, best, plr_scores

    tree = open_store(store) if tree is None else tree
    metrics = tree["analysis/metrics"]
    n_test = tree.attrs["spec"]["data"].get("n_test")
    try:
        scores = plr_scores(tree, n_test=n_test)
    except LrscanError:
        return  # neither fine-tuning nor SWA to judge by
    found = {"metrics_fingerprint": metrics.attrs.get("lrscan_fingerprint")}
    for kind in KINDS:
        if kind not in scores:
            continue
        one = best(scores, kind)
        if one is not None:
            found[kind] = {"plr": one.plr, "accuracy": one.accuracy, "se": one.se, "low": one.low, "high": one.high,
                           "tied": list(one.tied), "text": one.describe()}
    try:
        zarr.open_group(str(store), path="analysis", mode="r+").attrs["lrscan_best"] = found
    except OSError as err:
        raise LrscanError(f"could not write to the store at {store}: {err.strerror or err}") from None


def _why_not(tree: xr.DataTree, name: str, only: Iterable[str] | None) -> str:
    missing = ANALYZERS[name].missing(tree)
    if missing:
        return f"it {missing}"
    if only:
        return "it is not among the analyzers asked for (--only)"
    return "it runs only on request (--only)"


def persist(store: str | os.PathLike, name: str, result: xr.Dataset, key: str) -> None:
    """Write ``result`` under ``/analysis/<name>``, then its fingerprint ``key``.

    Each variable is written with the ``units`` and ``long_name`` of its own name
    (:func:`lrscan.units.label`), not those it inherited from the inputs. The fingerprint goes
    last: a result cut short by a crash has none, so it is redone (and not drawn).
    """
    group = f"analysis/{name}"
    try:
        _uniform_chunks(label(result)).to_zarr(str(store), group=group, mode="w", consolidated=False, zarr_format=3)
        zarr.open_group(str(store), path=group, mode="r+").attrs["lrscan_fingerprint"] = key
    except OSError as err:
        raise LrscanError(f"could not write /analysis/{name} to the store at {store}: {err.strerror or err}; "
                          "results finished before are kept — fix the cause and rerun the same command") from None


# A persisted variable up to this size is written as one zarr chunk: results read from per-run
# chunks of the store would otherwise be written as thousands of tiny files (on the default
# store, most of the metrics analyzer's time).
ONE_CHUNK_BYTES = 1 << 26


def _uniform_chunks(result: xr.Dataset) -> xr.Dataset:
    """The result with each dask variable's chunks made regular, as zarr needs (a result
    concatenated from parts, like ``group_norms``, has ragged ones), and each small one in a
    single chunk (:data:`ONE_CHUNK_BYTES`)."""
    changed = {}
    for name, var in result.data_vars.items():
        if var.chunks is None:
            continue
        if var.nbytes <= ONE_CHUNK_BYTES:
            if any(len(c) > 1 for c in var.chunks):
                changed[name] = var.chunk(-1)
        elif any(len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]) for c in var.chunks):
            changed[name] = var.chunk({d: max(c) for d, c in zip(var.dims, var.chunks)})
    return result.assign(changed) if changed else result
