"""The weight-group norms analyzer and figure, on stores of planted weights whose channel norms are known."""

import holoviews as hv
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import lrscan
from lrscan.analyze.run import analyze
from lrscan.plot.solutions import group_norms
from lrscan.plot.styles import PANEL_HEIGHT, PANEL_WIDTH, figure_size
from lrscan.plot.writers import save_image
from lrscan.spec import load_spec
from lrscan.store import RunData, StoreWriter, create_or_check
from lrscan.train.sweep import Setup
from tests.conftest import SMALL
from tests.drawn import fills

# Three PLRs, so that a figure can show one per regime; 64 SI channels: hidden.0 and hidden.1, 32 rows of 32 each.
PLANTED = SMALL + ["plr=[0.003, 0.03, 0.3]"]
CHANNELS = 64
EDGES = np.linspace(-6.0, 0.0, 51)

# log10(‖W[i]‖ / ρ) of channel 0 at the end of pre-training, per PLR, and in the bins of [-6, 0] / 50:
# floor((log10 + 6) / 0.12).
PT_LOG10 = [-1.5, -2.5, -3.5]
PT_BIN = [37, 29, 20]
# ... after fine-tuning, per FLR: the analyzer takes the lowest FLR (0.001), bin 10, not bin 4.
FT_LOG10 = [-4.7, -5.5]
FT_BIN = 10
# Every channel at initialisation (and the other channels at the end of PT): 1/8 of ρ, 64 × (1/8)² = 1.
REST_LOG10 = np.log10(1 / 8)
REST_BIN = 42


def channel_norms(zero: bool, planted: float | None) -> np.ndarray:
    """Norms over ρ of the 64 SI channels: all 1/8; channel 0 at ``10**planted`` when given; and,
    with ``zero``, channel 1 at 0 and channel 2 at 1e-8 (both below the histogram's range)."""
    norms = np.full(CHANNELS, 1 / 8)
    if planted is not None:
        norms[0] = 10.0**planted
    if zero:
        norms[1], norms[2] = 0.0, 1e-8
    return norms


def weights_with(norms: np.ndarray, radius: float, n_params: int, rng) -> np.ndarray:
    """A flat weight vector whose SI rows (the first 64 rows of 32) have norms ``norms`` × ρ."""
    rows = rng.standard_normal((CHANNELS, 32))
    rows *= (radius * norms / np.linalg.norm(rows, axis=1))[:, None]
    head = rng.standard_normal(n_params - rows.size)
    return np.concatenate([rows.ravel(), head]).astype(np.float32)


def planted_store(path, overrides):
    """A finished store (every run done) whose weights are planted, not trained.

    Every checkpoint has all channels at ρ/8 except: at the end of pre-training, channel 0 at
    ``PT_LOG10[plr]`` and channels 1, 2 at 0 and 1e-8; at an intermediate pre-training
    checkpoint, channel 0 at 10^-3.1; at the end of fine-tuning, channel 0 at ``FT_LOG10[flr]``.
    """
    spec = load_spec(overrides=overrides)
    setup = Setup.build(spec)
    plan, layers = setup.plan, setup.layers
    create_or_check(path, plan, layers)
    writer = StoreWriter(path)
    rng = np.random.default_rng(0)
    n_params, radius = layers[-1].stop, spec.radius

    def metrics(n, names=("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "grad_norm")):
        return {name: np.full(n, 0.5, dtype=np.float32) for name in names}

    n_plr, n_flr, n_seed = len(spec.plr), len(spec.flr), len(plan.runs)
    pt_ckpt = plan.pretrain.checkpoint_steps.size
    pt_runs = []
    for k, seed in np.ndindex(n_plr, n_seed):
        rows = [channel_norms(False, None)] * pt_ckpt
        rows[1] = channel_norms(False, -3.1)  # an intermediate checkpoint: neither init nor the end
        rows[-1] = channel_norms(True, PT_LOG10[k])
        w = np.stack([weights_with(n, radius, n_params, rng) for n in rows])
        pt_runs.append(RunData((k, seed), metrics(plan.pretrain.log_steps.size), w))
    writer.write_runs("pretrain", pt_runs)
    if spec.finetune_epochs:
        ft_ckpt = plan.finetune.checkpoint_steps.size
        ft_runs = []
        for k, f, seed in np.ndindex(n_plr, n_flr, n_seed):
            rows = [channel_norms(False, None)] * (ft_ckpt - 1) + [channel_norms(False, FT_LOG10[f])]
            w = np.stack([weights_with(n, radius, n_params, rng) for n in rows])
            ft_runs.append(RunData((k, f, seed), metrics(plan.finetune.log_steps.size), w))
        writer.write_runs("finetune", ft_runs)
    n_swa = len(spec.swa)
    swa_runs = [RunData((k, seed), metrics(n_swa, ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm")),
                        np.stack([weights_with(channel_norms(False, None), radius, n_params, rng)] * n_swa))
                for k, seed in np.ndindex(n_plr, n_seed)]
    writer.write_runs("swa", swa_runs)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("planted") / "planted.zarr", PLANTED)


@pytest.fixture(scope="module")
def result(store):
    return lrscan.open(store).lrscan.group_norms().compute()


def expected_histogram(norms: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy's histogram of log10 norms, with values beyond the edges counted in the end bins."""
    with np.errstate(divide="ignore"):
        log = np.clip(np.log10(norms), edges[0], edges[-1])
    return np.histogram(log, edges)[0]


def test_bin_edges_are_the_studys_50_on_minus_6_to_0(result):
    np.testing.assert_allclose(result.attrs["bin_edges"], EDGES)
    assert result.sizes["bin"] == 50
    np.testing.assert_allclose(result.bin.values, (EDGES[:-1] + EDGES[1:]) / 2)


def test_points_are_init_the_end_of_pretraining_and_fine_tuning_with_the_lowest_flr(result):
    assert list(result.point.values) == ["init", "pretrain", "finetune"]
    assert result.group_norm.dims == ("plr", "seed", "point", "group")
    assert result.histogram.dims == ("plr", "seed", "point", "bin")
    np.testing.assert_allclose(result.epoch.values, [0.0, 4.0, 6.0])  # checkpoints of SMALL's schedule
    assert result.attrs["finetune_flr"] == 0.001


def test_channels_with_known_norms_land_in_their_bins(result):
    for k, plr in enumerate(result.plr.values):
        for seed in result.seed.values:
            at = result.sel(plr=plr, seed=seed)
            np.testing.assert_allclose(np.log10(at.group_norm.sel(point="pretrain").values[0]), PT_LOG10[k],
                                       rtol=1e-5)  # from float32 weights
            # Channel 0 alone in its planted bin at each point (all 64 channels at init).
            planted = (("init", REST_BIN, CHANNELS), ("pretrain", PT_BIN[k], 1), ("finetune", FT_BIN, 1))
            for point, bin_, count in planted:
                assert at.histogram.sel(point=point).values[bin_] == count, (point, plr)


def test_init_differs_from_pretrain_as_planted(result):
    for k, plr in enumerate(result.plr.values):
        at = result.sel(plr=plr)
        init = at.histogram.sel(point="init")
        pretrain = at.histogram.sel(point="pretrain")
        finetune = at.histogram.sel(point="finetune")
        np.testing.assert_array_equal(init, expected_histogram(channel_norms(False, None), EDGES)[None].repeat(2, 0))
        np.testing.assert_array_equal(pretrain,
                                      expected_histogram(channel_norms(True, PT_LOG10[k]), EDGES)[None].repeat(2, 0))
        np.testing.assert_array_equal(finetune,
                                      expected_histogram(channel_norms(False, FT_LOG10[0]), EDGES)[None].repeat(2, 0))
        # Channel 0 moved from the 1/8 bin at init to its planted bin; 61 channels stayed.
        assert int(init.isel(seed=0)[REST_BIN]) == 64 and int(pretrain.isel(seed=0)[REST_BIN]) == 61
        # The intermediate checkpoint (channel 0 at 10^-3.1, bin 24) is neither point.
        assert (at.histogram.isel(bin=24) == 0).all()


def test_every_channel_is_counted_once(result):
    assert (result.histogram.sum("bin") == CHANNELS).all()
    assert result.sizes["group"] == CHANNELS
    assert list(result.layer.values) == ["hidden.0.weight"] * 32 + ["hidden.1.weight"] * 32


def test_values_outside_the_range_land_in_the_end_bins(store, result):
    # End of PT: channel 1 at 0 (log10 = -inf) and channel 2 at 1e-8 (log10 = -8) are below -6.
    assert (result.histogram.sel(point="pretrain").isel(bin=0) == 2).all()
    assert (result.histogram.sel(point="init").isel(bin=0) == 0).all()
    # A narrower range: every channel at 1/8 (log10 -0.9) is above -1, in the last bin; channel 0 of the
    # largest PLR (log10 -3.5) is below -3, in the first.
    narrow = lrscan.open(store).lrscan.group_norms(bins=4, lo=-3.0, hi=-1.0).compute()
    np.testing.assert_allclose(narrow.attrs["bin_edges"], [-3.0, -2.5, -2.0, -1.5, -1.0])
    np.testing.assert_array_equal(narrow.histogram.sel(point="init").values[..., -1], CHANNELS)
    np.testing.assert_array_equal(narrow.histogram.sel(point="pretrain", plr=0.3).values, [[3, 0, 0, 61]] * 2)
    assert (narrow.histogram.sum("bin") == CHANNELS).all()


def test_stays_lazy_and_persists(store, result):
    tree = lrscan.open(store)
    lazy = tree.lrscan.group_norms()
    assert all(v.chunks is not None for v in lazy.data_vars.values())
    analyze(store, ["group_norms"])
    stored = lrscan.open(store)["analysis/group_norms"].to_dataset().load()
    assert list(map(str, stored.point.values)) == ["init", "pretrain", "finetune"]
    np.testing.assert_array_equal(stored.histogram.values, result.histogram.values)
    np.testing.assert_allclose(stored.group_norm.values, result.group_norm.values)
    np.testing.assert_allclose(stored.attrs["bin_edges"], EDGES)


def test_without_fine_tuning_the_point_is_absent(tmp_path):
    path = planted_store(tmp_path / "pt-only.zarr", PLANTED + ["finetune_epochs=0"])
    tree = lrscan.open(path)
    assert "finetune" not in tree.children
    result = tree.lrscan.group_norms().compute()
    assert list(result.point.values) == ["init", "pretrain"]
    assert "finetune_flr" not in result.attrs
    analyze(path, ["group_norms"])
    panels = list(group_norms(lrscan.open(path)))
    assert [p.opts.get("plot", backend="bokeh").kwargs["title"] for p in panels] == [
        "At initialisation", "End of pre-training", "Channel norms vs PLR, end of pre-training"]


def with_regimes(tree: xr.DataTree, labels: list[str]) -> xr.DataTree:
    """The tree with a ``regimes`` result naming each PLR's regime (as the regimes analyzer would)."""
    plr = tree["pretrain/metrics"].plr.values
    regimes = xr.Dataset({"regime_mode": ("plr", np.array(labels, dtype=object)),
                          "boundary_geomean": ("boundary", [np.sqrt(plr[0] * plr[1]), np.nan,
                                                            np.sqrt(plr[1] * plr[2])])},
                         coords={"plr": plr, "boundary": ["1|2", "2A|2B", "2|3"]})
    out = tree.copy()
    out["analysis/regimes"] = xr.DataTree(regimes)
    return out


def test_figure_has_a_panel_per_point_with_one_plr_per_regime(store, tmp_path):
    analyze(store, ["group_norms"])
    tree = with_regimes(lrscan.open(store), ["1", "2A", "3"])
    obj = group_norms(tree)
    panels = list(obj)
    titles = [p.opts.get("plot", backend="bokeh").kwargs["title"] for p in panels]
    assert titles == ["At initialisation", "End of pre-training", "After fine-tuning (FLR 0.001)",
                      "Channel norms vs PLR, end of pre-training"]
    for panel, point in zip(panels[:3], ["init", "pretrain", "finetune"]):
        histograms = [e for e in panel if isinstance(e, hv.Histogram)]
        assert [h.label for h in histograms] == ["PLR 0.003 (1)", "PLR 0.03 (2A)", "PLR 0.3 (3)"]
        for k, h in enumerate(histograms):
            # Share of channels (%), both seeds pooled: the planted histogram of each PLR at the point.
            planted = {"init": channel_norms(False, None), "pretrain": channel_norms(True, PT_LOG10[k]),
                       "finetune": channel_norms(False, FT_LOG10[0])}[point]
            np.testing.assert_allclose(h.dimension_values("channels"),
                                       100 * expected_histogram(planted, EDGES) / CHANNELS)
            np.testing.assert_allclose(h.edges, EDGES)
    assert any(isinstance(e, hv.QuadMesh) for e in panels[3])
    assert [e.text for e in panels[3] if isinstance(e, hv.Text)] == ["1", "2A", "3"]
    png = save_image(obj, tmp_path / "group_norms.png")
    image = Image.open(png).convert("L")
    assert image.size == figure_size(obj) == (2 * PANEL_WIDTH, 2 * PANEL_HEIGHT)
    assert (np.asarray(image) < 250).mean() > 0.05


def test_the_html_and_the_png_draw_each_plr_in_the_same_colours(store):
    analyze(store, ["group_norms"])
    obj = group_norms(with_regimes(lrscan.open(store), ["1", "2A", "3"]))
    html, png = fills(obj, "bokeh"), fills(obj, "matplotlib")
    assert len(html) == 3 * 3  # a histogram per PLR in each point's panel
    assert html == png
    # One colour per PLR, the same in every panel.
    assert len(set(html.values())) == 3
    assert {label: colours for (_, _, label), colours in html.items()} == {
        label: colours for (panel, _, label), colours in html.items() if panel == 0}
