"""Writing imported runs into a store: ``lrscan import`` end to end.

Each file is read on its own (memory-mapped where the source is local) and its state dict is
flattened into the run's region of the pre-allocated weights array; a run's metrics, its
checksum and its ``done`` flag follow its last file, exactly as
:class:`lrscan.store.StoreWriter` writes a trained run, so a rerun skips imported runs and
``lrscan verify`` checks them. Before the store is made, a sample of the files (the first
and last of every run) decides what the whole store shares: the radius and the units of the
accuracies; every file is then checked against them.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import zarr

from lrscan.errors import LrscanError
from lrscan.importer.checks import reevaluate
from lrscan.importer import inference
from lrscan.importer.inference import (
    SeedAxis, check_norm, data_seed, decide_radius, decide_units, expand_traces, infer_spec, steps_per_epoch,
)
from lrscan.importer.patterns import Checkpoint, Scan, scan
from lrscan.importer.reading import (
    ACCURACY_UNITS, SOURCE, Rename, flatten, load, metrics, named_state, raw_metrics, trace_step,
)
from lrscan.models.entry import official_names
from lrscan.spec import Spec, parse_override
from lrscan.store import RunEnd, StoreCheckpoints, StoreWriter, create_or_check, read_spec
from lrscan.train.flat import Layer, si_norm
from lrscan.train.loop import METRICS
from lrscan.train.sweep import Progress, Setup, Sweep
from lrscan.version import __version__ as lrscan_version


@dataclass
class ImportResult:
    """What an import did, what it decided, and what it found amiss.

    Attributes
    ----------
    store
        The store written.
    spec
        Its spec.
    imported
        Runs written by this call, per stage (``swa`` where SWA was computed).
    files
        Checkpoint files read by this call.
    unmatched
        Paths under the source (relative to it) that match no pattern: not imported.
    excluded
        Paths that match a pattern outside its epoch ranges: left out on purpose.
    missing
        Runs of the grid without any file (not done, unless ``allow_missing`` made them
        empty runs).
    gaps
        Runs lacking files for some epochs that other runs of their stage have (those
        rows read as NaN).
    swa
        Why the SWA stage was left to do, or None.
    radius
        The radius of the store (the SI-group norm of the files), None off the sphere.
    accuracy
        The unit of each accuracy the files hold, by where they hold it (``test_res.accuracy``
        → ``percent``), decided once for the store.
    seed_axis
        ``shared`` (the store's seeds are the files') or ``replicate`` (an index over each
        learning rate's own seeds, listed in the store's ``lrscan_import`` attrs).
    warnings
        Disagreements found after the import (stored test accuracies against lrscan's
        re-evaluation of the same weights).
    """

    store: str
    spec: Spec
    imported: dict[str, int] = field(default_factory=dict)
    files: int = 0
    unmatched: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    swa: str | None = None
    radius: float | None = None
    accuracy: dict[str, str] = field(default_factory=dict)
    seed_axis: str = "shared"
    warnings: list[str] = field(default_factory=list)


# Why a value above 1 is refused where the sampled files decided the unit.
FRACTION_DECIDED = ", but the first and last files of every run give it as a fraction"


class Reader:
    """Reads one step of one file: flat weights (None where the step has none) and raw metrics.

    A whole-run file stays loaded while its steps are read one after another.
    """

    def __init__(self, fs, layers: Sequence[Layer], official: Mapping[str, str], renames: Sequence[Rename]):
        self.fs, self.layers, self.official, self.renames = fs, layers, official, renames
        self._cached: tuple[str, Any] | None = None

    def read(self, ckpt: Checkpoint) -> tuple[np.ndarray | None, dict[str, float]]:
        if ckpt.row is None:
            state, meta = named_state(load(self.fs, ckpt.path, ckpt.name), self.layers, self.renames, ckpt.name)
            return flatten(state, self.layers, ckpt.name, self.official), raw_metrics(meta)
        if self._cached is None or self._cached[0] != ckpt.path:
            self._cached = (ckpt.path, load(self.fs, ckpt.path, ckpt.name))
        return trace_step(self._cached[1], ckpt.row.weight, ckpt.row.metrics, self.layers, ckpt.name,
                          self.official, self.renames)


def import_checkpoints(
    source: str,
    store: str,
    model: str,
    patterns: Sequence[str],
    *,
    dataset: str | None = None,
    overrides: Iterable[str] = (),
    ft_epoch_origin: str = "branch",
    accuracy: str = "auto",
    allow_missing: bool = False,
    renames: Sequence[str | Rename] = (),
    seed_axis: str = "auto",
    check: bool = True,
    progress: Callable[[Progress], None] | None = None,
) -> ImportResult:
    """Import a folder of checkpoints into a store that every analyzer can read.

    The store is created from :func:`~lrscan.importer.inference.infer_spec` (or checked
    against it when it exists: a rerun continues an interrupted import and skips runs
    already done). The first and last file of every run are read first: the SI group's norm
    in them is the store's radius (files that disagree are refused), and the accuracies in
    them decide, per place a file holds one, whether the store's files give fractions or
    percentages. Each run's files are then read one at a time, in epoch order, straight into
    the run's region of the weights array; the run's metrics (those stored in the files,
    ``weight_norm`` from the weights, NaN for the rest), its ``diverged_epoch`` (the first
    epoch whose weights are not finite), checksum and ``done`` flag follow. When the spec
    asks for SWA (``--set swa=[...]``), the SWA stage is then computed from the imported
    pre-training weights by the trainer's own code. Last, a few imported test accuracies are
    compared with lrscan's evaluation of the same weights on the store's data.

    Parameters
    ----------
    source
        Folder or fsspec URL holding the checkpoints.
    store
        The store to write.
    model
        The registered model the checkpoints hold.
    patterns
        Path patterns (see :class:`~lrscan.importer.patterns.Pattern`).
    dataset, overrides, ft_epoch_origin
        As for :func:`~lrscan.importer.inference.infer_spec`.
    accuracy
        Unit of stored accuracies: ``"auto"`` (decided per store from the sampled files: a
        value above 1 means percent), ``"fraction"``, ``"percent"``.
    allow_missing
        Write runs that have no file at all as empty (NaN) runs and mark them done, so
        that analyzers run on a partial grid.
    renames
        ``--rename`` rules (:class:`~lrscan.importer.reading.Rename` or their text) for
        tensor names neither lrscan's nor the study's.
    seed_axis
        The seed axis: ``"auto"``, ``"shared"`` or ``"replicate"``
        (:func:`~lrscan.importer.inference.seed_axis`).
    check
        Compare a few stored test accuracies with lrscan's re-evaluation afterwards.
    progress
        Called with a :class:`~lrscan.train.sweep.Progress` (``done`` / ``total`` in files)
        after each file.

    Returns
    -------
    ImportResult

    Raises
    ------
    LrscanError
        For bad input: patterns, options, a file that cannot be read or does not fit the
        model or the store's radius (runs finished before it are kept), a store made from
        another spec. Errors found before any run is written leave no store behind.
    """
    if accuracy not in ACCURACY_UNITS:
        raise LrscanError(f"accuracy must be one of {', '.join(ACCURACY_UNITS)}, got {accuracy!r}")
    rules = [r if isinstance(r, Rename) else Rename.parse(r) for r in renames]
    found = scan(source, patterns)
    if not found.checkpoints:
        example = (f"; e.g. {found.unmatched[0]!r} does not" if found.unmatched
                   else f" within its epoch ranges ({len(found.excluded)} files outside them)" if found.excluded
                   else " (it holds no files)")
        raise LrscanError(f"no file under {source} matches {' or '.join(map(repr, patterns))}{example}")
    overrides = list(overrides)
    checkpoints = found.checkpoints
    if any(c.epoch is None for c in checkpoints):
        checkpoints = expand_traces(checkpoints, found.fs, steps_per_epoch(model, dataset, overrides))
    axis = inference.seed_axis(checkpoints, seed_axis)
    spec = infer_spec(checkpoints, model, dataset=dataset, overrides=overrides, ft_epoch_origin=ft_epoch_origin,
                      data_seed_in_paths=found.data_seed_in_paths, axis=axis)
    try:
        setup = Setup.build(spec)
    except LrscanError as err:
        if "whole number of steps" not in str(err):
            raise
        raise LrscanError(f"{err}; the checkpoints' epochs must be whole numbers of steps: set batch_size and "
                          "data.n_train to those they were trained with") from None
    layers = setup.layers
    official = official_names(setup.entry, [layer.name for layer in layers], spec.model_options)
    runs = _assign(checkpoints, found, setup, ft_epoch_origin, axis)
    reader = Reader(found.fs, layers, official, rules)
    before = _previous(store)
    units, radius = _decide(runs, reader, setup, accuracy, overrides, before)
    if radius != spec.radius:
        spec = dataclasses.replace(spec, radius=radius)
        setup = dataclasses.replace(setup, spec=spec, plan=dataclasses.replace(setup.plan, spec=spec))
    create_or_check(store, setup.plan, layers)
    root = zarr.open_group(str(store), mode="r+")
    if "lrscan_import" not in root.attrs:
        root.attrs["lrscan_import"] = {
            "source": str(source), "patterns": list(patterns), "ft_epoch_origin": ft_epoch_origin,
            "renames": [r.old + "=" + r.new if not r.regex else f"re:{r.old}={r.new}" for r in rules],
            "seed_axis": {"kind": axis.kind, **({"replicates": axis.record()} if axis.kind == "replicate" else {})},
            "radius": None if radius is None else {"value": radius, "from": "the SI-group norm of the files"},
            "accuracy": units, "metrics": {}, "lrscan_version": lrscan_version,
        }
    result = ImportResult(str(store), spec, unmatched=found.unmatched, excluded=found.excluded, radius=radius,
                          accuracy=units, seed_axis=axis.kind)
    todo = _plan_runs(root, runs, spec, setup, axis, allow_missing, result)
    paths = lambda files: len({c.path for _, c in files})  # noqa: E731
    job = _Job(StoreWriter(store), layers, reader, units, radius, setup.entry.norm_group,
               setup.plan.steps_per_epoch, sum(paths(files) for *_, files in todo), progress,
               "" if accuracy != "auto" else FRACTION_DECIDED)
    for stage, index, files in todo:
        job.write_run(stage, getattr(setup.plan, stage), index, files)
        result.imported[stage] = result.imported.get(stage, 0) + 1
    result.files = job.count
    _record_meanings(root, job.seen)
    if spec.swa:
        not_done = int((~root["pretrain/metrics/done"][...].astype(bool)).sum())
        if not_done:
            result.swa = f"not computed: {not_done} pre-training runs are not imported"
        else:
            sweep = Sweep(spec, store)
            written = sum(sweep.run_batch("swa", batch) or 0 for batch in sweep.batches.get("swa", []))
            if written:
                result.imported["swa"] = written
    if check and result.imported:
        result.warnings += reevaluate(str(store), spec)
    return result


def _previous(store: str) -> tuple[Spec | None, dict]:
    """The spec and import attrs of a store being continued, or (None, {})."""
    try:
        root = zarr.open_group(str(store), mode="r")
        return read_spec(store), dict(root.attrs.get("lrscan_import", {}))
    except Exception:  # no store yet (or not one: create_or_check says so)
        return None, {}


def _decide(runs, reader: Reader, setup: Setup, accuracy: str, overrides, before) -> tuple[dict, float | None]:
    """The store's accuracy units and radius, from the first and last file of every
    pre-training run and of one run of each later stage.

    Also where a wrong model, a refused file or an impossible accuracy shows first: before
    any store exists.
    """
    sample = []
    # Every pre-training run (the radius must hold for all), one run of each later stage (its
    # files may hold other values); the rest are checked as they are imported.
    chosen = [files for stage, by_run in runs.items()
              for files in (by_run.values() if stage == "pretrain" else list(by_run.values())[:1])]
    for files in chosen:
        with_weights = [c for _, c in files if c.has_weights]
        for ckpt in dict.fromkeys(with_weights[:1] + with_weights[-1:] or [files[0][1]]):
            flat, raw = reader.read(ckpt)
            sample.append((ckpt.name, flat, raw))
    spec, attrs = before
    units = decide_units([raw for *_, raw in sample], accuracy, attrs.get("accuracy"))
    decided = "" if accuracy != "auto" else FRACTION_DECIDED
    for name, _, raw in sample:
        metrics(raw, units, name, decided)
    if setup.entry.update != "sphere":
        return units, None
    norms = [(name, float(si_norm(torch.from_numpy(flat)[None], setup.layers)[0])) for name, flat, _ in sample
             if flat is not None and np.isfinite(flat).all()]
    given = setup.spec.radius if any(parse_override(o)[:2] == ("sweep", "radius") for o in overrides) else None
    return units, decide_radius(norms, given, spec.radius if spec is not None else None)


def _assign(checkpoints: Sequence[Checkpoint], found: Scan, setup: Setup, origin: str,
            axis: SeedAxis) -> dict[str, dict[tuple, list[tuple[int, Checkpoint]]]]:
    """Each checkpoint's run index and step, grouped by stage and run, in step order."""
    spec, plan = setup.spec, setup.plan
    if not found.data_seed_in_paths and len(spec.data_seeds) > 1:
        raise LrscanError(f"the dataset has {len(spec.data_seeds)} data seeds (data.seeds) but the pattern has "
                          "no {data_seed}")
    plr = {v: i for i, v in enumerate(spec.plr)}
    flr = {v: i for i, v in enumerate(spec.flr)}
    seed = {(r.data_seed, r.train_seed): r.seed for r in plan.runs}
    runs: dict[str, dict[tuple, list]] = {"pretrain": defaultdict(list)}
    if plan.finetune.n_steps:
        runs["finetune"] = defaultdict(list)
    branch = spec.resolved_finetune_from
    for ckpt in checkpoints:
        s = seed[(data_seed(ckpt, 0 if found.data_seed_in_paths else spec.data_seeds[0]), axis.of(ckpt))]
        epoch = float(ckpt.epoch)
        if ckpt.flr is None:
            stage, index = plan.pretrain, (plr[ckpt.plr], s)
        else:
            stage, index = plan.finetune, (plr[ckpt.plr], flr[ckpt.flr], s)
            epoch += branch if origin == "branch" or ckpt.whole_run else 0.0
        exact = epoch * plan.steps_per_epoch
        step = round(exact)
        if abs(exact - step) > 1e-6 or (step not in stage.checkpoint_steps and step not in stage.log_steps):
            raise LrscanError(f"{ckpt.name}: epoch {epoch:g} is neither a checkpoint nor a logged epoch of "
                              f"{stage.name} in the spec (check the --set schedule fields, or select epochs "
                              "with {epoch:A-B} in the pattern)")
        runs[stage.name][index].append((step, ckpt))
    for by_run in runs.values():
        for files in by_run.values():
            files.sort(key=lambda item: item[0])
            steps = [s for s, _ in files]
            if len(set(steps)) != len(steps):
                twice = next(s for s in steps if steps.count(s) > 1)
                names = [c.name for s, c in files if s == twice]
                raise LrscanError(f"{names[0]} and {names[1]} give the same run and epoch; keep one of them")
    return {stage: dict(sorted(by_run.items())) for stage, by_run in runs.items()}


def _plan_runs(root, runs, spec: Spec, setup: Setup, axis: SeedAxis, allow_missing: bool,
               result: ImportResult) -> list[tuple[str, tuple, list]]:
    """The runs to write (not done, with files or allowed empty), noting missing runs and gaps."""
    todo = []
    for stage, by_run in runs.items():
        done = root[f"{stage}/metrics/done"][...].astype(bool)
        epochs = sorted({step for files in by_run.values() for step, _ in files})
        for index in np.ndindex(done.shape):
            files = by_run.get(index, [])
            where = _describe(spec, stage, index, axis)
            if not files:
                result.missing.append(where)
            else:
                lacking = sorted(set(epochs) - {step for step, _ in files})
                if lacking:
                    shown = ", ".join(f"{s / setup.plan.steps_per_epoch:g}" for s in lacking)
                    result.gaps.append(f"{where}: no file for epoch {shown}")
            if not done[index] and (files or allow_missing):
                todo.append((stage, index, files))
    return todo


def _describe(spec: Spec, stage: str, index: tuple[int, ...], axis: SeedAxis) -> str:
    runs = [(d, t) for d in spec.data_seeds for t in spec.seeds]
    data_seed, train_seed = runs[index[-1]]
    where = [f"plr={spec.plr[index[0]]:g}"] + ([f"flr={spec.flr[index[1]]:g}"] if stage == "finetune" else [])
    where.append((f"replicate {train_seed}" if axis.kind == "replicate" else f"seed={train_seed}")
                 + (f", data_seed={data_seed}" if len(spec.data_seeds) > 1 else ""))
    return f"{stage} run ({', '.join(where)})"


def _record_meanings(root: zarr.Group, seen: set[str]) -> None:
    """Say in the store's ``lrscan_import`` attrs what each imported metric is."""
    attrs = dict(root.attrs["lrscan_import"])
    meanings = dict(attrs.get("metrics", {}))
    for key in sorted(seen):
        source = SOURCE[key]
        meanings.setdefault(source.metric, f"{key}: {source.meaning}")
    if meanings != attrs.get("metrics"):
        root.attrs["lrscan_import"] = {**attrs, "metrics": meanings}


@dataclass
class _Job:
    """What every run of one import shares, and the count of files read."""

    writer: StoreWriter
    layers: Sequence[Layer]
    reader: Reader
    units: Mapping[str, str]
    radius: float | None
    norm_group: str
    steps_per_epoch: int
    total: int
    progress: Callable[[Progress], None] | None
    decided: str = ""  # how the unit was decided, for errors
    count: int = 0
    seen: set = field(default_factory=set)

    def write_run(self, stage_name: str, stage, index: tuple[int, ...], files) -> None:
        """Import one run: its weights chunk by chunk, then metrics, divergence, checksum, done.

        Through the trainer's own write path (:class:`lrscan.store.StoreCheckpoints`, then
        :meth:`~lrscan.store.StoreWriter.finish_runs`): a chunk's rows are gathered and
        written whole, rows without a file stay NaN, and the checksum describes exactly what
        is stored, whatever an interrupted import left.
        """
        sink = StoreCheckpoints(self.writer, stage_name, [index])
        row_of = {int(s): i for i, s in enumerate(stage.checkpoint_steps)}
        log_of = {int(s): i for i, s in enumerate(stage.log_steps)}
        values = {name: np.full(len(log_of), np.nan, dtype=np.float32) for name in METRICS}
        diverged = float("nan")
        for i, (step, ckpt) in enumerate(files):
            flat, raw = self.reader.read(ckpt)
            scores = metrics(raw, self.units, ckpt.name, self.decided)
            self.seen |= set(raw)
            norm = float("nan") if flat is None else float(si_norm(torch.from_numpy(flat)[None], self.layers,
                                                                     group=self.norm_group)[0])
            if self.radius is not None and flat is not None:
                check_norm(norm, self.radius, ckpt.name)
            if flat is not None and step in row_of:
                sink.put(row_of[step], flat[None])
            if step in log_of:
                for name, value in scores.items():
                    values[name][log_of[step]] = value
                if flat is not None:
                    values["weight_norm"][log_of[step]] = norm
            if flat is not None and math.isnan(diverged) and not np.isfinite(flat).all():
                diverged = step / self.steps_per_epoch
            if i == len(files) - 1 or files[i + 1][1].path != ckpt.path:  # a whole-run file counts once
                self.count += 1
                if self.progress is not None:
                    self.progress(Progress(stage_name, self.count, self.total))
        sink.result()
        self.writer.finish_runs(stage_name, [RunEnd(index, values, int(sink.crc[0]), diverged)])
