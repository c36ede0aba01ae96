"""Checking option values: the validators that the sweep spec, and the option tables of its
model and dataset, share.

Each ``validator(name, value, ...)`` returns the value checked (and normalised: a whole float
becomes an int, a count of seeds a tuple of them) or raises :class:`~lrscan.errors.LrscanError`
naming the option as the user wrote it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from lrscan.errors import LrscanError
from lrscan.registry import closest

# A sweep has at most this many runs, so a seed count is at most this; seeds are int64.
MAX_RUNS = 1_000_000
MAX_SEED = 2**63 - 1


def check_options(where: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge an option table over its defaults, rejecting unknown keys.

    Values are checked by the model or dataset entry that owns them (its ``validate``).
    """
    if not isinstance(given, Mapping):
        raise LrscanError(f"{where} must be a table")
    for key in given:
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise LrscanError(f"unknown key {key!r} in {where}{closest(key, defaults)}; valid keys: {known}")
    return {**defaults, **given}


def string(name: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise LrscanError(f"{name} must be a non-empty string, got {value!r}")
    return value


def number(name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LrscanError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise LrscanError(f"{name} must be finite, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise LrscanError(f"{name} must be {'positive' if positive else 'non-negative'}, got {value:g}")
    return value


def integer(name: str, value, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy's integers too
        raise LrscanError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < minimum:
        raise LrscanError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        text = str(value)
        raise LrscanError(f"{name} must be at most {maximum:,}, got {text if len(text) < 16 else f'{text[0]}.{text[1:3]}e+{len(text) - 1}'}")
    return value


def number_list(name: str, value) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    raise LrscanError(f"{name} must be a list of numbers, got {value!r}")


def seeds_list(name: str, value) -> tuple[int, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return tuple(range(integer(name, value, minimum=1, maximum=MAX_RUNS)))
    seeds = tuple(integer(f"{name}[{i}]", s, minimum=0, maximum=MAX_SEED) for i, s in enumerate(number_list(name, value)))
    if not seeds:
        raise LrscanError(f"{name} is empty; give a count or a list of seeds")
    if len(set(seeds)) != len(seeds):
        raise LrscanError(f"{name} has repeated values: {list(seeds)}")
    return seeds


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise LrscanError(f"{name} must be true or false, got {value!r}")
    return value


def choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = closest(value, choices) if isinstance(value, str) else ""
        raise LrscanError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}")
    return value


def learning_rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LrscanError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise LrscanError(f"{name} = {value!r}: learning rates must be positive and finite")
    return float(value)
