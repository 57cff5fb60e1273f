"""`theseus doctor`: check this machine (or, under SLURM or with THESEUS_COORDINATOR, each process
of a job) for what multi-node runs need; `theseus submit` runs the `doctor` job on a cluster."""

from __future__ import annotations

import click

from theseus.commands.options import _verbose


@click.command()
@click.argument("root", metavar="OUT", default="./output", type=click.Path(file_okay=False))
@click.option(
    "--all-reduce-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=16.0,
    show_default=True,
    help="MiB per device summed by the timed all-reduce",
)
@_verbose
def doctor(root: str, all_reduce_mb: float) -> None:
    """Per process: host, devices, process id and count, coordinator, a timed all-reduce, and
    whether OUT is writable and the same folder on every node. Exits 1 with one line per problem.
    On a cluster: `theseus configure doctor d.yaml`, then `theseus submit check d.yaml -n N`."""
    from pathlib import Path

    from theseus.parallel.doctor import run_doctor

    code = run_doctor(Path(root), all_reduce_mb)
    if code:
        raise SystemExit(code)  # the problems are printed, one line each


COMMANDS = [doctor]
