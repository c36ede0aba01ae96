"""Results a notebook user can use as xarray (issue 16.4): units and long names, sel to printed precision,
the persisted result when up to date, and hvPlot on the store."""

import holoviews as hv
import numpy as np
import pytest
import xarray as xr

import lrscan
from lrscan.accessor import persisted
from lrscan.units import annotate, describe, label
from tests.browser import ANALYSES, analyzed_store


# Numbers that name things rather than measure them: no units (CF leaves them out).
IDENTIFIERS = {"checksum", "seed"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_small):
    return analyzed_store(tmp_path_factory, trained_small)


def test_every_stored_and_analysed_variable_has_a_long_name_and_numbers_have_units(store):
    tree = annotate(lrscan.open(store))
    for node in tree.subtree:
        for name, variable in node.dataset.variables.items():
            assert variable.attrs.get("long_name"), f"{node.path}/{name} has no long_name"
            if variable.dtype.kind in "fiu" and name not in IDENTIFIERS:
                assert "units" in variable.attrs, f"{node.path}/{name} has no units"
    acc = tree["pretrain/metrics"]["test_acc"]
    assert acc.attrs["units"] == "1" and acc.attrs["long_name"] == "test accuracy"
    assert float(acc.max()) <= 1  # still a fraction: figures show %
    assert tree["analysis/angles"]["angle"].attrs["units"] == "rad"
    assert tree["analysis/metrics"]["ft_test_acc"].attrs["long_name"] == "FT test accuracy"
    assert tree["pretrain/metrics"]["train_loss"].attrs["units"] == "nats"
    assert tree["pretrain/metrics"].plr.attrs["long_name"].startswith("pre-training learning rate")


def test_the_store_itself_holds_each_variable_s_units_and_long_name(store):
    # Plain xarray, no lrscan: what any reader of the store sees.
    tree = xr.open_datatree(str(store), engine="zarr", consolidated=False)
    nodes = {node.path: node for node in tree.subtree if node.dataset.data_vars}
    assert {"/pretrain/metrics", "/pretrain/weights", "/finetune/metrics", "/finetune/weights", "/swa/metrics",
            "/swa/weights", "/layers", *(f"/analysis/{name}" for name in ANALYSES)} <= set(nodes)
    for path, node in nodes.items():
        for name, variable in node.dataset.variables.items():
            units, long_name = describe(str(name))  # each by its own name, whatever its inputs were
            assert variable.attrs.get("long_name") == long_name, f"{path}/{name}: {variable.attrs}"
            if units is not None and variable.dtype.kind in "fiub":
                assert variable.attrs.get("units") == units, f"{path}/{name}: {variable.attrs}"
            else:
                assert "units" not in variable.attrs, f"{path}/{name}: {variable.attrs}"
    assert tree["pretrain/metrics"]["test_acc"].attrs["long_name"] == "test accuracy"
    assert tree["analysis/metrics"]["ft_test_acc"].attrs["long_name"] == "FT test accuracy"  # not its input's
    assert tree["analysis/angles"]["angle"].attrs["units"] == "rad"
    assert tree["analysis/barriers"]["test_barrier"].attrs["units"] == "%"
    # annotate() leaves a labelled store as it is.
    annotated, plain = annotate(lrscan.open(store)), lrscan.open(store)
    for path in nodes:
        xr.testing.assert_identical(annotated[path].to_dataset(), plain[path].to_dataset())


def test_label_sets_each_variable_s_own_attributes_over_inherited_ones():
    inherited = {"units": "1", "long_name": "test accuracy"}
    ds = xr.Dataset({"ft_test_acc": ("plr", [0.5], inherited), "regime": ("plr", np.array(["3"], dtype=object),
                                                                           inherited)}, coords={"plr": [0.1]})
    labelled = label(ds)
    assert labelled.ft_test_acc.attrs == {"units": "1", "long_name": "FT test accuracy"}
    assert labelled.regime.attrs == {"long_name": "regime"}  # no units: a name, not a number
    assert labelled.plr.attrs["long_name"] == "pre-training learning rate (effective)"
    assert ds.ft_test_acc.attrs == inherited  # a copy: what it was made from keeps its own
    assert label(ds.ft_test_acc).attrs["long_name"] == "FT test accuracy"


def test_a_result_the_accessor_computes_is_labelled_by_name_not_by_its_inputs(store):
    tree = annotate(lrscan.open(store))  # inputs with long names, as a labelled store's are
    computed = tree.lrscan.metrics(window=2.0)  # other options than the persisted result's: computed
    assert computed.ft_test_acc.attrs == {"units": "1", "long_name": "FT test accuracy"}
    assert computed.pt_test_loss.attrs["long_name"] == "PT test loss (cross-entropy)"


def test_xarray_labels_its_axes_with_the_long_names():
    acc = annotate(xr.DataArray([0.5, 0.6], dims="plr", coords={"plr": [1e-3, 1e-2]}, name="test_acc"))
    assert xr.plot.utils.label_from_attrs(acc) == "test accuracy [1]"


def test_attributes_a_variable_has_are_kept():
    ds = annotate(xr.Dataset({"angle": ("plr", [1.0], {"units": "degree"})}))
    assert ds.angle.attrs["units"] == "degree"
    assert describe("swa_train_loss") == ("nats", "SWA train loss (cross-entropy)")


def test_sel_matches_grid_values_to_the_printed_precision(store):
    tree = lrscan.open(store)
    grid = tree["pretrain/metrics"].plr.values
    picked = tree.lrscan.sel(plr=float(f"{grid[0] * (1 + 4e-4):.6g}"), seed=0)
    assert float(picked["pretrain/metrics"].plr) == grid[0]
    assert float(picked["finetune/metrics"].plr) == grid[0]
    both = tree.lrscan.sel(plr=list(grid * (1 - 5e-4)))
    np.testing.assert_array_equal(both["pretrain/metrics"].plr.values, grid)
    with pytest.raises(KeyError, match=r"plr=0\.0031 is not on the grid"):
        tree.lrscan.sel(plr=0.0031)


def test_the_accessor_returns_the_persisted_lazy_result_when_it_is_up_to_date(store, monkeypatch):
    tree = lrscan.open(store)
    stored = tree["analysis/angles"].to_dataset()
    from lrscan.analyze import ANALYZERS

    import functools

    @functools.wraps(ANALYZERS["angles"].func)  # the same options (and so fingerprint) as the analyzer's
    def not_again(*args, **kwargs):
        raise AssertionError("recomputed a result the store holds")

    import dataclasses

    monkeypatch.setitem(ANALYZERS._entries, "angles", dataclasses.replace(ANALYZERS["angles"], func=not_again))
    result = tree.lrscan.angles()
    assert result.angle.chunks is not None  # lazy, as stored
    xr.testing.assert_identical(result.angle.drop_attrs(), stored.angle.drop_attrs())
    assert result.angle.attrs["units"] == "rad"
    # Other options than the stored result's: computed.
    with pytest.raises(AssertionError, match="recomputed"):
        tree.lrscan.angles(swa_k=2)
    assert persisted(tree, "angles", {"swa_k": 2}) is None


def test_a_half_written_result_is_not_taken_as_persisted(store):
    tree = lrscan.open(store)
    tree["analysis/angles"].attrs = {k: v for k, v in tree["analysis/angles"].attrs.items()
                                     if k != "lrscan_fingerprint"}
    assert persisted(tree, "angles", {}) is None


def test_hvplot_plots_a_node_of_the_store(store):
    tree = lrscan.open(store)
    plot = tree["pretrain/metrics"].hvplot.line(x="epoch", y="test_acc", by="plr", groupby=[])
    assert isinstance(plot, hv.core.Dimensioned)
    assert "test accuracy" in {d.label for d in plot.dimensions()} | {
        d.label for e in plot.traverse(lambda x: x, [hv.Curve]) for d in e.dimensions()}
    import hvplot.xarray  # noqa: F401

    assert isinstance(tree["pretrain/metrics"]["test_acc"].hvplot(x="epoch", groupby=["plr", "seed"]),
                      hv.core.Dimensioned)
