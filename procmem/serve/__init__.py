"""``procmem serve``: an OpenAI-compatible gateway that adds procedural memory, records every call as an
episode, takes delayed feedback, and serves the promoted adapter with hot swap.

It sits on top with the CLI: it may import agent, memory, distill, verifiers, llm and core. Starlette and
uvicorn are imported only by :mod:`procmem.serve.app` and :mod:`procmem.serve.server`.
"""

from procmem.serve.calllog import CallLog, CallRecord
from procmem.serve.config import ServeConfig
from procmem.serve.keys import SCOPES, ApiKey, KeyStore, keys_path
from procmem.serve.server import check_bind, run_server

__all__ = ["SCOPES", "ApiKey", "CallLog", "CallRecord", "KeyStore", "ServeConfig", "check_bind", "keys_path",
           "run_server"]
