"""The ``lrscan`` command line: parse, call the library, print."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from pathlib import Path

import click
import numpy as np

from lrscan.cliutil import (DEFAULT_STORE_DIR, AnalyzerDisplay, ProgressDisplay, UserError, cluster_options,
                            default_store, emit_json, json_option, spec_options, store_argument, user_errors)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lrscan")
def main() -> None:
    """Learning-rate sweeps of scale-invariant networks on a sphere: train, analyse, explore.

    The default store is store/synthetic.zarr (relative to the current folder): `lrscan train`
    with no options trains the synthetic preset into it, and every command given no STORE
    reads it.
    """


@main.command()
@spec_options()
@click.option("--sequential", is_flag=True, help="Step runs one at a time instead of batched.")
@cluster_options
@user_errors
def train(preset, config, store, overrides, sequential, workers, scheduler) -> None:
    """Pre-train, fine-tune and average every run of a sweep into a store.

    Runs already done in the store are skipped: rerunning a finished sweep does nothing,
    and rerunning an interrupted one finishes it. Several processes may train one store at
    once; they split its batches between them.
    """
    from lrscan.spec import load_spec
    from lrscan.store import store_path

    if workers and scheduler:
        raise UserError("give either --workers or --scheduler, not both")
    path = store_path(store_argument(store, default_store(preset, config)))
    spec = load_spec(preset, config, overrides)
    from lrscan.train.estimate import human_bytes
    from lrscan.train.sweep import Sweep

    # torch.compile on a CPU-only machine warns that it found no CUDA runtime: noise here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # The cluster first: an unreachable scheduler is refused before any store is made.
    with cluster_client(workers, scheduler) as client:
        sweep = Sweep(spec, path, batched=False if sequential else None)
        if not any(sweep.todo.values()):
            click.echo(f"{path}: every run is already done, nothing to train", err=True)
            return
        todo = ", ".join(f"{len(runs)} {stage}" for stage, runs in sweep.todo.items() if runs)
        click.echo(f"training {todo} runs ({sweep.model_steps:,} model-steps, a store of about "
                   f"{human_bytes(sweep.estimate.store_bytes)}) of {spec.model} on {spec.dataset} into {path}", err=True)
        start = time.perf_counter()
        with ProgressDisplay() as display:
            try:
                counts = sweep.run(progress=display.update, client=client, notice=lambda line: click.echo(line, err=True))
            except KeyboardInterrupt:
                raise UserError("interrupted; finished runs are kept in the store, run the same command to resume") from None
    trained = ", ".join(f"{n} {stage}" for stage, n in counts.items() if n) or "no (other processes did them)"
    click.echo(f"trained {trained} runs in {time.perf_counter() - start:.1f} s into {path}", err=True)


@main.command()
@click.argument("store", required=False)
@click.option("--only", "only", metavar="NAME", multiple=True,
              help="Run only this analyzer (repeatable); see `lrscan analyzers`.")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Compute the lazy analyses on a local dask cluster of N worker processes.")
@click.option("--scheduler", metavar="ADDRESS", help="Compute them on an existing dask cluster.")
@click.option("--set", "settings", metavar="NAME.OPTION=VALUE", multiple=True,
              help="An analyzer option (TOML value), e.g. --set barriers.n_points=5. Repeatable.")
@json_option
@user_errors
def analyze(store, only, workers, scheduler, settings, as_json) -> None:
    """Compute every analysis that applies to a finished store, into /analysis/<name>.

    Results already stored for the same store and options are kept, so a second run
    does no work; a result computed with other options, or from runs redone since, is
    recomputed. Training data is never rewritten.
    """
    path = store_argument(store, default_store(None, None))
    if workers and scheduler:
        raise UserError("give either --workers or --scheduler, not both")
    from lrscan.store.reading import read_spec

    read_spec(path)  # a missing or damaged store is refused before the analyzers (and xarray) load
    from lrscan.analyze.run import analyze as run_analysis
    from lrscan.analyze.run import parse_options

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    start = time.perf_counter()
    display = AnalyzerDisplay()
    with cluster_client(workers, scheduler):  # dask sends lazy work to the active client
        status = run_analysis(path, only or None, options=parse_options(settings), progress=display.status,
                              blocks=display.blocks)
    computed = sum(s == "computed" for s in status.values())
    seconds = time.perf_counter() - start
    click.echo(f"{computed} of {len(status)} analyses computed in {seconds:.1f} s; results under {path}/analysis",
               err=True)
    if as_json:
        emit_json({"store": str(path), "analyses": {name: {"status": s, "seconds": round(display.seconds.get(name, 0), 2)}
                                                    for name, s in status.items()}, "seconds": round(seconds, 2)})


@main.command()
def analyzers() -> None:
    """List the registered analyzers."""
    from lrscan.analyze import summaries

    for name, summary in summaries().items():
        click.echo(f"{name:12s} {summary}")


@main.command()
@click.argument("store", required=False)
@json_option
@user_errors
def info(store, as_json) -> None:
    """Summarise what a store holds: how much of its sweep is done, diverged runs, batches in
    progress, the stored analyses (up to date or stale), regimes and the best PLR."""
    from lrscan.store.reading import _root_attrs
    from lrscan.store.status import store_status
    from lrscan.summary import summarise

    path = store_argument(store, default_store(None, None))
    attrs = _root_attrs(path)  # checks the store, once
    state = store_status(path, attrs)
    lines = summarise(path, state, attrs).splitlines()
    if state["status"] == "training":  # not "run lrscan train": one is running
        lines = [line for line in lines if not line.startswith("status ")]
        lines.append(f"status    training: {len(state['in_progress'])} batches in progress now")
    lines += _info_lines(state)
    text = "\n".join(lines)
    if as_json:
        click.echo(text, err=True)
        emit_json(state)
    else:
        click.echo(text)


def _info_lines(state: dict) -> list[str]:
    lines = []
    for claim in state["in_progress"]:
        lines.append(f"training  {claim['stage']} batch {claim['batch']}: {claim['holder']}")
    if state["diverged"]:
        shown = "; ".join(", ".join(f"{k}={v:.3g}" for k, v in d.items() if k not in ("stage", "epoch"))
                          + f" ({d['stage']}, epoch {d['epoch']:g})" for d in state["diverged"][:5])
        more = len(state["diverged"]) - 5
        lines.append(f"diverged  {shown}" + (f"; ... and {more} more" if more > 0 else ""))
    if state["analyses"]:
        lines.append("analyses  " + ", ".join(f"{name} ({a['status']})" for name, a in state["analyses"].items()))
        stale = {a["why"] for a in state["analyses"].values() if a["status"] != "up to date" and a["why"]}
        lines += [f"          {why}" for why in sorted(stale)]
    else:
        lines.append("analyses  none yet: run `lrscan analyze`")
    if "regimes" in state:
        lines.append("regimes   " + ", ".join(f"PLR {p}: {r}" for p, r in state["regimes"].items()))
    for name, b in state.get("boundaries", {}).items():
        if np.isfinite(b["plr"]):
            lines.append(f"boundary  {name} at PLR {b['plr']:.3g} [{b['low']:.3g}, {b['high']:.3g}]")
    for kind, found in (state.get("best") or {}).items():
        lines.append(f"best      {found['text']}")
    return lines


@main.command()
@click.argument("store", required=False)
@click.option("--fix", is_flag=True, help="Mark missing and corrupted runs as not done, so `lrscan train` redoes them.")
@json_option
@user_errors
def verify(store, fix, as_json) -> None:
    """Re-read every run of a store and check it against the checksum written after it.

    Lists runs that are incomplete, missing or corrupted, and damaged metadata; exits 1
    when there are any.
    """
    from lrscan.store import StoreDamaged
    from lrscan.store import verify as check

    path = store_argument(store, default_store(None, None))
    try:
        problems = check(path, fix=fix)
    except StoreDamaged as err:
        click.echo(str(err), err=True)
        if as_json:
            emit_json({"store": str(path), "damaged": str(err), "problems": []})
        sys.exit(1)
    out = sys.stderr if as_json else sys.stdout
    for problem in problems:
        click.echo(str(problem), file=out)
    damaged = [p for p in problems if p.kind != "incomplete"]
    click.echo(f"{path}: {len(problems)} problem runs ({len(damaged)} missing or corrupted"
               + (", marked to be redone by `lrscan train`)" if fix and damaged else ")"), err=True)
    if as_json:
        emit_json({"store": str(path), "damaged": None, "fixed": bool(fix and damaged),
                   "problems": [{"stage": p.stage, "coords": dict(p.coords), "kind": p.kind, "detail": p.detail}
                                for p in problems]})
    if problems:
        sys.exit(1)


@contextlib.contextmanager
def cluster_client(workers: int | None, scheduler: str | None):
    """A dask.distributed client for --workers / --scheduler, or None to train in-process."""
    if not workers and not scheduler:
        yield None
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise UserError("--workers / --scheduler need dask.distributed: pip install distributed") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as err:
            raise UserError(f"cannot reach the dask scheduler at {scheduler}: {err}") from None
        with client:
            yield client
        return
    import torch

    n_gpus = torch.cuda.device_count()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        if n_gpus and workers > n_gpus:
            click.echo(f"note: {workers} workers share {n_gpus} GPUs", err=True)
        yield client


@main.command()
def presets() -> None:
    """List the shipped presets."""
    from lrscan.spec import preset_names, preset_text

    for name in preset_names():
        click.echo(f"{name:20s} {preset_description(preset_text(name))}")


def preset_description(text: str) -> str:
    """A preset's description: its leading comment block, whole, as one paragraph."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(line for line in lines if line)


def _number(option: str, text: str | None) -> float | None:
    """A number given on the command line (``1e-3``, ``2_000_000``), or a one-line error."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{option} must be a number, got {text!r}") from None


@main.command()
@spec_options("-threshold")
@click.option("--low", metavar="PLR", help="Lowest PLR of the grid (default: the spec's smallest PLR).")
@click.option("--high", metavar="PLR", help="Highest PLR of the grid (default: the spec's largest PLR).")
@click.option("--per-decade", default="16", show_default=True, metavar="N", help="Grid points per decade of PLR.")
@click.option("--budget", metavar="MODEL_STEPS",
              help="Model-steps the search may spend in all, e.g. 2e6 (default: until the bracket is one grid step).")
@click.option("--sequential", is_flag=True, help="Step runs one at a time instead of batched.")
@json_option
@user_errors
def threshold(preset, config, store, overrides, low, high, per_decade, budget, sequential, as_json) -> None:
    """Locate the convergence threshold by bisection in log-PLR, training only the PLRs it picks.

    Pre-trains from scratch (every seed, pretrain_epochs each, no fine-tuning) at grid
    points picked round by round: the grid's ends, then always the midpoint of the bracket
    between the largest PLR whose seeds all reach train loss < 1e-2 and the smallest one
    above it that does not. Prints the threshold (the bracket's geometric mean) with its
    half-width in log10, and stores it under /analysis/threshold. Rerunning resumes; a
    larger --budget refines the bracket further. See README.md, "Threshold study".
    """
    import math

    from lrscan.threshold import ThresholdSearch, threshold_spec

    steps = _number("--per-decade", per_decade)
    spec = threshold_spec(preset, config, overrides, low=_number("--low", low), high=_number("--high", high),
                          per_decade=int(steps) if steps.is_integer() else steps)
    base = default_store(preset, config)
    path = store_argument(store, base.with_name(f"{base.stem}-threshold.zarr"))
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    search = ThresholdSearch(spec, path, budget=_number("--budget", budget), batched=False if sequential else None)
    click.echo(f"threshold search over {len(spec.plr)} PLRs from {spec.plr[0]:.3g} to {spec.plr[-1]:.3g}: "
               f"{search.n_runs} seeds x {spec.pretrain_epochs:g} epochs ({search.cost:,} model-steps) per PLR, "
               f"into {path}", err=True)
    display = ProgressDisplay()

    def show(found) -> None:
        nonlocal display
        display.__exit__()
        display = ProgressDisplay()
        outcomes = ", ".join(f"PLR {p:.3g}: {n}/{found.n_seeds}" for p, n in zip(found.plr, found.seeds_converged))
        lo, hi = found.bracket
        click.echo(f"round {found.index}: {outcomes} seeds converge; bracket [{lo:.3g}, {hi:.3g}]"
                   + ("" if found.trained else " (from the store)"), err=True)

    try:
        result = search.run(progress=lambda p: display.update(p), on_round=show)
    except KeyboardInterrupt:
        raise UserError("interrupted; finished runs are kept in the store, run the same command to resume") from None
    finally:
        display.__exit__()
    lo, hi = result.bracket
    say = functools.partial(click.echo, err=as_json)  # with --json, the human text goes to stderr
    if result.status == "below":
        say(f"not every seed converges even at the grid's bottom, PLR {spec.plr[0]:.3g}: the threshold lies "
            "below the grid; lower --low")
    elif result.status == "above":
        say(f"every seed converges even at the grid's top, PLR {spec.plr[-1]:.3g}: the threshold lies above "
            "the grid; raise --high")
    else:
        how = "one grid step" if result.status == "resolved" else "the budget ran out first"
        say(f"convergence threshold at PLR {result.threshold:.3g} (log10 {math.log10(result.threshold):.3f} "
            f"± {result.log10_halfwidth:.3f}), bracket [{lo:.3g}, {hi:.3g}] ({how}); {len(result.picks)} "
            f"PLRs trained, {result.model_steps:,} model-steps; stored under {path}/analysis/threshold")
    if as_json:
        emit_json({"store": str(path), "status": result.status, "threshold": result.threshold,
                   "log10_halfwidth": result.log10_halfwidth, "bracket": [lo, hi], "picks": list(result.picks),
                   "model_steps": result.model_steps})


def _scan_amount(option: str, text: str | None, units: dict[str, float], what: str) -> float | None:
    """A number with an optional unit suffix (``30m``, ``25%``), or a one-line error naming ``what`` it must be."""
    if text is None:
        return None
    value, scale = text.strip(), 1.0
    for suffix, factor in units.items():
        if value.endswith(suffix):
            value, scale = value[: -len(suffix)], factor
            break
    try:
        return float(value) * scale
    except ValueError:
        raise UserError(f"{option} must be {what}, got {text!r}") from None


def _log10_plr(estimate) -> str:
    """An estimate in log10 PLR as it reads on the terminal."""
    if not estimate.found:
        return "not within the PLR range"
    return f"{10 ** estimate.value:.3g} (log10 {estimate.value:.3f} ± {estimate.uncertainty:.3f})"


SCAN_STOPS = {
    "resolved": "every estimate reached the precision",
    "ambiguous": "some bracket is wider than the precision but has no untrained PLR left (its seeds disagree)",
    "budget": "the next round would pass the budget; rerun with a larger --budget to continue",
    "time": "the time is up; rerun the same command to continue",
}


@main.command()
@spec_options("-scan")
@click.option("--budget", metavar="STEPS",
              help="Most model-steps the scan may spend, e.g. 4e6, or a share of the full grid's, e.g. 30%.")
@click.option("--time", "time_limit", metavar="DURATION",
              help="Start no new round after this wall time: seconds, or e.g. 90m, 2h.")
@click.option("--precision", metavar="DECADES",
              help="Target uncertainty of the 2A range's ends in log10 PLR (default: the grid's resolution).")
@click.option("--per-decade", default="16", show_default=True, metavar="N", help="PLRs per decade of the scan's grid.")
@click.option("--flrs", default=3, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="FLRs to fine-tune with: the lowest and highest of the spec's, and evenly spread ones between.")
@click.option("--per-bracket", default=1, show_default=True, type=click.IntRange(min=1), metavar="K",
              help="New PLRs per unresolved bracket and round (1: bisection; more: fewer, wider rounds).")
@cluster_options
@json_option
@user_errors
def scan(preset, config, store, overrides, budget, time_limit, precision, per_decade, flrs, per_bracket, workers,
         scheduler, as_json) -> None:
    """Find the 2A range and the best PLR adaptively, training only the PLRs that decide them.

    Round 0 trains a coarse grid (2 PLRs per decade); each later round reads the regimes
    and fine-tuned accuracies of what is trained and adds PLRs of a fine grid where they
    narrow the convergence threshold, the 2A|2B boundary and the best fine-tuned accuracy.
    Every run is an ordinary run in an ordinary store: rerunning resumes, a larger --budget
    continues. The result is printed and stored under /analysis/scan. See README.md,
    "lrscan scan".
    """
    from lrscan.scan import Scan, estimates
    from lrscan.spec import load_spec

    if workers and scheduler:
        raise UserError("give either --workers or --scheduler, not both")
    base = default_store(preset, config)
    path = store_argument(store, base.with_name(f"{base.stem}-scan.zarr"))
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    job = Scan(load_spec(preset, config, overrides), path,
               per_decade=_scan_amount("--per-decade", per_decade, {}, "a number"), flrs=flrs,
               precision=_scan_amount("--precision", precision, {}, "a number of decades"), per_bracket=per_bracket)
    steps = _scan_amount("--budget", budget, {"%": job.grid_steps / 100},
                         "a number of model-steps or a percentage of the full grid's")
    seconds = _scan_amount("--time", time_limit, {"s": 1, "m": 60, "h": 3600}, "seconds or a duration like 90m")
    job.check(steps, seconds)
    spec = job.spec
    click.echo(f"scanning {len(spec.plr)} PLRs from {spec.plr[0]:.3g} to {spec.plr[-1]:.3g} "
               f"({job.per_decade:g} per decade), FLRs {', '.join(f'{f:.3g}' for f in spec.flr)}, "
               f"{job.plr_steps:,} model-steps per PLR, into {path}", err=True)
    display = None

    def show_training(progress) -> None:
        nonlocal display
        display = display or ProgressDisplay()
        display.update(progress)

    def show_round(done) -> None:
        nonlocal display
        if display is not None:
            display.__exit__()
            display = None
        est = done.estimate
        how = "trained" if done.trained else "read from the store"
        click.echo(f"round {done.number}: {how} PLR {', '.join(f'{p:.3g}' for p in done.plr)}; {done.n_plr} PLRs, "
                   f"{done.model_steps:,} model-steps ({100 * done.model_steps / job.grid_steps:.0f}% of the full "
                   f"grid) | threshold {_log10_plr(est['1|2'])} | 2A|2B {_log10_plr(est['2A|2B'])} | "
                   f"recommended {_log10_plr(est['recommended'])}", err=True)

    with cluster_client(workers, scheduler) as client:
        try:
            result = job.run(budget=steps, seconds=seconds, client=client, progress=show_training, report=show_round)
        except KeyboardInterrupt:
            raise UserError("interrupted; finished runs are kept in the store, run the same command to resume") from None
        finally:
            if display is not None:
                display.__exit__()
    est = estimates(result)
    low, high = est["1|2"], est["2A|2B"]
    say = functools.partial(click.echo, err=as_json)  # with --json, the human text goes to stderr
    say(f"convergence threshold  {_log10_plr(low)}")
    if low.found and high.found:
        say(f"2A range               {10 ** low.value:.3g} to {10 ** high.value:.3g} "
            f"(log10 {low.value:.3f} ± {low.uncertainty:.3f} to {high.value:.3f} ± {high.uncertainty:.3f})")
    else:
        say(f"2A range               up to {_log10_plr(high)}")
    line = f"recommended PLR        {_log10_plr(est['recommended'])}"
    if "recommended_flr" in result:
        line += (f": FT test accuracy {100 * float(result.recommended_test_acc):.1f}% "
                 f"with FLR {float(result.recommended_flr):.3g}")
    say(line)
    spent = result.attrs["model_steps"]
    say(f"spent {spent:,} model-steps on {result.sizes.get('plr', 0)} of {len(spec.plr)} grid PLRs in "
        f"{result.attrs['rounds']} rounds, {100 * spent / job.grid_steps:.0f}% of the full grid's "
        f"{job.grid_steps:,}; stopped: {SCAN_STOPS.get(result.attrs['stopped'], result.attrs['stopped'])}")
    click.echo(f"stored under {path}/analysis/scan", err=True)
    if as_json:
        found = {name: {"found": bool(e.found), "log10_plr": float(e.value) if e.found else None,
                        "plr": float(10 ** e.value) if e.found else None,
                        "log10_uncertainty": float(e.uncertainty) if e.found else None} for name, e in est.items()}
        doc = {"store": str(path), "estimates": found, "model_steps": spent, "rounds": result.attrs["rounds"],
               "stopped": result.attrs["stopped"], "grid_steps": job.grid_steps,
               "trained_plr": [float(p) for p in result.plr.values] if "plr" in result.coords else []}
        if "recommended_flr" in result:
            doc["recommended_flr"] = float(result.recommended_flr)
            doc["recommended_test_acc"] = float(result.recommended_test_acc)
        emit_json(doc)


@main.command("import")
@click.argument("source")
@click.option("--store", metavar="PATH", help="Store directory (default: store/<SOURCE folder name>.zarr).")
@click.option("--model", metavar="NAME", required=True, help="The registered model the checkpoints hold, e.g. mlp.")
@click.option("--pattern", "patterns", metavar="PATTERN", multiple=True, required=True,
              help="Paths under SOURCE to coordinates, e.g. 'plr={plr}/seed={seed}[/ft={flr}]/ckpt-{epoch}.pt'; "
                   "[...] is optional, * any text in a folder name, {epoch:200-299} selects epochs. Repeatable.")
@click.option("--dataset", metavar="NAME", help="The registered dataset the model was trained on (default: ticks).")
@click.option("--set", "overrides", metavar="FIELD=VALUE", multiple=True,
              help="What the paths do not say: --set batch_size=128 --set model.width=64 --set swa=[5]. Repeatable.")
@click.option("--ft-epoch-origin", type=click.Choice(["branch", "start"]), default="branch", show_default=True,
              help="A fine-tuning file's {epoch} counts from the branch point, or from the start of pre-training.")
@click.option("--accuracy", type=click.Choice(["auto", "fraction", "percent"]), default="auto", show_default=True,
              help="Unit of the accuracies stored in the files (auto: decided once per store, percent when a "
                   "sampled value is above 1).")
@click.option("--rename", "renames", metavar="OLD=NEW", multiple=True,
              help="Rename the files' tensors: OLD and the names under it (OLD.*) become NEW; 're:PATTERN=NEW' "
                   "substitutes a regular expression. Repeatable, applied in order.")
@click.option("--seed-axis", type=click.Choice(["auto", "shared", "replicate"]), default="auto", show_default=True,
              help="The store's seed axis: the files' seeds (shared by every PLR), or a replicate index over each "
                   "PLR's own seeds (auto: replicate when no seed appears at two PLRs).")
@click.option("--allow-missing", is_flag=True,
              help="Write runs that have no file as empty (NaN) runs, so that analyzers run on a partial grid.")
@user_errors
def import_(source, store, model, patterns, dataset, overrides, ft_epoch_origin, accuracy, renames, seed_axis,
            allow_missing) -> None:
    """Import a folder (or fsspec URL) of PyTorch checkpoints into a store for `lrscan analyze`.

    The patterns map each file's path to its run and epoch; files whose path gives {flr}
    are fine-tuning checkpoints, and a pattern without {epoch} takes files that each hold
    a whole run.
    Rerunning continues an interrupted import and skips the runs already imported. See
    README.md, "Importing checkpoints".
    """
    from collections import defaultdict

    from lrscan.importer import import_checkpoints

    path = store_argument(store, DEFAULT_STORE_DIR / f"{Path(source.rstrip('/')).name or 'import'}.zarr")
    start = last = time.perf_counter()

    def show(progress) -> None:  # a line every 10 s: quick imports stay quiet
        nonlocal last
        now = time.perf_counter()
        if now - last >= 10:
            last = now
            click.echo(f"{progress.phase}: {progress.done:,} of {progress.total:,} files, {now - start:.0f} s", err=True)

    try:
        result = import_checkpoints(source, str(path), model, patterns, dataset=dataset, overrides=overrides,
                                    ft_epoch_origin=ft_epoch_origin, accuracy=accuracy, renames=renames,
                                    seed_axis=seed_axis, allow_missing=allow_missing, progress=show)
    except KeyboardInterrupt:
        raise UserError("interrupted; imported runs are kept in the store, run the same command to resume") from None
    if result.unmatched:
        click.echo(f"warning: {len(result.unmatched)} files under {source} match no --pattern and were not imported:",
                   err=True)
        for name in result.unmatched[:20]:
            click.echo(f"  {name}", err=True)
        if len(result.unmatched) > 20:
            click.echo(f"  ... and {len(result.unmatched) - 20} more", err=True)
    for what, items in (("runs have no file", result.missing), ("runs lack some epochs", result.gaps)):
        if items:
            click.echo(f"warning: {len(items)} {what}: " + "; ".join(items[:5])
                       + (f"; ... and {len(items) - 5} more" if len(items) > 5 else ""), err=True)
    if result.missing:
        click.echo("  written as empty runs (NaN)" if allow_missing else
                   "  left not done: add their files and rerun, or pass --allow-missing to analyse without them",
                   err=True)
    if result.excluded:
        click.echo(f"{len(result.excluded)} files lie outside the patterns' epoch ranges and were left out", err=True)
    if result.swa:
        click.echo(f"warning: SWA {result.swa}", err=True)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    units = defaultdict(list)
    for key, unit in result.accuracy.items():
        units[unit].append(key)
    said = [f"radius {result.radius:g} (the SI-group norm of the files)"] if result.radius is not None else []
    said += [f"{', '.join(keys)} read as {'percentages' if unit == 'percent' else 'fractions'}"
             for unit, keys in sorted(units.items())]
    if result.spec.finetune_epochs:
        said.append(f"fine-tuning branches from epoch {result.spec.resolved_finetune_from:g}")
    if result.seed_axis == "replicate":
        said.append("seed axis: a replicate index over each PLR's own seeds (listed in the lrscan_import attrs)")
    if said:
        click.echo("; ".join(said), err=True)
    if not result.imported:
        click.echo(f"{path}: every run is already imported, nothing to do", err=True)
        return
    done = ", ".join(f"{n} {stage}" for stage, n in result.imported.items())
    click.echo(f"imported {done} runs ({result.files:,} files) in {time.perf_counter() - start:.1f} s into {path}",
               err=True)


# Registered last: the plot commands import this module's helpers.
from lrscan.plot.commands import explore, plot  # noqa: E402

main.add_command(plot)
main.add_command(explore)
