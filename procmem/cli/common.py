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
    "ADAPTER_HELP",
    "CHROMA_URL_HELP",
    "ENGINE_HELP",
    "MODEL_HELP",
    "SUITE_HELP",
    "err_console",
    "home_of",
    "open_checkpointer",
    "out_console",
    "print_json_line",
]

MODEL_HELP = ("local:default (or local:default-f32 | -f16 | -q8_0: llama.cpp weights in that precision) | "
              "local:tiny | local:/path/to/hf_dir | local:/path/to/model.gguf | litellm:<provider/model>.")
ENGINE_HELP = ("How a local model runs: llamacpp (the GGUF on llama.cpp), transformers, or auto "
               "(llama.cpp for local:default when llama-cpp-python is installed).")
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


ADAPTER_HELP = "none | promoted (default: the current promoted version, if any) | vN | an adapter directory."
