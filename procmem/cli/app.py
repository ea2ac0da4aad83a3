"""The ``procmem`` command: a Typer app whose errors are one line and exit code 2."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from procmem.core import Home, ProcmemError

__all__ = ["app", "main"]


class _ProcmemGroup(TyperGroup):
    """Turns a ProcmemError raised by any command into one red line on stderr and exit code 2."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)
        except ProcmemError as err:
            from procmem.cli.common import err_console

            err_console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    name="procmem",
    cls=_ProcmemGroup,
    help="Procedural Memory Distillation: an agent that learns from its own verified mistakes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    home: Annotated[
        str | None, typer.Option("--home", help="Data directory (default: $PROCMEM_HOME, else ~/.procmem).")
    ] = None,
) -> None:
    ctx.obj = Home.resolve(home)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
