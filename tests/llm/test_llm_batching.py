"""MicroBatcher over the real tiny model: the conformance suite, then coalescing, grouping and errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from procmem.core import GenerationConfig
from procmem.llm import LLM, Generation, LocalLLM, MicroBatcher
from procmem.testing import LLMConformance

PROMPTS, GREEDY = LLMConformance.PROMPTS, LLMConformance.GREEDY


class Recorder:
    """A real LLM that remembers each batched call (its prompts and config) and can be told to fail."""

    def __init__(self, llm: LLM, fail_on: str | None = None) -> None:
        self.llm = llm
        self.fail_on = fail_on
        self.calls: list[tuple[list[str], GenerationConfig]] = []
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.llm.model_id

    @property
    def adapter_version(self) -> str | None:
        return self.llm.adapter_version

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        with self._lock:
            self.calls.append((list(prompts), config))
        if self.fail_on is not None and self.fail_on in prompts:
            raise ValueError(f"cannot complete {self.fail_on!r}")
        return self.llm.generate(prompts, config)

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        return self.llm.stream(prompt, config)


def _in_threads(batcher: MicroBatcher, jobs: list[tuple[str, GenerationConfig]]) -> list[object]:
    """Run one single-prompt generate per job, all released at once; each result or exception, in order."""
    results: list[object] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = batcher.generate([jobs[i][0]], jobs[i][1])[0]
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)  # a guard against a lost request hanging the suite, not a timing check
    assert not any(t.is_alive() for t in threads), "a caller never got its result"
    return results


class TestMicroBatcherConformance(LLMConformance):
    @pytest.fixture
    def llm(self, local_tiny: LocalLLM) -> Iterator[MicroBatcher]:
        with MicroBatcher(local_tiny, max_batch=4, max_wait_s=0.01) as batched:
            yield batched


def test_concurrent_single_prompt_calls_become_one_batched_call(local_tiny: LocalLLM) -> None:
    recorder = Recorder(local_tiny)
    prompts = [f"Question: What is {i} + {i}?\nAnswer:" for i in range(8)]
    expected = local_tiny.generate(prompts, GREEDY)  # equal to one at a time (conformance)
    with MicroBatcher(recorder, max_batch=8, max_wait_s=30) as batched:  # a full batch goes at once
        results = _in_threads(batched, [(p, GREEDY) for p in prompts])
    assert results == expected
    assert [len(prompts) for prompts, _ in recorder.calls] == [8]


def test_batches_hold_at_most_max_batch_prompts(local_tiny: LocalLLM) -> None:
    recorder = Recorder(local_tiny)
    prompts = [f"item {i}" for i in range(10)]
    with MicroBatcher(recorder, max_batch=4, max_wait_s=0.2) as batched:
        results = _in_threads(batched, [(p, GREEDY) for p in prompts])
    assert results == local_tiny.generate(prompts, GREEDY)
    sizes = [len(p) for p, _ in recorder.calls]
    assert sum(sizes) == 10 and max(sizes) <= 4


def test_requests_are_grouped_by_generation_config(local_tiny: LocalLLM) -> None:
    recorder = Recorder(local_tiny)
    short = GREEDY.model_copy(update={"max_tokens": 3})
    jobs = [(p, GREEDY if i % 2 else short) for i, p in enumerate(PROMPTS * 2)]
    with MicroBatcher(recorder, max_batch=8, max_wait_s=0.2) as batched:
        results = _in_threads(batched, jobs)
    expected = {c: dict(zip(PROMPTS, local_tiny.generate(PROMPTS, c), strict=True)) for c in (GREEDY, short)}
    assert results == [expected[c][p] for p, c in jobs]
    assert {c for _, c in recorder.calls} == {GREEDY, short}
    assert sum(len(p) for p, _ in recorder.calls) == len(jobs)
    for prompts, config in recorder.calls:  # each call got the prompts of its own config only
        assert all((p, config) in jobs for p in prompts)


def test_an_exception_reaches_only_the_caller_whose_prompt_caused_it(local_tiny: LocalLLM) -> None:
    recorder = Recorder(local_tiny, fail_on="boom")
    prompts = ["fine 1", "boom", "fine 2", "fine 3"]
    with MicroBatcher(recorder, max_batch=4, max_wait_s=30) as batched:
        results = _in_threads(batched, [(p, GREEDY) for p in prompts])
    assert isinstance(results[1], ValueError) and "boom" in str(results[1])
    fine = [prompts[i] for i in (0, 2, 3)]
    assert [results[i] for i in (0, 2, 3)] == local_tiny.generate(fine, GREEDY)


def test_a_multi_prompt_call_stays_together_and_in_order(local_tiny: LocalLLM) -> None:
    recorder = Recorder(local_tiny)
    with MicroBatcher(recorder, max_batch=2, max_wait_s=0.01) as batched:
        assert batched.generate(PROMPTS, GREEDY) == local_tiny.generate(PROMPTS, GREEDY)
        assert batched.generate([], GREEDY) == []
    assert [len(p) for p, _ in recorder.calls] == [len(PROMPTS)]


def test_outside_its_block_it_calls_the_llm_directly_and_passes_identity_through(local_tiny: LocalLLM) -> None:
    recorder = Recorder(local_tiny)
    batcher = MicroBatcher(recorder)
    assert batcher.generate([PROMPTS[0]], GREEDY) == local_tiny.generate([PROMPTS[0]], GREEDY)
    with batcher:
        pass
    assert batcher.generate([PROMPTS[1]], GREEDY) == local_tiny.generate([PROMPTS[1]], GREEDY)
    assert len(recorder.calls) == 2
    assert batcher.model_id == local_tiny.model_id and batcher.adapter_version is None
    assert "".join(batcher.stream(PROMPTS[0], GREEDY)) == local_tiny.generate([PROMPTS[0]], GREEDY)[0].text


def test_bad_settings_are_rejected(local_tiny: LocalLLM) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(local_tiny, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(local_tiny, max_wait_s=-1)
