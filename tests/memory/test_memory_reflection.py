"""Reflection: the tolerant parser on fixed realistic texts, and the pipeline end to end with a scripted
policy (labelled as such, see memory_helpers) and with the real tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from memory_helpers import SUM_LESSON_COMPLETION, SUM_REFLECTION, SUMS, ScriptedPolicy, episode

from procmem.memory import ProceduralMemory
from procmem.memory._problems import group_problems
from procmem.memory._reflection import parse_reflection, reflection_prompt

# --- the parser on fixed texts ------------------------------------------------------------------------


def _kinds_and_texts(text: str, **kwargs: object) -> list[tuple[str, str]]:
    return [(i.kind, i.text) for i in parse_reflection(text, **kwargs).items]


def test_the_asked_for_format_parses() -> None:
    assert _kinds_and_texts(SUM_REFLECTION) == [
        ("strategy", "Add the ones digits first, then the tens digits, and carry when needed."),
        ("lesson", "The answer was written in words → answer with the number in digits only."),
    ]


def test_bullets_numbering_markdown_and_synonyms_are_tolerated() -> None:
    text = ("Here is my advice:\n"
            "1. **Strategy:** Line up the digits before adding them together.\n"
            "2) lesson - forgot to carry the one -> carry whenever the ones add up to ten or more\n"
            "- Some chatter that is not labelled as anything at all.\n"
            "* Tip: re-read the question before you answer it.\n"
            "   AVOID:   writing   the number   in words instead of digits  \n"
            "Strategy 2: Check the sum by subtracting one number from it.")
    assert _kinds_and_texts(text, max_items=10) == [
        ("strategy", "Line up the digits before adding them together."),
        ("lesson", "forgot to carry the one → carry whenever the ones add up to ten or more"),
        ("strategy", "re-read the question before you answer it."),
        ("lesson", "writing the number in words instead of digits"),
        ("strategy", "Check the sum by subtracting one number from it."),
    ]


@pytest.mark.parametrize("text", [
    '{"strategies": ["Count each letter one at a time."], "lessons": ["Counted the wrong letter -> check '
    'which letter is asked for."]}',
    'Sure! [{"kind": "strategy", "text": "Count each letter one at a time."}, {"type": "lesson", "text": '
    '"Counted the wrong letter -> check which letter is asked for."}]',
])
def test_json_objects_and_lists_parse(text: str) -> None:
    assert _kinds_and_texts(text) == [
        ("strategy", "Count each letter one at a time."),
        ("lesson", "Counted the wrong letter → check which letter is asked for."),
    ]


@pytest.mark.parametrize(("text", "reason"), [
    ("STRATEGY: ok", "length"),
    ("LESSON: The answer is 10 - 3 = 7.", "states an answer"),
    ("STRATEGY: 10 is the answer.", "states an answer"),  # written by the bundled model
    ("LESSON: The answer 21 days failed because of its unit -> write the integer alone.", "echoes"),
    ("STRATEGY: <what made an answer pass, as a rule for similar problems>", "placeholder"),
    ("LESSON: 12 + 12 = 24 !!! ### 12 12 12 12", "words"),
    ("STRATEGY: ## $$ %% ^^ && ** (( )) add it up", "symbols"),
    ("LESSON: sum sum sum sum sum sum sum sum sum sum", "repeated"),
    ("STRATEGY: " + "Add the digits carefully and check. " * 12, "length"),
])
def test_unusable_items_are_rejected_with_a_reason(text: str, reason: str) -> None:
    parsed = parse_reflection(text)
    assert parsed.unparseable
    assert len(parsed.rejected) == 1 and reason in parsed.rejected[0][1]


@pytest.mark.parametrize("text", [
    "", "\n\n", "Ġ the the Ġ 123 ### ĊĊ", "I think the answer is 68.", "{not json at all", '{"foo": ["bar"]}',
])
def test_texts_without_any_advice_are_unparseable(text: str) -> None:
    assert parse_reflection(text).unparseable


def test_completions_the_bundled_model_wrote_are_judged_as_intended() -> None:
    """Verbatim completions of Gemma 3 270M (base) to reflection prompts on failed chain_sum problems
    (primer "LESSON:"), recorded on 2026-11-25."""
    useful = parse_reflection("LESSON: The answer is empty; the answer is expected to be an integer on one line.",
                              has_pass=False)
    assert [i.text for i in useful.items] == ["The answer is empty; the answer is expected to be an integer on one "
                                              "line."]
    answer_claims = parse_reflection("LESSON: The answer is 10.\nSTRATEGY: Write down the answer.\nLesson: The "
                                     "answer is 10.\nLesson: The answer is 10.\nLesson:", has_pass=False)
    assert answer_claims.unparseable
    copied = parse_reflection("LESSON: The order of the numbers is wrong -> check which side each number is on "
                              "before answering.", has_pass=False)
    assert copied.unparseable and "echoes" in copied.rejected[0][1]
    placeholders = parse_reflection("1. <The mistake in a failed answer>\n2. <How to avoid it>")
    assert placeholders.unparseable


def test_kinds_must_fit_the_outcomes_and_items_are_capped_and_deduplicated() -> None:
    only_failures = parse_reflection(SUM_REFLECTION, has_pass=False)
    assert [i.kind for i in only_failures.items] == ["lesson"]
    assert "needs a passed attempt" in only_failures.rejected[0][1]
    only_passes = parse_reflection(SUM_REFLECTION, has_failure=False)
    assert [i.kind for i in only_passes.items] == ["strategy"]
    many = "\n".join(f"STRATEGY: Check the result of step number {n} again." for n in "abcdef")
    capped = parse_reflection(many + "\nSTRATEGY: Check the result of step number a again.", max_items=3)
    assert len(capped.items) == 3
    assert sorted(r for _, r in capped.rejected) == ["over the item limit"] * 3 + ["repeated"]


def test_a_pattern_completion_is_one_unlabelled_line() -> None:
    parsed = parse_reflection(" Answer with the final number only.", allowed=("pattern",), default_kind="pattern")
    assert [(i.kind, i.text) for i in parsed.items] == [("pattern", "Answer with the final number only.")]
    assert parse_reflection("STRATEGY: Answer with the final number only.", allowed=("pattern",)).unparseable


def test_the_prompt_contrasts_attempts_with_feedback_and_never_shows_the_gold_answer() -> None:
    problem = group_problems([episode("s1", "What is 23 + 45?", ["sixty-eight", "68"], gold="GOLD-68")])[0]
    prompt = reflection_prompt(problem)
    assert "Problem: What is 23 + 45?" in prompt
    assert "Attempt 1 answer: sixty-eight\nVerdict: FAIL. Feedback: expected an integer; got 'sixty-eight'" in prompt
    assert "Attempt 2 answer: 68\nVerdict: PASS" in prompt
    assert "GOLD-68" not in prompt
    assert prompt.endswith("Problem: What is 23 + 45?\nAttempt 1 answer: sixty-eight\nVerdict: FAIL. Feedback: "
                           "expected an integer; got 'sixty-eight'\nAttempt 2 answer: 68\nVerdict: PASS\n"
                           "Advice:\nLESSON:"), "a problem with a failure primes a lesson"
    passed_first = group_problems([episode("s2", "What is 1 + 1?", ["2"])])[0]
    assert reflection_prompt(passed_first).endswith("Verdict: PASS\nAdvice:\nSTRATEGY:")


# --- the pipeline -------------------------------------------------------------------------------------


def _record_sums(memory: ProceduralMemory) -> None:
    for task_id, prompt, answers in SUMS:
        memory.record(episode(task_id, prompt, answers))


def test_reflection_stores_validated_insights_with_their_provenance(pmem: ProceduralMemory) -> None:
    _record_sums(pmem)
    policy = ScriptedPolicy()
    report = pmem.reflect(policy, consolidate=False)
    assert report.problems == 3 and report.calls == 3 and report.unparseable == 0
    assert report.prompt_tokens > 0 and report.completion_tokens > 0
    assert report.insights_added == 2 and report.insights_merged == 4  # the same advice on 3 problems
    insights = {e.kind: e for e in pmem.entries("insight")}
    strategy = insights["strategy"]
    assert strategy.text == "Add the ones digits first, then the tens digits, and carry when needed."
    assert len(strategy.problem_ids) == 3 and len(strategy.source_episode_ids) == 3
    stored = {e.id for e in pmem.episodes()}
    assert set(strategy.source_episode_ids) == stored
    assert all(strategy.evidence[p] == {"episodes": 1, "passed": 1, "attempts": 2} for p in strategy.problem_ids)
    assert strategy.policy_version == strategy.reflector == strategy.validated_version == "scripted-policy@base"
    assert strategy.split == "train" and strategy.suite == "rg:chain_sum" and strategy.status == "active"


def test_a_line_the_token_limit_cut_is_not_stored(pmem: ProceduralMemory) -> None:
    """A completion that reached max_tokens ends mid-sentence: its last line is dropped, the rest is kept."""
    _record_sums(pmem)
    cut = SUM_LESSON_COMPLETION[:SUM_LESSON_COMPLETION.index(", then the tens")]  # ...STRATEGY: Add the ones
    policy = ScriptedPolicy(lambda prompt: cut, finish_reason="length")
    report = pmem.reflect(policy, consolidate=False, feedback=False)
    assert report.unparseable == 0
    assert [e.text for e in pmem.entries("insight")] == ["The answer was written in words → answer with the number in "
                                                         "digits only."]


def test_a_reflection_cut_in_its_only_line_is_unparseable(pmem: ProceduralMemory) -> None:
    _record_sums(pmem)
    policy = ScriptedPolicy(lambda prompt: " When the answer", finish_reason="length")
    report = pmem.reflect(policy, consolidate=False, feedback=False)
    assert report.unparseable == 3 and report.retries == 3 and not pmem.entries("insight")
    kept = ScriptedPolicy(lambda prompt: " When the answer was in words, write digits.", finish_reason="length")
    pmem.record(episode("s2-again", "What is 17 + 62?", ["seventy-nine", "79"]))
    assert pmem.reflect(kept, consolidate=False, feedback=False).unparseable == 0, "a whole sentence"


def test_reflection_is_idempotent_and_redoes_only_problems_with_new_episodes(pmem: ProceduralMemory) -> None:
    _record_sums(pmem)
    policy = ScriptedPolicy()
    pmem.reflect(policy)
    before = pmem.status_counts()
    again = pmem.reflect(policy)
    assert again.total_calls == 0 and again.already_reflected == 3
    assert pmem.status_counts() == before
    pmem.record(episode("s2-again", "What is 17 + 62?", ["79"]))  # same problem, new episode
    third = pmem.reflect(policy, consolidate=False)
    assert third.calls == 1 and third.already_reflected == 2
    assert "Attempt 3 answer: 79" in policy.prompts[-1]  # it saw both episodes of the problem


def test_the_call_budget_is_respected_and_the_rest_is_left_for_later(pmem: ProceduralMemory) -> None:
    _record_sums(pmem)
    policy = ScriptedPolicy()
    steps: list[tuple[int, int]] = []
    first = pmem.reflect(policy, max_calls=1, progress=lambda done, total: steps.append((done, total)))
    assert first.total_calls == 1 and first.calls == 1 and first.over_budget == 2 and len(policy.prompts) == 1
    assert steps == [(1, 1)]
    rest = pmem.reflect(policy, max_calls=10)
    assert rest.calls == 2 and rest.already_reflected == 1


def test_since_limits_reflection_to_recent_problems(pmem: ProceduralMemory) -> None:
    pmem.record(episode("old", "What is 11 + 22?", ["33"], finished_at="2020-01-01T00:00:00.000+00:00"))
    pmem.record(episode("new", "What is 44 + 11?", ["55"], finished_at="2030-01-01T00:00:00.000+00:00"))
    report = pmem.reflect(ScriptedPolicy(), since="2025-01-01T00:00:00.000+00:00", consolidate=False)
    assert report.problems == 1 and report.calls == 1


def test_a_different_reflector_is_recorded_in_the_provenance(pmem: ProceduralMemory) -> None:
    pmem.record(episode("s1", "What is 23 + 45?", ["sixty-eight", "68"], model_id="gemma", adapter="v2"))
    teacher = ScriptedPolicy(model_id="bigger-model")
    pmem.reflect(teacher, policy="gemma@v2", consolidate=False)
    entry = pmem.entries("insight")[0]
    assert entry.policy_version == "gemma@v2" and entry.validated_version == "gemma@v2"
    assert entry.reflector == "bigger-model@base"


def test_test_split_episodes_are_not_reflected_on(pmem: ProceduralMemory) -> None:
    pmem.record(episode("t1", "What is 23 + 45?", ["sixty-eight", "68"], split="test"))
    report = pmem.reflect(ScriptedPolicy())
    assert report.problems == 0 and report.total_calls == 0 and pmem.stats()["insight"] == 0


def test_inline_reflection_after_an_episode_is_one_call_and_idempotent(pmem: ProceduralMemory) -> None:
    policy = ScriptedPolicy()
    ep = episode("s1", "What is 23 + 45?", ["sixty-eight", "68"])
    first = pmem.after_episode(ep, reflector=policy)
    assert first.recorded and first.reflection is not None and first.reflection.calls == 1
    assert pmem.stats()["insight"] == 2
    second = pmem.after_episode(ep, reflector=policy)  # a resumed run records the same episode again
    assert not second.recorded and second.reflection is not None and second.reflection.calls == 0
    assert len(policy.prompts) == 1


def test_inline_reflection_never_reads_test_split_attempts_of_the_same_question(pmem: ProceduralMemory) -> None:
    pmem.record(episode("t1", "What is 23 + 45?", ["sixty-eight-LEAK", "68"], split="test"))
    policy = ScriptedPolicy()
    train = episode("s1", "What is 23 + 45?", ["sixty-eight", "68"])
    pmem.after_episode(train, reflector=policy)
    assert len(policy.prompts) == 1 and "LEAK" not in policy.prompts[0]
    assert all("t1" not in e.source_episode_ids for e in pmem.entries("insight"))
    held_out = pmem.after_episode(episode("t2", "What is 31 + 12?", ["forty three", "43"], split="test"),
                                  reflector=policy)
    assert held_out.reflection is not None and held_out.reflection.calls == 0 and len(policy.prompts) == 1


def test_the_real_tiny_model_goes_through_the_pipeline_unparseable_counted_and_skipped(
    pmem: ProceduralMemory, tiny_model_dir: Path
) -> None:
    from procmem.llm import LocalLLM

    tiny = LocalLLM(tiny_model_dir)
    _record_sums(pmem)
    report = pmem.reflect(tiny, max_calls=3, feedback=False)
    assert report.calls == 3 and report.problems == 3
    assert report.completion_tokens > 0
    assert report.constrained_calls == 0 and report.retries == 3, "transformers: the fallback retries once"
    assert report.parse_rate == 0.0
    assert report.unparseable == 3 and report.insights_added == 0, "noise must never be stored"
    assert pmem.stats()["insight"] == 0 and pmem.stats()["pattern"] == 0
    again = pmem.reflect(tiny, feedback=False)
    assert again.total_calls == 0 and again.already_reflected == 3


# --- copies of the worked examples (issue 15: a copied example is not an insight) -------------------


def _example_advice() -> list[str]:
    from procmem.memory._reflection import _REFLECTION_EXAMPLES

    return [line for example in _REFLECTION_EXAMPLES for line in example.splitlines()
            if line.startswith(("LESSON:", "STRATEGY:"))]


def test_every_worked_example_copied_word_for_word_is_rejected_as_an_echo() -> None:
    advice = _example_advice()
    assert len(advice) >= 10
    for line in advice:
        parsed = parse_reflection(line)
        assert parsed.unparseable, line
        assert "echoes" in parsed.rejected[0][1], parsed.rejected


@pytest.mark.parametrize("text", [
    "LESSON: When the letter a appears in the text, multiply the weeks by seven.",  # a copied tail
    "STRATEGY: When naming the capital, count every letter.",  # an example's subject
    "STRATEGY: When the letter o appears, choose the animal that breathes air.",  # a copied tail
])
def test_near_copies_of_a_worked_example_are_rejected_as_echoes(text: str) -> None:
    parsed = parse_reflection(text)
    assert parsed.unparseable and "echoes" in parsed.rejected[0][1], parsed.rejected


@pytest.mark.parametrize("text", [
    "LESSON: When 1 failed, the letter 't' was not counted in the text.",  # written by Gemma 3 270M
    "STRATEGY: When asked for the letter 'a' in the text, count each word one at a time.",
])
def test_advice_in_the_examples_form_about_its_own_problem_is_kept(text: str) -> None:
    assert not parse_reflection(text).unparseable, parse_reflection(text).rejected


@pytest.mark.parametrize("text", [
    "LESSON: When sorting by length, 1 is the correct answer.",  # written by Gemma 3 270M
    "STRATEGY: When asked for the letter 's' in the text, the answer is 1.",
])
def test_an_answer_stated_in_the_last_clause_is_not_advice(text: str) -> None:
    parsed = parse_reflection(text)
    assert parsed.unparseable and "states an answer" in parsed.rejected[0][1], parsed.rejected
