"""The LLM conformance suite: every :class:`procmem.llm.LLM` implementation must pass all of it.

Use it by subclassing :class:`LLMConformance` in a ``test_*.py`` file and providing an ``llm`` fixture that
returns the backend under test (a deterministic one: greedy decoding must give the same text for the same
prompt)::

    import pytest
    from procmem.testing import LLMConformance

    class TestMyBackend(LLMConformance):
        @pytest.fixture
        def llm(self):
            return MyBackend(...)

The checks need no knowledge of the model: stop strings are picked from the model's own greedy output.
The probe prompts and the greedy config are :attr:`LLMConformance.PROMPTS` and :attr:`LLMConformance.GREEDY`.
"""

from __future__ import annotations

from typing import ClassVar

import pytest

from procmem.core import GenerationConfig
from procmem.llm import LLM, Generation

__all__ = ["LLMConformance"]


def _pick_stop(text: str) -> str | None:
    """A one-character stop string that first occurs in the first half of ``text`` (not at its start)."""
    for i in range(1, len(text) // 2 + 1):
        char = text[i]
        if char.isascii() and char.isprintable() and not char.isspace() and text.find(char) == i:
            return char
    return None


class LLMConformance:
    """The behaviour every backend shares. Subclasses provide the ``llm`` fixture."""

    PROMPTS: ClassVar[tuple[str, ...]] = (
        "Question: What is 2 + 2?\nAnswer:",
        "Spell the word cat backwards.",
        "A much longer prompt, with many more characters than the others, so that batching needs padding.",
        "x",
    )
    """The probe prompts: short and long, so that a batch needs padding."""
    GREEDY: ClassVar[GenerationConfig] = GenerationConfig(max_tokens=16, temperature=0.0, stop=())
    """Greedy decoding, 16 tokens, no stop string: the config the checks vary."""

    def _stop_case(self, llm: LLM) -> tuple[str, Generation, str]:
        """A prompt, its unstopped greedy generation, and a stop string that occurs early in it."""
        for prompt in self.PROMPTS:
            full = llm.generate([prompt], self.GREEDY)[0]
            stop = _pick_stop(full.text)
            if stop is not None and full.completion_tokens >= 4:
                return prompt, full, stop
        pytest.fail(f"{llm.model_id}: no probe prompt gives an output with an early ASCII character to stop at")

    def test_it_is_an_llm_with_a_model_id(self, llm: LLM) -> None:
        assert isinstance(llm, LLM)
        assert isinstance(llm.model_id, str) and llm.model_id
        assert llm.adapter_version is None or isinstance(llm.adapter_version, str)

    def test_no_prompts_give_no_generations(self, llm: LLM) -> None:
        assert llm.generate([], self.GREEDY) == []

    def test_one_generation_per_prompt_in_order_equal_to_one_at_a_time(self, llm: LLM) -> None:
        together = llm.generate(self.PROMPTS, self.GREEDY)
        alone = [llm.generate([p], self.GREEDY)[0] for p in self.PROMPTS]
        assert all(isinstance(g, Generation) for g in together)
        assert together == alone
        assert len({g.text for g in together}) > 1, "different prompts should give different completions"

    def test_a_batch_with_a_stop_string_stops_each_row_on_its_own(self, llm: LLM) -> None:
        _, _, stop = self._stop_case(llm)
        config = self.GREEDY.model_copy(update={"stop": (stop,)})
        together = llm.generate(self.PROMPTS, config)
        alone = [llm.generate([p], config)[0] for p in self.PROMPTS]
        assert together == alone

    def test_max_tokens_bounds_the_completion(self, llm: LLM) -> None:
        for max_tokens in (1, 5):
            config = self.GREEDY.model_copy(update={"max_tokens": max_tokens})
            for g in llm.generate(self.PROMPTS, config):
                assert 0 <= g.completion_tokens <= max_tokens
                if g.finish_reason == "length":
                    assert g.completion_tokens == max_tokens
        longer = llm.generate([self.PROMPTS[0]], self.GREEDY.model_copy(update={"max_tokens": 8}))[0]
        shorter = llm.generate([self.PROMPTS[0]], self.GREEDY.model_copy(update={"max_tokens": 4}))[0]
        if longer.finish_reason == "length":
            assert longer.text.startswith(shorter.text) and len(shorter.text) < len(longer.text)

    def test_a_stop_string_cuts_the_text_before_it_and_ends_generation(self, llm: LLM) -> None:
        prompt, full, stop = self._stop_case(llm)
        stopped = llm.generate([prompt], self.GREEDY.model_copy(update={"stop": (stop,)}))[0]
        assert stopped.text == full.text[: full.text.find(stop)]
        assert stopped.finish_reason == "stop"
        assert 0 < stopped.completion_tokens < full.completion_tokens, "generation went on after the stop"
        late = next(c for c in reversed(full.text) if c.isascii() and c.isprintable())
        stops = ("never-produced", late, stop)
        first = min(full.text.find(s) for s in stops if s in full.text)
        earliest = llm.generate([prompt], self.GREEDY.model_copy(update={"stop": stops}))[0]
        assert earliest.text == full.text[:first], "the earliest of several stop strings must win"

    def test_the_default_config_stops_at_a_newline(self, llm: LLM) -> None:
        for g in llm.generate(self.PROMPTS, GenerationConfig(max_tokens=16)):
            assert "\n" not in g.text

    def test_token_counts_are_positive(self, llm: LLM) -> None:
        for g in llm.generate(self.PROMPTS, self.GREEDY):
            assert g.prompt_tokens > 0
            assert g.completion_tokens > 0

    def test_streamed_pieces_concatenate_to_the_generated_text(self, llm: LLM) -> None:
        prompt, _, stop = self._stop_case(llm)
        for config in (self.GREEDY, self.GREEDY.model_copy(update={"stop": (stop,)})):
            pieces = list(llm.stream(prompt, config))
            assert all(isinstance(p, str) for p in pieces)
            assert "".join(pieces) == llm.generate([prompt], config)[0].text

    def test_a_stream_closed_early_leaves_the_llm_usable(self, llm: LLM) -> None:
        stream = llm.stream(self.PROMPTS[2], self.GREEDY.model_copy(update={"max_tokens": 64}))
        next(stream, None)
        stream.close()  # type: ignore[attr-defined]
        assert len(llm.generate([self.PROMPTS[0]], self.GREEDY)) == 1
