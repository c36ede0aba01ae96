"""The sweep spec: presets, TOML files and ``--set`` overrides, resolved and validated.

A spec is one flat table of hyperparameters (``[sweep]``) plus the options of the chosen
model (``[model]``) and dataset (``[data]``).  :func:`load_spec` merges a preset or a file
with overrides, fills every default (the model's radius, the dataset's options) and checks
everything, so a resolved :class:`Spec` is complete: it is what the store records and what a
rerun is compared against.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from lrscan.errors import LrscanError
from lrscan.options import (MAX_RUNS, boolean, check_options, choice, integer, learning_rate, number, number_list,
                            seeds_list, string)
from lrscan.registry import closest

DEFAULT_PRESET = "synthetic"
TABLES = ("sweep", "model", "data")
# Bounds checked before anything is allocated (issue 18): a sweep spec is a few lines, a run
# keeps at most this many metric rows or checkpoints, a sweep has at most this many runs.
MAX_CONFIG_BYTES = 1 << 20
MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class Spec:
    """A resolved sweep: every field explicit, every value checked.

    Epoch-valued fields are in epochs of the training set; they may be fractional where
    logging or checkpointing is finer than an epoch, and are checked against the step grid
    when a run is planned (:mod:`lrscan.train.plan`).
    """

    model: str = "mlp"
    dataset: str = "ticks"
    plr: tuple[float, ...] = (1e-3,)
    flr: tuple[float, ...] = (1e-4,)
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 16
    pretrain_epochs: float = 10.0
    finetune_epochs: float = 0.0
    finetune_from: float | None = None
    # A second pre-training stage: from epoch ``epoch`` on, every run trains with ELR ``plr``.
    pretrain_switch: Mapping[str, float] | None = None
    log_every: float = 1.0
    checkpoint_epochs: tuple[float, ...] = ()
    swa: tuple[int, ...] = ()
    # Where SWA windows lie: {start = E, every = s} averages epochs E, E+s, ... (pre-training
    # continues past pretrain_epochs as far as the largest window needs), {stop = E, every = s}
    # the K epochs ending at E; None: the last K stored pre-training checkpoints.
    swa_window: Mapping[str, float] | None = None
    radius: float | None = None
    device: str = "auto"
    compile: bool = False
    precision: str = "fp32"
    runs_per_batch: int = 512
    model_options: Mapping[str, Any] = field(default_factory=dict)
    data_options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able tables, the form the store records."""
        sweep = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {
            "sweep": {k: v for k, v in sweep.items() if k not in ("model_options", "data_options")},
            "model": _plain(dict(self.model_options)),
            "data": _plain(dict(self.data_options)),
        }

    @classmethod
    def from_dict(cls, tables: Mapping[str, Any], *, trusted: bool = False) -> "Spec":
        """Rebuild a resolved spec from :meth:`to_dict` output (no defaults filled).

        A spec read back from a store is a record, not the user's request: unless ``trusted``
        (the tables are the user's own spec, as a dask task gets them), its ``data.download``
        is turned off, so that a store's recorded ``data_dir`` is only ever read from, never
        created or downloaded into (issue 18).
        """
        sweep = dict(tables["sweep"])
        for name in ("plr", "flr", "seeds", "checkpoint_epochs", "swa"):
            sweep[name] = tuple(sweep[name])
        data = dict(tables["data"])
        if not trusted and data.get("download"):
            data["download"] = False
        return cls(**sweep, model_options=dict(tables["model"]), data_options=data)

    def differences(self, other: "Spec", ignore: Iterable[str] = ("device", "compile", "data.download")) -> list[str]:
        """Names of the fields (``table.field``) in which two specs differ; fields in ``ignore``
        (``field`` or ``table.field``) say how a sweep runs, not what it computes."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for table in TABLES:
            for key in sorted(set(a[table]) | set(b[table])):
                name = key if table == "sweep" else f"{table}.{key}"
                if key not in ignore and name not in ignore and a[table].get(key) != b[table].get(key):
                    out.append(name)
        return out

    @property
    def data_seeds(self) -> tuple[int, ...]:
        """Data seeds of the dataset (one ``0`` for datasets without a seed option)."""
        return tuple(self.data_options.get("seeds", (0,)))

    @property
    def resolved_finetune_from(self) -> float:
        return self.pretrain_epochs if self.finetune_from is None else self.finetune_from


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


SWEEP_FIELDS = [f.name for f in dataclasses.fields(Spec) if f.name not in ("model_options", "data_options")]


def preset_names() -> list[str]:
    """Names of the presets shipped in the package."""
    files = resources.files("lrscan.presets").iterdir()
    return sorted(p.name[: -len(".toml")] for p in files if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML source of a shipped preset."""
    if name not in preset_names():
        raise LrscanError(f"unknown preset {name!r}{closest(name, preset_names())}; known: {', '.join(preset_names())}")
    return resources.files("lrscan.presets").joinpath(f"{name}.toml").read_text()


def load_spec(
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> Spec:
    """Build a resolved spec from a preset or a TOML file, then ``FIELD=VALUE`` overrides.

    Parameters
    ----------
    preset
        Name of a shipped preset; the default preset when neither it nor ``config`` is given.
    config
        Path of a TOML file with a ``[sweep]`` table and optional ``[model]`` / ``[data]`` tables.
    overrides
        Strings ``FIELD=VALUE`` (``model.FIELD`` / ``data.FIELD`` for the option tables); the
        value is read as a TOML value, or as a bare string when it is not one.

    Returns
    -------
    Spec
        Every field explicit, validated.

    Raises
    ------
    LrscanError
        On any invalid input, with a one-line message.
    """
    return resolve(load_tables(preset, config, overrides))


def load_tables(
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """The raw tables of a preset or TOML file with ``FIELD=VALUE`` overrides applied, not yet
    resolved: :func:`load_spec` without its :func:`resolve`, for callers that adjust fields first."""
    if preset is not None and config is not None:
        raise LrscanError("give either a preset or a config file, not both")
    if config is not None:
        path = Path(config)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as err:
            raise LrscanError(f"cannot read config {str(path)!r}: {err.strerror}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise LrscanError(f"config {str(path)!r} is larger than {MAX_CONFIG_BYTES >> 20} MB; a sweep spec is "
                              "a TOML file of a few lines")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LrscanError(f"config {str(path)!r} is not UTF-8 text (a TOML sweep spec)") from None
        source = str(path)
    else:
        text, source = preset_text(preset or DEFAULT_PRESET), f"preset {preset or DEFAULT_PRESET!r}"
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise LrscanError(f"{source} is not valid TOML: {err}") from None
    for key in tables:
        if key not in TABLES:
            raise LrscanError(f"unknown table [{key}] in {source}{closest(key, TABLES)}; tables: {', '.join(TABLES)}")
        if not isinstance(tables[key], dict):
            raise LrscanError(f"{key!r} in {source} must be a table [{key}]")
    for item in overrides:
        table, key, value = parse_override(item)
        tables.setdefault(table, {})[key] = value
    return tables


def parse_override(item: str) -> tuple[str, str, Any]:
    """Split ``FIELD=VALUE`` into (table, field, value)."""
    name, sep, raw = item.partition("=")
    name = name.strip()
    if not sep or not name:
        raise LrscanError(f"--set expects FIELD=VALUE, got {item!r}")
    table, dot, key = name.partition(".")
    if not dot:
        table, key = "sweep", name
    elif table not in TABLES:
        raise LrscanError(f"unknown table {table!r} in --set {item!r}{closest(table, TABLES)}")
    return table, key, toml_value(raw)


def toml_value(raw: str):
    """The value of a ``--set`` item: TOML (``[1e-3, 1e-2]``, ``true``, ``'cpu'``), or the bare
    text as a string when it is not TOML."""
    raw = raw.strip()
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def resolve(tables: Mapping[str, Any]) -> Spec:
    """Check raw TOML tables and fill every default, giving a complete :class:`Spec`."""
    sweep = dict(tables.get("sweep", {}))
    for key in sweep:
        if key not in SWEEP_FIELDS:
            raise LrscanError(f"unknown sweep field {key!r}{closest(key, SWEEP_FIELDS)}")
    # The registries load torch (models, datasets): only past the checks that need neither.
    from lrscan.data import DATASETS
    from lrscan.models import MODELS
    defaults = Spec()
    get = lambda name: sweep.get(name, getattr(defaults, name))  # noqa: E731

    model = string("model", get("model"))
    dataset = string("dataset", get("dataset"))
    model_entry, data_entry = MODELS[model], DATASETS[dataset]
    model_options = model_entry.validate(
        check_options(f"[model] options of {model!r}", tables.get("model", {}), model_entry.defaults)
    )
    data_options = data_entry.validate(
        check_options(f"[data] options of {dataset!r}", tables.get("data", {}), data_entry.defaults)
    )

    pretrain_epochs = number("pretrain_epochs", get("pretrain_epochs"), positive=True)
    finetune_epochs = number("finetune_epochs", get("finetune_epochs"), positive=False)
    finetune_from = get("finetune_from")
    if finetune_from is not None:
        finetune_from = number("finetune_from", finetune_from, positive=False)
        if finetune_from > pretrain_epochs:
            raise LrscanError(
                f"finetune_from = {finetune_from:g} is beyond pretrain_epochs = {pretrain_epochs:g}"
            )
    else:
        finetune_from = pretrain_epochs
    switch = _switch(get("pretrain_switch"), pretrain_epochs)
    if switch is not None and finetune_from < switch["epoch"]:
        raise LrscanError(
            f"finetune_from = {finetune_from:g} is before pretrain_switch.epoch = {switch['epoch']:g}; "
            "fine-tuning branches from the second pre-training stage"
        )
    end = pretrain_epochs + finetune_epochs
    log_every = number("log_every", get("log_every"), positive=True)
    _check_rows("metric rows", end / log_every, f"{end:g} epochs logged every {log_every:g}")
    plr, flr = _grid("plr", get("plr")), _grid("flr", get("flr"))
    n_seeds = _seed_count(get("seeds"))
    n_data = len(data_options.get("seeds", (0,))) if isinstance(data_options.get("seeds", (0,)), (list, tuple)) else 1
    runs = len(plr) * n_seeds * n_data * (1 + (len(flr) if finetune_epochs else 0))
    if runs > MAX_RUNS:
        raise LrscanError(f"this sweep cannot fit: about {runs:,} runs ({len(plr):,} PLRs x {n_seeds:,} seeds x "
                          f"{n_data} data seeds{f' x (1 + {len(flr):,} FLRs)' if finetune_epochs else ''}); "
                          f"lrscan takes at most {MAX_RUNS:,}")
    _check_data_memory(data_options, n_data)
    swa = tuple(integer(f"swa[{i}]", k, minimum=1) for i, k in enumerate(number_list("swa", get("swa"))))
    if len(set(swa)) != len(swa):
        raise LrscanError(f"swa has repeated values: {list(swa)}")
    window = _swa_window(get("swa_window"))
    radius = get("radius")
    if model_entry.update != "sphere":
        if radius is not None:
            raise LrscanError(f"model {model!r} is not trained on a sphere; remove radius = {radius!r}")
    elif radius is None:
        radius = float(model_entry.radius(model_options))
    else:
        radius = float(number("radius", radius, positive=True))
    return Spec(
        model=model,
        dataset=dataset,
        plr=plr,
        flr=flr,
        seeds=seeds_list("seeds", get("seeds")),
        batch_size=integer("batch_size", get("batch_size"), minimum=1),
        pretrain_epochs=pretrain_epochs,
        finetune_epochs=finetune_epochs,
        finetune_from=finetune_from,
        pretrain_switch=switch,
        log_every=log_every,
        checkpoint_epochs=_checkpoints(get("checkpoint_epochs"), end),
        swa=tuple(sorted(swa)),
        swa_window=window,
        radius=radius,
        device=_device(get("device")),
        compile=boolean("compile", get("compile")),
        precision=choice("precision", get("precision"), ("fp32", "bf16")),
        runs_per_batch=integer("runs_per_batch", get("runs_per_batch"), minimum=1),
        model_options=model_options,
        data_options=data_options,
    )


def log_grid(low: float, high: float, per_decade: float) -> np.ndarray:
    """A log-spaced PLR grid from ``low`` to ``high``, both as given: equal steps in log10, as
    few as keep each step within ``1 / per_decade`` decade (one point when ``low == high``)."""
    decades = math.log10(high / low)
    steps = max(1, math.ceil(decades * per_decade - 1e-9)) if high > low else 0
    grid = np.logspace(math.log10(low), math.log10(high), steps + 1)
    grid[0], grid[-1] = low, high  # the bounds as given, not as 10 ** log10 gives them back
    return grid


def _grid(name: str, value) -> tuple[float, ...]:
    values = number_list(name, value)
    if not values:
        raise LrscanError(f"{name} grid is empty; give at least one learning rate")
    grid = [learning_rate(f"{name}[{i}]", v) for i, v in enumerate(values)]
    if len(set(grid)) != len(grid):
        raise LrscanError(f"{name} grid has repeated values")
    return tuple(sorted(grid))


def _seed_count(value) -> int:
    """How many seeds ``seeds`` gives, checked without making them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return integer("seeds", value, minimum=1)
    return len(number_list("seeds", value))


def _check_rows(what: str, count: float, why: str) -> None:
    if count > MAX_ROWS:
        raise LrscanError(f"this sweep cannot fit: about {count:,.0f} {what} per run ({why}); lrscan keeps at most "
                          f"{MAX_ROWS:,} per run")


def physical_memory() -> int:
    """Bytes of memory this machine has (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _check_data_memory(options: Mapping[str, Any], n_data: int) -> None:
    """Refuse sample counts whose data sets cannot fit in memory: every ``n_*`` count option,
    times the values per sample (``dim``, or a 32x32 colour image), as float64 while generated."""
    counts = {k: v for k, v in options.items() if k.startswith("n_") and isinstance(v, int) and not isinstance(v, bool)
              and k not in ("n_features", "n_classes")}
    per_sample = options.get("dim", 3 * 32 * 32)
    per_sample = per_sample if isinstance(per_sample, int) and per_sample > 0 else 3 * 32 * 32
    need = sum(counts.values()) * per_sample * 8 * n_data
    memory = physical_memory()
    if memory and need > memory // 2:
        biggest = max(counts, key=counts.get)
        raise LrscanError(f"this sweep cannot fit: data.{biggest} = {counts[biggest]:,} makes data sets of about "
                          f"{need / 1e9:,.3g} GB ({sum(counts.values()):,} samples x {per_sample:,} values), more than "
                          f"half this machine's {memory / 1e9:.3g} GB of memory")


def _switch(value, pretrain_epochs: float) -> dict[str, float] | None:
    """The ``pretrain_switch`` table ``{epoch, plr}``: a second pre-training stage at ELR ``plr``
    from ``epoch`` (strictly inside pre-training) to the end of pre-training."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise LrscanError(f"pretrain_switch must be a table {{ epoch = E, plr = LR }}, got {value!r}")
    for key in value:
        if key not in ("epoch", "plr"):
            raise LrscanError(f"unknown key {key!r} in pretrain_switch{closest(key, ['epoch', 'plr'])}")
    for key in ("epoch", "plr"):
        if key not in value:
            raise LrscanError(f"pretrain_switch needs {key!r}: {{ epoch = E, plr = LR }}")
    epoch = number("pretrain_switch.epoch", value["epoch"], positive=True)
    if epoch >= pretrain_epochs:
        raise LrscanError(
            f"pretrain_switch.epoch = {epoch:g} is not before the end of pre-training (pretrain_epochs = "
            f"{pretrain_epochs:g}); the second stage would be empty"
        )
    return {"epoch": epoch, "plr": learning_rate("pretrain_switch.plr", value["plr"])}


def _swa_window(value) -> dict[str, float] | None:
    """The ``swa_window`` table: ``{start = E, every = s}`` or ``{stop = E, every = s}``."""
    if value is None:
        return None
    form = "{ start = E, every = S } or { stop = E, every = S }"
    if not isinstance(value, Mapping):
        raise LrscanError(f"swa_window must be a table {form}, got {value!r}")
    for key in value:
        if key not in ("start", "stop", "every"):
            raise LrscanError(f"unknown key {key!r} in swa_window{closest(key, ['start', 'stop', 'every'])}")
    ends = [key for key in ("start", "stop") if key in value]
    if len(ends) != 1 or "every" not in value:
        raise LrscanError(f"swa_window needs 'every' and one of 'start' or 'stop': {form}")
    end = ends[0]
    return {end: number(f"swa_window.{end}", value[end], positive=False),
            "every": number("swa_window.every", value["every"], positive=True)}


def _checkpoints(value, end: float) -> tuple[float, ...]:
    """Checkpoint epochs from a list, a stride (number), or a ``{start, stop, step}`` table."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"start", "stop", "step"}
        if unknown:
            key = sorted(unknown)[0]
            raise LrscanError(f"unknown key {key!r} in checkpoint_epochs{closest(key, ['start', 'stop', 'step'])}")
        step = number("checkpoint_epochs.step", value.get("step"), positive=True)
        start = number("checkpoint_epochs.start", value.get("start", 0.0), positive=False)
        stop = number("checkpoint_epochs.stop", value.get("stop", end), positive=False)
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        _check_rows("checkpoints", count, f"every {step:g} epochs from {start:g} to {stop:g}")
        epochs = [start + i * step for i in range(max(count, 0))]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        step = number("checkpoint_epochs", value, positive=True)
        _check_rows("checkpoints", end / step, f"every {step:g} of {end:g} epochs")
        epochs = [i * step for i in range(int(math.floor(end / step + 1e-9)) + 1)]
    else:
        epochs = [number(f"checkpoint_epochs[{i}]", e, positive=False) for i, e in enumerate(number_list("checkpoint_epochs", value))]
    for e in epochs:
        if e > end + 1e-9:
            raise LrscanError(f"checkpoint epoch {e:g} is beyond the end of training ({end:g})")
    return tuple(sorted(set(epochs)))


def _device(value) -> str:
    value = string("device", value)
    if value not in ("auto", "cpu", "cuda", "mps") and not value.startswith("cuda:"):
        raise LrscanError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")
    return value
