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


def test_a_reasoned_prompt_leaves_room_to_work_and_the_marked_line_is_the_answer() -> None:
    from procmem.core.prompts import REASONED_STOP

    prompt = render_prompt("What is 12 * 3?", answer_format="reasoned")
    assert prompt == "Question: What is 12 * 3?\n"  # no "Answer:" cue: the completion may work first
    assert render_prompt("q", answer_format="line").endswith("Answer:")
    retry = render_prompt("q?", memory="M", prior=[PriorAttempt("wrong", answer="3")], answer_format="reasoned")
    assert retry == "M\n\nPrevious answer: 3\nFeedback: wrong\n\nQuestion: q?\n"  # the question comes last
    text = "12 * 3 = 12 + 12 + 12\n= 36\nAnswer: 36\nQuestion: next"
    assert extract_answer(text, "reasoned") == "36"
    assert extract_answer("Answer:   7 \nAnswer: 8", "reasoned") == "7"  # the first marked line
    assert extract_answer("  answer is 36", "reasoned") == ""  # no marked line: no answer
    assert extract_answer("The Answer: 5", "reasoned") == ""  # the mark starts the line
    assert extract_answer("Answer: 12.", "reasoned") == "12"  # a sentence's closing period is not the answer
    assert extract_answer("Answer: 4 * 3 = 12\nAnswer: 4", "reasoned") == "12"  # an equation's right-hand side
    assert extract_answer("Answer:\n\n 36 \nmore", "reasoned") == "36"  # an empty marked line: the next line
    assert extract_answer("Answer: 1.5", "reasoned") == "1.5" and extract_answer("Answer: etc..", "reasoned") == "etc.."
    completion = render_completion("36", "reasoned")
    assert completion == "Answer: 36\n\n" and completion.endswith(REASONED_STOP[0])
    assert extract_answer(completion, "reasoned") == "36"
    # a one-line worked example in memory is also a reasoned completion without working
    assert extract_answer(render_prompt("q") + render_completion("4"), "reasoned") == "4"
