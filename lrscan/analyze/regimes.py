"""Regimes of constant-LR pre-training (SPEC §5), decided from the stored data by evidence.

Each (plr, seed) is labelled "1" (convergence), "2A" / "2B" (the two halves of the chaotic
equilibrium), "3" (divergence), or "2?": regime 2 whose split the data cannot decide (a 2A test
could not be applied, or its difference is of the order of the noise). The 2A tests compare
within the measured noise — the binomial standard error of a test accuracy on its test set and,
where a PLR has several seeds, their spread — instead of against fixed thresholds. The seeds of
one PLR are also pooled into one decision where they are replicates, and the regime boundaries
are located per seed and over all seeds, with a bootstrap interval over the seeds.

Reading the store (:func:`regime_table`) is kept apart from deciding (:func:`classify`, a pure
function of one table of per-run quantities), so that tables with known regimes can be fed in.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lrscan.analyze import analyzer
from lrscan.analyze.boundaries import boundary_interval, locate_boundary
from lrscan.analyze.metrics import last_window
from lrscan.analyze.noise import NOISE, Z_MAX, barrier_se, barrier_z, flr_z, outcome, swa_z
from lrscan.analyze.solutions import pretrain, require_complete, resolve
from lrscan.analyze.study import CHANCE_MARGIN, CONVERGENCE_LOSS, WINDOW, Z_DIFFER, Z_SAME
from lrscan.data import DATASETS
from lrscan.errors import LrscanError
from lrscan.spec import Spec

# Labels in the order they meet a scan of increasing PLR (ties of the most common label go to
# the earlier one). "2" is regime 2 of a store without fine-tuning, which has nothing to split it
# by; "2?" is regime 2 whose split the data leave open.
LABELS = ("1", "2A", "2", "2?", "2B", "3")
# Each boundary parts the labels below it from those above it; a label in neither set does not
# take part ("2" and "2?" say nothing about where 2A ends).
BOUNDARIES = {
    "1|2": ({"1"}, {"2A", "2", "2?", "2B", "3"}),
    "2A|2B": ({"1", "2A"}, {"2B", "3"}),
    "2|3": ({"1", "2A", "2", "2?", "2B"}, {"3"}),
}
# The three 2A tests (SPEC §5): every FLR below the PLR reaches the same FT accuracy; SWA is as
# good as the best FT; the FT-low ↔ FT-high test barrier is ≈ 0.
TESTS = ("flr", "swa", "barrier")
# What a test says of a run: the difference is within the noise (pass), beyond it (fail), of its
# order (ambiguous), or the test cannot be applied (untestable: no data for it).
OUTCOMES = ("pass", "ambiguous", "fail", "untestable")
POOLING = ("seeds of a PLR are pooled when every one of them is in regime 2 (none converged, diverged or "
           "at chance): each test's z-scores are averaged over the seeds it applies to, with noise the larger "
           "of the binomial one and the seeds' spread, and read with the same bands; a test every seed fails "
           "fails, and a pooled pass (fail) where some seed fails (passes) is ambiguous")


def _split(outcomes: xr.DataArray) -> xr.DataArray:
    """2B when any test fails, 2A when every test passes, 2? otherwise (over ``test``)."""
    failed = (outcomes == "fail").any("test")
    passed = (outcomes == "pass").all("test")
    return xr.where(failed, "2B", xr.where(passed, "2A", "2?")).astype(object)


def _pool_one(z: np.ndarray, outcomes: np.ndarray, z_same: float, z_differ: float) -> tuple[float, str]:
    """Pooled z-score and outcome of one test over the seeds of one PLR it applies to."""
    if z.size == 0:
        return np.nan, "untestable"
    spread = z.std(ddof=1) if z.size > 1 else 0.0
    # The mean of n scores has noise 1 / sqrt(n) under the binomial model; seeds that scatter
    # more than that measure a larger noise (training randomness), which then takes its place.
    pooled = float(np.clip(z.mean() * np.sqrt(z.size) / max(1.0, spread), -Z_MAX, Z_MAX))
    seen = set(outcomes)
    if seen == {"fail"}:  # every replicate shows the difference: their spread casts no doubt on it
        return pooled, "fail"
    said = outcome(xr.DataArray(pooled), xr.DataArray(True), z_same, z_differ).item()
    if ("fail" if said == "pass" else "pass" if said == "fail" else None) in seen:
        said = "ambiguous"  # pooling weighs what seeds leave open, it does not overrule a clear seed
    return pooled, said


def _pooled(regime2: np.ndarray, z: xr.DataArray, outcomes: xr.DataArray, labels: xr.DataArray,
            z_same: float, z_differ: float) -> xr.Dataset:
    """Pool the seeds of each PLR whose seeds are all in regime 2 (see :data:`POOLING`)."""
    n_plr, n_tests = z.sizes["plr"], z.sizes["test"]
    pooled_z = np.full((n_plr, n_tests), np.nan)
    pooled_outcome = np.full((n_plr, n_tests), "untestable", dtype=object)
    label = np.empty(n_plr, dtype=object)
    zv, ov = (a.transpose("plr", "seed", "test").values for a in (z, outcomes))
    for i, runs in enumerate(labels.transpose("plr", "seed").values):
        seeds_labels = set(runs)
        if not regime2[i]:
            label[i] = runs[0] if len(seeds_labels) == 1 else "mixed"
            continue
        for t in range(n_tests):
            testable = ov[i, :, t] != "untestable"
            pooled_z[i, t], pooled_outcome[i, t] = _pool_one(zv[i, testable, t].astype(float), ov[i, testable, t],
                                                             z_same, z_differ)
        said = set(pooled_outcome[i])
        label[i] = ("2B" if "fail" in said or seeds_labels == {"2B"} else "2A" if said == {"pass"} else "2?")
    return xr.Dataset({
        "pooled": ("plr", regime2),
        "test_z_pooled": (("plr", "test"), pooled_z),
        "test_outcome_pooled": (("plr", "test"), pooled_outcome),
        "regime_pooled": ("plr", label),
    }, coords={"plr": z.plr, "test": z.test})


def _mode(regime: xr.DataArray) -> xr.DataArray:
    """The most common label of each PLR over seeds (ties go to the label of smaller PLRs)."""
    counts = np.stack([(regime == label).sum("seed").values for label in LABELS])
    return xr.DataArray(np.array(LABELS, dtype=object)[counts.argmax(0)], dims="plr", coords={"plr": regime.plr})


def _tests(table: xr.Dataset, n_test: int, lower_flr_only: bool) -> xr.Dataset:
    """Each run's 2A tests: the quantities they read, their z-scores and whether they apply."""
    ft = table.ft_test_acc
    counted = ft.flr < ft.plr if lower_flr_only else xr.ones_like(ft.flr * ft.plr, dtype=bool)
    acc = ft.where(counted)
    # A fine-tuning run that diverged fails the FLR test: its FLR did not reach the accuracy.
    ft_failed = (counted & ft.isnull()).any("flr")
    ft_best = acc.max("flr")
    out = xr.Dataset({"ft_best_acc": ft_best, "ft_acc_spread": (ft_best - acc.min("flr")).where(~ft_failed)})
    z = {"flr": xr.where(ft_failed, Z_MAX, flr_z(acc, n_test))}
    testable = {"flr": (counted.sum("flr") >= 2) | ft_failed}
    never = xr.zeros_like(ft_best, dtype=bool)
    if "swa_test_acc" in table:
        swa = table.swa_test_acc
        swa_best = swa.max("swa")
        out["swa_shortfall"] = ft_best - swa_best
        out["swa_best_k"] = swa.swa[swa.fillna(-np.inf).argmax("swa")].where(swa_best.notnull()).drop_vars("swa")
        # Every window is a candidate: the test asks whether averaging reaches the FT accuracy.
        z["swa"] = xr.where(swa_best.isnull(), Z_MAX, swa_z(ft_best, swa_best, n_test))
        testable["swa"] = ft_best.notnull()
    else:
        z["swa"], testable["swa"] = xr.full_like(ft_best, np.nan), never
    if "ft_barrier" in table:
        # Both ends must be fine-tuned with a lower LR for the barrier to be one between FT solutions.
        ends_lowered = max(table.attrs["barrier_flr"]) < table.plr if lower_flr_only else True
        out["ft_barrier"], out["ft_barrier_se"] = table.ft_barrier, table.ft_barrier_se
        z["barrier"] = barrier_z(table.ft_barrier, table.ft_barrier_se, int(table.attrs["barrier_points"]))
        testable["barrier"] = table.ft_barrier.notnull() & table.ft_barrier_se.notnull() & ends_lowered
    else:
        z["barrier"], testable["barrier"] = xr.full_like(ft_best, np.nan), never
    dim = xr.DataArray(np.array(TESTS, dtype=object), dims="test", name="test")
    out["test_z"] = xr.concat([z[t].broadcast_like(ft_best) for t in TESTS], dim=dim)
    out["testable"] = xr.concat([xr.DataArray(testable[t]).broadcast_like(ft_best) for t in TESTS], dim=dim)
    return out


def classify(
    table: xr.Dataset,
    convergence_loss: float = CONVERGENCE_LOSS,
    chance_margin: float = CHANCE_MARGIN,
    z_same: float = Z_SAME,
    z_differ: float = Z_DIFFER,
    lower_flr_only: bool = True,
) -> xr.Dataset:
    """Regime of every (plr, seed) from a table of per-run quantities, pooled and per PLR.

    Rules, applied in this order to each run:

    1. **3 (divergence)** when the run diverged.
    2. **1 (convergence)** when the final pre-training train loss is below
       ``convergence_loss`` (the study's operational 1e-2). A converged run stays in 1 even
       if its test accuracy is poor: the regimes are regimes of the optimisation.
    3. **3 (divergence)** when the pre-training test accuracy (mean over the last epochs) is
       at most chance + ``chance_margin``, or is not finite.
    4. Otherwise regime 2, split by the three 2A tests of SPEC §5 when the table has
       fine-tuning. Each gives a z-score, the difference from the 2A ideal in units of its
       noise (the binomial standard error of each accuracy on the ``n_test`` samples of the
       test set, :func:`accuracy_se`):

       - ``flr``: the FT accuracies of every FLR below the PLR are the same — their χ²
         homogeneity statistic (:func:`flr_z`); needs two such FLRs. A diverged FT run fails it.
       - ``swa``: the SWA solution is as good as the best FT — the shortfall of the best SWA
         over every stored K below the best FT accuracy (:func:`swa_z`); needs SWA and an FLR
         below the PLR. Both are maxima over several solutions, so their selection biases
         largely cancel.
       - ``barrier``: the FT-low ↔ FT-high test barrier is ≈ 0 — against the largest noise of
         the path's interior points (:func:`barrier_z`); needs a barriers result and both
         ends' FLRs below the PLR (else the path is not between fine-tuned solutions).

       A test passes when z ≤ ``z_same`` (the difference is within the noise), fails when
       z ≥ ``z_differ`` (beyond it) and is ambiguous between; one that cannot be applied is
       untestable, which is not a pass. **2B** when any test fails, **2A** when all three
       pass, else **2?**: the data do not decide the split. Without fine-tuning the label is
       **2**.

    The per-run noise is the binomial one: that is what a single run measures of itself. The
    seeds' spread enters where seeds are pooled: only at a PLR whose seeds are all in regime 2
    (replicates of one condition; at a PLR where some converge or diverge they are not). There
    each test's z-scores are averaged over the seeds it applies to, with the noise of the mean
    the larger of the binomial one (1/√n) and the seeds' spread (their standard deviation /
    √n), and read with the same bands: a difference each seed leaves within or of the order of
    its noise can be beyond the noise of the mean. But a test every seed fails fails (the
    spread of large scores casts no doubt on them), and a pooled pass (fail) where some seed
    fails (passes) is ambiguous: pooling does not overrule a seed's clear evidence. The pooled label
    is 2B when a pooled test fails or every seed is 2B, 2A when every pooled test passes, else
    2?; elsewhere it is the seeds' common label, or "mixed".

    Boundaries "1|2" (the convergence threshold), "2A|2B" and "2|3": per seed by
    :func:`locate_boundary`, and over all seeds by :func:`boundary_interval`, with a bootstrap
    interval over the seeds in whole grid steps. "2A|2B" needs a 2A or 2B label.

    Parameters
    ----------
    table
        Per-run quantities over (plr, seed), ``plr`` ascending (:func:`regime_table` reads them
        from a store): ``pt_train_loss``, ``pt_test_acc_mean``, ``diverged`` (bool); optional
        ``ft_test_acc`` (plr, flr, seed), ``swa_test_acc`` (plr, seed, swa), ``ft_barrier`` and
        ``ft_barrier_se`` (plr, seed; percent). attrs: ``n_test``, ``chance``; with a barrier
        ``barrier_points`` (interior points of the path) and ``barrier_flr`` (its ends' FLRs).
    convergence_loss
        Final pre-training train loss below which a run has converged.
    chance_margin
        Accuracy above chance that a run must exceed not to count as diverged.
    z_same
        Largest z-score of a difference within the noise (a pass).
    z_differ
        Smallest z-score of a difference beyond the noise (a fail); at least ``z_same``.
    lower_flr_only
        Count only FLRs below the PLR: fine-tuning lowers the LR (FT at FLR ≥ PLR is
        pre-training at another LR, which near the threshold may itself land in 2B).

    Returns
    -------
    xr.Dataset
        ``regime(plr, seed)`` (labels as strings), ``regime_mode(plr)`` (most common),
        ``regime_share(plr, label)`` (the share of seeds with each of :data:`LABELS`), the
        quantities the rules read — ``pt_train_loss``, ``pt_test_acc_mean``, and with
        fine-tuning ``ft_best_acc``, ``ft_acc_spread``, ``swa_shortfall``, ``swa_best_k``,
        ``ft_barrier``, ``ft_barrier_se`` (plr, seed) — ``test_z`` and ``test_outcome``
        (plr, seed, test), ``pooled``, ``regime_pooled`` (plr), ``test_z_pooled`` and
        ``test_outcome_pooled`` (plr, test; untestable where not pooled); per seed
        ``boundary_plr(seed, boundary)`` and ``boundary_log10_mean``, ``boundary_log10_std``
        (ddof 0), ``boundary_geomean``; over all seeds ``boundary_fit``, ``boundary_low``,
        ``boundary_high`` (boundary, PLR). attrs: ``n_test``, ``chance``, every option, and
        ``noise`` and ``pooling`` saying how the tests weigh the evidence.
    """
    if not 0 <= z_same <= z_differ:
        raise LrscanError(f"the regime tests need 0 <= z_same <= z_differ, got z_same={z_same}, z_differ={z_differ}")
    n_test, chance = int(table.attrs["n_test"]), float(table.attrs["chance"])
    loss, acc = table.pt_train_loss, table.pt_test_acc_mean
    diverged = table.diverged.astype(bool)
    converged = loss < convergence_loss
    at_chance = ~(acc > chance + chance_margin)
    regime2 = ~diverged & ~converged & ~at_chance

    out = {"pt_train_loss": loss, "pt_test_acc_mean": acc}
    attrs = {"n_test": n_test, "chance": chance, "convergence_loss": convergence_loss,
             "chance_margin": chance_margin}
    split = xr.full_like(loss, "2", dtype=object)
    tests = None
    if "ft_test_acc" in table:
        tests = _tests(table, n_test, lower_flr_only)
        outcomes = outcome(tests.test_z, tests.testable, z_same, z_differ)
        split = _split(outcomes)
        out |= {name: tests[name] for name in tests.data_vars if name != "testable"}
        out["test_outcome"] = outcomes
        attrs |= {"z_same": z_same, "z_differ": z_differ, "lower_flr_only": lower_flr_only, "noise": NOISE,
                  "pooling": POOLING}
        for name in ("barrier_points", "barrier_flr"):
            if name in table.attrs:
                attrs[name] = table.attrs[name]

    regime = xr.where(diverged, "3", xr.where(converged, "1", xr.where(at_chance, "3", split)))
    regime = regime.astype(object).transpose("plr", "seed")
    labels = xr.DataArray(np.array(LABELS, dtype=object), dims="label")
    out |= {"regime": regime, "regime_mode": _mode(regime),
            "regime_share": (regime == labels).mean("seed").assign_coords(label=labels)}
    pool_seeds = regime2.all("seed").values
    if tests is not None:
        out |= _pooled(pool_seeds, tests.test_z, out["test_outcome"], regime, z_same, z_differ).data_vars
    else:
        unanimous = [runs[0] if len(set(runs)) == 1 else "mixed" for runs in regime.values]
        out |= {"pooled": ("plr", pool_seeds), "regime_pooled": ("plr", np.array(unanimous, dtype=object))}
    out |= _boundaries(regime)
    attrs["description"] = ("regime of each (plr, seed): 1 convergence, 2A/2B chaotic equilibrium (2? undecided), "
                            "3 divergence, from noise-aware tests; shares and pooled labels per PLR; boundary PLRs "
                            "per seed and over all seeds with a bootstrap interval")
    return xr.Dataset(out, coords={"plr": regime.plr, "seed": regime.seed}, attrs=attrs)


def _boundaries(regime: xr.DataArray) -> dict[str, xr.DataArray]:
    """Every boundary per seed (with its spread) and over all seeds (with its interval)."""
    names = xr.DataArray(np.array(list(BOUNDARIES), dtype=object), dims="boundary")
    need = {"2A|2B": {"2A", "2B"}}
    per_seed = xr.concat([locate_boundary(regime, lower, upper, need.get(name))
                          for name, (lower, upper) in BOUNDARIES.items()], dim=names).transpose("seed", "boundary")
    pooled = np.array([boundary_interval(regime, lower, upper, need.get(name))
                       for name, (lower, upper) in BOUNDARIES.items()])
    log_boundary = np.log10(per_seed)
    coords = {"boundary": names}
    return {
        "boundary_plr": per_seed.assign_coords(coords),
        "boundary_log10_mean": log_boundary.mean("seed").assign_coords(coords),
        "boundary_log10_std": log_boundary.std("seed").assign_coords(coords),
        "boundary_geomean": (10 ** log_boundary.mean("seed")).assign_coords(coords),
        **{f"boundary_{part}": xr.DataArray(pooled[:, i], dims="boundary", coords=coords)
           for i, part in enumerate(("fit", "low", "high"))},
    }


def dataset_facts(tree: xr.DataTree) -> tuple[float, int]:
    """Chance accuracy and test-set size of the store's dataset (its first data seed)."""
    spec = Spec.from_dict(tree.attrs["spec"])
    data = DATASETS[spec.dataset].load(spec.data_options, spec.data_seeds[0])
    return 1 / data.n_classes, int(data.y_test.shape[0])


def _final(metrics: xr.Dataset, name: str) -> xr.DataArray:
    return metrics[name].isel(epoch=-1, drop=True).drop_vars("step", errors="ignore")


def _ft_pair(tree: xr.DataTree, barriers: xr.Dataset, runs: xr.DataArray) -> xr.Dataset:
    """``test_barrier`` and ``test_error`` of the FT-low ↔ FT-high pair, over ``runs``' (plr, seed)."""
    low, high = resolve(tree, "ft_low"), resolve(tree, "ft_high")
    found = [i for i, (a, b) in enumerate(zip(barriers.pair_a.values, barriers.pair_b.values))
             if {str(a), str(b)} == {low, high}]
    if not found:
        raise LrscanError(f"the barriers result has no pair {low}~{high} (FT low ~ FT high), which the 2A test "
                          "reads; compute barriers with the default pairs")
    if "test_error" not in barriers:
        raise LrscanError("the barriers result has no test_error curve, from which the 2A barrier test reads its "
                          "noise; compute barriers with lrscan")
    out = barriers[["test_barrier", "test_error"]].isel(pair=found[0]).drop_vars(["pair", "pair_a", "pair_b"],
                                                                                 errors="ignore")
    try:
        out, _ = xr.align(out.load(), runs, join="exact")
    except ValueError:
        raise LrscanError("the barriers result is for other PLRs or seeds than this store") from None
    return out


def regime_table(
    tree: xr.DataTree,
    window: float = WINDOW,
    chance: float | None = None,
    n_test: int | None = None,
    barriers: xr.Dataset | None = None,
) -> xr.Dataset:
    """The per-run quantities the regime rules read, from a finished store (the input of :func:`classify`).

    Parameters
    ----------
    tree
        An opened, finished store.
    window
        Epochs at the end of pre-training whose test accuracy is averaged (as ``metrics``'
        ``pt_test_acc_mean``).
    chance
        Accuracy of guessing; default 1 / number of classes of the store's dataset.
    n_test
        Samples of the test set; default the size of the store's dataset's test set.
    barriers
        A ``barriers`` result with the FT-low ↔ FT-high pair; default the persisted one, if any.

    Returns
    -------
    xr.Dataset
        The table :func:`classify` documents. Loaded: the inputs are one number per run.
    """
    require_complete(tree)
    if chance is None or n_test is None:
        facts = dataset_facts(tree)
        chance, n_test = facts[0] if chance is None else chance, facts[1] if n_test is None else n_test
    pt = pretrain(tree)
    pt_train_loss = _final(pt, "train_loss").load()
    table = xr.Dataset(
        {"pt_train_loss": pt_train_loss,
         "pt_test_acc_mean": last_window(pt, window).test_acc.mean("epoch", skipna=False).load(),
         "diverged": pt.diverged_epoch.notnull().load()},
        attrs={"n_test": int(n_test), "chance": float(chance), "window": window},
    )
    if "finetune" in tree.children:
        table["ft_test_acc"] = _final(tree["finetune/metrics"].to_dataset(), "test_acc").load()
        if "swa" in tree.children:
            table["swa_test_acc"] = tree["swa/metrics"].to_dataset().test_acc.load()
        if barriers is None and "analysis" in tree.children and "barriers" in tree["analysis"].children:
            barriers = tree["analysis/barriers"].to_dataset()
        if barriers is not None:
            pair = _ft_pair(tree, barriers, pt_train_loss)
            table["ft_barrier"] = pair.test_barrier
            table["ft_barrier_se"] = barrier_se(pair.test_error, int(n_test))
            flr = tree.attrs["spec"]["sweep"]["flr"]
            table.attrs |= {"barrier_points": pair.sizes["alpha"] - 2, "barrier_flr": [min(flr), max(flr)]}
    return table


@analyzer("regimes", needs=("pretrain",), after=("barriers",))
def regimes(
    tree: xr.DataTree,
    convergence_loss: float = CONVERGENCE_LOSS,
    chance_margin: float = CHANCE_MARGIN,
    z_same: float = Z_SAME,
    z_differ: float = Z_DIFFER,
    window: float = WINDOW,
    lower_flr_only: bool = True,
    chance: float | None = None,
    n_test: int | None = None,
    barriers: xr.Dataset | None = None,
) -> xr.Dataset:
    """Regime of every (plr, seed), decided within the measured noise, and the regime boundaries.

    :func:`regime_table` reads the per-run quantities from the store and :func:`classify`
    decides; see :func:`classify` for the rules, the noise model and when seeds are pooled.

    Parameters
    ----------
    tree
        An opened, finished store.
    convergence_loss, chance_margin, z_same, z_differ, lower_flr_only
        As for :func:`classify`.
    window, chance, n_test, barriers
        As for :func:`regime_table`.

    Returns
    -------
    xr.Dataset
        As :func:`classify`; attrs also ``window``. Computed eagerly.
    """
    table = regime_table(tree, window=window, chance=chance, n_test=n_test, barriers=barriers)
    result = classify(table, convergence_loss=convergence_loss, chance_margin=chance_margin, z_same=z_same,
                      z_differ=z_differ, lower_flr_only=lower_flr_only)
    result.attrs["window"] = window
    return result
