"""A LiteLLM ``CustomLogger`` that records every call of a LiteLLM proxy or SDK into a procmem home, as calls and
(once verified) episodes, without putting procmem in the request path.

The proxy, one line in its ``config.yaml``::

    litellm_settings:
      callbacks: ["procmem.integrations.litellm.procmem_logger"]

The SDK::

    import litellm
    from procmem.integrations.litellm import ProcmemLogger

    logger = ProcmemLogger()                       # PROCMEM_HOME, else ~/.procmem
    litellm.callbacks = [logger]
    reply = litellm.completion(model=..., messages=..., metadata={"procmem_verifier": "numeric:42"})
    logger.feedback(reply.id, passed=True)         # later: the call becomes a verified episode

A call's episode id is ``metadata["procmem_episode_id"]`` if given, else the response id (``reply.id``, the
``id`` of the proxy's response). Request metadata may also carry ``procmem_verifier`` (judged at once),
``procmem_feedback`` ({"passed": ...}) and ``procmem_session_id``. Only verified calls become episodes, as with
``procmem serve``; feedback attaches later with :meth:`ProcmemLogger.feedback`, MCP's ``send_feedback``, or
``POST /v1/episodes/{id}/feedback`` on a ``procmem serve`` of the same home.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

# Offline machines: litellm would otherwise try to download its cost map on import (and wait ~7 s for it).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.integrations.custom_logger import CustomLogger

from procmem.core import Home, ProcmemError
from procmem.serve.ingest import Ingest, checked_feedback
from procmem.serve.wiring import DEFAULT_TENANT, check_tenant

__all__ = ["ProcmemLogger", "procmem_logger"]

_log = logging.getLogger("procmem.integrations.litellm")


class ProcmemLogger(CustomLogger):
    """Records LiteLLM calls into ``home`` (default: ``$PROCMEM_HOME``, else ``~/.procmem``) for ``tenant``. The
    home opens on the first call; verified calls are written to memory by a background thread."""

    def __init__(self, home: str | Path | None = None, *, tenant: str = DEFAULT_TENANT,
                 chroma_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._home = home
        self.tenant = check_tenant(tenant)
        self.chroma_url = chroma_url
        self._ingest: Ingest | None = None
        self._lock = threading.Lock()
        self.errors = 0
        """Calls that could not be recorded (logged as warnings; LiteLLM's request is never affected)."""

    @property
    def ingest(self) -> Ingest:
        with self._lock:
            if self._ingest is None:
                home = Home.resolve(str(self._home) if self._home is not None else None).ensure()
                self._ingest = Ingest(home, tenant=self.tenant, chroma_url=self.chroma_url)
                self._ingest.start()
            return self._ingest

    # --- LiteLLM's hooks --------------------------------------------------------------------------

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.record(kwargs)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        self.record(kwargs)  # a SQLite insert (memory is written by the background thread): no executor needed

    def record(self, kwargs: dict[str, Any]) -> str | None:
        """Record the call LiteLLM describes in ``kwargs`` (its ``standard_logging_object``); returns its episode id,
        or None when it could not be recorded."""
        from procmem.serve._formats import litellm_item

        payload = kwargs.get("standard_logging_object")
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") if isinstance(params, dict) else None
        extra = {k: v for k, v in (metadata or {}).items() if isinstance(k, str) and k.startswith("procmem_")}
        try:
            item = litellm_item(payload, "litellm call", extra)
            self.ingest.add(item.call, item.feedback)
        except ProcmemError as err:
            self.errors += 1
            _log.warning("procmem: call not recorded: %s", err)
            return None
        return item.call.id

    # --- feedback, later --------------------------------------------------------------------------

    def feedback(self, episode_id: str, *, passed: bool | None = None, score: float | None = None,
                 correction: str | None = None, comment: str = "", source: str = "user",
                 feedback_id: str | None = None) -> dict[str, Any]:
        """Attach feedback to a recorded call (by episode id: the response id unless the request named one). A
        repeat with the same ``feedback_id`` changes nothing. The episode is written to memory in the background;
        :meth:`flush` waits for it."""
        body = checked_feedback({"passed": passed, "score": score, "correction": correction, "comment": comment,
                                 "source": source}, f"feedback for {episode_id}")
        fid, new, call = self.ingest.feedback(episode_id, body, feedback_id=feedback_id)
        return {"id": fid, "episode_id": episode_id, "duplicate": not new, "attached": call is not None}

    def flush(self) -> int:
        """Write every pending verified call to memory now; returns the episodes written."""
        return self.ingest.drain()

    def close(self) -> None:
        with self._lock:
            if self._ingest is not None:
                self._ingest.close()
                self._ingest = None


procmem_logger = ProcmemLogger()
"""The instance a LiteLLM proxy config names: ``callbacks: ["procmem.integrations.litellm.procmem_logger"]``
(``PROCMEM_HOME`` picks the home, default tenant)."""
