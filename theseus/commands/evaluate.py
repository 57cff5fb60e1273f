"""`theseus eval`: lm-evaluation-harness tasks on a run or a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import click

from theseus.commands.options import _echo, _verbose
from theseus.errors import UserError


def _names(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise click.BadParameter("name at least one task, e.g. --tasks hellaswag,arc_easy")
    return names


@click.command("eval")
@click.argument("path", metavar="RUN_OR_HF_DIR", type=click.Path())
@click.option(
    "--tasks",
    required=True,
    callback=_names,
    help="harness tasks, groups or tags (globs too) or task YAML files, comma-separated",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="score the first N documents of each task"
)
@click.option("--num-fewshot", type=click.IntRange(min=0), help="examples before each question")
@click.option(
    "--include-path",
    type=click.Path(file_okay=False),
    help="a folder of task YAMLs of your own (the harness's format)",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="rows per pass"
)
@click.option(
    "--context",
    type=click.IntRange(min=1),
    help="tokens per window (default: what a run trained on; a Hugging Face folder's, at most 2048)",
)
@click.option(
    "--bootstrap-iters",
    type=click.IntRange(min=0),
    default=100000,
    show_default=True,
    help="resamples for standard errors without a formula (0 = none)",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False),
    help="folder for harness.json and harness.md  [default: eval-results/<RUN_OR_HF_DIR's name>]",
)
@_verbose
def evaluate(
    path: str,
    tasks: list[str],
    limit: int | None,
    num_fewshot: int | None,
    include_path: str | None,
    batch_size: int,
    context: int | None,
    bootstrap_iters: int,
    out: str | None,
) -> None:
    """Score the model of RUN_OR_HF_DIR (a run or checkpoint folder, or a Hugging Face model
    folder) on lm-evaluation-harness tasks; writes the harness's results JSON and table."""
    from theseus.evaluation.harness.config import HarnessConfig
    from theseus.evaluation.harness.tasks import resolve_tasks

    given = Path(path).expanduser()
    if not given.exists():
        raise UserError(f"{given}: no such run, checkpoint or Hugging Face folder")
    settings = HarnessConfig(tasks, num_fewshot, limit, include_path, bootstrap_iters)
    resolve_tasks(tasks, include_path)  # names and task files, before anything loads
    _refuse_without_checkpoint(given)
    from theseus.base.files import atomic_write
    from theseus.evaluation.harness.config import run_harness
    from theseus.evaluation.harness.run import load_tasks, results_json, table
    from theseus.evaluation.source import load_scored
    from theseus.parallel.distributed import split_cpu_into_cores

    load_tasks(tasks, include_path)  # the datasets: a missing one stops before the model loads
    # on a CPU, one JAX device per core: the rows of a batch split over the cores
    split_cpu_into_cores(None, global_batch=batch_size)
    from theseus.evaluation.shapes import keep_compiled

    keep_compiled()  # the next evaluation of this model and these tasks compiles nothing
    scored = load_scored(given, context, batch_size)
    results = run_harness(scored.scorer, settings)
    results["config"]["model"] = str(scored.path)
    folder = Path(out) if out else Path("eval-results") / given.resolve().name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "harness.json", results_json(results))
    text = table(results)
    atomic_write(folder / "harness.md", text)
    click.echo(text)
    _echo(f"wrote {folder / 'harness.json'} and {folder / 'harness.md'}")


def _refuse_without_checkpoint(given: Path) -> None:
    """A folder that is neither a Hugging Face model nor holds a checkpoint, in one line."""
    from theseus.checkpoint import locate
    from theseus.inference.hf_folder import is_hf_folder

    if not is_hf_folder(given):
        locate(given)


COMMANDS = [evaluate]
