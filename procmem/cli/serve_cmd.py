"""``procmem serve``: the OpenAI-compatible gateway (Starlette, uvicorn and the model load inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from procmem.cli.app import app
from procmem.cli.common import ENGINE_HELP, MODEL_HELP, home_of

__all__: list[str] = []


@app.command()
def serve(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP + " (default: local:default)")] = None,
    engine: Annotated[str | None, typer.Option(help=ENGINE_HELP + " (default: auto)")] = None,
    adapter: Annotated[str | None, typer.Option(
        help="promoted (follow the registry, hot swap) | vN (pin) | none (default: promoted).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind; beyond loopback needs API keys. "
                                             "(default: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default: 8000).")] = None,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="Never add procedural memory.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="A serve.toml (ServeConfig, the agent session in "
                                                "its [session] table); flags win.")] = None,
) -> None:
    """Serve an OpenAI-compatible API that adds procedural memory, records every call and takes feedback."""
    from procmem.core import config_from_flags, load_config
    from procmem.serve import ServeConfig, run_server

    flags: dict[str, object] = {"model": model, "engine": engine, "adapter": adapter, "host": host, "port": port,
                                "memory": False if no_memory else None}
    cfg = load_config(ServeConfig, config, **flags) if config else config_from_flags(ServeConfig, flags)
    run_server(cfg, home_of(ctx))
