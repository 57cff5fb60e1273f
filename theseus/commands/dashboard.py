"""`theseus dashboard`: every run in one web page, live, on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from theseus.commands.options import _echo, _verbose


@click.command()
@click.option("--port", type=int, default=8765, show_default=True, help="port (0: a free one)")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on; any other than 127.0.0.1 needs the token printed at start",
)
@click.option(
    "--root",
    "roots",
    multiple=True,
    type=click.Path(file_okay=False),
    help="output folder whose runs/ to show (repeatable; default ./output)",
)
@_verbose
def dashboard(port: int, host: str, roots: tuple[str, ...]) -> None:
    """Serve a live web dashboard of every run: the runs under the output folders and every
    submitted run (local, SSH, SLURM), their curves, configs, logs and checkpoints."""
    try:
        from theseus.dashboard.server import Dashboard
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs {exc.name}; install it with `uv sync --group all`"
        ) from None

    chosen = [Path(r) for r in roots] or [Path("output")]
    app = Dashboard(chosen, host, port)
    shown = ", ".join(str(r) for r in app.catalog.roots)
    _echo(
        f"theseus dashboard: {app.url}  (runs under {shown} and the submitted runs; Ctrl-C stops)"
    )
    if app.token:
        _echo(
            f"listening on {host}: every request needs the token in that address (it is kept "
            "as a cookie); anyone who has it sees your runs and can cancel them"
        )
    app.serve()


COMMANDS = [dashboard]
