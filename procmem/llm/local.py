"""A local Hugging Face causal LM (optionally with a LoRA adapter) behind the :class:`~procmem.llm.LLM` seam.

Batches prompts with left padding, decodes greedily or by sampling, and ends each row at its first stop
string or EOS; a batch ends as soon as every row has. fp32 on CPU; CUDA is used when present.

Memory is bounded before anything is allocated: a prompt that fills a sequence (the model's context, or
``max_sequence_tokens`` if smaller) raises :class:`~procmem.core.errors.ContextLengthError`; a completion that would
run past it ends there (``finish_reason="length"``), as on the llama.cpp engine; and a call's prompts run in
sub-batches whose padded size (rows x (longest prompt + new tokens)) stays within ``max_batch_tokens``.
Attention memory grows with the square of a row's length: without these bounds one 60,000-token prompt to the
tiny model took 24 GB.

Decoding follows :class:`~procmem.core.GenerationConfig` only: the model's own generation defaults
(``generation_config.json``: top-k, repetition penalty, ...) are ignored, so that ``temperature=0`` is
plain greedy decoding whatever model is loaded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)
from transformers import GenerationConfig as HFGenerationConfig
from transformers.utils import logging as hf_logging

from procmem.core.config import GenerationConfig
from procmem.core.errors import ContextLengthError, ProcmemError
from procmem.core.llm import Generation
from procmem.llm._limits import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_SEQUENCE_TOKENS
from procmem.llm._stops import cut_at_stop, filter_stream, refuse_grammar

__all__ = ["LocalLLM", "load_model_and_tokenizer"]

_NO_LIMIT = 10**9  # tokenizers without a length limit report model_max_length as 1e30
_SKIP_TOKENIZING = 8
"""A prompt whose bytes alone prove at least 8x more tokens than a sequence holds is refused without tokenizing it
(the tiny model's byte tokenizer takes ~4 s per MB on this machine); a shorter one is tokenized for an exact count."""
_NORMALIZER_SLACK = 4
"""A normalizer may shorten a text before it is tokenized (NFKC composes characters): the cheap pre-check's bound
on the tokens of a text assumes 4x fewer bytes than it has, so it never refuses a prompt that would fit."""

MODEL_FORMS = "use local:default, local:tiny or local:/path/to/hf_model_dir (a directory with config.json)"
_ADAPTER_FIX = "pass a LoRA adapter directory written by `procmem distill` (or peft's save_pretrained) for this model"


def load_model_and_tokenizer(
    path: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None, trainable: bool = False
) -> tuple[Any, PreTrainedTokenizerBase]:
    """Load an HF causal LM and its tokenizer (padding side left, pad token set).

    With ``adapter`` the LoRA adapter is applied: for inference (``trainable=False``) it is merged into
    the weights, which is exact and costs nothing per token; with ``trainable=True`` a trainable
    ``PeftModel`` is returned. Without an adapter, ``trainable`` only selects train vs eval mode.
    """
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ProcmemError(f"{path} is not a Hugging Face model directory (no config.json)", where="--model",
                           fix=MODEL_FORMS)
    adapter_path = _check_adapter(adapter)
    model, tokenizer = _load_base(path)
    if adapter_path is not None:
        model = _apply_adapter(model, adapter_path, trainable)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.train(trainable)
    return model, tokenizer


class LocalLLM:
    """A local transformers model implementing :class:`~procmem.llm.LLM`.

    Thread-safe: one lock serialises use of the model, so concurrent callers queue up; wrap it in
    :class:`~procmem.llm.MicroBatcher` to merge their single-prompt calls into batches.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        adapter: str | os.PathLike[str] | None = None,
        *,
        max_batch_size: int = 16,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_sequence_tokens: int = DEFAULT_MAX_SEQUENCE_TOKENS,
        model_id: str | None = None,
        adapter_version: str | None = None,
    ) -> None:
        model, tokenizer = load_model_and_tokenizer(path, adapter=adapter)
        self._init(model, tokenizer, model_id=model_id or Path(path).expanduser().name,
                   adapter_version=adapter_version or (Path(adapter).name if adapter is not None else None),
                   max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                   max_sequence_tokens=max_sequence_tokens)

    @classmethod
    def from_loaded(
        cls, model: Any, tokenizer: PreTrainedTokenizerBase, *, model_id: str,
        adapter_version: str | None = None, max_batch_size: int = 16,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_sequence_tokens: int = DEFAULT_MAX_SEQUENCE_TOKENS,
    ) -> LocalLLM:
        """Wrap an already loaded model (e.g. one distill just trained) without reloading it.

        The model's generation defaults are replaced (see the module docstring).
        """
        self = cls.__new__(cls)
        self._init(model, tokenizer, model_id=model_id, adapter_version=adapter_version,
                   max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                   max_sequence_tokens=max_sequence_tokens)
        return self

    def _init(self, model: Any, tokenizer: PreTrainedTokenizerBase, *, model_id: str,
              adapter_version: str | None, max_batch_size: int, max_batch_tokens: int,
              max_sequence_tokens: int) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_batch_tokens < 2 or max_sequence_tokens < 2:
            raise ValueError("max_batch_tokens and max_sequence_tokens must be >= 2")
        self.max_batch_tokens = max_batch_tokens
        """Most tokens one batch holds: rows x (longest prompt + new tokens)."""
        self.max_sequence_tokens = max_sequence_tokens
        """Most prompt + new tokens one sequence holds (see :attr:`sequence_limit`)."""
        self.context_length = _context_length(model, tokenizer)
        """The model's context (``max_position_embeddings``, or the tokenizer's ``model_max_length`` if smaller)."""
        self._token_bytes: int | None = None
        self._model = model
        self._tokenizer = tokenizer
        self._model_id = model_id
        self._adapter_version = adapter_version
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self._eos_ids = frozenset(i for i in eos_ids if i is not None)
        _base_model(model).generation_config = HFGenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=sorted(self._eos_ids),
            pad_token_id=tokenizer.pad_token_id)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def adapter_version(self) -> str | None:
        return self._adapter_version

    @property
    def model(self) -> Any:
        """The underlying transformers model (do not use it while generating from other threads)."""
        return self._model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    @property
    def sequence_limit(self) -> int:
        """Most prompt + new tokens one sequence holds: the least of the model's context, ``max_sequence_tokens`` and
        ``max_batch_tokens``. A prompt must leave room for one new token; a completion ends (``length``) there."""
        return min(self.context_length, self.max_sequence_tokens, self.max_batch_tokens)

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, *, ignore_eos: bool = False
    ) -> list[Generation]:
        """Complete every prompt; one :class:`Generation` per prompt, in order.

        Prompts are sorted by length and run in sub-batches of at most ``max_batch_size`` rows and
        ``max_batch_tokens`` tokens (rows x (longest prompt + new tokens)) to limit padding and memory.
        A prompt that fills :attr:`sequence_limit` raises :class:`ContextLengthError` before any runs; one
        whose completion would overflow it runs alone and ends there.
        ``ignore_eos`` (benchmarks only) makes every row run to ``max_tokens`` unless a stop string ends it.
        """
        refuse_grammar(config, "transformers")
        prompts = list(prompts)
        if not prompts:
            return []
        ids = self._encode_checked(prompts, config)
        results: dict[int, Generation] = {}
        with self._lock, torch.inference_mode():
            _seed(config)
            order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
            for chunk in self._batches(order, [len(i) for i in ids], config.max_tokens):
                rows = [ids[i] for i in chunk]
                batch = self._generate_batch(rows, self._fitted(config, max(map(len, rows))), ignore_eos)
                results.update(zip(chunk, batch, strict=True))
        return [results[i] for i in range(len(prompts))]

    def check_prompts(self, prompts: Sequence[str], config: GenerationConfig) -> None:
        """Raise :class:`ContextLengthError` if a prompt leaves no room for a new token; allocates nothing."""
        self._encode_checked(list(prompts), config)

    def _batches(self, order: list[int], lengths: list[int], max_tokens: int) -> Iterator[list[int]]:
        """``order`` (ascending lengths) cut into batches within ``max_batch_size`` and ``max_batch_tokens``.
        A row whose completion the sequence limit cuts short runs alone, so that no row is cut for its neighbour."""
        limit = self.sequence_limit
        chunk: list[int] = []
        for index in order:
            cut = lengths[index] + max_tokens > limit
            padded = min(lengths[index] + max_tokens, limit)  # the longest row so far: order is ascending
            if chunk and (cut or len(chunk) >= self.max_batch_size
                          or (len(chunk) + 1) * padded > self.max_batch_tokens):
                yield chunk
                chunk = []
            chunk.append(index)
        if chunk:
            yield chunk

    def _fitted(self, config: GenerationConfig, longest: int) -> GenerationConfig:
        """``config`` with ``max_tokens`` cut to what the sequence limit leaves after a ``longest``-token prompt."""
        room = self.sequence_limit - longest
        return config if config.max_tokens <= room else config.model_copy(update={"max_tokens": room})

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        """Yield the completion of ``prompt`` in pieces; for greedy decoding their concatenation equals
        ``generate``'s text. Closing the iterator early cancels the generation.

        A prompt that leaves no room for an answer raises :class:`ContextLengthError` when the first piece is asked
        for, before anything is allocated (:meth:`check_prompts` checks it beforehand)."""
        refuse_grammar(config, "transformers")
        ids = self._encode_checked([prompt], config)[0]
        config = self._fitted(config, len(ids))
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    _seed(config)
                    input_ids = torch.tensor([ids], device=self._model.device)
                    tracker = _StopTracker(self._tokenizer, config.stop, self._eos_ids, len(ids), rows=1,
                                           cancel=cancel)
                    self._model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         generation_config=self._hf_config(config, False),
                                         stopping_criteria=StoppingCriteriaList([tracker]), streamer=streamer)
            except BaseException as err:  # re-raised in the consumer's thread below
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=run, name="procmem-local-stream", daemon=True)
        thread.start()
        try:
            yield from filter_stream(streamer, config.stop)
        finally:
            cancel.set()
            thread.join()
        if errors:
            raise errors[0]

    def _encode_checked(self, prompts: list[str], config: GenerationConfig) -> list[list[int]]:
        """The prompts' token ids; raises :class:`ContextLengthError` for the first that leaves no room for a new
        token, without tokenizing a text so long that it cannot fit (a token covers at most
        :meth:`_max_token_bytes` bytes)."""
        limit = self.sequence_limit
        per_token = _NORMALIZER_SLACK * self._max_token_bytes()
        for prompt in prompts:
            fewest = len(prompt.encode("utf-8", "surrogatepass")) // per_token
            if fewest >= _SKIP_TOKENIZING * limit:  # far over: not worth seconds of tokenizing for the exact count
                raise ContextLengthError(fewest, limit, model=self._model_id, at_least=True, fix=self._fix())
        ids = [self._encode(p) for p in prompts]
        for tokens in ids:
            if len(tokens) >= limit:
                raise ContextLengthError(len(tokens), limit, model=self._model_id, fix=self._fix())
        return ids

    def _fix(self) -> str:
        if self.sequence_limit < self.context_length:
            return (f"shorten the prompt: it must leave room for the answer (max_sequence_tokens="
                    f"{self.max_sequence_tokens} and max_batch_tokens={self.max_batch_tokens} bound a sequence below "
                    f"the model's context of {self.context_length})")
        return "shorten the prompt: it must leave room for the answer"

    def _max_token_bytes(self) -> int:
        """The most UTF-8 bytes a vocabulary entry spells (an upper bound on the input bytes one token covers:
        byte-level and SentencePiece spellings are at least as long as the bytes they stand for)."""
        if self._token_bytes is None:
            vocab = self._tokenizer.get_vocab()
            self._token_bytes = max((len(t.encode("utf-8", "surrogatepass")) for t in vocab), default=1) or 1
        return self._token_bytes

    def _encode(self, prompt: str) -> list[int]:
        ids: list[int] = self._tokenizer(prompt)["input_ids"]
        if ids:
            return ids
        if self._tokenizer.bos_token_id is None:
            raise ProcmemError("cannot complete an empty prompt with a model that has no BOS token",
                               where=self._model_id, fix="pass a non-empty prompt")
        return [self._tokenizer.bos_token_id]

    def _generate_batch(self, ids: list[list[int]], config: GenerationConfig, ignore_eos: bool) -> list[Generation]:
        inputs = self._tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self._model.device)
        prompt_len = inputs["input_ids"].shape[1]
        tracker = _StopTracker(self._tokenizer, config.stop, self._eos_ids, prompt_len, rows=len(ids))
        output = self._model.generate(**inputs, generation_config=self._hf_config(config, ignore_eos),
                                      stopping_criteria=StoppingCriteriaList([tracker]))
        generations = []
        for row, tokens in enumerate(output[:, prompt_len:].tolist()):
            ended = tracker.ends[row]
            count = len(tokens) if ended is None else ended
            text, stopped = cut_at_stop(self._decode(tokens[:count]), config.stop)
            finish: Literal["stop", "length"] = "stop" if stopped or ended is not None else "length"
            generations.append(Generation(text=text, prompt_tokens=len(ids[row]), completion_tokens=count,
                                          finish_reason=finish))
        return generations

    def _decode(self, tokens: list[int]) -> str:
        return str(self._tokenizer.decode(tokens, skip_special_tokens=True))

    def _hf_config(self, config: GenerationConfig, ignore_eos: bool) -> HFGenerationConfig:
        sampling = config.temperature > 0
        return HFGenerationConfig(
            max_new_tokens=config.max_tokens,
            min_new_tokens=config.max_tokens if ignore_eos else None,
            do_sample=sampling,
            temperature=config.temperature if sampling else None,
            top_p=config.top_p if sampling else None,
            top_k=0 if sampling else None,  # pure nucleus sampling, not transformers' default top-50
            pad_token_id=self._tokenizer.pad_token_id,
            eos_token_id=sorted(self._eos_ids),
        )


class _StopTracker(StoppingCriteria):
    """Ends each row at EOS or once its new text contains a stop string; records where it ended.

    Only the last few tokens are decoded per step: a stop string of ``n`` bytes spans at most ``n``
    tokens, the newest of which completes it (earlier steps would have caught it otherwise). A hit
    there is confirmed on the row's whole completion.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], eos_ids: frozenset[int],
                 prompt_len: int, *, rows: int, cancel: threading.Event | None = None) -> None:
        self._tokenizer = tokenizer
        self._stops = [s for s in stops if s]
        self._eos_ids = eos_ids
        self._prompt_len = prompt_len
        self._window = max((len(s.encode()) for s in self._stops), default=0) + 1
        self._cancel = cancel
        self.ends: list[int | None] = [None] * rows
        """Per row: how many new tokens it had when it ended (None: still running)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self._prompt_len
        last = input_ids[:, -1].tolist()
        for row, end in enumerate(self.ends):
            if end is None and last[row] in self._eos_ids:
                self.ends[row] = generated
        running = [row for row, end in enumerate(self.ends) if end is None]
        if self._stops and running:
            window = input_ids[running, -min(self._window, generated):].tolist()
            texts = self._tokenizer.batch_decode(window, skip_special_tokens=True)
            for row, text in zip(running, texts, strict=True):
                if self._has_stop(text) and self._has_stop(self._new_text(input_ids[row])):
                    self.ends[row] = generated
        if self._cancel is not None and self._cancel.is_set():
            return torch.ones(len(self.ends), dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]
        done = [end is not None for end in self.ends]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def _has_stop(self, text: str) -> bool:
        return any(stop in text for stop in self._stops)

    def _new_text(self, row: torch.Tensor) -> str:
        """The row's whole completion so far: confirms a hit in the window (whose first token may decode
        differently without its left context, e.g. half a UTF-8 character)."""
        return str(self._tokenizer.decode(row[self._prompt_len:].tolist(), skip_special_tokens=True))


def _context_length(model: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    """The most positions the model takes: ``max_position_embeddings``, or the tokenizer's limit if smaller."""
    config = _base_model(model).config
    limits = [getattr(config, "max_position_embeddings", None), getattr(config, "n_positions", None),
              getattr(tokenizer, "model_max_length", None)]
    known = [int(n) for n in limits if isinstance(n, int) and 0 < n < _NO_LIMIT]
    return min(known, default=_NO_LIMIT)


def _load_base(path: Path) -> tuple[Any, PreTrainedTokenizerBase]:
    device = _device()
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # The tokenizer parses a large JSON in Python while the model loads tensors: overlap the two.
        with ThreadPoolExecutor(max_workers=1) as pool:
            tokenizer_future = pool.submit(AutoTokenizer.from_pretrained, path)
            model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(device))
            model = model.to(device)
            tokenizer = tokenizer_future.result()
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as err:
        raise ProcmemError(f"cannot load the model from {path}: {_first_line(err)}", where="--model",
                           fix=MODEL_FORMS) from err
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def _base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _seed(config: GenerationConfig) -> None:
    if config.temperature > 0 and config.seed is not None:
        torch.manual_seed(config.seed)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _check_adapter(adapter: str | os.PathLike[str] | None) -> Path | None:
    if adapter is None:
        return None
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ProcmemError(f"{path} is not a LoRA adapter directory (no adapter_config.json)", where="--adapter",
                           fix=_ADAPTER_FIX)
    return path


def _apply_adapter(model: Any, adapter: Path, trainable: bool) -> Any:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ProcmemError(f"cannot apply the adapter {adapter}: {_first_line(err)}", where="--adapter",
                           fix=_ADAPTER_FIX) from err
    return peft_model if trainable else peft_model.merge_and_unload()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
