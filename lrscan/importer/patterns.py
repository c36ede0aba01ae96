"""The path patterns of ``lrscan import``: which file under the source is which run and epoch.

A pattern maps each file's path, relative to the source folder, to a run and an epoch::

    runs/plr={plr}/seed={seed}[/ft={flr}]/checkpoint-{epoch}.pt

Files whose path gives an ``flr`` are fine-tuning files, the others pre-training ones. A
pattern without ``{epoch}`` takes *whole-run files*: one file holding a trace of a run's
iterates (the study's synthetic example), read by :mod:`lrscan.importer.reading`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import fsspec

from lrscan.errors import LrscanError
from lrscan.registry import closest

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# What each placeholder of a pattern matches.
PLACEHOLDERS = {"plr": _NUMBER, "flr": _NUMBER, "epoch": _NUMBER, "seed": r"\d+", "data_seed": r"\d+"}
_EPOCH = r"\d+(?:\.\d*)?|\.\d+"
_RANGE = re.compile(rf"\s*(?P<lo>{_EPOCH})?\s*(?P<dash>-)?\s*(?P<hi>{_EPOCH})?\s*")


def epoch_ranges(text: str, pattern: str) -> tuple[tuple[Fraction | None, Fraction | None], ...]:
    """The epoch ranges of ``{epoch:TEXT}``: comma-separated ``A-B``, ``A-``, ``-B`` or ``A``,
    both ends included, an empty end open."""
    ranges = []
    for item in text.split(","):
        found = _RANGE.fullmatch(item)
        if found is None or not (found["lo"] or found["hi"]):
            raise LrscanError(f"pattern {pattern!r}: {{epoch:{text}}} is no epoch range; write e.g. "
                              "{epoch:200-299}, {epoch:4-} or {epoch:0-3,10}")
        lo = Fraction(found["lo"]) if found["lo"] else None
        hi = Fraction(found["hi"]) if found["hi"] else None
        if not found["dash"]:
            hi = lo
        if lo is not None and hi is not None and lo > hi:
            raise LrscanError(f"pattern {pattern!r}: the epoch range {item.strip()} is empty")
        ranges.append((lo, hi))
    return tuple(ranges)


class Pattern:
    """A path pattern: literal text, ``{name}`` placeholders, wildcards and optional parts.

    ``{plr}``, ``{flr}``, ``{epoch}`` match a number (``0.1``, ``1e-3``, ``10``), ``{seed}``
    and ``{data_seed}`` a whole number; ``{epoch:200-299}`` (ranges ``A-B``, ``A-``, ``-B`` or
    single epochs, comma-separated) takes only the files whose epoch lies in a range; ``*``
    matches anything within one path segment and ``**`` anything across segments; ``[...]``
    marks an optional part; a backslash makes the next character literal. A placeholder used
    twice must match the same text twice. Without ``{epoch}`` each matching file holds a
    whole run.

    Parameters
    ----------
    text
        The pattern, with ``/`` between path segments; it must match a whole relative path.
    """

    def __init__(self, text: str):
        self.text = text
        self.names: set[str] = set()
        self.ranges: tuple[tuple[Fraction | None, Fraction | None], ...] | None = None
        required: set[str] = set()
        parts, depth, i = [], 0, 0
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                parts.append(re.escape(text[i + 1]))
                i += 2
                continue
            if c == "{":
                end = text.find("}", i)
                if end < 0:
                    raise LrscanError(f"pattern {text!r}: the '{{' at position {i} is never closed")
                name, colon, selection = text[i + 1 : end].partition(":")
                if name not in PLACEHOLDERS:
                    raise LrscanError(f"pattern {text!r}: unknown placeholder {{{name}}}{closest(name, PLACEHOLDERS)}; "
                                      f"placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
                if colon:
                    if name != "epoch":
                        raise LrscanError(f"pattern {text!r}: only {{epoch}} takes a range, not {{{name}}}")
                    self.ranges = epoch_ranges(selection, text)
                parts.append(f"(?P={name})" if name in self.names else f"(?P<{name}>{PLACEHOLDERS[name]})")
                self.names.add(name)
                if depth == 0:
                    required.add(name)
                i = end + 1
                continue
            if c == "[":
                parts.append("(?:")
                depth += 1
            elif c == "]":
                if depth == 0:
                    raise LrscanError(f"pattern {text!r}: the ']' at position {i} closes no '['")
                parts.append(")?")
                depth -= 1
            elif text.startswith("**", i):
                parts.append(".*")
                i += 1
            elif c == "*":
                parts.append("[^/]*")
            else:
                parts.append(re.escape(c))
            i += 1
        if depth:
            raise LrscanError(f"pattern {text!r}: a '[' is never closed")
        if "plr" not in required:
            raise LrscanError(f"pattern {text!r} needs {{plr}} outside any optional [...] part")
        if "epoch" in self.names and "epoch" not in required:
            raise LrscanError(f"pattern {text!r}: {{epoch}} cannot be optional; a pattern without {{epoch}} "
                              "takes files that hold a whole run")
        self.regex = re.compile("".join(parts))

    @property
    def whole_run(self) -> bool:
        """Whether the pattern takes files that each hold a whole run (it has no ``{epoch}``)."""
        return "epoch" not in self.names

    def match_shape(self, path: str) -> dict[str, str] | None:
        """The placeholders' text in ``path`` (those of optional parts only when present), or
        None; the epoch range is not applied."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        return {name: value for name, value in found.groupdict().items() if value is not None}

    def selects(self, epoch: Fraction) -> bool:
        """Whether the pattern's epoch ranges (if any) take ``epoch``."""
        return self.ranges is None or any((lo is None or epoch >= lo) and (hi is None or epoch <= hi)
                                          for lo, hi in self.ranges)

    def match(self, path: str) -> dict[str, str] | None:
        """The placeholders' text in ``path``, or None when it does not match or its epoch
        lies outside the pattern's ranges."""
        values = self.match_shape(path)
        if values is None or ("epoch" in values and not self.selects(Fraction(values["epoch"]))):
            return None
        return values


@dataclass(frozen=True)
class TraceRow:
    """Where one step's values sit in a whole-run file: the index of its iterate among the
    trace's weights (``-1``: the final weights beside the trace), and of its metric row."""

    weight: int | None
    metrics: int | None


@dataclass(frozen=True)
class Checkpoint:
    """One matched file (or one step of a whole-run file) and the coordinates its path gives."""

    path: str  # on the source's filesystem
    name: str  # relative to the source
    plr: float
    flr: float | None  # None for pre-training
    seed: int
    data_seed: int | None
    epoch: Fraction | None  # as the path gives it (fine-tuning: see ``ft_epoch_origin``); None: a whole run
    seed_in_path: bool = True
    row: TraceRow | None = None  # set for the steps of a whole-run file

    @property
    def stage(self) -> str:
        return "pretrain" if self.flr is None else "finetune"

    @property
    def whole_run(self) -> bool:
        """Whether this comes from a file holding a whole run (its epoch counts from the run's start)."""
        return self.row is not None or self.epoch is None

    @property
    def has_weights(self) -> bool:
        """Whether the step has weights (a whole-run file logs metrics more often than iterates)."""
        return self.row is None or self.row.weight is not None


@dataclass
class Scan:
    """The files under a source: those a pattern maps to coordinates, and the others."""

    fs: fsspec.AbstractFileSystem
    checkpoints: list[Checkpoint]
    unmatched: list[str]
    data_seed_in_paths: bool
    excluded: list[str]  # match a pattern's shape but lie outside its epoch ranges


def scan(source: str, patterns: Sequence[str]) -> Scan:
    """Match every file under ``source`` (a folder or fsspec URL) against the patterns.

    Parameters
    ----------
    source
        The folder that holds the checkpoints.
    patterns
        Path patterns (:class:`Pattern`), tried in order; the first that takes a file wins.

    Returns
    -------
    Scan
        The checkpoints, sorted by path; the paths (relative to ``source``) that match no
        pattern; those that match one only outside its epoch ranges.

    Raises
    ------
    LrscanError
        For a bad pattern, a missing folder, a path value that is no valid coordinate, or
        two files with the same coordinates.
    """
    if not patterns:
        raise LrscanError("give at least one --pattern")
    compiled = [Pattern(p) for p in patterns]
    try:
        fs, root = fsspec.core.url_to_fs(str(source))
    except (ImportError, ValueError) as err:  # an unknown protocol, or its package missing
        raise LrscanError(f"cannot open {source}: {err}") from None
    if not fs.isdir(root):
        raise LrscanError(f"{source} is a file, not a folder of checkpoints" if fs.exists(root)
                          else f"no folder at {source}")
    prefix = root.rstrip("/") + "/"
    checkpoints, unmatched, excluded, seen = [], [], [], {}
    for path in sorted(fs.find(root)):
        name = path[len(prefix):] if path.startswith(prefix) else path
        values = next((v for v in (p.match(name) for p in compiled) if v is not None), None)
        if values is None:
            shaped = any(p.match_shape(name) is not None for p in compiled)
            (excluded if shaped else unmatched).append(name)
            continue
        ckpt = Checkpoint(
            path, name,
            plr=_rate(name, "plr", values["plr"]),
            flr=_rate(name, "flr", values["flr"]) if "flr" in values else None,
            seed=int(values.get("seed", 0)),
            data_seed=int(values["data_seed"]) if "data_seed" in values else None,
            epoch=Fraction(values["epoch"]) if "epoch" in values else None,
            seed_in_path="seed" in values,
        )
        if ckpt.epoch is not None and ckpt.epoch < 0:
            raise LrscanError(f"{name}: epoch {values['epoch']} is negative")
        key = (ckpt.plr, ckpt.flr, ckpt.seed, ckpt.data_seed, ckpt.epoch)
        if key in seen:
            what = "run" if ckpt.epoch is None else "run and epoch"
            raise LrscanError(f"{seen[key]} and {name} give the same {what}; keep one of them")
        seen[key] = name
        checkpoints.append(ckpt)
    return Scan(fs, checkpoints, unmatched, any("data_seed" in p.names for p in compiled), excluded)


def _rate(name: str, kind: str, text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise LrscanError(f"{name}: {kind} = {text} is not a learning rate (positive and finite)")
    return value
