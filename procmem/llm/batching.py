"""Coalesce concurrent ``generate`` calls from many threads into batched calls of one LLM.

The agent solves tasks on a thread pool; each task asks for one completion at a time. A local model
is several times faster per token on a batch than on single prompts, so :class:`MicroBatcher` queues
the requests and a worker thread sends every ``max_wait_s`` (or as soon as ``max_batch`` prompts
are waiting) one batched call per distinct :class:`~procmem.core.GenerationConfig`::

    with MicroBatcher(llm, max_batch=8, max_wait_s=0.05) as batched:
        ...  # hand ``batched`` (itself an LLM) to many threads
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType

from procmem.core.config import GenerationConfig
from procmem.core.llm import LLM, Generation

__all__ = ["MicroBatcher"]


@dataclass
class _Request:
    prompts: list[str]
    config: GenerationConfig
    arrived: float = field(default_factory=time.monotonic)
    future: Future[list[Generation]] = field(default_factory=Future)


class MicroBatcher:
    """An :class:`~procmem.llm.LLM` that merges concurrent ``generate`` calls into batched ones.

    Requests are grouped by identical ``GenerationConfig`` and served oldest first. A batch holds at
    most ``max_batch`` prompts (a single request larger than that still goes in one call, which the
    wrapped LLM may split further). The oldest request waits at most ``max_wait_s`` for company.

    If a batched call raises, every request in it is retried alone, so an error reaches only the
    caller whose prompts caused it. A wrapped LLM with ``check_prompts`` (the local engines) checks each
    call's prompts before it is queued, so a prompt over the context is refused at once, in the caller's
    thread, and never joins (or splits) a batch. The wrapped LLM bounds a batch's memory itself
    (:class:`~procmem.llm.LocalLLM`'s ``max_batch_tokens`` cuts a merged batch into smaller ones).
    ``stream`` passes straight through. Batching happens inside the ``with`` block; outside it, calls go
    straight to the wrapped LLM. An LLM that batches concurrent calls itself (``continuous_batching = True``,
    e.g. the llama.cpp engine) gets every call directly.
    """

    def __init__(self, llm: LLM, max_batch: int = 8, max_wait_s: float = 0.05) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.llm = llm
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._closing = False
        self._worker: threading.Thread | None = None

    @property
    def model_id(self) -> str:
        return self.llm.model_id

    @property
    def adapter_version(self) -> str | None:
        return self.llm.adapter_version

    @property
    def supports_grammar(self) -> bool:
        """Whether the wrapped model honours ``GenerationConfig.grammar``."""
        return bool(getattr(self.llm, "supports_grammar", False))

    def __enter__(self) -> MicroBatcher:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the batching worker (``with`` does this)."""
        if getattr(self.llm, "continuous_batching", False):
            return  # it batches concurrent calls better than whole-call grouping would
        with self._cond:
            if self._worker is not None:
                return
            self._closing = False
            self._worker = threading.Thread(target=self._run, name="procmem-microbatcher", daemon=True)
            self._worker.start()

    def close(self) -> None:
        """Serve what is queued, then stop the worker; later calls go straight to the wrapped LLM."""
        with self._cond:
            worker, self._closing = self._worker, True
            self._cond.notify_all()
        if worker is not None:
            worker.join()
        with self._cond:
            self._worker = None

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        prompts = list(prompts)
        if not prompts:
            return []
        if self._worker is None or self._closing:
            return self.llm.generate(prompts, config)
        self.check_prompts(prompts, config)  # refused before it is queued (the direct call checks itself)
        request = _Request(prompts, config)
        with self._cond:
            batching = self._worker is not None and not self._closing
            if batching:
                self._pending.append(request)
                self._cond.notify_all()
        if not batching:
            return self.llm.generate(prompts, config)
        return request.future.result()

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        return self.llm.stream(prompt, config)

    def check_prompts(self, prompts: Sequence[str], config: GenerationConfig) -> None:
        """The wrapped LLM's ``check_prompts`` (raises :class:`~procmem.core.errors.ContextLengthError` for a
        prompt over its context), or nothing if it has none."""
        check = getattr(self.llm, "check_prompts", None)
        if callable(check):
            check(prompts, config)

    # ------------------------------------------------------------------------------------ worker

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    self._serve(batch)
                finally:
                    for request in batch:  # never leave a caller of this batch waiting
                        if not request.future.done():
                            request.future.set_exception(RuntimeError("MicroBatcher lost this request"))
        except BaseException as err:  # never leave a caller waiting forever; later calls go direct
            with self._cond:
                self._closing = True
                pending, self._pending = self._pending, []
            for request in pending:
                request.future.set_exception(err)
            raise

    def _next_batch(self) -> list[_Request] | None:
        """Wait for requests, give the oldest ``max_wait_s`` to gather company, and take its group."""
        with self._cond:
            while not self._pending:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._pending[0]
            deadline = first.arrived + self.max_wait_s
            while not self._closing and self._waiting_prompts(first.config) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take(first.config)

    def _waiting_prompts(self, config: GenerationConfig) -> int:
        return sum(len(r.prompts) for r in self._pending if r.config == config)

    def _take(self, config: GenerationConfig) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        for request in self._pending:
            if request.config != config:
                continue
            if batch and size + len(request.prompts) > self.max_batch:
                break
            batch.append(request)
            size += len(request.prompts)
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _serve(self, batch: list[_Request]) -> None:
        prompts = [p for request in batch for p in request.prompts]
        try:
            generations = self.llm.generate(prompts, batch[0].config)
            if len(generations) != len(prompts):
                raise RuntimeError(f"{self.llm.model_id} returned {len(generations)} generations "
                                   f"for {len(prompts)} prompts")
        except Exception as err:
            if len(batch) == 1:
                batch[0].future.set_exception(err)
            else:
                for request in batch:  # find whose prompts fail
                    self._serve([request])
            return
        start = 0
        for request in batch:
            request.future.set_result(generations[start:start + len(request.prompts)])
            start += len(request.prompts)
