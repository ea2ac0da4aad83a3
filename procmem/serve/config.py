"""``procmem serve`` settings (``--config serve.toml``; flags win). The agent session it runs (model, engine,
adapter, memory, decoding) is the ``[session]`` table (:class:`~procmem.agent.SessionConfig`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from procmem.agent.config import SessionJob

__all__ = ["LOOPBACK_HOSTS", "ServeConfig"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ServeConfig(SessionJob):
    """The gateway: the session it serves (``[session]``), where it listens, and its limits.

    Configs written before ``[session]`` may keep ``model``, ``engine``, ``adapter``, ``memory`` (``use_memory``),
    ``memory_k``, ``max_tokens`` (``generation.max_tokens``) and ``max_batch`` (``concurrency``) at the top level.
    In serve, ``session.adapter = "promoted"`` follows the registry and hot-swaps on promotion, and
    ``session.concurrency`` is the most prompts the local model decodes in one batch.
    """

    SESSION_KEYS: ClassVar[Mapping[str, str]] = {
        **SessionJob.SESSION_KEYS, "memory": "use_memory", "max_tokens": "generation.max_tokens",
        "max_batch": "concurrency"}
    SESSION_DEFAULTS: ClassVar[Mapping[str, Any]] = {"concurrency": 16, "generation": {"max_tokens": 64}}

    host: str = Field(default="127.0.0.1", description="Interface to bind; other than loopback needs API keys.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port, printed at start).")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted (413 above).")
    max_wait_ms: float = Field(default=50.0, ge=0.0, le=1000.0,
                               description="How long the first queued request waits for others to batch with "
                               "(concurrent clients arrive spread over tens of ms; a batch runs for seconds).")
    watch_s: float = Field(default=1.0, gt=0.0, le=3600.0,
                           description="How often the promoted-adapter pointer is checked (session.adapter = "
                           "promoted).")
    workers: int = Field(default=64, ge=1, le=1024,
                         description="Threads that run model calls and stream responses (concurrent requests).")
