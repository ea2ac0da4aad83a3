from __future__ import annotations

from procmem.core import PriorAttempt, extract_answer, render_completion, render_prompt


def test_memory_free_prompt_is_question_then_answer_cue() -> None:
    assert render_prompt("What is 2 + 2?") == "Question: What is 2 + 2?\nAnswer:"


def test_memory_goes_before_the_question_and_feedback_after() -> None:
    prompt = render_prompt("Q?", memory="Question: A?\nAnswer: 1", prior=[PriorAttempt("too big", "9")])
    assert prompt.index("Question: A?") < prompt.index("Question: Q?") < prompt.index("Feedback: too big")
    assert "Previous answer: 9" in prompt
    assert prompt.endswith("Answer:")


def test_hidden_prior_answer_is_not_rendered() -> None:
    prompt = render_prompt("Q?", prior=[PriorAttempt("wrong form", None)])
    assert "Previous answer" not in prompt and "Feedback: wrong form" in prompt


def test_completion_and_extraction_round_trip() -> None:
    completion = render_completion("  42 \n")
    assert completion == " 42\n"
    assert extract_answer(completion + "Question: next") == "42"
