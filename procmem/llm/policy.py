"""The one policy loader: "the model this home should serve", and the host that follows promotions.

Every front end opens its model here (solve, chat, eval, the gate, distillation's parent and teacher, serve)::

    llm = open_policy(home, model="local:default", adapter="promoted")      # one load, labelled; close_llm(llm)
    with opened_policy(home, model="local:default", adapter="none") as llm:  # the same, closed after the block
    with PolicyHost(home, model="local:default", adapter="promoted") as host:  # a long-running session
        host.current.generate(...)   # read once per request; swapped when the promoted version changes

``adapter`` is ``none``, ``promoted`` (the registry's current version; the base model while none is promoted),
``vN``, or a PEFT adapter directory. A ``litellm:`` model takes no adapter (``promoted`` then quietly means the
bare model, an explicit one is an error), except ``litellm:hosted_vllm/...``, whose vLLM server loads the
registry's adapter at run time (:meth:`~procmem.llm.LiteLLM.with_adapter`).

**Hot swap.** A :class:`PolicyHost` with ``adapter = "promoted"`` checks ``adapters/promoted.json`` every
``watch_s``; when the version changes it loads the new policy in the background and replaces the current one in
a single assignment. A caller takes :attr:`PolicyHost.current` once and keeps it, so in-flight work finishes on
the version it started with, and every episode records the version that answered it. On llama.cpp the new
adapter goes onto the running engine (the base model stays loaded); on transformers a new model is loaded.

**Closing.** A llama.cpp engine runs a worker thread that holds it, so dropping the last reference frees nothing
(about 0.5 GB of context and 0.26 GB of mapped weights for the bundled model, per load): a job that loads one
policy after another closes each (:func:`close_llm`, or :func:`opened_policy`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procmem.core import Home, ProcmemError
from procmem.core.llm import LLM, Engine
from procmem.core.registry import promotion_state, resolve_adapter
from procmem.llm._limits import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_SEQUENCE_TOKENS
from procmem.llm.batching import MicroBatcher

if TYPE_CHECKING:
    from procmem.llm.llamacpp import LlamaCppLLM

__all__ = ["Limits", "PolicyChoice", "PolicyHost", "choose_policy", "close_llm", "open_policy", "opened_policy"]

_log = logging.getLogger("procmem.policy")


@dataclass(frozen=True)
class PolicyChoice:
    """A policy resolved against the home's adapter registry: what to load and how to label it."""

    model: str
    engine: Engine
    adapter_dir: Path | None
    """The LoRA adapter directory to load; None: the bare model."""
    version: str | None
    """The label episodes record (``v3``, an adapter directory's name); None: the base model."""


def _takes_adapters(model: str) -> bool:
    return model.startswith("local:") or model.startswith("litellm:hosted_vllm/")


def choose_policy(home: Home, *, model: str, adapter: str = "promoted", engine: Engine = "auto",
                  version: str | None = None) -> PolicyChoice:
    """Resolve ``adapter`` (none | promoted | vN | a directory) for ``model``; ``version`` overrides the label
    (distillation names a candidate before it is registered)."""
    adapter = adapter.strip()
    if not _takes_adapters(model):
        if adapter not in ("none", "promoted"):
            raise ProcmemError(f"--adapter {adapter} needs a local model, not {model}", where="--adapter",
                               fix="drop --adapter, or use --model local:...")
        return PolicyChoice(model, engine, None, None)
    if adapter == "promoted":
        current = promotion_state(home.adapters).current
        adapter = current if current is not None else "none"
    path = resolve_adapter(home, adapter)
    if path is None:
        return PolicyChoice(model, engine, None, None)
    return PolicyChoice(model, engine, path, version or path.name)


@dataclass(frozen=True)
class Limits:
    """How much a local model may hold: ``max_batch_size`` sequences at once, ``max_sequence_tokens`` per sequence,
    ``max_batch_tokens`` per transformers batch (see :func:`~procmem.llm.load_llm`)."""

    max_batch_size: int = 16
    max_sequence_tokens: int = DEFAULT_MAX_SEQUENCE_TOKENS
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS


def open_policy(home: Home, *, model: str, adapter: str | os.PathLike[str] = "promoted", engine: Engine = "auto",
                version: str | None = None, limits: Limits = Limits()) -> LLM:
    """Load the policy ``model`` + ``adapter`` (see :func:`choose_policy`) within ``limits``."""
    choice = choose_policy(home, model=model, adapter=str(adapter), engine=engine, version=version)
    return _load(choice, home, limits)


@contextlib.contextmanager
def opened_policy(home: Home, *, model: str, adapter: str | os.PathLike[str] = "promoted", engine: Engine = "auto",
                  version: str | None = None, limits: Limits = Limits()) -> Iterator[LLM]:
    """:func:`open_policy` for the length of a ``with`` block, closed after it (:func:`close_llm`)."""
    llm = open_policy(home, model=model, adapter=adapter, engine=engine, version=version, limits=limits)
    try:
        yield llm
    finally:
        close_llm(llm)


def close_llm(llm: object) -> None:
    """Free what a loaded LLM holds (the llama.cpp engine's model, context and worker thread, after the requests
    it is running); nothing for backends that hold nothing to free (a transformers model goes with its last
    reference)."""
    close = getattr(llm, "close", None)
    if callable(close):
        close()


def _load(choice: PolicyChoice, home: Home, limits: Limits, *, engine: LlamaCppLLM | None = None) -> Any:
    from procmem.llm import load_llm

    if choice.model.startswith("litellm:hosted_vllm/") and choice.adapter_dir is not None:
        from procmem.llm import LiteLLM

        base = LiteLLM(choice.model.removeprefix("litellm:"))
        return base.with_adapter(choice.version or choice.adapter_dir.name, str(choice.adapter_dir))
    if engine is not None:
        engine.set_adapter(choice.adapter_dir, version=choice.version)
        return engine.pinned()
    return load_llm(choice.model, models_dir=home.models, adapter=choice.adapter_dir, adapter_version=choice.version,
                    engine=choice.engine, max_batch_size=limits.max_batch_size,
                    max_sequence_tokens=limits.max_sequence_tokens, max_batch_tokens=limits.max_batch_tokens)


class PolicyHost:
    """The current policy of a long-running session, batched, and swapped when the promoted version changes.

    :attr:`current` is a started :class:`~procmem.llm.MicroBatcher` over the policy (the llama.cpp engine batches by
    itself and gets calls directly). :meth:`open` loads the home's policy; ``adapter = "promoted"`` is then followed
    once :meth:`start` runs, anything else is pinned. ``PolicyHost(llm)`` hosts an LLM loaded elsewhere, never
    swapped (closing the host leaves that LLM open).
    """

    def __init__(self, llm: LLM, *, max_batch: int = 16, max_wait_s: float = 0.05) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.swaps = 0
        self._current = self._batched(llm)
        self._follow: _Follow | None = None
        self._engine: LlamaCppLLM | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._failed: tuple[str | None] | None = None
        """The version whose load failed last (a 1-tuple: None is the base model)."""

    @classmethod
    def open(cls, home: Home, *, model: str, adapter: str = "promoted", engine: Engine = "auto",
             limits: Limits = Limits(), max_wait_s: float = 0.05, watch_s: float = 1.0) -> PolicyHost:
        """Load the home's policy (see :func:`choose_policy`); ``limits`` bound its memory (``max_batch_size`` is
        also the batcher's batch)."""
        follow = _Follow(home, model, adapter, engine, watch_s, limits)
        llm, loaded_engine = _load_keeping_engine(follow.choice(), home, limits, None)
        host = cls(llm, max_batch=limits.max_batch_size, max_wait_s=max_wait_s)
        host._follow, host._engine = follow, loaded_engine
        return host

    @property
    def current(self) -> MicroBatcher:
        """The policy answering now; read it once per request and keep it to the request's end."""
        return self._current

    def start(self) -> PolicyHost:
        """Follow promotions (only a host opened with ``adapter = "promoted"``)."""
        if self._follow is not None and self._follow.adapter == "promoted" and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="procmem-policy-watch", daemon=True)
            self._watcher.start()
        return self

    def refresh(self) -> bool:
        """Swap to the promoted version if it changed; True when it did."""
        if self._follow is None or self._follow.adapter != "promoted":
            return False
        choice = self._follow.choice()
        if choice.version == self._current.adapter_version or (choice.version,) == self._failed:
            return False
        try:
            llm, self._engine = _load_keeping_engine(choice, self._follow.home, self._follow.limits, self._engine)
        except Exception:
            self._failed = (choice.version,)  # not retried every tick: only when the pointer moves again
            raise
        self._failed = None
        old, self._current = self._current, self._batched(llm)
        self.swaps += 1
        _log.warning("serving adapter %s (was %s)", choice.version or "base", old.adapter_version or "base")
        old.close()  # it serves what it queued; callers still holding it finish on it
        return True

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self._current.close()
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> PolicyHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _batched(self, llm: LLM) -> MicroBatcher:
        batcher = MicroBatcher(llm, max_batch=self.max_batch, max_wait_s=self.max_wait_s)
        batcher.start()
        return batcher

    def _watch(self) -> None:
        assert self._follow is not None
        while not self._stop.wait(self._follow.watch_s):
            try:
                self.refresh()
            except Exception as err:  # a bad promotion must not take the session down: keep serving
                _log.error("hot swap failed, still serving %s: %s", self._current.adapter_version or "base", err)


@dataclass(frozen=True)
class _Follow:
    """What a host opened from the home reloads when the promoted version moves."""

    home: Home
    model: str
    adapter: str
    engine: Engine
    watch_s: float
    limits: Limits

    def choice(self) -> PolicyChoice:
        return choose_policy(self.home, model=self.model, adapter=self.adapter, engine=self.engine)


def _load_keeping_engine(choice: PolicyChoice, home: Home, limits: Limits,
                         engine: LlamaCppLLM | None) -> tuple[LLM, LlamaCppLLM | None]:
    """The policy to serve, and the llama.cpp engine under it (kept: later versions swap adapters onto it)."""
    from procmem.llm.llamacpp import LlamaCppLLM

    llm = _load(choice, home, limits, engine=engine)
    if isinstance(llm, LlamaCppLLM):
        return llm.pinned(), llm
    return llm, engine
