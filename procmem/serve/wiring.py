"""Serve's sessions: one agent session per tenant over one shared policy host, and the worker that turns verified
calls into memory episodes through them.

**Hot swap.** The :class:`~procmem.llm.PolicyHost` follows the registry's promoted version (``adapter =
"promoted"``) and swaps it atomically; a request reads ``session.policy`` once, when it starts, so in-flight
requests finish on the version they started with, and every episode records the version that answered it.
``--adapter vN`` (or ``none``) pins a version and nothing is watched.

**Tenants.** The default tenant (no API keys, or keys of tenant ``default``) uses the home's own memory
(``PROCMEM_HOME/chroma``), the one ``memory reflect`` and ``distill --once`` read. Any other tenant has its own
Chroma under ``PROCMEM_HOME/tenants/<tenant>/chroma``: it retrieves and records only there. Distillation
reads the default memory only, so another tenant's calls never train the shared adapter.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from procmem.agent import AgentSession, SessionConfig
from procmem.agent.conversation import conversation_task
from procmem.core import Episode, Home, ProcmemError, Task, Verdict
from procmem.core.feedback import Feedback, feedback_episode
from procmem.llm import PolicyHost
from procmem.memory import ProceduralMemory, open_memory
from procmem.serve.calllog import CallLog, CallRecord, FeedbackRecord
from procmem.serve.protocol import conversation

__all__ = ["DEFAULT_TENANT", "SERVE_SUITE", "EpisodeSink", "MemorySessions", "MemoryWorker", "SessionSource",
           "TenantSessions", "call_episode", "call_task", "check_tenant", "tenant_memory_path"]

DEFAULT_TENANT = "default"
SERVE_SUITE = "serve"
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_log = logging.getLogger("procmem.serve")


def check_tenant(name: str) -> str:
    if not _TENANT.match(name):
        raise ProcmemError(f"bad tenant name {name!r}", where="--tenant",
                           fix="use 1-63 lowercase letters, digits, '-' or '_'")
    return name


def tenant_memory_path(home: Home, tenant: str) -> Path:
    """A tenant's Chroma directory: the home's own for the default tenant, ``tenants/<tenant>/chroma`` else."""
    return home.chroma if tenant == DEFAULT_TENANT else home.root / "tenants" / tenant / "chroma"


class EpisodeSink(Protocol):
    """What the memory worker asks of a tenant's session: judge an answer, record an episode."""

    def verify(self, task: Task, answer: str) -> Verdict: ...

    def record(self, episode: Episode) -> None: ...


class SessionSource(Protocol):
    """The tenants' sessions (:class:`TenantSessions`, or :class:`MemorySessions` where no model runs)."""

    def get(self, tenant: str) -> EpisodeSink: ...


class _MemorySink:
    """A tenant's memory, judged and recorded without a model (imports, the LiteLLM callback, MCP)."""

    verify = staticmethod(AgentSession.verify)

    def __init__(self, memory: ProceduralMemory) -> None:
        self.memory = memory

    def record(self, episode: Episode) -> None:
        self.memory.after_episode(episode)


class MemorySessions:
    """Every tenant's memory opened on demand, for recording verified calls where no policy is loaded."""

    def __init__(self, home: Home, *, chroma_url: str | None = None) -> None:
        self.home = home
        self.chroma_url = chroma_url
        self._open: dict[str, _MemorySink] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str) -> _MemorySink:
        with self._lock:
            sink = self._open.get(tenant)
            if sink is None:
                sink = _MemorySink(open_memory(tenant_memory_path(self.home, tenant),
                                               url=self.chroma_url if tenant == DEFAULT_TENANT else None))
                self._open[tenant] = sink
            return sink

    def close(self) -> None:
        with self._lock:
            for sink in self._open.values():
                sink.memory.close()
            self._open.clear()


class TenantSessions:
    """One :class:`~procmem.agent.AgentSession` per tenant (its own memory), all over one policy host."""

    def __init__(self, host: PolicyHost, config: SessionConfig, home: Home, *, chroma_url: str | None = None) -> None:
        self.host = host
        self.config = config
        self.home = home
        self.chroma_url = chroma_url
        self._open: dict[str, AgentSession] = {}
        self._lock = threading.Lock()

    def path(self, tenant: str) -> Path:
        return tenant_memory_path(self.home, tenant)

    def get(self, tenant: str) -> AgentSession:
        with self._lock:
            session = self._open.get(tenant)
            if session is None:
                memory = open_memory(self.path(tenant), url=self.chroma_url if tenant == DEFAULT_TENANT else None)
                session = AgentSession(self.host, self.config, memory=memory)
                self._open[tenant] = session
            return session

    def close(self) -> None:
        with self._lock:
            for session in self._open.values():
                session.close()
                if session.memory is not None:
                    session.memory.close()
            self._open.clear()


def call_task(call: CallRecord) -> Task:
    """The task a call answered: its conversation as one question, in the ``serve`` suite."""
    source = str(call.metadata.get("procmem_source") or "serve")  # imports say where they came from
    metadata = {"source": source, "tenant": call.tenant, "session_id": call.session_id, "user": call.user}
    return conversation_task(conversation(call.messages), id=call.task_id or call.id, suite=SERVE_SUITE,
                             verifier=call.verifier, metadata=metadata)


def call_episode(call: CallRecord, task: Task, feedback: list[FeedbackRecord], verdict: Verdict | None
                 ) -> Episode | None:
    """The memory episode of a finished call (:func:`~procmem.core.feedback.feedback_episode`), or None while it
    is unverified (or did not complete)."""
    if call.status != "complete":
        return None
    return feedback_episode(task, call.response.strip(), [Feedback.from_dict(f.body) for f in feedback],
                            verdict=verdict, prompt_tokens=int(call.usage.get("prompt_tokens", 0)),
                            completion_tokens=int(call.usage.get("completion_tokens", 0)), model_id=call.model_id,
                            adapter_version=call.adapter_version, memory_ids=call.memory_ids, id=call.id,
                            started_at=call.started_at, finished_at=call.finished_at)


class MemoryWorker:
    """Background thread: judges calls that named a verifier, and records verified calls through their tenant's
    session. It works from the call log, so a restart catches up with whatever is pending."""

    def __init__(self, log: CallLog, sessions: SessionSource, *, on_written: Any = None,
                 on_verdict: Callable[[CallRecord, Verdict], None] | None = None) -> None:
        self.log = log
        self.sessions = sessions
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_written = on_written
        self._on_verdict = on_verdict
        """Told of each verifier's verdict (serve's tracing turns it into a span)."""
        self._draining = threading.Lock()  # one drain at a time (the thread, and callers that flush)
        self._failed: set[tuple[str, str]] = set()  # calls whose failure is logged already

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="procmem-serve-memory", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self.drain(limit=50):
                    pass
            except Exception as err:  # keep the worker alive; what failed stays pending
                _log.error("memory worker: %s", err)

    def drain(self, limit: int = 50) -> int:
        """Process up to ``limit`` pending calls; returns how many were processed (a call that fails is logged and
        stays pending, so one bad call never stops the others)."""
        with self._draining:
            return self._drain(limit)

    def _drain(self, limit: int) -> int:
        done = 0
        for tenant, episode_id, _ in self.log.pending(limit):
            try:
                self._memorize(tenant, episode_id)
                done += 1
            except Exception as err:  # this call stays pending (retried next time); the others go on
                if (tenant, episode_id) not in self._failed:  # once per call, not once a second
                    self._failed.add((tenant, episode_id))
                    _log.error("memory worker: call %s (tenant %s) stays pending: %s", episode_id, tenant, err)
        return done

    def _memorize(self, tenant: str, episode_id: str) -> None:
        # The revision read with the call and its feedback, not pending's: feedback that lands after pending()
        # would otherwise be written now and again on the next drain (marked at the older revision).
        snapshot = self.log.snapshot(tenant, episode_id)
        if snapshot is None:
            return
        call, feedback, revision = snapshot
        session = self.sessions.get(tenant)
        task = call_task(call)
        verdict = Verdict.from_dict(call.verdict) if call.verdict is not None else None
        if call.verifier and verdict is None and call.status == "complete":
            verdict = session.verify(task, call.response)
            self.log.set_verdict(tenant, episode_id, verdict.to_dict())  # shown by GET /v1/episodes/{id}
            revision += 1
            if self._on_verdict is not None:
                self._on_verdict(call, verdict)
        episode = call_episode(call, task, feedback, verdict)
        if episode is not None:
            session.record(episode)
            if self._on_written is not None:
                self._on_written()
        self.log.mark_memorized(tenant, episode_id, revision)
