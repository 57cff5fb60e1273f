"""The `theseus` command line: each command parses its arguments, then calls library code.

Heavy modules (JAX and friends) are imported inside commands, never at the top, so that
`theseus jobs` and `theseus configure` stay fast.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from theseus.commands import chat, dashboard, doctor, evaluate, models, weights
from theseus.commands.options import (
    _VERBOSE_FLAGS,
    _chip,
    _do_loads,
    _echo,
    _load,
    _nonneg,
    _options,
    _verbose,
)
from theseus.errors import UserError

# The options `run` and `submit` share: where the run is filed, its shards, further stages.
_run_options = _options(
    click.option("-p", "--project", default="default", show_default=True, help="runs/PROJECT/..."),
    click.option(
        "-g", "--group", default="default", show_default=True, help="runs/PROJECT/GROUP/NAME"
    ),
    click.option("--n_shards", type=int, callback=_nonneg, help="tensor-parallel shards"),
    click.option(
        "-s",
        "--stage",
        "stages",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="a further stage YAML, run after the previous ones (repeatable)",
    ),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_verbose
def cli() -> None:
    """theseus: train language models from scratch on JAX."""


@cli.command()
@_verbose
@_load
def jobs(loads: tuple[str, ...]) -> None:
    """List the registered jobs."""
    from theseus.registry import JOBS

    _do_loads(loads)
    rows = JOBS.listings()
    width = max((len(row.name) for row in rows), default=0)
    for row in rows:
        click.echo(f"{click.style(row.name.ljust(width), bold=True)}  {row.description}")


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("job")
@click.argument("out_yaml", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option(
    "-p", "--previous", type=click.Path(), help="carry over the values of a previous YAML"
)
@click.option("--chip", callback=_chip, help="chip type the run is planned for (see the catalogue)")
@click.option("-n", "n_chips", type=int, callback=_nonneg, help="number of chips (0 = CPU)")
@click.option("--n_shards", type=int, callback=_nonneg, help="tensor-parallel shards")
@click.option("--force", is_flag=True, help="replace OUT_YAML if it exists")
@_verbose
@_load
def configure(
    job: str,
    out_yaml: str,
    overrides: tuple[str, ...],
    previous: str | None,
    chip: str | None,
    n_chips: int | None,
    n_shards: int | None,
    force: bool,
    loads: tuple[str, ...],
) -> None:
    """Write the config of JOB to OUT_YAML, with each field's help as a comment."""
    from theseus.job import Request
    from theseus.schema_cache import SchemaCache
    from theseus.stages import ConfigUpdate

    if not out_yaml.strip():
        raise UserError("OUT_YAML is empty; give the file to write, e.g. train.yaml")
    _refuse_setting_as_path("OUT_YAML", out_yaml, "train.yaml")
    update = ConfigUpdate(job, Path(out_yaml), previous, force)
    update.refuse_replacing()
    # the job's schema from the cache when it holds it: the job (and the --load code) is
    # imported only to build it
    update.write(Request(chip, n_chips, n_shards), overrides, _echo, SchemaCache(loads))


@cli.command()
@click.argument("name")
@click.argument("yaml_path", metavar="YAML", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("-j", "--job", help="the job to run (default: the one named in YAML)")
@_run_options
@click.option("--restore", type=click.Path(), help="start from another run's checkpoint")
@click.option(
    "--fresh",
    is_flag=True,
    help="start over instead of resuming (a trainer with checkpoints needs training.overwrite=true)",
)
@_verbose
@_load
def run(
    name: str,
    yaml_path: str,
    out: str,
    overrides: tuple[str, ...],
    job: str | None,
    project: str,
    group: str,
    n_shards: int | None,
    stages: tuple[str, ...],
    restore: str | None,
    fresh: bool,
    loads: tuple[str, ...],
) -> None:
    """Run the job(s) configured in YAML locally, writing under OUT."""
    if not out.strip():
        raise UserError("OUT is empty; give the output folder, e.g. ./output")
    _refuse_setting_as_path("OUT", out, "./output")
    from theseus.job import ExecutionSpec
    from theseus.stages import Stage, override, run_stages

    _do_loads(loads)
    pipeline = [Stage.from_yaml(yaml_path, job)] + [Stage.from_yaml(s) for s in stages]
    override(pipeline, list(overrides))
    request = pipeline[0].request
    if n_shards is not None:
        request.n_shards = n_shards
    spec = ExecutionSpec(name, Path(out), project, group, request, fresh=fresh, restore=restore)
    run_stages(pipeline, spec)


def _refuse_setting_as_path(what: str, given: str, example: str) -> None:
    """A forgotten path argument takes the first KEY=VALUE after it: refuse that path."""
    if re.fullmatch(r"[A-Za-z_][\w.]*\+?=.*", given, flags=re.DOTALL):
        raise UserError(
            f"{what} {given!r} is a KEY=VALUE setting, not a path; give {what} first "
            f"(e.g. {example}), then the settings"
        )


# The options `submit` and `bootstrap` share: the request, where it may go, what it ships.
_submission_options = _options(
    click.option("--chip", callback=_chip, help="chip type (default: the YAML's, else cpu)"),
    click.option("-n", "n_chips", type=int, callback=_nonneg, help="number of chips"),
    _run_options,
    click.option("--cluster", "clusters", multiple=True, help="only these clusters (a,b,...)"),
    click.option("--exclude-cluster", "exclude_clusters", multiple=True, help="never these"),
    click.option("--dirty/--clean", default=True, help="ship uncommitted changes too (default)"),
    click.option("--untracked", is_flag=True, help="also ship untracked (not ignored) files"),
    click.option("--restore", help="start from another run's checkpoint (a path on the host)"),
    click.option(
        "--fresh",
        is_flag=True,
        help="start over instead of resuming (a trainer with checkpoints needs training.overwrite=true; once: a requeued SLURM job resumes)",
    ),
    click.option("--mem", metavar="SIZE", help="memory per node, e.g. 64G (SLURM hosts)"),
    click.option("--cpus", type=int, metavar="N", help="CPUs per task (SLURM hosts)"),
    click.option("--target", "targets", multiple=True, metavar="GROUP", help="uv group to add"),
    click.option(
        "-d",
        "--dispatch-config",
        "--dispatch",
        "dispatch_file",
        type=click.Path(dir_okay=False),
        help="dispatch file (default ~/.theseus.yaml)",
    ),
    _verbose,
    _load,
)


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("name")
@click.argument("yaml_path", metavar="YAML", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@_submission_options
@click.option("--env", multiple=True, metavar="K=V", help="the job's environment (repeatable)")
@click.option("--dry-run", is_flag=True, help="print the scripts it would run; change nothing")
def submit(**given: Any) -> None:
    """Run the job(s) in YAML on a host from the dispatch file (or this machine), detached."""
    from theseus.dispatch.submit import SubmitOptions
    from theseus.dispatch.submit import submit as do_submit

    options = SubmitOptions(**given)  # each argument and option is named as its field
    _do_loads(options.loads)
    done = do_submit(options)
    if options.dry_run:
        click.echo(done.describe())
        return
    for reason in done.passed_over:
        _echo(f"passed over: {reason}")
    _echo(done.summary())


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("name")
@click.argument("yaml_path", metavar="YAML", type=click.Path(dir_okay=False))
@click.argument("out_script", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@_submission_options
def bootstrap(out_script: str, **given: Any) -> None:
    """Write OUT_SCRIPT: what `submit` would run, code included, to start with bash or sbatch."""
    from theseus.dispatch.standalone import write_script
    from theseus.dispatch.submit import SubmitOptions

    _refuse_setting_as_path("OUT_SCRIPT", out_script, "my-run.sh")
    options = SubmitOptions(**given)
    _do_loads(options.loads)
    _echo(write_script(options, Path(out_script)).summary())


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="one line per run with its raw metrics line")
@_verbose
def status(name: str | None, as_json: bool) -> None:
    """Show the state of submitted runs (all, or NAME): step/total, losses, tokens/s, MFU, ETA."""
    from theseus.dispatch import records
    from theseus.dispatch.control import observe
    from theseus.dispatch.status_table import json_line, status_table

    chosen = [records.load(name)] if name else records.all_records()
    if not chosen:
        _echo("no submitted runs yet; start one with `theseus submit NAME YAML`")
        return
    seen = observe(chosen)
    if as_json:
        click.echo("\n".join(json_line(r, s) for r, s in zip(chosen, seen, strict=True)))
    else:
        click.echo(status_table(chosen, seen))


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the run ends")
@click.option("-r", "--rank", type=int, callback=_nonneg, help="only this process's lines")
@_verbose
def logs(name: str, follow: bool, rank: int | None) -> None:
    """Print the log of a submitted run (a SLURM job's lines start with their process's rank)."""
    from theseus.dispatch import records
    from theseus.dispatch.control import logs as run_logs

    def write(chunk: bytes) -> None:
        click.echo(chunk.decode(errors="replace"), nl=False)
        sys.stdout.flush()

    run_logs(records.load(name), follow, write, rank=rank)


@cli.command()
@click.argument("name")
@_verbose
def cancel(name: str) -> None:
    """Stop a submitted run (it saves a checkpoint first when it can)."""
    from theseus.dispatch import records
    from theseus.dispatch.control import cancel as run_cancel

    record = records.load(name)
    run_cancel(record)
    _echo(f"cancelled {name} on {record.host_name}")


@cli.command()
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o",
    "--out",
    default="loss.png",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="PNG to write",
)
@_verbose
def plot(runs: tuple[str, ...], out: str) -> None:
    """Overlay the loss curves of one or more RUN folders (OUT/runs/PROJECT/GROUP/NAME) in a PNG."""
    from theseus.training.plot import plot_runs

    _echo(f"wrote {plot_runs(list(runs), out)}")


@cli.command()
@click.argument("run_folder", metavar="RUN", type=click.Path())
@_verbose
def checkpoints(run_folder: str) -> None:
    """List the checkpoints of RUN (OUT/runs/PROJECT/GROUP/NAME, or its checkpoint folder): step,
    time written, size, train and validation loss, the latest and the best (lowest val_loss)."""
    from theseus.training.checkpoint_table import checkpoint_table

    click.echo(checkpoint_table(run_folder))


@cli.command()
@click.argument("out", default="quickstart-output", type=click.Path(file_okay=False))
@click.option("--steps", type=int, default=500, show_default=True, help="training steps")
@_verbose
def quickstart(out: str, steps: int) -> None:
    """Tokenize the Python standard library, train a small GPT on it, sample, plot — no network."""
    from theseus.quickstart import quickstart as run_quickstart

    run_quickstart(Path(out), steps, main)


for _command in [
    *models.COMMANDS,
    *weights.COMMANDS,
    *chat.COMMANDS,
    *dashboard.COMMANDS,
    *evaluate.COMMANDS,
    *doctor.COMMANDS,
]:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    verbose = any(a in _VERBOSE_FLAGS for a in args)
    try:
        cli.main(args=args, prog_name="theseus", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        # click's own convention for a bare group: the help, not an error, and exit code 2
        _echo(exc.format_message())
        return 2
    except click.exceptions.Abort:
        _echo("aborted")
        return 130
    except click.ClickException as exc:
        if verbose:
            raise
        _echo(f"error: {exc.format_message()}")
        return 2
    except UserError as exc:
        if verbose:
            raise
        _echo(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _echo("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
