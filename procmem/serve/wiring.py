"""All of serve's model and memory wiring in one place: the loaded policy (with hot swap), one procedural
memory per tenant, and the worker that turns verified calls into memory episodes.

**Hot swap.** With ``adapter = "promoted"`` a watcher thread reads ``adapters/promoted.json`` every
``watch_s``; when the version changes it loads the new policy in the background and then replaces the
current reference in one assignment. A request takes the reference once, when it starts, so in-flight
requests finish on the version they started with, and every episode records the version that answered it.
The old policy's batcher serves what it has queued and stops; the old model is freed when its last request
ends. ``--adapter vN`` (or ``none``) pins a version and nothing is watched.

**Tenants.** The default tenant (no API keys, or keys of tenant ``default``) uses the home's own memory
(``PROCMEM_HOME/chroma``), the one ``memory reflect`` and ``distill --once`` read. Any other tenant has its own
Chroma under ``PROCMEM_HOME/tenants/<tenant>/chroma``: it retrieves and records only there. Distillation
reads the default memory only, so another tenant's calls never train the shared adapter.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procmem.core import GenerationConfig, Home, ProcmemError, Task, extract_answer
from procmem.core.keys import policy_version
from procmem.memory import NoMemory, ProceduralMemory, Retrieval, open_memory
from procmem.serve.backends import ChatBackend, LiteLLMChatBackend, PromptBackend
from procmem.serve.calllog import CallLog
from procmem.serve.config import ServeConfig
from procmem.serve.episodes import memory_episode, serve_task
from procmem.verifiers import build_verifier

if TYPE_CHECKING:
    from procmem.llm.llamacpp import LlamaCppLLM

__all__ = ["DEFAULT_TENANT", "MemoryWorker", "ModelHost", "TenantMemories", "check_tenant", "generation_from",
           "load_backend"]

DEFAULT_TENANT = "default"
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_log = logging.getLogger("procmem.serve")


def check_tenant(name: str) -> str:
    if not _TENANT.match(name):
        raise ProcmemError(f"bad tenant name {name!r}", where="--tenant",
                           fix="use 1-63 lowercase letters, digits, '-' or '_'")
    return name


def load_backend(config: ServeConfig, home: Home, version: str | None, *,
                 engine: LlamaCppLLM | None = None) -> tuple[ChatBackend, LlamaCppLLM | None]:
    """The backend for ``config.model`` with adapter ``version`` (None: the base model), and the llama.cpp engine
    under it if there is one. Given a running ``engine``, the adapter is swapped onto it (the base model stays
    loaded); each backend pins the adapter it was made with, so a request keeps the version it started on."""
    from procmem.core.registry import resolve_adapter
    from procmem.llm import MicroBatcher, load_llm
    from procmem.llm.llamacpp import LlamaCppLLM

    if config.model.startswith("litellm:"):
        backend = LiteLLMChatBackend(config.model.removeprefix("litellm:"))
        if version is not None and config.model.startswith("litellm:hosted_vllm/"):
            path = resolve_adapter(home, version)
            return backend.with_adapter(version, str(path)), None
        return backend, None
    adapter = resolve_adapter(home, version) if version is not None else None
    if engine is not None:
        engine.set_adapter(adapter, version=version)
        llm: Any = engine.pinned()
    else:
        llm = load_llm(config.model, models_dir=home.models, adapter=adapter, max_batch_size=config.max_batch)
        if isinstance(llm, LlamaCppLLM):
            engine, llm = llm, llm.pinned()
    batcher = MicroBatcher(llm, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000)
    batcher.start()
    return PromptBackend(batcher, tokenizer=getattr(llm, "tokenizer", None), on_close=batcher.close), engine


def _wanted_version(config: ServeConfig, home: Home) -> str | None:
    from procmem.core.registry import promotion_state

    if config.adapter == "none" or (config.model.startswith("litellm:") and not config.model.startswith(
            "litellm:hosted_vllm/")):
        return None
    if config.adapter == "promoted":
        return promotion_state(home.adapters).current
    return config.adapter


class ModelHost:
    """The current policy, swapped atomically when the promoted version changes."""

    def __init__(self, config: ServeConfig, home: Home) -> None:
        self.config = config
        self.home = home
        self._current, self._engine = load_backend(config, home, _wanted_version(config, home))
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.swaps = 0
        self._failed: tuple[str | None] | None = None
        """The version whose load failed last (a 1-tuple: None is the base model)."""

    @property
    def current(self) -> ChatBackend:
        """Read once per request: the request keeps this backend to its end."""
        return self._current

    def start(self) -> None:
        if self.config.adapter == "promoted" and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="procmem-serve-watch", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self._current.close()
        if self._engine is not None:
            self._engine.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.config.watch_s):
            try:
                self.refresh()
            except Exception as err:  # a bad promotion must not take the server down: keep serving
                _log.error("hot swap failed, still serving %s: %s", self._current.adapter_version or "base", err)

    def refresh(self) -> bool:
        """Swap to the promoted version if it changed; True when it did."""
        wanted = _wanted_version(self.config, self.home)
        if wanted == self._current.adapter_version or (wanted,) == self._failed:
            return False
        try:
            new, self._engine = load_backend(self.config, self.home, wanted, engine=self._engine)
        except Exception:
            self._failed = (wanted,)  # not retried every tick: only when the pointer moves again
            raise
        self._failed = None
        old, self._current = self._current, new
        self.swaps += 1
        _log.warning("serving adapter %s (was %s)", wanted or "base", old.adapter_version or "base")
        old.close()  # its batcher serves what it queued; requests still holding it finish on it
        return True


class TenantMemories:
    """One :class:`ProceduralMemory` per tenant, opened on first use."""

    def __init__(self, home: Home, *, chroma_url: str | None = None) -> None:
        self.home = home
        self.chroma_url = chroma_url
        self._open: dict[str, ProceduralMemory] = {}
        self._lock = threading.Lock()

    def path(self, tenant: str) -> Path:
        return self.home.chroma if tenant == DEFAULT_TENANT else self.home.root / "tenants" / tenant / "chroma"

    def get(self, tenant: str) -> ProceduralMemory:
        with self._lock:
            memory = self._open.get(tenant)
            if memory is None:
                memory = open_memory(self.path(tenant), url=self.chroma_url if tenant == DEFAULT_TENANT else None)
                self._open[tenant] = memory
            return memory

    def retrieve(self, tenant: str, text: str, k: int, backend: ChatBackend) -> Retrieval:
        """The agent's retrieval for a question ``text``, trusted for the serving policy (co-evolution)."""
        if k <= 0 or not text.strip():
            return NoMemory().retrieve(Task(id="q", prompt=text, verifier=""), 0)
        memory = self.get(tenant)
        policy = policy_version(backend)
        return memory.retriever(policy=policy).retrieve(Task(id="serve-query", prompt=text, verifier=""), k)

    def close(self) -> None:
        with self._lock:
            for memory in self._open.values():
                memory.close()
            self._open.clear()


class MemoryWorker:
    """Background thread: judges calls that named a verifier, and writes verified calls to their tenant's
    memory. It works from the call log, so a restart catches up with whatever is pending."""

    def __init__(self, log: CallLog, memories: TenantMemories, *, on_written: Any = None) -> None:
        self.log = log
        self.memories = memories
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_written = on_written

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
        """Process up to ``limit`` pending calls; returns how many were processed."""
        pending = self.log.pending(limit)
        for tenant, episode_id, revision in pending:
            call = self.log.get(tenant, episode_id)
            if call is None:
                continue
            if call.verifier and call.verdict is None and call.status == "complete":
                task = serve_task(call)
                verdict = build_verifier(task).verify(extract_answer(call.response, task.answer_format))
                self.log.set_verdict(tenant, episode_id, verdict.to_dict())
                continue  # the revision moved: picked up again with its verdict
            episode = memory_episode(call, self.log.feedback(tenant, episode_id))
            if episode is not None:
                self.memories.get(tenant).after_episode(episode)
                if self._on_written is not None:
                    self._on_written()
            self.log.mark_memorized(tenant, episode_id, revision)
        return len(pending)


def generation_from(request: Any, default_max_tokens: int) -> GenerationConfig:
    """The request's decoding parameters as a :class:`GenerationConfig`."""
    max_tokens = request.max_completion_tokens or request.max_tokens or default_max_tokens
    return GenerationConfig(max_tokens=max_tokens, temperature=request.temperature or 0.0,
                            top_p=request.top_p or 1.0, stop=request.stops, seed=request.seed)
