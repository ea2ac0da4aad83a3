"""The ``procmem`` command line (Typer + rich). It sits on top: it may import every package."""

from procmem.cli import commands as _commands  # noqa: F401  (registers the commands)
from procmem.cli.app import app, main

__all__ = ["app", "main"]
