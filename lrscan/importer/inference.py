"""What the files say about the store: its spec (grids, schedule, seeds), its radius and the
unit of its accuracies.

The paths give the grids and the schedule (:func:`infer_spec`); the seeds become the store's
``seed`` axis either as they are or, when each learning rate has its own seeds (the study's
CNN runs: seed 2000 + i for the i-th PLR), as a replicate index (:func:`seed_axis`). The
radius and the accuracy unit are decided once per store from a sample of the files
(:func:`decide_radius`, :func:`decide_units`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from lrscan.errors import LrscanError
from lrscan.importer.patterns import Checkpoint, TraceRow
from lrscan.importer.reading import is_accuracy, load, trace_shape
from lrscan.options import number
from lrscan.spec import Spec, parse_override, resolve

FT_EPOCH_ORIGINS = ("branch", "start")
SEED_AXES = ("auto", "shared", "replicate")
# Spec fields that only the paths can give.
FROM_PATHS = ("plr", "flr", "seeds")
# Relative spread of the files' SI-group norms that still counts as one radius: float32 files
# projected to a sphere agree to ~1e-7; the 5 % between the default ρ and a script's is refused.
RADIUS_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SeedAxis:
    """How the files' seeds become the store's ``seed`` axis.

    ``shared``: every learning rate has the same seeds, and the axis holds them. ``replicate``:
    the axis is a replicate index 0, 1, …; replicate r of a PLR (and data seed) is the r-th
    smallest of its pre-training seeds, and a fine-tuning run is the replicate of the
    pre-training run it branches from. ``index`` maps (plr, data seed, file seed) to the
    axis value.
    """

    kind: str
    seeds: tuple[int, ...]
    index: Mapping[tuple[float, int | None, int], int]

    def of(self, ckpt: Checkpoint) -> int:
        """The ``seed`` value (training seed, or replicate) of a file."""
        key = (ckpt.plr, ckpt.data_seed, ckpt.seed)
        if key in self.index:
            return self.index[key]
        if self.kind == "shared":
            return ckpt.seed
        group = [r for (plr, data_seed, _), r in self.index.items() if (plr, data_seed) == key[:2]]
        if not ckpt.seed_in_path and len(group) == 1:
            return group[0]  # a fine-tuning pattern without {seed}: the PLR's one replicate
        raise LrscanError(f"{ckpt.name}: seed {ckpt.seed} has no pre-training run at plr={ckpt.plr:g}, "
                          "so it branches from no imported run")

    def record(self) -> list[dict[str, Any]]:
        """The files' seeds of each replicate, for the store's ``lrscan_import`` attrs."""
        by_group: dict[tuple, list[int]] = defaultdict(list)
        for (plr, data_seed, seed), r in sorted(self.index.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[1])):
            by_group[(plr, data_seed)].append(seed)
        return [{"plr": plr, **({"data_seed": d} if d is not None else {}), "seeds": seeds}
                for (plr, d), seeds in by_group.items()]


def seed_axis(checkpoints: Sequence[Checkpoint], kind: str = "auto") -> SeedAxis:
    """The seed axis of the files (see :class:`SeedAxis`).

    ``auto`` takes ``replicate`` when the PLRs' seed sets are pairwise disjoint (one seed per
    learning rate, or several of their own), so that no empty run fills the grid; ``shared``
    otherwise, so that a partial grid keeps its seeds.
    """
    if kind not in SEED_AXES:
        raise LrscanError(f"seed axis must be one of {', '.join(SEED_AXES)}, got {kind!r}")
    groups: dict[tuple, set[int]] = defaultdict(set)
    for c in checkpoints:
        if c.flr is None:
            groups[(c.plr, c.data_seed)].add(c.seed)
    if kind == "auto":
        by_plr: dict[float, set[int]] = defaultdict(set)
        for (plr, _), seeds in groups.items():
            by_plr[plr] |= seeds
        sets = list(by_plr.values())
        disjoint = sum(map(len, sets)) == len(set().union(*sets)) if sets else True
        kind = "replicate" if len(sets) > 1 and disjoint else "shared"
    if kind == "shared":
        seeds = sorted({c.seed for c in checkpoints})
        return SeedAxis("shared", tuple(seeds), {})
    index = {(plr, d, s): r for (plr, d), seeds in groups.items() for r, s in enumerate(sorted(seeds))}
    return SeedAxis("replicate", tuple(range(max(map(len, groups.values()), default=1))), index)


def steps_per_epoch(model: str, dataset: str | None, overrides: Iterable[str]) -> int:
    """Training steps per epoch of the data and batch size the overrides give: what turns a
    whole-run file's steps into the store's epochs."""
    from lrscan.data import DATASETS

    tables: dict[str, dict[str, Any]] = {"sweep": {"model": model}, "model": {}, "data": {}}
    for item in overrides:
        table, key, value = parse_override(item)
        if table == "data" or (table == "sweep" and key == "batch_size") or table == "model":
            tables[table][key] = value
    if dataset is not None:
        tables["sweep"]["dataset"] = dataset
    spec = resolve(tables)
    n_train = DATASETS[spec.dataset].load(spec.data_options, spec.data_seeds[0]).x_train.shape[0]
    if spec.batch_size > n_train:
        raise LrscanError(f"batch_size = {spec.batch_size} exceeds the {n_train} training samples")
    return n_train // spec.batch_size


def expand_traces(checkpoints: Sequence[Checkpoint], fs, spe: int) -> list[Checkpoint]:
    """Whole-run files replaced by one entry per step that holds an iterate or a metric row,
    at epoch step / ``spe`` (a fine-tuning trace counts from the branch point)."""
    out = []
    for ckpt in checkpoints:
        if ckpt.epoch is not None:
            out.append(ckpt)
            continue
        shape = trace_shape(load(fs, ckpt.path, ckpt.name), ckpt.name)
        for step, (weight, metric) in shape.rows().items():
            out.append(dataclasses.replace(ckpt, epoch=Fraction(step, spe), row=TraceRow(weight, metric)))
    return out


def infer_spec(
    checkpoints: Sequence[Checkpoint],
    model: str,
    *,
    dataset: str | None = None,
    overrides: Iterable[str] = (),
    ft_epoch_origin: str = "branch",
    data_seed_in_paths: bool = False,
    axis: SeedAxis | None = None,
    radius: float | None = None,
) -> Spec:
    """The spec of the store that holds these checkpoints.

    The paths give the grids and the schedule: ``plr`` / ``flr`` are the values found and
    ``seeds`` those of the seed axis; ``pretrain_epochs`` is the last pre-training epoch;
    ``finetune_from`` that epoch too, or, with ``ft_epoch_origin="start"``, the last
    pre-training epoch before the first fine-tuning file (the branch point of fine-tuning
    runs that continue a pre-training run's epochs); ``finetune_epochs`` the last
    fine-tuning epoch after it; ``checkpoint_epochs`` are the epochs with weights, and
    ``log_every`` is the greatest common divisor of all epochs, so that every file's
    metrics have a row. ``swa`` is empty. The overrides give everything else
    (``batch_size``, ``[model]`` and ``[data]`` options, ``swa``) and may replace the
    inferred schedule fields, but not the grids.

    Parameters
    ----------
    checkpoints
        What :func:`~lrscan.importer.patterns.scan` found, whole-run files expanded
        (:func:`expand_traces`); at least one pre-training checkpoint.
    model, dataset
        Registry names (the dataset defaults to the spec's default).
    overrides
        ``FIELD=VALUE`` strings as for ``lrscan train --set``.
    ft_epoch_origin
        ``"branch"``: a fine-tuning file's epoch counts from the branch point (0 is the
        branch point itself); ``"start"``: from the start of pre-training, as in the store.
        Steps of whole-run files always count from their run's start.
    data_seed_in_paths
        Whether the paths give ``{data_seed}`` (then ``[data] seeds`` are those found).
    axis
        The seed axis (default: :func:`seed_axis` of the checkpoints).
    radius
        The radius the files lie on (:func:`decide_radius`), unless the overrides give one.

    Returns
    -------
    Spec
        Resolved and validated.
    """
    if ft_epoch_origin not in FT_EPOCH_ORIGINS:
        raise LrscanError(f"ft_epoch_origin must be one of {', '.join(FT_EPOCH_ORIGINS)}, got {ft_epoch_origin!r}")
    tables: dict[str, dict[str, Any]] = {"sweep": {}, "model": {}, "data": {}}
    for item in overrides:
        table, key, value = parse_override(item)
        if (table == "sweep" and key in FROM_PATHS) or (table, key, data_seed_in_paths) == ("data", "seeds", True):
            raise LrscanError(f"--set {item.partition('=')[0].strip()}: the checkpoints' paths give it; "
                              "import the files you want, or change the pattern")
        if table == "sweep" and key in ("model", "dataset"):
            raise LrscanError(f"--set {key}: give it as --{key}")
        tables[table][key] = value
    sweep = tables["sweep"]
    pt = [c for c in checkpoints if c.flr is None]
    ft = [c for c in checkpoints if c.flr is not None]
    if not pt:
        raise LrscanError("no pre-training checkpoint (a path without {flr}) matched; a store starts from pre-training")
    pt_end = _epochs(sweep, "pretrain_epochs", max(c.epoch for c in pt))
    if pt_end == 0:
        raise LrscanError("the pre-training checkpoints reach no epoch after 0; set pretrain_epochs")
    start = [c.epoch for c in ft if ft_epoch_origin == "start" and not c.whole_run]
    before = [c.epoch for c in pt if start and c.epoch < min(start)]
    ft_from = _epochs(sweep, "finetune_from", max(before) if before else pt_end)
    offsets = [c.epoch - (ft_from if ft_epoch_origin == "start" and not c.whole_run else 0) for c in ft]
    ft_len = _epochs(sweep, "finetune_epochs", max(offsets, default=Fraction(0)))
    if ft and ft_len <= 0:
        raise LrscanError(f"the fine-tuning checkpoints reach no epoch after the branch point "
                          f"(finetune_from = {float(ft_from):g}); check --ft-epoch-origin")
    steps = [e for e in (*(c.epoch for c in pt), *offsets, pt_end, ft_len) if e > 0]
    sweep.setdefault("log_every", float(_gcd(steps)))
    weights = {float(c.epoch) for c in pt if c.has_weights}
    weights |= {float(ft_from + o) for c, o in zip(ft, offsets) if o > 0 and c.has_weights}
    sweep.setdefault("checkpoint_epochs", sorted(weights))
    sweep.setdefault("swa", [])
    if radius is not None:
        sweep.setdefault("radius", radius)
    axis = axis or seed_axis(checkpoints)
    sweep.update(
        model=model,
        plr=sorted({c.plr for c in checkpoints}),
        seeds=list(axis.seeds),
        pretrain_epochs=float(pt_end),
        finetune_epochs=float(ft_len),
        finetune_from=float(ft_from),
    )
    if ft:
        sweep["flr"] = sorted({c.flr for c in ft})
    if dataset is not None:
        sweep["dataset"] = dataset
    if data_seed_in_paths:
        tables["data"]["seeds"] = sorted({data_seed(c, 0) for c in checkpoints})
    return resolve(tables)


def data_seed(ckpt: Checkpoint, default: int) -> int:
    """A checkpoint's data seed: its path's, else ``default`` (the path has no {data_seed})."""
    return default if ckpt.data_seed is None else ckpt.data_seed


def _epochs(sweep: dict, name: str, inferred: Fraction) -> Fraction:
    """An epoch-valued field: the user's value when given (exactly as written), else ``inferred``."""
    if name not in sweep:
        return inferred
    return Fraction(repr(number(name, sweep[name], positive=False)))


def _gcd(values: Sequence[Fraction]) -> Fraction:
    """Greatest common divisor of positive fractions."""
    den = math.lcm(*(v.denominator for v in values))
    return Fraction(math.gcd(*(int(v * den) for v in values)), den)


def decide_radius(norms: Sequence[tuple[str, float]], given: float | None, stored: float | None) -> float:
    """The radius of the store: the SI-group norm the sampled files share.

    Parameters
    ----------
    norms
        (file name, SI-group norm) of the sampled files with finite weights.
    given
        A radius the user set (``--set radius=``): kept when the files agree with it.
    stored
        The radius of the store being continued, kept likewise.

    Returns
    -------
    float
        ``given`` or ``stored`` when set, else the files' median norm to 6 significant digits.

    Raises
    ------
    LrscanError
        When the files' norms differ by more than :data:`RADIUS_TOLERANCE` (relative), or
        from ``given``.
    """
    if not norms:
        if given is not None or stored is not None:
            return given if given is not None else stored
        raise LrscanError("no sampled file has finite weights, so the radius is unknown; set it with --set radius=")
    ordered = sorted(norms, key=lambda item: item[1])
    median = ordered[len(ordered) // 2][1]
    low, high = ordered[0], ordered[-1]
    if not median > 0:
        raise LrscanError(f"{low[0]}: the SI-group norm is 0; the weights lie on no sphere")
    if (high[1] - low[1]) > RADIUS_TOLERANCE * median:
        raise LrscanError(f"the files' SI-group norms disagree: {low[1]:.6g} ({low[0]}) against {high[1]:.6g} "
                          f"({high[0]}), beyond the tolerance {RADIUS_TOLERANCE:.1%}; a store has one radius: "
                          "import the runs of each radius into their own store")
    if given is not None and abs(given - median) > RADIUS_TOLERANCE * median:
        raise LrscanError(f"--set radius={given:g} differs from the files' SI-group norm {median:.6g} "
                          f"(e.g. {low[0]}); remove it, the radius is read from the files")
    if stored is not None and abs(stored - median) > RADIUS_TOLERANCE * median:
        raise LrscanError(f"the store's radius {stored:.6g} differs from the files' SI-group norm {median:.6g} "
                          f"(e.g. {low[0]}); import these files into another --store")
    for value in (given, stored):
        if value is not None:
            return value
    return float(f"{median:.6g}")


def check_norm(norm: float, radius: float, name: str) -> None:
    """Refuse a file whose SI-group norm is not the store's radius (non-finite weights pass:
    they mark a diverged run)."""
    if math.isfinite(norm) and abs(norm - radius) > RADIUS_TOLERANCE * radius:
        raise LrscanError(f"{name}: SI-group norm {norm:.6g} is not the store's radius {radius:.6g} "
                          f"(tolerance {RADIUS_TOLERANCE:.1%}); a store has one radius")


def decide_units(samples: Sequence[Mapping[str, float]], accuracy: str,
                 stored: Mapping[str, str] | None = None) -> dict[str, str]:
    """The unit of each accuracy the files hold, decided once per store: ``percent`` when any
    sampled value of that source is above 1, else ``fraction`` (``accuracy`` other than
    ``"auto"`` decides for every source; a continued store keeps its units)."""
    keys = sorted({k for raw in samples for k in raw if is_accuracy(k)} | set(stored or {}))
    units = {}
    for key in keys:
        if stored and key in stored:
            if accuracy != "auto" and stored[key] != accuracy:
                raise LrscanError(f"the store was imported with {key} as a {stored[key]}; rerun with the same "
                                  "--accuracy, or import into another --store")
            units[key] = stored[key]
        elif accuracy != "auto":
            units[key] = accuracy
        else:
            units[key] = "percent" if any(raw.get(key, 0) > 1 for raw in samples) else "fraction"
    return units
