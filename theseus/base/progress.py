"""Progress lines that fit the terminal: the counters, bar and times keep their width, and the
figures after them take what is left of the line, cut with "…" where they do not fit."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn, TextColumn
from rich.table import Column


def fitted_progress(
    *fixed: ProgressColumn, figures: str, console: Console, **options: Any
) -> Progress:
    """A `Progress` with `fixed` columns, then the task field `figures` filling the line."""
    figures_column = TextColumn(
        "{task.fields[" + figures + "]}",
        table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
    )
    return Progress(*fixed, figures_column, console=console, expand=True, **options)


def fixed_text(template: str) -> TextColumn:
    """A text column that is never wrapped or cut (a step counter, a name)."""
    return TextColumn(template, table_column=Column(no_wrap=True))
