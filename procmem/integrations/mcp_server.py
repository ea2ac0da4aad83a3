"""``procmem mcp``: procedural memory and feedback for any MCP client (an IDE agent, a LangGraph agent through MCP
adapters), over stdio or streamable HTTP, with the official ``mcp`` Python SDK.

Tools (each answers JSON):

- ``search_memory(query, k, level)``: the memory records nearest to ``query`` (scope ``chat``);
- ``add_operator_entry(text, scope, level, kind)``: a playbook line that retrieval gives to every task of ``scope``
  (scope ``admin``);
- ``get_episode(episode_id)``: a recorded call with its feedback, or a memory episode (scope ``feedback``);
- ``send_feedback(episode_id, passed, score, correction, comment, id)``: feedback on an episode, turned into a
  verified memory episode at once by the one rule (scope ``feedback``).

**Keys and tenants, as the gateway.** Once the home has an API key (``procmem keys create``), every call needs one:
over HTTP in ``Authorization: Bearer <key>``, over stdio in ``PROCMEM_API_KEY`` (or ``--key``). The key's tenant
picks the memory and the episodes; its scopes what the tools may do. Without keys everything is the default tenant,
and HTTP binds loopback only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from procmem.core import Home, ProcmemError
from procmem.memory import Level
from procmem.serve.config import LOOPBACK_HOSTS
from procmem.serve.ingest import Ingest, checked_feedback
from procmem.serve.keys import KeyRefused, KeyStore, Scope, authorize, bearer_token, keys_path
from procmem.serve.wiring import DEFAULT_TENANT

__all__ = ["TOOLS", "McpBackend", "build_server"]

T = TypeVar("T")
TOOLS = ("search_memory", "add_operator_entry", "get_episode", "send_feedback")
LEVELS: tuple[Level, ...] = ("experience", "insight", "pattern")


class McpBackend:
    """What the tools do, per tenant, without the SDK: one :class:`~procmem.serve.ingest.Ingest` per tenant (the
    call log and that tenant's memory)."""

    def __init__(self, home: Home, *, api_key: str | None = None, chroma_url: str | None = None,
                 exposed: bool = False) -> None:
        self.home = home
        self.api_key = api_key
        self.chroma_url = chroma_url
        self.exposed = exposed
        self.keys = KeyStore(keys_path(home))
        self._ingests: dict[str, Ingest] = {}
        self._lock = threading.Lock()

    def tenant(self, scope: Scope, authorization: str | None) -> str:
        """The caller's tenant (HTTP: its Authorization header; stdio: the process's key)."""
        if not self.exposed and not self.keys.keys():
            return DEFAULT_TENANT
        token = bearer_token(authorization) if authorization is not None else self.api_key
        try:
            return authorize(self.keys, token, scope).tenant
        except KeyRefused as err:
            where = "Authorization" if authorization is not None else "PROCMEM_API_KEY"
            raise ProcmemError(err.message, where=where,
                               fix=err.fix if authorization is not None or err.status == 403 else
                               "set PROCMEM_API_KEY (or --key) to a key from `procmem keys create`") from None

    def ingest(self, tenant: str) -> Ingest:
        with self._lock:
            found = self._ingests.get(tenant)
            if found is None:
                found = self._ingests[tenant] = Ingest(self.home, tenant=tenant, chroma_url=self.chroma_url)
            return found

    def close(self) -> None:
        with self._lock:
            for ingest in self._ingests.values():
                ingest.close()
            self._ingests.clear()

    # --- the tools ----------------------------------------------------------------------------------

    def search_memory(self, tenant: str, query: str, k: int = 5, level: str | None = None) -> dict[str, Any]:
        if not query.strip():
            raise ProcmemError("empty query", where="query", fix="say what to look for")
        if not 1 <= k <= 50:
            raise ProcmemError(f"k = {k} is out of range", where="k", fix="ask for 1 to 50 results")
        if level is not None and level not in LEVELS:
            raise ProcmemError(f"unknown level {level!r}", where="level", fix=f"use one of {', '.join(LEVELS)}")
        memory = self.ingest(tenant).sessions.get(tenant).memory
        results: list[dict[str, Any]] = []
        for lvl in [known for known in LEVELS if level in (None, known)]:
            for similarity, record in memory.search(query, level=lvl, k=k):
                results.append({"id": record.id, "level": record.level, "similarity": round(similarity, 4),
                                "text": record.text, "status": record.metadata.get("status")})
        results.sort(key=lambda r: -float(r["similarity"]))
        return {"query": query, "results": results[:k]}

    def add_operator_entry(self, tenant: str, text: str, scope: str = "serve", level: str = "insight",
                           kind: str = "strategy") -> dict[str, Any]:
        if level not in ("insight", "pattern"):
            raise ProcmemError(f"unknown level {level!r}", where="level", fix="use insight or pattern")
        if kind not in ("strategy", "lesson"):
            raise ProcmemError(f"unknown kind {kind!r}", where="kind", fix="use strategy or lesson")
        if not " ".join(text.split()):
            raise ProcmemError("empty text", where="text", fix="write the procedure, e.g. 'Cite the policy number.'")
        if not scope.strip():
            raise ProcmemError("empty scope", where="scope",
                               fix="name the suite it applies to: serve (the gateway's and imported calls), or a "
                               "suite spec such as rg:products")
        memory = self.ingest(tenant).sessions.get(tenant).memory
        entry_level: Literal["insight", "pattern"] = "pattern" if level == "pattern" else "insight"
        entry_kind: Literal["strategy", "lesson"] = "lesson" if kind == "lesson" else "strategy"
        entry, written = memory.add_operator_entry(entry_level, text, scope=scope,
                                                   kind=None if entry_level == "pattern" else entry_kind)
        return {"written": written, **entry.to_dict()}

    def get_episode(self, tenant: str, episode_id: str) -> dict[str, Any]:
        ingest = self.ingest(tenant)
        call = ingest.log.get(tenant, episode_id)
        if call is not None:
            feedback = ingest.log.feedback(tenant, episode_id)
            data = json.loads(call.to_json())
            data.pop("tenant", None)
            data["object"] = "procmem.episode"
            data["feedback"] = [{"id": f.id, "received_at": f.received_at, **f.body} for f in feedback]
            data["verified"] = bool(feedback) or call.verdict is not None
            return data
        record = ingest.sessions.get(tenant).memory.find(episode_id, "experience")
        if record is None:
            raise ProcmemError(f"no episode {episode_id!r}", where="episode_id",
                               fix="use the id of a recorded call (X-Procmem-Episode-Id) or of a memory episode")
        from procmem.core import Episode

        episode = Episode.from_dict(record.payload)
        return {"object": "procmem.episode", "source": "memory", "passed": episode.passed, "verified": True,
                "episode": episode.to_dict()}

    def send_feedback(self, tenant: str, episode_id: str, *, passed: bool | None = None, score: float | None = None,
                      correction: str | None = None, comment: str = "", feedback_id: str | None = None
                      ) -> dict[str, Any]:
        ingest = self.ingest(tenant)
        if ingest.log.get(tenant, episode_id) is None:
            raise ProcmemError(f"no recorded call {episode_id!r} to send feedback on", where="episode_id",
                               fix="use the id of a call recorded by procmem serve, procmem import or the LiteLLM "
                               "callback")
        body = checked_feedback({"passed": passed, "score": score, "correction": correction, "comment": comment,
                                 "source": "user"}, "send_feedback")
        fid, new, _ = ingest.feedback(episode_id, body, feedback_id=feedback_id)
        written = ingest.drain()
        return {"id": fid, "object": "procmem.feedback", "episode_id": episode_id, "duplicate": not new,
                "attached": True, "episodes_written": written}


def build_server(backend: McpBackend) -> Any:
    """The MCP server (the SDK's ``MCPServer``) over ``backend``; each tool checks the caller's key first."""
    server: Any = MCPServer(name="procmem", instructions=(
        "procmem's procedural memory and feedback loop: search_memory before answering, get_episode and "
        "send_feedback to judge answers recorded by procmem (serve, import, LiteLLM), add_operator_entry for a rule "
        "every task of a scope should follow."))

    async def run(ctx: Context, scope: Scope, fn: Callable[[str], T]) -> T:
        headers = ctx.headers
        authorization = None if headers is None else (headers.get("authorization") or "")

        def call() -> T:
            return fn(backend.tenant(scope, authorization))

        try:
            return await anyio.to_thread.run_sync(call)
        except ProcmemError as err:
            raise ToolError(str(err)) from None

    @server.tool(description="Search procedural memory (worked examples, insights, patterns) by meaning; returns "
                 "the nearest records with their similarity. level: experience, insight or pattern (all if unset).")
    async def search_memory(query: str, ctx: Context, k: int = 5, level: str | None = None) -> dict[str, Any]:
        return await run(ctx, "chat", lambda tenant: backend.search_memory(tenant, query, k, level))

    @server.tool(description="Add an operator-written procedure (one line of advice) that retrieval gives to every "
                 "task of scope ('serve' for calls recorded by procmem serve, imports and LiteLLM; or a suite spec). "
                 "level: insight or pattern; kind (insights): strategy or lesson. Needs the admin scope.")
    async def add_operator_entry(text: str, ctx: Context, scope: str = "serve", level: str = "insight",
                                 kind: str = "strategy") -> dict[str, Any]:
        return await run(ctx, "admin", lambda tenant: backend.add_operator_entry(tenant, text, scope, level, kind))

    @server.tool(description="Look up an episode by id: the recorded call (messages, answer, model, adapter version, "
                 "memory used, verdict) and its feedback, or a memory episode.")
    async def get_episode(episode_id: str, ctx: Context) -> dict[str, Any]:
        return await run(ctx, "feedback", lambda tenant: backend.get_episode(tenant, episode_id))

    @server.tool(description="Send feedback on a recorded answer: passed (true/false), score (0..1, 1.0 passes), "
                 "correction (the right answer) and a comment. The answer becomes a verified memory episode. A repeat "
                 "with the same id changes nothing.")
    async def send_feedback(episode_id: str, ctx: Context, passed: bool | None = None, score: float | None = None,
                            correction: str | None = None, comment: str = "", id: str | None = None
                            ) -> dict[str, Any]:
        return await run(ctx, "feedback", lambda tenant: backend.send_feedback(
            tenant, episode_id, passed=passed, score=score, correction=correction, comment=comment, feedback_id=id))

    return server


def check_http_bind(host: str, backend: McpBackend) -> None:
    """Beyond loopback, keys are required (as for ``procmem serve``)."""
    if host not in LOOPBACK_HOSTS and not backend.keys.any_active():
        raise ProcmemError(f"refusing to bind {host} without API keys", where="--host",
                           fix="create one with `procmem keys create --name NAME --scopes chat,feedback`, or bind "
                           "127.0.0.1")
