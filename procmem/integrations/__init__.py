"""procmem where traces already live: a LiteLLM callback (:mod:`procmem.integrations.litellm`) and an MCP server
(:mod:`procmem.integrations.mcp_server`, ``procmem mcp``).

It sits above the gateway (rank 6): it writes through :class:`procmem.serve.ingest.Ingest` and honours the keys of
:mod:`procmem.serve.keys`. Each module imports its library (litellm, mcp) itself; importing this package imports
neither.
"""

__all__: list[str] = []
