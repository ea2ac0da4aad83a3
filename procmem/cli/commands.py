"""Importing this module registers every command on the root app.

Every command module must stay cheap to import, because ``procmem --help`` imports them all: at module
level it imports only typer, rich, ``procmem.cli.app`` / ``procmem.cli.common`` and light core modules
(``procmem.core``, ``procmem.core.keys``, ``procmem.core.progress``), and defines its commands; anything heavier
(the agent, the model layer, memory, distill, eval: torch, transformers, sentence-transformers, litellm,
Chroma, LangGraph) is imported inside the command function that needs it. Type hints of such things go
under ``if TYPE_CHECKING:``. tests/cli/test_cli_import_weight.py checks it.
"""

from procmem.cli import (  # noqa: F401
    chat,
    distill_commands,
    eval_cmd,
    export_cmd,
    import_cmd,
    keys_cmd,
    mcp_cmd,
    memory_cmd,
    serve_cmd,
    solve,
    verify,
)

__all__: list[str] = []
