"""Commands that use a trained model: sample from it."""

from __future__ import annotations

import click

from theseus.commands.options import _do_loads, _load, _top_p, _verbose


@click.command()
@click.argument("path", metavar="RUN_OR_CHECKPOINT", type=click.Path())
@click.argument("prompts", metavar="PROMPT...", nargs=-1, required=True)
@click.option(
    "--max-new",
    type=click.IntRange(min=1),
    help="tokens to generate per prompt  [default: 200, less if the context is shorter]",
)
@click.option(
    "--temperature", type=click.FloatRange(min=0), default=0.8, show_default=True, help="0 = greedy"
)
@_top_p
@click.option(
    "--top-k",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="sample among the k likeliest tokens (0 = all)",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@_verbose
@_load
def sample(
    path: str,
    prompts: tuple[str, ...],
    max_new: int | None,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int,
    loads: tuple[str, ...],
) -> None:
    """Continue each PROMPT with the model saved under RUN_OR_CHECKPOINT (a run or checkpoint folder)."""
    from theseus.inference import sample_checkpoint

    _do_loads(loads)
    texts = sample_checkpoint(
        path, prompts, max_new=max_new, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    for prompt, text in zip(prompts, texts, strict=True):
        click.echo(click.style(prompt, bold=True) + text)
        click.echo()


COMMANDS = [sample]
