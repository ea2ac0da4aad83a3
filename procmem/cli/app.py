"""The ``procmem`` command: a Typer app whose errors are one line and exit code 2."""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from procmem.core import Home, ProcmemError, install_log_redaction, redact

__all__ = ["app", "main"]


DEBUG_ENV = "PROCMEM_DEBUG"
"""Set it to see the full traceback of an unexpected error instead of its one-line summary."""


class _ProcmemGroup(TyperGroup):
    """Turns an error raised by any command into one red line on stderr: exit code 2 for bad input or a
    bad environment (a ProcmemError, a full disk), 1 for anything unexpected."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, KeyboardInterrupt, typer.TyperException):
            raise  # a usage error (unknown option, bad value) is click's to report, with exit code 2
        except ProcmemError as err:
            _fail(str(err), 2)
        except Exception as err:
            if os.environ.get(DEBUG_ENV):
                raise
            if _disk_full(err, ctx.obj if isinstance(ctx.obj, Home) else Home.resolve()):
                _fail("no space left on device (free some space and rerun: what was recorded before is intact "
                      "and an interrupted run resumes with --resume)", 2)
            _fail(f"unexpected {type(err).__name__}: {_first_line(err)} (rerun with {DEBUG_ENV}=1 for the "
                  "traceback, and please report it)", 1)


def _fail(message: str, code: int) -> None:
    from procmem.cli.common import err_console

    err_console.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _disk_full(err: BaseException | None, home: Home) -> bool:
    """Whether ``err`` or anything in its cause chain is a full disk (libraries wrap ENOSPC in their own
    exceptions; Chroma's Rust core fails to start without saying why, so free space is checked too)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, sqlite3.OperationalError) and "full" in str(err):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return _home_is_full(home)


def _home_is_full(home: Home) -> bool:
    import shutil

    try:
        return shutil.disk_usage(home.root if home.root.exists() else home.root.parent).free < 1 << 20
    except OSError:
        return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


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
    install_log_redaction()  # before any command logs: no key reaches a log line
    ctx.obj = Home.resolve(home)


def main() -> None:
    """Console-script entry point."""
    from procmem.llm.llamacpp import prefer_passive_openmp

    prefer_passive_openmp()  # before any command loads torch or llama.cpp (their OpenMP runtime reads it once)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
