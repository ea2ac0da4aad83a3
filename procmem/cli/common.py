"""What every command shares: consoles, the home, opening the model and memory, JSON output."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from procmem.core import Home

__all__ = [
    "CHROMA_URL_HELP",
    "MODEL_HELP",
    "SUITE_HELP",
    "err_console",
    "home_of",
    "open_checkpointer",
    "out_console",
    "print_json_line",
]

MODEL_HELP = "local:default | local:tiny | local:/path/to/hf_dir | litellm:<provider/model>."
SUITE_HELP = "Task suite: 'rg:<dataset>?key=value&...', 'builtin:<name>' or a JSONL task file."
CHROMA_URL_HELP = "Use a Chroma server at http://host:port instead of the embedded database."

out_console = Console()
err_console = Console(stderr=True)


def home_of(ctx: typer.Context) -> Home:
    """The home resolved by the root callback (``--home`` > ``$PROCMEM_HOME`` > ``~/.procmem``)."""
    home = ctx.find_root().obj
    assert isinstance(home, Home), "root callback did not set the home"
    return home.ensure()


def print_json_line(data: Any) -> None:
    """The machine-readable result: one JSON object as the last line of stdout."""
    print(json.dumps(data, sort_keys=True, default=str), flush=True)


@contextmanager
def open_checkpointer(home: Home) -> Iterator[Any]:
    """LangGraph's SqliteSaver on ``home/threads.sqlite``, shared by the agent's worker threads."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(home.threads_db, check_same_thread=False)
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()
