"""``procmem mcp``: an MCP server (stdio or streamable HTTP) with procedural memory and feedback tools."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from procmem.cli.app import app
from procmem.cli.common import CHROMA_URL_HELP, err_console, home_of

__all__: list[str] = []


@app.command("mcp")
def mcp(
    ctx: typer.Context,
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP at http://HOST:PORT/mcp instead of "
                                                      "stdio.")] = False,
    host: Annotated[str, typer.Option(help="Interface to bind with --http; beyond loopback needs API keys.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port with --http.")] = 8765,
    key: Annotated[str | None, typer.Option(help="The API key stdio calls run under (default: $PROCMEM_API_KEY); "
                                                 "needed once the home has keys.")] = None,
    chroma_url: Annotated[str | None, typer.Option(help=CHROMA_URL_HELP)] = None,
) -> None:
    """Serve procmem's memory and feedback over MCP: search_memory, add_operator_entry, get_episode and
    send_feedback, under the same keys and tenants as `procmem serve`."""
    from procmem.core import ProcmemError
    from procmem.serve.config import LOOPBACK_HOSTS

    try:
        import mcp as _sdk  # noqa: F401
    except ImportError as err:
        raise ProcmemError("procmem mcp needs the mcp package", where="procmem mcp",
                           fix="pip install 'procmem[mcp]'") from err
    from procmem.integrations.mcp_server import McpBackend, build_server, check_http_bind
    home = home_of(ctx)
    backend = McpBackend(home, api_key=key or os.environ.get("PROCMEM_API_KEY") or None, chroma_url=chroma_url,
                         exposed=http and host not in LOOPBACK_HOSTS)
    server = build_server(backend)
    try:
        if not http:
            server.run("stdio")  # stdout is the protocol: nothing else is printed there
            return
        import uvicorn

        check_http_bind(host, backend)
        err_console.print(f"procmem mcp: http://{host}:{port}/mcp (home {home.root})", highlight=False)
        uvicorn.run(server.streamable_http_app(host=host), host=host, port=port, log_level="warning",
                    access_log=False)
    finally:
        backend.close()
