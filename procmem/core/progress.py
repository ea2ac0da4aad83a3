"""The one progress bar every job shows: description, bar, done/total, any extra fields, elapsed time.

``progress_bar(console, quiet=quiet)`` replaces the copies the CLI, distill, eval and the task builders
each had. rich is imported when a bar is made, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

__all__ = ["progress_bar"]


def progress_bar(console: Console | None = None, *, quiet: bool = False, transient: bool = False,
                 fields: Sequence[str] = ()) -> Progress:
    """A rich ``Progress`` on ``console`` (default: a new stderr console), disabled when ``quiet``.

    ``fields`` are extra text columns shown before the elapsed time, formatted with rich's task
    template syntax, e.g. ``"loss {task.fields[loss]:.4f}"`` (each task then passes ``loss=...``).
    ``transient`` clears the bar when it is done.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               *(TextColumn(field) for field in fields), TimeElapsedColumn())
    return Progress(*columns, console=console or Console(stderr=True), disable=quiet, transient=transient)
