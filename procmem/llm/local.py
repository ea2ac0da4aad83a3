"""A local Hugging Face causal LM (optionally with a LoRA adapter) behind the :class:`~procmem.llm.LLM` seam.

Batches prompts with left padding, decodes greedily or by sampling, and ends each row at its first stop
string or EOS; a batch ends as soon as every row has. fp32 on CPU; CUDA is used when present.

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
from procmem.core.errors import ProcmemError
from procmem.core.llm import Generation
from procmem.llm._stops import cut_at_stop, filter_stream, refuse_grammar

__all__ = ["LocalLLM", "load_model_and_tokenizer"]

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
        model_id: str | None = None,
        adapter_version: str | None = None,
    ) -> None:
        model, tokenizer = load_model_and_tokenizer(path, adapter=adapter)
        self._init(model, tokenizer, model_id=model_id or Path(path).expanduser().name,
                   adapter_version=adapter_version or (Path(adapter).name if adapter is not None else None),
                   max_batch_size=max_batch_size)

    @classmethod
    def from_loaded(
        cls, model: Any, tokenizer: PreTrainedTokenizerBase, *, model_id: str,
        adapter_version: str | None = None, max_batch_size: int = 16,
    ) -> LocalLLM:
        """Wrap an already loaded model (e.g. one distill just trained) without reloading it.

        The model's generation defaults are replaced (see the module docstring).
        """
        self = cls.__new__(cls)
        self._init(model, tokenizer, model_id=model_id, adapter_version=adapter_version,
                   max_batch_size=max_batch_size)
        return self

    def _init(self, model: Any, tokenizer: PreTrainedTokenizerBase, *, model_id: str,
              adapter_version: str | None, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
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

    def generate(
        self, prompts: Sequence[str], config: GenerationConfig, *, ignore_eos: bool = False
    ) -> list[Generation]:
        """Complete every prompt; one :class:`Generation` per prompt, in order.

        Prompts are sorted by length and run in sub-batches of ``max_batch_size`` to limit padding.
        ``ignore_eos`` (benchmarks only) makes every row run to ``max_tokens`` unless a stop string ends it.
        """
        refuse_grammar(config, "transformers")
        prompts = list(prompts)
        if not prompts:
            return []
        results: dict[int, Generation] = {}
        with self._lock, torch.inference_mode():
            _seed(config)
            ids = [self._encode(p) for p in prompts]
            order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start:start + self.max_batch_size]
                batch = self._generate_batch([ids[i] for i in chunk], config, ignore_eos)
                results.update(zip(chunk, batch, strict=True))
        return [results[i] for i in range(len(prompts))]

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        """Yield the completion of ``prompt`` in pieces; for greedy decoding their concatenation equals
        ``generate``'s text. Closing the iterator early cancels the generation."""
        refuse_grammar(config, "transformers")
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    _seed(config)
                    ids = self._encode(prompt)
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
