"""``procmem memory ...``: inspect the procedural memory."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from procmem.cli.app import app
from procmem.cli.common import home_of, out_console, print_json_line
from procmem.memory import open_memory

__all__ = ["memory_app"]

memory_app = typer.Typer(help="Inspect and maintain procedural memory.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")


@memory_app.command()
def stats(
    ctx: typer.Context,
    chroma_url: Annotated[str | None, typer.Option(help="A Chroma server (http://host:port).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print counts as one JSON line.")] = False,
) -> None:
    """Count the entries at each memory level."""
    counts = dict(open_memory(home_of(ctx).chroma, url=chroma_url).stats())
    if json_out:
        print_json_line(counts)
        return
    table = Table(title="procedural memory")
    table.add_column("level")
    table.add_column("entries", justify="right")
    for level, count in counts.items():
        table.add_row(level, str(count))
    out_console.print(table)
