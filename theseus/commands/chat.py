"""`theseus chat`: talk to a trained model, or a Hugging Face one, in the terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from theseus.commands.options import _do_loads, _echo, _load, _top_p, _verbose


def _terminal_lines(marker: str) -> Iterator[str]:
    """Lines typed at the prompt marker (with line editing), until end of input (Ctrl-D)."""
    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (input() then edits and recalls lines)
    while True:
        try:
            yield input(marker)
        except EOFError:
            click.echo()
            return


@click.command()
@click.argument("path", metavar="RUN_OR_HF_DIR", type=click.Path())
@click.option(
    "--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True, help="0 = greedy"
)
@_top_p
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="most tokens per reply (fewer when the context ends sooner)",
)
@click.option("--system", metavar="PROMPT", help="a system message that opens the conversation")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@_verbose
@_load
def chat(
    path: str,
    temperature: float,
    top_p: float,
    max_tokens: int,
    system: str | None,
    seed: int,
    loads: tuple[str, ...],
) -> None:
    """Chat with the model in RUN_OR_HF_DIR (a run or checkpoint folder, or a Hugging Face model
    folder) through its chat template. Type /reset to forget the conversation, /exit to leave.
    Piped input: each line is one user turn, and each reply is printed on its own."""
    from theseus.inference.chat import Sampling, converse, open_chat

    _do_loads(loads)
    session = open_chat(path, system=system, note=_echo)
    interactive = sys.stdin.isatty()
    if interactive:
        _echo("chatting: /reset forgets the conversation, /exit (or Ctrl-D) leaves")
    lines = _terminal_lines("> ") if interactive else sys.stdin
    converse(
        session,
        lines,
        Sampling(temperature, top_p, max_tokens, seed),
        click.echo,
        _echo,
        keep_going=interactive,
    )


COMMANDS = [chat]
