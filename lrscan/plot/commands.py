"""The ``lrscan plot`` and ``lrscan explore`` commands: parse, call :mod:`lrscan.plot`, print."""

from __future__ import annotations

from pathlib import Path

import click

from lrscan.cliutil import UserError, default_store, user_errors
from lrscan.plot.defaults import DEFAULT_PORT, IMAGE_FORMATS


def figures_dir(store: str) -> Path:
    """Where ``lrscan plot`` writes by default: ``<name>-figures`` beside a store on disk
    (``store/synthetic.zarr`` -> ``store/synthetic-figures``), in the current directory for a store at a URL."""
    location = str(store).rstrip("/")
    name = location.rsplit("/", 1)[-1].removesuffix(".zarr")
    return Path(f"{name}-figures") if "://" in location else Path(location).with_name(f"{name}-figures")


def image_formats(value: str) -> tuple[str, ...]:
    """``--format png,svg``: the formats, in order, each once; an unknown one is refused in one line."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in value.split(",") if f.strip()))
    unknown = [f for f in formats if f not in IMAGE_FORMATS]
    if unknown or not formats:
        raise UserError(f"--format {value!r}: the formats are {', '.join(IMAGE_FORMATS)}, comma-separated")
    return formats


@click.command()
@click.argument("store", required=False)
@click.option("--out", metavar="DIR", help="Directory for the figures (default: <name>-figures beside the store).")
@click.option("--format", "formats", default="png", show_default=True, metavar="LIST",
              help=f"Image formats besides the HTML page, comma-separated: {', '.join(IMAGE_FORMATS)}.")
@click.option("--dpi", default=100, show_default=True, type=float,
              help="Resolution of the PNGs, 10 to 1200: 100 gives 560 x 420 pixels a panel (SVG and PDF scale freely).")
@user_errors
def plot(store, out, formats, dpi) -> None:
    """Write the study's figures of an analysed store as HTML and images, with an index.html.

    Every figure the store's analyses allow is written as <name>.html (interactive, works
    offline) and <name>.png (or the --format list); index.html links them with the store's
    spec and a summary. A store without analyses is refused: run `lrscan analyze STORE` first.
    """
    formats = image_formats(formats)
    import matplotlib

    matplotlib.use("Agg")  # image files only: no display, even where one exists
    import lrscan
    from lrscan.plot import write_figures

    path = store or str(default_store(None, None))
    tree = lrscan.open(path)
    written = write_figures(tree, Path(out) if out else figures_dir(path), store_name=path, formats=formats, dpi=dpi)
    for name, reason in written.skipped.items():
        click.echo(f"{name:16s} skipped: {reason}", err=True)
    kinds = ", ".join(["HTML", *(f.upper() for f in formats)])
    click.echo(f"wrote {len(written.figures)} figures ({kinds}) to {written.index.parent}", err=True)
    click.echo(str(written.index))


@click.command()
@click.argument("store", required=False)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535),
              help="Port on localhost to serve on.")
@click.option("--allow-origin", "allow_origin", multiple=True, metavar="HOST[:PORT]",
              help="Also accept the explorer's websocket from pages of this origin (repeatable); by default only "
                   "localhost's, so that no other site's page can reach it.")
@user_errors
def explore(store, port, allow_origin) -> None:
    """Serve an interactive explorer of a store on http://localhost:PORT; Ctrl-C stops it.

    Widgets pick PLR, FLR, seed and epoch; the views follow: accuracy against PLR, the chosen
    run's training curves, the errors between its solutions, its single-feature accuracies.
    The store is read lazily, so a large store opens at once.
    """
    import lrscan
    from lrscan.plot.explore import check_port, serve

    path = store or str(default_store(None, None))
    tree = lrscan.open(path)
    check_port(port)
    click.echo(f"serving {path} at http://localhost:{port} (Ctrl-C to stop)", err=True)
    try:
        serve(tree, port, allow_origin=allow_origin)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        raise UserError("interrupted") from None
    click.echo("stopped", err=True)
