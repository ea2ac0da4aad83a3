"""A GGUF model on llama.cpp (``llama-cpp-python``) behind the :class:`~procmem.llm.LLM` seam, with continuous batching.

One worker thread owns the llama.cpp context. Callers (the agent's thread pool, the gate, eval, a gateway)
submit requests from any thread; between two decode steps the worker admits waiting requests into free
sequence slots and retires finished ones, so sequences join and leave the batch independently. Every step
is one ``llama_decode`` over all running sequences: one new token per generating sequence plus chunks of
the prompts being read in.

Each request has its own sampler (greedy, or temperature + top-p + a seeded draw, after an optional GBNF
grammar that masks every token the grammar does not allow), its own stop strings and token budget, so a batch's
sequences do not influence one another: under greedy decoding each equals
its solo run. An error in one request (a failing sampler) ends that request only. A prompt that leaves no room
in a sequence's context (``n_ctx_per_seq``) for a new token is refused with
:class:`~procmem.core.errors.ContextLengthError` in the caller's thread, before it is submitted; a completion that
fills the context ends there (``finish_reason="length"``).

LoRA adapters are GGUF LoRA files (:mod:`procmem.llm.gguf_io` writes them from PEFT directories).
:meth:`LlamaCppLLM.set_adapter` swaps the adapter at run time without reloading the base model: requests
submitted afterwards use the new one, requests already running finish with theirs.

``llama_cpp`` is imported only when an engine is built, so importing this module is cheap.
"""

from __future__ import annotations

import codecs
import ctypes
import importlib.util
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

from pydantic import Field

from procmem.core.config import Config, GenerationConfig
from procmem.core.errors import ContextLengthError, ProcmemError
from procmem.core.llm import Generation
from procmem.llm._stops import cut_at_stop, filter_stream, find_stop

__all__ = ["PRECISIONS", "EngineConfig", "LlamaCppLLM", "PinnedAdapter", "Precision", "convert_gguf", "idle_cores",
           "llama_cpp_available", "prefer_passive_openmp"]

_INSTALL_FIX = 'install it: pip install "procmem[llamacpp]" (compiles llama.cpp once, ~12 min on 2 cores)'


Precision = Literal["q4_k_m", "q8_0", "f16", "f32"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
"""Weight formats the engine can run a GGUF model in (:func:`convert_gguf` writes them)."""
_FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "f16": "LLAMA_FTYPE_MOSTLY_F16",
           "f32": "LLAMA_FTYPE_ALL_F32"}


def llama_cpp_available() -> bool:
    """Whether ``llama-cpp-python`` is installed (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


class EngineConfig(Config):
    """How the llama.cpp engine sizes its batch and context."""

    n_seq_max: int = Field(default=16, ge=1, le=256,
                           description="Most sequences decoded together; more requests wait for a free slot.")
    n_ctx_per_seq: int = Field(default=4096, ge=64, le=131072,
                               description="Context (prompt + completion tokens) of each sequence.")
    n_batch: int = Field(default=512, ge=16, le=8192,
                         description="Most tokens in one decode step (prompts are read in chunks within it).")
    n_threads: int = Field(default=0, ge=0, le=512,
                           description="CPU threads for decoding and prompt reading; 0: the usable cores that no "
                                       "other thread is running on when the engine starts (at least one).")
    share_prefix_min_tokens: int = Field(
        default=16, ge=0, le=131072,
        description="A request whose prompt starts with at least this many of the same tokens as a running "
                    "request's prompt copies that request's KV cache for the common part instead of reading it "
                    "again (e.g. a teacher's k samples of one prompt); 0 turns sharing off. Outputs are the same "
                    "either way (greedy decoding on exact weights).")


@dataclass(eq=False)
class _Adapter:
    path: Path
    version: str | None
    handle: Any = None  # llama_adapter_lora_p, loaded by the worker


@dataclass(eq=False)
class _Request:
    tokens: list[int]
    config: GenerationConfig
    adapter: _Adapter | None
    ignore_eos: bool = False
    pieces: queue.SimpleQueue[str | None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future[Generation] = field(default_factory=Future)
    # state while it runs
    seq_id: int = -1
    fed: int = 0  # prompt tokens in the KV cache
    cached: int = 0  # positions in the KV cache (prompt and completion)
    share_src: _Request | None = None  # a running request whose cache this one will copy its prefix from
    share_len: int = 0  # how many leading prompt tokens it copies
    sampler: Any = None  # None: plain greedy (the arg max of the logits)
    completion: list[int] = field(default_factory=list)
    text: str = ""
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.tokens)


@dataclass(eq=False)
class _Job:
    """Work for the worker thread between decode steps; ``idle`` jobs wait until no sequence runs."""

    run: Callable[[], Any]
    idle: bool
    future: Future[Any] = field(default_factory=Future)


class LlamaCppLLM:
    """A GGUF model on llama.cpp implementing :class:`~procmem.llm.LLM`, batching concurrent calls itself.

    Thread-safe: any number of threads may call :meth:`generate` and :meth:`stream` at once; their
    sequences share decode steps. :class:`~procmem.llm.MicroBatcher` passes calls straight through
    (``continuous_batching`` is True).
    """

    continuous_batching = True
    """Concurrent calls are batched inside the engine; wrappers need not batch them."""
    supports_grammar = True
    """``GenerationConfig.grammar`` (GBNF) constrains each request's decoding (a grammar sampler in its chain)."""

    def __init__(
        self,
        gguf_path: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        adapter: str | os.PathLike[str] | None = None,
        adapter_version: str | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self._lib = _llama_cpp()
        self._config = config or EngineConfig()
        path = Path(gguf_path).expanduser()
        if not path.is_file():
            raise ProcmemError(f"no such GGUF model file {path}", where="--model",
                               fix="pass a .gguf file, or local:default for the bundled model")
        self._model_id = model_id or path.stem
        self._model, self._ctx = self._load(path)
        lib = self._lib
        self._vocab = lib.llama_model_get_vocab(self._model)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._bos = lib.llama_vocab_bos(self._vocab)
        self._memory = lib.llama_get_memory(self._ctx)
        self._n_ctx_seq = lib.llama_n_ctx_seq(self._ctx)
        self._eog = frozenset(t for t in (lib.llama_vocab_eos(self._vocab), lib.llama_vocab_eot(self._vocab)) if t >= 0)
        import numpy

        self._np = numpy
        self._eog_ids = numpy.array(sorted(self._eog), dtype=numpy.int64)
        self._shared_tokens = 0
        self._batch = lib.llama_batch_init(self._config.n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._adapters: dict[Path, _Adapter] = {}
        self._adapter_lock = threading.Lock()
        self._adapter: _Adapter | None = None  # what new requests get
        self._ctx_adapter: _Adapter | None = None  # what the context applies now (worker only)
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._jobs: deque[_Job] = deque()
        self._slots: list[_Request | None] = [None] * self._config.n_seq_max
        self._closing = False
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="procmem-llamacpp", daemon=True)
        self._worker.start()
        if adapter is not None:
            self.set_adapter(adapter, version=adapter_version)

    # ------------------------------------------------------------------------------------ LLM seam

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def adapter_version(self) -> str | None:
        adapter = self._adapter
        return adapter.version if adapter is not None else None

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def context_length(self) -> int:
        """Most prompt + new tokens one sequence holds (``n_ctx_per_seq`` as llama.cpp sized it)."""
        return int(self._n_ctx_seq)

    @property
    def sequence_limit(self) -> int:
        """Most prompt + new tokens one sequence holds: :attr:`context_length` (the KV cache is allocated once, when
        the engine starts, so concurrent requests cannot grow it)."""
        return int(self._n_ctx_seq)

    @property
    def threads(self) -> int:
        """The CPU threads llama.cpp decodes with."""
        return self._threads

    @property
    def shared_prompt_tokens(self) -> int:
        """Prompt tokens copied from another sequence's KV cache instead of read again, since the engine started
        (``EngineConfig.share_prefix_min_tokens``)."""
        return self._shared_tokens

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, *, ignore_eos: bool = False
    ) -> list[Generation]:
        """Complete every prompt; one :class:`Generation` per prompt, in order. The prompts join the running
        batch as slots free up. ``ignore_eos`` (benchmarks only) runs every row to ``max_tokens`` unless a
        stop string ends it. If a prompt fails, the first error is raised once all are done."""
        return self._generate(prompts, config, ignore_eos=ignore_eos, adapter=self._adapter)

    def _generate(self, prompts: Sequence[str], config: GenerationConfig, *, ignore_eos: bool = False,
                  adapter: _Adapter | None) -> list[Generation]:
        encoded = [self._encode_checked(p) for p in prompts]  # refuse before submitting any
        requests = [self._submit(tokens, config.for_prompt(i), ignore_eos=ignore_eos, adapter=adapter)
                    for i, tokens in enumerate(encoded)]
        errors = [r.future.exception() for r in requests]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [r.future.result() for r in requests]

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        """Yield the completion of ``prompt`` in pieces as they are decoded; their concatenation equals
        ``generate``'s text for greedy decoding. Closing the iterator early ends the sequence. A prompt that leaves
        no room for an answer raises :class:`ContextLengthError` when the first piece is asked for, before it is
        submitted (:meth:`check_prompts` checks it beforehand)."""
        return self._stream(prompt, config, adapter=self._adapter)

    def check_prompts(self, prompts: Sequence[str], config: GenerationConfig) -> None:
        """Raise :class:`ContextLengthError` if a prompt leaves no room for a new token in a sequence."""
        for prompt in prompts:
            self._encode_checked(prompt)

    def _stream(self, prompt: str, config: GenerationConfig, *, adapter: _Adapter | None) -> Iterator[str]:
        tokens = self._encode_checked(prompt)
        pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        request = self._submit(tokens, config, pieces=pieces, adapter=adapter)

        def raw() -> Iterator[str]:
            while (piece := pieces.get()) is not None:
                yield piece

        try:
            yield from filter_stream(raw(), config.stop)
        finally:
            request.cancelled.set()
            error = request.future.exception()
        if error is not None:
            raise error

    # ------------------------------------------------------------------------------------ adapters

    def set_adapter(self, adapter: str | os.PathLike[str] | None, *, version: str | None = None) -> None:
        """Hot swap the LoRA adapter without reloading the base model (what a gateway calls on promotion).

        ``adapter`` is a PEFT adapter directory (its GGUF LoRA file is written on first use) or a ``.gguf``
        LoRA file; None returns to the base model. ``version`` names it (default: the directory's name).
        Requests submitted after this returns use the new adapter; running ones finish with theirs.
        Loaded adapters stay cached, so swapping back is immediate.
        """
        if adapter is None:
            with self._cond:
                self._adapter = None
            return
        given = Path(adapter).expanduser()
        path = _gguf_lora_path(given).resolve()
        name = version or (given.name if given.is_dir() else given.stem)
        with self._adapter_lock:  # one load per file, even when two threads swap at once
            loaded = self._adapters.get(path)
            if loaded is None:
                loaded = _Adapter(path=path, version=name)
                self._call(lambda: self._load_adapter(loaded), idle=False)
                self._adapters[path] = loaded
        selected = loaded if loaded.version == name else _Adapter(path=path, version=name, handle=loaded.handle)
        with self._cond:
            self._adapter = selected

    def pinned(self) -> PinnedAdapter:
        """A view of this engine that keeps the adapter selected now, whatever :meth:`set_adapter` does later:
        a gateway hands one to each policy version, so every answer is labelled with the adapter that wrote it."""
        return PinnedAdapter(self, self._adapter)

    # ------------------------------------------------------------------------------------ extras

    def tokenize(self, text: str) -> list[int]:
        """The token ids llama.cpp reads for ``text`` (with BOS if the model adds one)."""
        return self._encode(text)

    def token_logprobs(self, prompt_tokens: Sequence[int], completion_tokens: Sequence[int]) -> list[float]:
        """Log-probability of each completion token given what precedes it (teacher forcing), under the
        current adapter. Runs while no other sequence does (for parity checks, not for serving)."""
        prompt, completion = list(prompt_tokens), list(completion_tokens)
        if not prompt or len(prompt) + len(completion) > min(self._n_ctx_seq, self._config.n_batch):
            raise ProcmemError(f"cannot score {len(prompt)} + {len(completion)} tokens", where="token_logprobs",
                               fix=f"keep prompt + completion within {min(self._n_ctx_seq, self._config.n_batch)}")
        return list(self._call(lambda: self._score(prompt, completion), idle=True))

    def close(self) -> None:
        """Finish the running and waiting requests, then free the model; later calls raise."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        self._worker.join()
        lib = self._lib
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        for adapter in self._adapters.values():
            if adapter.handle is not None:
                lib.llama_adapter_lora_free(adapter.handle)
        lib.llama_model_free(self._model)
        self._closed = True

    def __enter__(self) -> LlamaCppLLM:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ callers' side

    def _load(self, path: Path) -> tuple[Any, Any]:
        lib = self._lib
        model_params = lib.llama_model_default_params()
        model = lib.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise ProcmemError(f"llama.cpp cannot load {path}", where="--model",
                               fix="pass a GGUF model file that llama.cpp supports")
        params = lib.llama_context_default_params()
        threads = self._threads = self._config.n_threads or idle_cores()
        params.n_seq_max = self._config.n_seq_max
        params.n_ctx = self._config.n_seq_max * self._config.n_ctx_per_seq
        params.n_batch = params.n_ubatch = self._config.n_batch
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # each sequence its own KV stream: batching does not change its numbers
        params.swa_full = False  # sliding-window layers keep only their window per sequence
        params.no_perf = True
        ctx = lib.llama_init_from_model(model, params)
        if not ctx:
            lib.llama_model_free(model)
            raise ProcmemError(f"llama.cpp cannot create a context for {path} ({params.n_ctx} tokens)",
                               where="--model", fix="lower n_seq_max or n_ctx_per_seq")
        return model, ctx

    def _encode_checked(self, prompt: str) -> list[int]:
        tokens = self._encode(prompt)
        error = self._too_long(len(tokens))
        if error is not None:
            raise error
        return tokens

    def _too_long(self, prompt_tokens: int) -> ContextLengthError | None:
        if prompt_tokens < self._n_ctx_seq:
            return None
        return ContextLengthError(prompt_tokens, self._n_ctx_seq, model=self._model_id,
                                  fix="shorten the prompt (fewer memory examples), or raise n_ctx_per_seq")

    def _encode(self, prompt: str) -> list[int]:
        data = prompt.encode("utf-8")
        size = len(data) + 8
        buffer = (ctypes.c_int32 * size)()
        count = self._lib.llama_tokenize(self._vocab, data, len(data), buffer, size, True, True)
        if count < 0:
            size = -count
            buffer = (ctypes.c_int32 * size)()
            count = self._lib.llama_tokenize(self._vocab, data, len(data), buffer, size, True, True)
        tokens = list(buffer[:count])
        if tokens:
            return tokens
        if self._bos < 0:
            raise ProcmemError("cannot complete an empty prompt with a model that has no BOS token",
                               where=self._model_id, fix="pass a non-empty prompt")
        return [self._bos]

    def _submit(self, tokens: list[int], config: GenerationConfig, *, adapter: _Adapter | None,
                ignore_eos: bool = False, pieces: queue.SimpleQueue[str | None] | None = None) -> _Request:
        with self._cond:
            if self._closing:
                raise ProcmemError(f"the llama.cpp engine of {self._model_id} is closed", where=self._model_id,
                                   fix="load the model again")
            request = _Request(tokens=tokens, config=config, adapter=adapter, ignore_eos=ignore_eos,
                               pieces=pieces)
            self._waiting.append(request)
            self._cond.notify_all()
        return request

    def _call(self, run: Callable[[], Any], *, idle: bool) -> Any:
        job = _Job(run=run, idle=idle)
        with self._cond:
            if self._closing:
                raise ProcmemError("the llama.cpp engine is closed", where=self._model_id, fix="load the model again")
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future.result()

    # ------------------------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._jobs or self._running() or self._closing):
                    self._cond.wait()
                if self._closing and not (self._waiting or self._jobs or self._running()):
                    return
                jobs = self._take_jobs()
            for job in jobs:
                self._run_job(job)
            with self._cond:
                self._admit()
            if self._running():
                self._step()

    def _running(self) -> list[_Request]:
        return [r for r in self._slots if r is not None]

    def _take_jobs(self) -> list[_Job]:
        idle = not self._running()
        ready = [job for job in self._jobs if idle or not job.idle]
        for job in ready:
            self._jobs.remove(job)
        return ready

    def _run_job(self, job: _Job) -> None:
        try:
            job.future.set_result(job.run())
        except BaseException as err:  # reaches the caller; the worker goes on
            job.future.set_exception(err)

    def _admit(self) -> None:
        """Move waiting requests into free slots, oldest first. A request for another adapter than the one the
        context applies waits until the running sequences are done, then the context switches."""
        if any(job.idle for job in self._jobs):
            return  # let an idle job run first
        while self._waiting and None in self._slots:
            request = self._waiting[0]
            if request.cancelled.is_set():
                self._waiting.popleft()
                self._finish(request, "stop")
                continue
            if not _same_adapter(request.adapter, self._ctx_adapter):
                if self._running():
                    return
                self._apply_adapter(request.adapter)
            self._waiting.popleft()
            error = self._check(request)
            if error is not None:
                request.future.set_exception(error)
                _end_stream(request)
                continue
            request.seq_id = self._slots.index(None)
            try:
                request.sampler = None if _plain_greedy(request.config) else self._sampler(request)
            except Exception as err:
                request.future.set_exception(err)
                _end_stream(request)
                continue
            self._slots[request.seq_id] = request
            self._plan_share(request)

    def _plan_share(self, request: _Request) -> None:
        """Pick the running request whose prompt shares the longest prefix with this one's (at least
        ``share_prefix_min_tokens``, and short of its last token, whose logits it needs): this one copies that
        request's KV cache for the prefix once it is there (:meth:`_settle_shares`) instead of reading it."""
        least = self._config.share_prefix_min_tokens
        if least <= 0 or len(request.tokens) <= least:
            return
        best: _Request | None = None
        for other in self._slots:  # admitted before this one (so waiting chains end), perhaps waiting themselves
            if other is None or other is request or other.cancelled.is_set():
                continue
            common = _common_prefix(request.tokens, other.tokens, len(request.tokens) - 1)
            if common >= max(least, request.share_len + 1):
                best, request.share_len = other, common
        request.share_src = best
        if best is None:
            request.share_len = 0

    def _settle_shares(self) -> None:
        """Copy the prefix into every request waiting on a source whose cache now holds it (between decode steps).
        A request whose source has left reads its whole prompt itself."""
        for request in self._running():
            source = request.share_src
            if source is None:
                continue
            if source.seq_id < 0 or self._slots[source.seq_id] is not source:
                request.share_src = None
            elif source.cached >= request.share_len:
                self._copy_prefix(source, request)

    def _copy_prefix(self, source: _Request, request: _Request) -> None:
        """Give ``request`` the source's KV cache for positions ``[0, share_len)`` (llama.cpp copies a sequence's
        whole stream, the tail is removed). A sliding-window layer forgets positions that no later token of the
        source can see; if the source had already gone further than the prefix and some were forgotten, the
        request may need them, and reads its prompt itself instead."""
        lib, memory, length = self._lib, self._memory, request.share_len
        request.share_src = None
        lib.llama_memory_seq_cp(memory, source.seq_id, request.seq_id, -1, -1)
        kept = lib.llama_memory_seq_rm(memory, request.seq_id, length, -1)
        if not kept or (source.cached > length + 1 and lib.llama_memory_seq_pos_min(memory, request.seq_id) != 0):
            lib.llama_memory_seq_rm(memory, request.seq_id, -1, -1)
            return
        request.fed = request.cached = length
        self._shared_tokens += length

    def _check(self, request: _Request) -> ProcmemError | None:
        """A backstop for requests submitted without :meth:`_encode_checked`."""
        return self._too_long(len(request.tokens))

    def _step(self) -> None:
        """One decode over every running sequence: a token for each generating one, prompt chunks for the rest."""
        lib, batch = self._lib, self._batch
        rows: list[tuple[_Request, int]] = []
        n = 0

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        self._settle_shares()
        running = self._running()
        for request in running:
            if request.cancelled.is_set():
                self._finish(request, "stop")
            elif not request.prefilling:
                rows.append((request, n))
                add(request.completion[-1], len(request.tokens) + len(request.completion) - 1, request.seq_id, True)
                request.cached += 1
        running = self._running()
        for request in running:
            if request.prefilling and request.share_src is None and n < self._config.n_batch:
                end = min(len(request.tokens), request.fed + self._config.n_batch - n)
                for waiting in running:  # stop where a request waiting on this one can copy from
                    if waiting.share_src is request and request.fed < waiting.share_len + 1 < end:
                        end = waiting.share_len + 1
                for pos in range(request.fed, end):
                    last = pos == len(request.tokens) - 1
                    if last:
                        rows.append((request, n))
                    add(request.tokens[pos], pos, request.seq_id, last)
                request.fed = request.cached = end
        if n == 0:
            return
        batch.n_tokens = n
        code = lib.llama_decode(self._ctx, batch)
        if code != 0:
            error = ProcmemError(f"llama.cpp failed to decode a batch of {n} tokens (code {code})",
                                 where=self._model_id, fix="retry; lower n_seq_max if it persists")
            for request in {id(r): r for r, _ in rows}.values():
                self._finish(request, "stop", error=error)
            return
        self._settle_shares()  # before a source that ends at this step leaves
        for request, index in rows:
            try:
                if request.sampler is None:
                    token = self._argmax(index, request.ignore_eos)
                else:
                    token = lib.llama_sampler_sample(request.sampler, self._ctx, index)
                self._advance(request, token)
            except Exception as err:  # this request only
                self._finish(request, "stop", error=err)

    def _argmax(self, index: int, ignore_eos: bool) -> int:
        """Greedy decoding without a sampler chain: the first largest logit of batch row ``index`` (what llama.cpp's
        greedy sampler picks), skipping end-of-generation tokens when ``ignore_eos``. Reading the row in place
        saves the chain's copy of the whole vocabulary per token."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        if not pointer:
            raise ProcmemError(f"llama.cpp has no logits for batch row {index}", where=self._model_id,
                               fix="retry; report it if it persists")
        row = self._np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        if ignore_eos and len(self._eog_ids):
            row[self._eog_ids] = -self._np.inf
        return int(row.argmax())

    def _advance(self, request: _Request, token: int) -> None:
        request.completion.append(token)
        config = request.config
        if token in self._eog and not request.ignore_eos:
            self._finish(request, "stop")
            return
        piece = request.decoder.decode(self._piece(token))
        if piece:
            request.text += piece
            if request.pieces is not None:
                request.pieces.put(piece)
            if config.stop and find_stop(request.text[-(len(piece) + _longest(config.stop)):], config.stop) is not None:
                self._finish(request, "stop")
                return
        if len(request.completion) >= config.max_tokens or \
                len(request.tokens) + len(request.completion) >= self._n_ctx_seq:
            self._finish(request, "length")

    def _finish(self, request: _Request, reason: Literal["stop", "length"], *,
                error: BaseException | None = None) -> None:
        lib = self._lib
        if request.seq_id >= 0 and self._slots[request.seq_id] is request:
            lib.llama_memory_seq_rm(self._memory, request.seq_id, -1, -1)
            self._slots[request.seq_id] = None
        if request.sampler is not None:
            lib.llama_sampler_free(request.sampler)
            request.sampler = None
        if not request.future.done():
            if error is not None:
                request.future.set_exception(error)
            else:
                tail = request.decoder.decode(b"", final=True)
                if tail and request.pieces is not None:
                    request.pieces.put(tail)
                text, stopped = cut_at_stop(request.text + tail, request.config.stop)
                request.future.set_result(Generation(
                    text=text, prompt_tokens=len(request.tokens), completion_tokens=len(request.completion),
                    finish_reason="stop" if stopped else reason))
        _end_stream(request)

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            size = self._lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = self._lib.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
            piece = self._pieces[token] = buffer.raw[:size]
        return piece

    def _sampler(self, request: _Request) -> Any:
        lib, config = self._lib, request.config
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if config.grammar is not None:
            grammar = lib.llama_sampler_init_grammar(self._vocab, config.grammar.encode(), b"root")
            if not grammar:
                lib.llama_sampler_free(chain)
                raise ProcmemError("llama.cpp cannot parse the grammar", where="GenerationConfig.grammar",
                                   fix="write it in GBNF with a `root` rule (see llama.cpp's grammars/README.md)")
            lib.llama_sampler_chain_add(chain, grammar)
        if request.ignore_eos and self._eog:
            biases = (lib.llama_logit_bias * len(self._eog))(*[lib.llama_logit_bias(t, -math.inf) for t in self._eog])
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_logit_bias(self._n_vocab, len(biases), biases))
        if config.temperature > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(config.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(config.top_p, 1))
            seed = config.seed if config.seed is not None else lib.LLAMA_DEFAULT_SEED
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        return chain

    def _load_adapter(self, adapter: _Adapter) -> None:
        handle = self._lib.llama_adapter_lora_init(self._model, str(adapter.path).encode())
        if not handle:
            raise ProcmemError(f"llama.cpp cannot load the LoRA adapter {adapter.path}", where="--adapter",
                               fix="pass an adapter trained for this base model (procmem distill)")
        adapter.handle = handle

    def _apply_adapter(self, adapter: _Adapter | None) -> None:
        lib = self._lib
        if adapter is None:
            lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            handles = (lib.llama_adapter_lora_p_ctypes * 1)(adapter.handle)
            scales = (ctypes.c_float * 1)(1.0)
            lib.llama_set_adapters_lora(self._ctx, handles, 1, scales)
        self._ctx_adapter = adapter

    def _score(self, prompt: list[int], completion: list[int]) -> list[float]:
        import numpy as np

        if not _same_adapter(self._adapter, self._ctx_adapter):
            self._apply_adapter(self._adapter)
        lib, batch = self._lib, self._batch
        tokens = prompt + completion
        for pos, token in enumerate(tokens):
            batch.token[pos] = token
            batch.pos[pos] = pos
            batch.n_seq_id[pos] = 1
            batch.seq_id[pos][0] = 0
            batch.logits[pos] = pos >= len(prompt) - 1
        batch.n_tokens = len(tokens)
        try:
            code = lib.llama_decode(self._ctx, batch)
            if code != 0:
                raise ProcmemError(f"llama.cpp failed to decode (code {code})", where="token_logprobs",
                                   fix="shorten the input")
            scores = []
            for i, token in enumerate(completion):
                row = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, len(prompt) - 1 + i),
                                            shape=(self._n_vocab,)).astype(np.float64)
                top = row.max()
                scores.append(float(row[token] - top - math.log(np.exp(row - top).sum())))
            return scores
        finally:
            lib.llama_memory_seq_rm(self._memory, 0, -1, -1)


class PinnedAdapter:
    """An :class:`~procmem.core.llm.LLM` on a shared :class:`LlamaCppLLM` with one adapter (or none) fixed
    (:meth:`LlamaCppLLM.pinned`). Closing it leaves the engine running."""

    supports_grammar = True

    def __init__(self, engine: LlamaCppLLM, adapter: _Adapter | None) -> None:
        self.engine = engine
        self._adapter = adapter

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def adapter_version(self) -> str | None:
        return self._adapter.version if self._adapter is not None else None

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        return self.engine._generate(prompts, config, adapter=self._adapter)

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        return self.engine._stream(prompt, config, adapter=self._adapter)

    def check_prompts(self, prompts: Sequence[str], config: GenerationConfig) -> None:
        self.engine.check_prompts(prompts, config)

    def close(self) -> None:
        """Nothing to free: the engine belongs to whoever pinned it."""


def convert_gguf(source: str | os.PathLike[str], out: str | os.PathLike[str], precision: Precision) -> Path:
    """Write the GGUF model ``source`` with its weights in ``precision`` at ``out`` (atomically), with llama.cpp's
    own quantizer. Quantized weights are dequantized first, so ``f32`` holds exactly the values transformers
    runs (it dequantizes the same file); ``f16`` rounds them; ``q8_0`` and ``q4_k_m`` quantize them again.
    Norms and other small tensors stay F32, as llama.cpp keeps them."""
    lib = _llama_cpp()
    source_path, out_path = Path(source), Path(out)
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, _FTYPES[precision])
    params.allow_requantize = True
    params.nthread = _usable_cores()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.with_name(f".{out_path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        code = lib.llama_model_quantize(str(source_path).encode(), str(staging).encode(), ctypes.byref(params))
        if code != 0 or not staging.is_file():
            raise ProcmemError(f"llama.cpp could not write {source_path.name} as {precision} (code {code})",
                               where=str(source_path), fix=f"use another precision ({', '.join(PRECISIONS)})")
        staging.chmod(0o644)  # readable by everyone sharing a models cache
        os.replace(staging, out_path)
    finally:
        staging.unlink(missing_ok=True)
    return out_path


def idle_cores(running: Sequence[int] | None = None) -> int:
    """The usable cores minus the threads other processes are running right now, at least one.

    ``running`` are samples of the system's runnable threads less this process's other ones (``/proc/loadavg``'s
    fourth field counts the sampling thread itself, and this process's busy threads, e.g. its main thread importing
    while the engine loads in the background, are not competition the engine should yield to); by default five,
    10 ms apart, and their median is used. On a shared machine
    llama.cpp's threads that must wait for a busy core's turn stall each step (measured: one thread decoded up
    to 2.4x faster than two at load average 3-4), while on an idle machine every core helps. The 1-minute load
    average would count work that just ended, such as this process's own previous phase.
    """
    cores = _usable_cores()
    if running is None:
        running = _running_samples()
    if not running:
        return cores
    others = sorted(running)[len(running) // 2] - 1
    return max(1, min(cores, cores - others))


def _running_samples(count: int = 5, pause_s: float = 0.01) -> list[int]:
    samples = []
    for i in range(count):
        try:
            with open("/proc/loadavg", encoding="ascii") as handle:
                system = int(handle.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return []
        samples.append(max(1, system - _own_running() + 1))
        if i + 1 < count:
            time.sleep(pause_s)
    return samples


def _own_running() -> int:
    """This process's runnable threads (the caller's included), from ``/proc/self/task``; 1 if unreadable."""
    running = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue  # the thread ended
        if stat[stat.rfind(")") + 2:stat.rfind(")") + 3] == "R":
            running += 1
    return max(1, running)


def _usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def prefer_passive_openmp() -> None:
    """Make OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY=PASSIVE``), unless the user set it.

    llama.cpp (built with OpenMP) meets its threads at a barrier after each of the ~450 operations of a decode
    step. Spinning there is fastest on cores nobody else wants, but on cores other processes keep busy a
    descheduled thread stalls the others for a whole time slice: on this project's shared 2-core machine two
    spinning threads decoded 2-7x slower than one, while two sleeping threads ranged from 1.6x faster to 15%
    slower than one (docs/guides/inference-engines.md has the measurements).
    libgomp reads the variable once, when it is loaded, and torch loads its own copy under the same name (which
    the engine then shares), so this runs when :mod:`procmem.llm` is imported, before torch or llama.cpp load.
    ``export OMP_WAIT_POLICY=ACTIVE`` opts out (a machine with cores to spare).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _plain_greedy(config: GenerationConfig) -> bool:
    """Whether a request decodes greedily without a grammar, so the engine takes the arg max itself."""
    return config.temperature <= 0 and config.grammar is None


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit`` (slice comparisons run in C)."""
    high = min(len(a), len(b), limit)
    if a[:high] == b[:high]:
        return high
    low = 0  # a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def _same_adapter(a: _Adapter | None, b: _Adapter | None) -> bool:
    """Whether two adapter selections apply the same weights (one file may be selected under two names)."""
    if a is None or b is None:
        return a is b
    return a is b or a.path == b.path


def _end_stream(request: _Request) -> None:
    if request.pieces is not None:
        request.pieces.put(None)


def _longest(stops: Sequence[str]) -> int:
    return max((len(s) for s in stops), default=0)


def _gguf_lora_path(path: Path) -> Path:
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        from procmem.llm.gguf_io import ensure_gguf_lora

        if not (path / "adapter_config.json").is_file():
            raise ProcmemError(f"{path} is not a LoRA adapter directory (no adapter_config.json)", where="--adapter",
                               fix="pass a LoRA adapter directory written by procmem distill, or a .gguf LoRA file")
        return ensure_gguf_lora(path)
    raise ProcmemError(f"no such LoRA adapter {path}", where="--adapter",
                       fix="pass a LoRA adapter directory written by procmem distill, or a .gguf LoRA file")


_LIB: Any = None
_LIB_LOCK = threading.Lock()
_LOG_CALLBACK: Any = None  # referenced here so that ctypes keeps it alive
_GGML_LOG_ERROR = 4  # enum ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT


def _llama_cpp() -> Any:
    """The ``llama_cpp`` module, imported once, with llama.cpp's own log lines muted below errors."""
    global _LIB, _LOG_CALLBACK
    with _LIB_LOCK:
        if _LIB is None:
            try:
                import llama_cpp
            except ImportError as err:
                raise ProcmemError("the llama.cpp engine needs llama-cpp-python, which is not installed",
                                   where="--engine llamacpp", fix=_INSTALL_FIX) from err
            log = logging.getLogger("procmem.llamacpp")

            def _log(level: int, text: bytes, _: Any) -> None:
                if level == _GGML_LOG_ERROR:
                    log.error(text.decode("utf-8", "replace").rstrip())

            _LOG_CALLBACK = llama_cpp.llama_log_callback(_log)
            llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _LIB = llama_cpp
        return _LIB
