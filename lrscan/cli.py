"""The ``lrscan`` command line: parse, call the library, print."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from pathlib import Path

import click

from lrscan.errors import LrscanError

DEFAULT_STORE_DIR = Path("store")


class UserError(click.ClickException):
    """A one-line error on stderr with exit status 2."""

    exit_code = 2


def user_errors(func):
    """Turn library errors a user can fix into one line and exit status 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LrscanError as err:
            raise UserError(str(err)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lrscan")
def main() -> None:
    """Learning-rate sweeps of scale-invariant networks on a sphere: train, analyse, explore."""


def default_store(preset: str | None, config: str | None) -> Path:
    from lrscan.spec import DEFAULT_PRESET

    name = Path(config).stem if config else (preset or DEFAULT_PRESET)
    return DEFAULT_STORE_DIR / f"{name}.zarr"


@main.command()
@click.option("--preset", metavar="NAME", help="A shipped preset (default: synthetic); see `lrscan presets`.")
@click.option("--config", metavar="FILE", help="A TOML sweep spec with a [sweep] table.")
@click.option("--store", metavar="PATH", help="Store directory (default: store/<preset or config name>.zarr).")
@click.option("--set", "overrides", metavar="FIELD=VALUE", multiple=True,
              help="Override a spec field, e.g. --set seeds=3 --set data.n_train=256. Repeatable.")
@click.option("--sequential", is_flag=True, help="Step runs one at a time instead of batched.")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Run batches on a local dask cluster of N worker processes (one per GPU on a GPU machine).")
@click.option("--scheduler", metavar="ADDRESS", help="Run batches on an existing dask cluster, e.g. tcp://host:8786.")
@user_errors
def train(preset, config, store, overrides, sequential, workers, scheduler) -> None:
    """Pre-train, fine-tune and average every run of a sweep into a store.

    Runs already done in the store are skipped: rerunning a finished sweep does nothing,
    and rerunning an interrupted one finishes it. Several processes may train one store at
    once; they split its batches between them.
    """
    from lrscan.spec import load_spec
    from lrscan.train.sweep import Sweep

    if workers and scheduler:
        raise UserError("give either --workers or --scheduler, not both")
    spec = load_spec(preset, config, overrides)
    path = store or default_store(preset, config)
    # torch.compile on a CPU-only machine warns that it found no CUDA runtime: noise here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    sweep = Sweep(spec, path, batched=False if sequential else None)
    if not any(sweep.todo.values()):
        click.echo(f"{path}: every run is already done, nothing to train", err=True)
        return
    todo = ", ".join(f"{len(runs)} {stage}" for stage, runs in sweep.todo.items() if runs)
    click.echo(f"training {todo} runs ({sweep.model_steps:,} model-steps) of {spec.model} on {spec.dataset} "
               f"into {path}", err=True)
    start = time.perf_counter()
    with ProgressDisplay() as display, cluster_client(workers, scheduler) as client:
        try:
            counts = sweep.run(progress=display.update, client=client)
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
@user_errors
def analyze(store, only, workers, scheduler) -> None:
    """Compute every analysis that applies to a finished store, into /analysis/<name>.

    Results already stored for the same store and options are kept, so a second run
    does no work. Training data is never rewritten.
    """
    from lrscan.analyze.run import analyze as run_analysis

    path = store or default_store(None, None)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    start = time.perf_counter()

    def show(name: str, status: str, seconds: float) -> None:
        click.echo(f"{name:12s} {status}" + (f" in {seconds:.1f} s" if status == "computed" else ""), err=True)

    if workers and scheduler:
        raise UserError("give either --workers or --scheduler, not both")
    with cluster_client(workers, scheduler):  # dask sends lazy work to the active client
        status = run_analysis(path, only or None, progress=show)
    computed = sum(s == "computed" for s in status.values())
    click.echo(f"{computed} of {len(status)} analyses computed in {time.perf_counter() - start:.1f} s; "
               f"results under {path}/analysis", err=True)


@main.command()
def analyzers() -> None:
    """List the registered analyzers."""
    from lrscan.analyze import ANALYZERS

    for name in ANALYZERS:
        click.echo(f"{name:12s} {ANALYZERS[name].summary}")


@main.command()
@click.argument("store", required=False)
@user_errors
def info(store) -> None:
    """Summarise what a store holds and how much of its sweep is done."""
    from lrscan.summary import summarise

    click.echo(summarise(store or default_store(None, None)))


@main.command()
@click.argument("store", required=False)
@click.option("--fix", is_flag=True, help="Mark missing and corrupted runs as not done, so `lrscan train` redoes them.")
@user_errors
def verify(store, fix) -> None:
    """Re-read every run of a store and check it against the checksum written after it.

    Lists runs that are incomplete, missing or corrupted; exits 1 when there are any.
    """
    from lrscan.store import verify as check

    path = store or default_store(None, None)
    problems = check(path, fix=fix)
    for problem in problems:
        click.echo(str(problem))
    damaged = [p for p in problems if p.kind != "incomplete"]
    click.echo(f"{path}: {len(problems)} problem runs ({len(damaged)} missing or corrupted"
               + (", marked to be redone by `lrscan train`)" if fix and damaged else ")"), err=True)
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
        first = preset_text(name).splitlines()[0].lstrip("# ")
        click.echo(f"{name:20s} {first}")


class ProgressDisplay:
    """A live bar on a terminal, a plain line every ``every`` seconds otherwise."""

    def __init__(self, every: float = 10.0, stream=None):
        self.stream = stream or sys.stderr
        self.every = every
        self.bar = None
        self.last = 0.0
        self.start = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def update(self, progress) -> None:
        if self.stream.isatty():
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=progress.total, unit=" model-steps", unit_scale=True, file=self.stream,
                                dynamic_ncols=True)
            self.bar.set_description(progress.phase)
            self.bar.update(progress.done - self.bar.n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or progress.done >= progress.total:
            self.last = now
            elapsed = now - self.start
            share = progress.done / progress.total if progress.total else 1.0
            eta = f", about {elapsed / share - elapsed:.0f} s left" if 0 < share < 1 else ""
            print(f"{progress.phase}: {100 * share:5.1f}% of {progress.total:,} model-steps, "
                  f"{elapsed:.0f} s{eta}", file=self.stream, flush=True)


@main.command("import")
@click.argument("source")
@click.option("--store", metavar="PATH", help="Store directory (default: store/<SOURCE folder name>.zarr).")
@click.option("--model", metavar="NAME", required=True, help="The registered model the checkpoints hold, e.g. mlp.")
@click.option("--pattern", "patterns", metavar="PATTERN", multiple=True, required=True,
              help="Paths under SOURCE to coordinates, e.g. 'plr={plr}/seed={seed}[/ft={flr}]/ckpt-{epoch}.pt'; "
                   "[...] is optional, * any text in a folder name. Repeatable.")
@click.option("--dataset", metavar="NAME", help="The registered dataset the model was trained on (default: ticks).")
@click.option("--set", "overrides", metavar="FIELD=VALUE", multiple=True,
              help="What the paths do not say: --set batch_size=128 --set model.width=64 --set swa=[5]. Repeatable.")
@click.option("--ft-epoch-origin", type=click.Choice(["branch", "start"]), default="branch", show_default=True,
              help="A fine-tuning file's {epoch} counts from the branch point, or from the start of pre-training.")
@click.option("--accuracy", type=click.Choice(["auto", "fraction", "percent"]), default="auto", show_default=True,
              help="Unit of the accuracies stored in the files (auto: a value above 1 is a percentage).")
@click.option("--allow-missing", is_flag=True,
              help="Write runs that have no file as empty (NaN) runs, so that analyzers run on a partial grid.")
@user_errors
def import_(source, store, model, patterns, dataset, overrides, ft_epoch_origin, accuracy, allow_missing) -> None:
    """Import a folder (or fsspec URL) of PyTorch checkpoints into a store for `lrscan analyze`.

    The patterns map each file's path to its run and epoch; files without {flr} are
    pre-training checkpoints. Rerunning continues an interrupted import and skips the runs
    already imported. See README.md, "Importing checkpoints".
    """
    from lrscan.importer import import_checkpoints

    path = store or DEFAULT_STORE_DIR / f"{Path(source.rstrip('/')).name or 'import'}.zarr"
    start = last = time.perf_counter()

    def show(progress) -> None:  # a line every 10 s: quick imports stay quiet
        nonlocal last
        now = time.perf_counter()
        if now - last >= 10:
            last = now
            click.echo(f"{progress.phase}: {progress.done:,} of {progress.total:,} files, {now - start:.0f} s", err=True)

    try:
        result = import_checkpoints(source, str(path), model, patterns, dataset=dataset, overrides=overrides,
                                    ft_epoch_origin=ft_epoch_origin, accuracy=accuracy,
                                    allow_missing=allow_missing, progress=show)
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
    if result.swa:
        click.echo(f"warning: SWA {result.swa}", err=True)
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
