"""Each engine refuses a prompt that leaves no room in a sequence before it allocates anything for it
(:class:`ContextLengthError`), ends a completion where the sequence is full, and the transformers engine keeps
every batch within ``max_batch_tokens``."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procmem.core import ContextLengthError, GenerationConfig, ProcmemError
from procmem.llm import LocalLLM, MicroBatcher, load_llm
from procmem.llm._limits import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_SEQUENCE_TOKENS

GREEDY = GenerationConfig(max_tokens=8, temperature=0.0, stop=())
NO_LLAMA_CPP = "the llama.cpp engine needs llama-cpp-python (pip install procmem[llamacpp])"
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason=NO_LLAMA_CPP)


def _local(local_tiny: LocalLLM, **limits: int) -> LocalLLM:
    """The shared tiny model's weights under other limits (nothing is reloaded)."""
    return LocalLLM.from_loaded(local_tiny.model, local_tiny.tokenizer, model_id="tiny", **limits)


class _BatchSpy:
    """Records the rows and padded length of every batch a LocalLLM runs (wraps its real ``_generate_batch``)."""

    def __init__(self, llm: LocalLLM) -> None:
        self.shapes: list[tuple[int, int]] = []
        self._real = llm._generate_batch
        llm._generate_batch = self  # type: ignore[method-assign]

    def __call__(self, ids: list[list[int]], config: GenerationConfig, ignore_eos: bool) -> Any:
        self.shapes.append((len(ids), max(map(len, ids)) + config.max_tokens))
        return self._real(ids, config, ignore_eos)


def test_the_error_says_what_and_where_and_is_a_procmem_error() -> None:
    err = ContextLengthError(60_012, 2048, model="tiny")
    assert isinstance(err, ProcmemError) and (err.prompt_tokens, err.limit, err.at_least) == (60_012, 2048, False)
    assert str(err).startswith("prompt: the prompt has 60012 tokens; tiny holds 2048 tokens per sequence (")
    assert "at least 9" in str(ContextLengthError(9, 4, at_least=True))


# --- transformers ----------------------------------------------------------------------------------------------


def test_transformers_refuses_a_prompt_that_fills_the_context_before_generating(local_tiny: LocalLLM) -> None:
    llm = _local(local_tiny)
    assert llm.context_length == 2048 and llm.sequence_limit == 2048, "the tiny model's max_position_embeddings"
    spy = _BatchSpy(llm)
    for prompt in ("x" * 2048, "x" * 60_000):  # one token per byte
        with pytest.raises(ContextLengthError) as caught:
            llm.generate(["Hi", prompt], GREEDY)
        assert (caught.value.prompt_tokens, caught.value.limit) == (len(prompt), 2048)
        with pytest.raises(ContextLengthError):
            next(llm.stream(prompt, GREEDY))  # at the first piece, before anything is allocated
        with pytest.raises(ContextLengthError):
            llm.check_prompts([prompt], GREEDY)
    assert spy.shapes == [], "nothing ran, not even the prompt that fits"
    llm.check_prompts(["x" * 2047], GREEDY)


def test_transformers_refuses_a_megabyte_without_tokenizing_it(local_tiny: LocalLLM) -> None:
    llm = _local(local_tiny)
    started = time.perf_counter()
    with pytest.raises(ContextLengthError) as caught:
        llm.generate(["x" * 1_000_000], GREEDY)
    assert caught.value.at_least and 2048 * 8 <= caught.value.prompt_tokens <= 1_000_000
    assert "at least" in str(caught.value)
    assert time.perf_counter() - started < 1.0, "tokenizing a megabyte takes seconds"


def test_transformers_ends_a_completion_where_the_sequence_is_full(local_tiny: LocalLLM) -> None:
    llm = _local(local_tiny)
    config = GREEDY.model_copy(update={"max_tokens": 64})
    near = "x" * 2040
    [cut] = llm.generate([near], config, ignore_eos=True)
    assert (cut.prompt_tokens, cut.completion_tokens, cut.finish_reason) == (2040, 8, "length")
    [plain] = llm.generate([near], config)
    assert plain.completion_tokens <= 8 and "".join(llm.stream(near, config)) == plain.text
    short = ["Hi", "Spell cat.", "x"]
    together = llm.generate([*short, near], config)
    assert together[:3] == [llm.generate([p], config)[0] for p in short], "the cut row ran alone"


def test_transformers_keeps_each_batch_within_max_batch_tokens(local_tiny: LocalLLM) -> None:
    llm = _local(local_tiny, max_batch_tokens=1000, max_batch_size=16)
    spy = _BatchSpy(llm)
    prompts = [f"{i} " + "y" * (30 + 20 * i) for i in range(16)]
    batched = llm.generate(prompts, GREEDY)
    assert len(spy.shapes) > 1 and all(rows * length <= 1000 for rows, length in spy.shapes), spy.shapes
    assert sum(rows for rows, _ in spy.shapes) == 16
    assert batched == [llm.generate([p], GREEDY)[0] for p in prompts], "splitting changes no answer"
    with pytest.raises(ContextLengthError) as caught:
        llm.generate(["z" * 1000], GREEDY)
    assert caught.value.limit == 1000 and "max_batch_tokens=1000" in str(caught.value), "it bounds a sequence too"


def test_transformers_defaults_and_load_llm_wiring(tiny_model_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    llm = load_llm("local:tiny", models_dir=models, engine="transformers", max_batch_tokens=512,
                   max_sequence_tokens=300)
    assert isinstance(llm, LocalLLM) and (llm.max_batch_tokens, llm.sequence_limit) == (512, 300)
    default = load_llm("local:tiny", models_dir=models, engine="transformers")
    assert isinstance(default, LocalLLM)
    assert (default.max_batch_tokens, default.max_sequence_tokens) == (DEFAULT_MAX_BATCH_TOKENS,
                                                                       DEFAULT_MAX_SEQUENCE_TOKENS)


def test_the_microbatcher_refuses_an_over_long_prompt_before_queueing_it(local_tiny: LocalLLM) -> None:
    llm = _local(local_tiny)
    spy = _BatchSpy(llm)
    with MicroBatcher(llm, max_batch=2, max_wait_s=2.0) as batched:
        results: dict[str, Any] = {}

        def ask(name: str, prompt: str) -> None:
            try:
                results[name] = batched.generate([prompt], GREEDY)[0]
            except ContextLengthError as err:
                results[name] = err

        threads = [threading.Thread(target=ask, args=args) for args in
                   (("a", "Hi"), ("long", "x" * 5000), ("b", "Spell cat."))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert isinstance(results["long"], ContextLengthError) and results["long"].prompt_tokens == 5000
    assert results["a"].completion_tokens > 0 and results["b"].completion_tokens > 0
    assert len(spy.shapes) == 1 and spy.shapes[0][0] == 2, "the two that fit ran as one batch; no retries alone"


# --- llama.cpp -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_gguf: Path) -> Iterator[Any]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(NO_LLAMA_CPP)
    from procmem.llm import EngineConfig, LlamaCppLLM

    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=2, n_ctx_per_seq=256,
                                                                      n_threads=1)) as llm:
        yield llm


@needs_llama_cpp
def test_llama_cpp_refuses_a_prompt_that_fills_the_context_in_the_callers_thread(engine: Any) -> None:
    assert engine.context_length == 256 and engine.sequence_limit == 256
    for prompt in ("x" * 256, "x" * 60_000):
        with pytest.raises(ContextLengthError) as caught:
            engine.generate(["Hi", prompt], GREEDY)
        assert (caught.value.prompt_tokens, caught.value.limit) == (len(prompt), 256)
        assert "holds 256 tokens per sequence" in str(caught.value)
        with pytest.raises(ContextLengthError):
            next(engine.stream(prompt, GREEDY))  # at the first piece, before it is submitted
        with pytest.raises(ContextLengthError):
            engine.pinned().check_prompts([prompt], GREEDY)
    assert not engine._waiting and not engine._running(), "nothing was submitted"
    engine.check_prompts(["x" * 255], GREEDY)


@needs_llama_cpp
def test_llama_cpp_ends_a_completion_where_the_sequence_is_full(engine: Any) -> None:
    [cut] = engine.generate(["x" * 250], GREEDY.model_copy(update={"max_tokens": 64}), ignore_eos=True)
    assert (cut.prompt_tokens, cut.completion_tokens, cut.finish_reason) == (250, 6, "length")
