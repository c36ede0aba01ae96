"""The synthetic ticks data as a registered dataset (generator in :mod:`lrscan.data.ticks`)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lrscan.data.entry import Data, DatasetEntry
from lrscan.data.ticks import make_ticks, single_feature_sets
from lrscan.errors import LrscanError
from lrscan.options import integer, seeds_list

DEFAULTS = {
    "seeds": 1,
    "n_train": 512,
    "n_test": 2000,
    "n_single": 1000,
    "n_features": 16,
    "dim": 32,
    "informative": 1.0,
    "label_noise": 0.0,
    "shape": "tick",
}


def _shape_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"n_features": options["n_features"], "dim": options["dim"], "shape": options["shape"]}


def load(options: Mapping[str, Any], data_seed: int) -> Data:
    shape = _shape_options(options)
    train = make_ticks(
        data_seed, options["n_train"], stream="train",
        informative=options["informative"], label_noise=options["label_noise"], **shape,
    )
    test = make_ticks(data_seed, options["n_test"], stream="test", **shape)
    single_x, single_y = single_feature_sets(data_seed, options["n_single"], **shape)
    as_tensors = lambda xy: (torch.from_numpy(xy[0]), torch.from_numpy(xy[1]))  # noqa: E731
    return Data(*as_tensors(train), *as_tensors(test), n_classes=2, extra={"single_feature": as_tensors((single_x, single_y))})


def validate(options: dict[str, Any]) -> dict[str, Any]:
    options["seeds"] = list(seeds_list("data.seeds", options["seeds"]))
    for key in ("n_train", "n_test", "n_single", "n_features", "dim"):
        options[key] = integer(f"data.{key}", options[key], minimum=1)
    informative = options["informative"]
    options["informative"] = list(informative) if isinstance(informative, (list, tuple)) else informative
    try:  # the generator owns the value rules; a tiny draw checks them all
        make_ticks(0, 2, informative=options["informative"], label_noise=options["label_noise"], **_shape_options(options))
    except (ValueError, TypeError) as err:
        raise LrscanError(f"[data] {err}") from None
    return options


ENTRY = DatasetEntry(load=load, defaults=DEFAULTS, validate=validate, extra_sets=("single_feature",))
