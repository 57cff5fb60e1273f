"""Options and helpers every `theseus` command shares (the group lives in `theseus.cli`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

_VERBOSE_FLAGS = ("-v", "--verbose")


def _verbose(f: Callable[..., Any]) -> Callable[..., Any]:
    """Accept -v after the subcommand too; main() reads it before parsing."""
    return click.option(
        "-v", "--verbose", is_flag=True, expose_value=False, help="show tracebacks"
    )(f)


def _load(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--load",
        "loads",
        multiple=True,
        metavar="MODULE|FILE.py",
        help="import user code that registers jobs (repeatable)",
    )(f)


def _do_loads(loads: tuple[str, ...]) -> None:
    from theseus.registry import load

    for target in loads:
        load(target)


def _nonneg(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < (1 if param.name == "n_shards" else 0):
        raise click.BadParameter(
            f"must be {'>= 1' if param.name == 'n_shards' else '>= 0'}, got {value}"
        )
    return value


def _chip(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from theseus.base.chips import get_chip

    return get_chip(value).name


def _echo(message: str) -> None:
    click.echo(message, err=True)


def _options(*decorators: Callable[..., Any]) -> Callable[..., Any]:
    """Several click decorators as one, applied as if listed in this order above a command."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


# the sampling options `sample` and `chat` share
_top_p = click.option(
    "--top-p",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.95,
    show_default=True,
    help="nucleus sampling mass",
)
