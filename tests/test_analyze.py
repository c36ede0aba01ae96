"""The analyzer framework, `lrscan analyze`, the accessor, and the metric-type analyzers."""

import dataclasses
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import lrscan
from lrscan.analyze import ANALYZERS
from lrscan.analyze.run import analyze
from lrscan.cli import main
from lrscan.errors import LrscanError
from lrscan.spec import load_spec
from lrscan.train.sweep import train
from tests.conftest import SMALL, train_store


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """A small finished store with every analysis persisted."""
    path = train_store(tmp_path_factory, SMALL)
    analyze(path)
    return path


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_metrics_are_the_stored_final_values(trained_small):
    tree = lrscan.open(trained_small)
    result = tree.lrscan.metrics().compute()
    pt = tree["pretrain/metrics"].to_dataset().load()
    ft = tree["finetune/metrics"].to_dataset().load()
    for score in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_array_equal(result[f"pt_{score}"].values, pt[score].values[..., -1])
        np.testing.assert_array_equal(result[f"ft_{score}"].values, ft[score].values[..., -1])
        np.testing.assert_array_equal(result[f"swa_{score}"].values, tree["swa/metrics"][score].values)
    # window = 2 epochs of 4 logged every epoch: rows at epochs 2, 3, 4
    windowed = tree.lrscan.metrics(window=2.0).compute()
    np.testing.assert_allclose(windowed.pt_test_acc_mean.values, pt.test_acc.values[..., 2:].mean(-1), rtol=1e-6)
    np.testing.assert_allclose(windowed.pt_test_acc_std.values, pt.test_acc.values[..., 2:].std(-1), rtol=1e-5)


def test_metrics_stay_lazy(trained_small):
    result = lrscan.open(trained_small).lrscan.metrics()
    assert all(v.chunks is not None for v in result.data_vars.values())


def test_swa_analyzer_reproduces_the_trainers_swa(trained_small):
    tree = lrscan.open(trained_small)
    result = tree.lrscan.swa()
    stored = tree["swa/metrics"].to_dataset().load()
    for name in ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm"):
        np.testing.assert_allclose(result[name].values, stored[name].values, rtol=1e-5, err_msg=name)
    one = tree.lrscan.swa(ks=[1])  # SWA of the last iterate alone is that iterate
    np.testing.assert_allclose(one.test_loss.isel(swa=0).values,
                               tree["pretrain/metrics"]["test_loss"].isel(epoch=-1).values, rtol=1e-5)
    with pytest.raises(LrscanError, match="swa = 6 needs 6 pre-training checkpoints, the spec keeps 5"):
        tree.lrscan.swa(ks=[6])


def test_grad_norm_averages_the_logged_rows(trained_small):
    tree = lrscan.open(trained_small)
    result = tree.lrscan.grad_norm(window=1.0).compute()
    g = tree["pretrain/metrics"]["grad_norm"].values
    np.testing.assert_allclose(result.pt_grad_norm.values, g[..., -2:].mean(-1), rtol=1e-6)
    assert (result.pt_grad_norm > 0).all()


def test_group_norms_against_numpy(trained_small):
    tree = lrscan.open(trained_small)
    result = tree.lrscan.group_norms(bins=10, lo=-3, hi=0).sel(point="pretrain").compute()
    w = tree["pretrain/weights"]["weights"].isel(epoch=-1).values.astype(np.float64)
    expected = np.concatenate([np.linalg.norm(w[..., :1024].reshape(2, 2, 32, 32), axis=-1),
                               np.linalg.norm(w[..., 1024:2048].reshape(2, 2, 32, 32), axis=-1)], axis=-1)
    np.testing.assert_allclose(result.group_norm.values, expected, rtol=1e-12)
    assert list(result.layer.values[:32]) == ["hidden.0.weight"] * 32
    # Norms of 64 rows on the unit sphere: every row counted once; their squares sum to 1.
    assert (result.histogram.sum("bin") == 64).all()
    np.testing.assert_allclose((result.group_norm**2).sum("group"), 1.0, rtol=1e-5)


def test_analyze_persists_every_applicable_analyzer(analyzed):
    tree = lrscan.open(analyzed)
    assert set(tree["analysis"].children) == {n for n in ANALYZERS if ANALYZERS[n].default and ANALYZERS[n].applies(tree)}
    assert "sharpness" not in tree["analysis"].children  # an extra, run on request
    assert "frequency" not in tree["analysis"].children  # images only
    for name in tree["analysis"].children:
        assert tree[f"analysis/{name}"].attrs["lrscan_analyzer"] == name
    xr.testing.assert_allclose(tree["analysis/metrics"].to_dataset().load(),
                               tree.lrscan.metrics().compute().assign_attrs(tree["analysis/metrics"].attrs))


def test_analyze_twice_does_no_work_and_never_touches_training_data(analyzed, digest, tmp_path):
    before = digest(analyzed)
    status = analyze(analyzed)
    assert set(status.values()) == {"up to date"}
    assert digest(analyzed) == before


def test_analyze_writes_only_under_analysis(small_spec, tmp_path, digest):
    path = tmp_path / "s.zarr"
    train(small_spec(), path)
    training = {p: digest(path / p) for p in ("pretrain", "finetune", "swa", "layers")}
    root = (path / "zarr.json").read_bytes()
    analyze(path, ["metrics", "angles"])
    assert {p: digest(path / p) for p in training} == training
    assert (path / "zarr.json").read_bytes() == root
    tree = lrscan.open(path)
    assert all("lrscan_fingerprint" in node.attrs for node in tree["analysis"].children.values())


def test_analyze_opens_the_store_once_and_each_result_as_it_is_written(trained_small, tmp_path, monkeypatch):
    """One walk over the store's metadata per `lrscan analyze`; later analyzers still read
    the results written before them (regimes reads metrics), with the same outcome as a
    store opened afresh."""
    import shutil

    path = tmp_path / "s.zarr"
    shutil.copytree(trained_small, path)
    calls = []
    real = xr.open_datatree
    monkeypatch.setattr(xr, "open_datatree", lambda *a, **k: calls.append(a) or real(*a, **k))
    analyze(path, ["metrics", "barriers", "regimes"])
    assert len(calls) == 1
    fresh = lrscan.open(path)
    computed = ANALYZERS["regimes"](fresh).compute()
    stored = fresh["analysis/regimes"].to_dataset().load()
    xr.testing.assert_identical(stored.drop_attrs(), computed.drop_attrs())


def test_a_settled_store_reads_its_run_flags_at_once_and_alike(trained_small):
    from lrscan.store import RUN_FLAGS, open_store

    lazy, settled = open_store(trained_small), open_store(trained_small, settled=True)
    for stage in ("pretrain", "finetune", "swa"):
        for name in RUN_FLAGS:
            if name in lazy[f"{stage}/metrics"]:
                assert isinstance(settled[f"{stage}/metrics"][name].data, np.ndarray)
                xr.testing.assert_identical(settled[f"{stage}/metrics"][name], lazy[f"{stage}/metrics"][name].load())
        # The other variables stay lazy.
        assert all(hasattr(v.data, "dask") for n, v in settled[f"{stage}/metrics"].data_vars.items() if n not in RUN_FLAGS)


def test_an_analysis_cut_short_is_redone(analyzed):
    import zarr

    group = zarr.open_group(str(analyzed), path="analysis/metrics", mode="r+")
    del group.attrs["lrscan_fingerprint"]  # as if the process died while writing it
    assert analyze(analyzed, ["metrics"]) == {"metrics": "computed"}
    assert "lrscan_fingerprint" in zarr.open_group(str(analyzed), path="analysis/metrics").attrs


def test_cli_analyze_and_bad_input(small_overrides, tmp_path):
    path = tmp_path / "c.zarr"
    args = [a for o in small_overrides for a in ("--set", o)]
    assert cli("train", "--store", str(path), *args).exit_code == 0
    result = cli("analyze", str(path), "--only", "metrics")
    assert result.exit_code == 0 and "metrics      computed" in result.stderr
    again = cli("analyze", str(path), "--only", "metrics")
    assert "metrics      up to date" in again.stderr and "0 of 1 analyses computed" in again.stderr
    bad = cli("analyze", str(path), "--only", "angels")
    assert bad.exit_code == 2 and "unknown analyzer 'angels' (did you mean 'angles'?)" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "metrics" in cli("analyzers").stdout


def test_store_without_finetune_data_is_refused(tmp_path):
    path = tmp_path / "pt.zarr"
    train(load_spec(overrides=SMALL + ["finetune_epochs=0"]), path)
    result = cli("analyze", str(path))
    assert result.exit_code == 2 and "has no fine-tuning data" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli("analyze", str(path), "--only", "barriers")
    assert result.exit_code == 2 and "needs finetune data" in result.stderr
    assert cli("analyze", str(path), "--only", "metrics").exit_code == 0


def test_store_still_training_is_refused(small_spec, tmp_path, digest):
    path = tmp_path / "partial.zarr"

    def stop(progress):
        if progress.phase == "finetune":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_spec(), path, progress=stop)
    before = digest(path)
    result = cli("analyze", str(path))
    assert result.exit_code == 2 and "still training (8 finetune runs to do)" in result.stderr
    assert digest(path) == before


def test_a_third_party_analyzer_registers_through_an_entry_point(tmp_path, monkeypatch, trained_small):
    """A throwaway distribution on sys.path advertises `tiny` under `lrscan.analyzers`."""
    (tmp_path / "tiny_plugin.py").write_text(textwrap.dedent("""
        import xarray as xr
        from lrscan.analyze import Analyzer

        def best_plr(tree):
            '''The PLR with the best final pre-training test accuracy, per seed.'''
            acc = tree["pretrain/metrics"]["test_acc"].isel(epoch=-1)
            return xr.Dataset({"best_plr": acc.idxmax("plr")})

        ENTRY = Analyzer(best_plr, needs=("pretrain",), summary="best PLR per seed")
    """))
    dist = tmp_path / "tiny_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lrscan.analyzers]\ntiny = tiny_plugin:ENTRY\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ANALYZERS, "_plugins_loaded", False)
    monkeypatch.setattr(ANALYZERS, "_entries", dict(ANALYZERS._entries))
    tree = lrscan.open(trained_small)
    result = tree.lrscan.tiny()
    acc = tree["pretrain/metrics"]["test_acc"].isel(epoch=-1).values
    np.testing.assert_array_equal(result.best_plr.values, np.array(tree["pretrain/metrics"].plr)[acc.argmax(0)])
    assert "tiny" in tree.lrscan.analyzers
    assert cli("analyzers").stdout.count("tiny") == 1
    sys.modules.pop("tiny_plugin", None)


def test_a_result_is_recomputed_when_a_result_it_reads_changes(analyzed):
    import zarr

    assert analyze(analyzed, ["regimes"]) == {"regimes": "up to date"}
    zarr.open_group(str(analyzed / "analysis" / "barriers"), mode="r+").attrs["lrscan_fingerprint"] = "other"
    assert analyze(analyzed, ["regimes"]) == {"regimes": "computed"}
    assert analyze(analyzed, ["regimes"]) == {"regimes": "up to date"}


def test_analyzers_needing_sets_the_dataset_lacks_do_not_apply(trained_small, monkeypatch):
    from lrscan.data import DATASETS

    tree = lrscan.open(trained_small)
    assert "features" in tree.lrscan.analyzers
    monkeypatch.setitem(DATASETS._entries, "ticks", dataclasses.replace(DATASETS["ticks"], extra_sets=()))
    assert "features" not in tree.lrscan.analyzers
    assert "single_feature evaluation sets" in ANALYZERS["features"].missing(tree)
    with pytest.raises(LrscanError, match="analyzer 'features' needs the single_feature evaluation sets"):
        analyze(trained_small, ["features"])
