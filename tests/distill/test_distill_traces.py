"""Corrected traces on the real tiny model, real verifiers and a real (Chroma) memory."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from procmem.core import Attempt, Episode, GenerationConfig, Task, render_completion, render_prompt
from procmem.distill import TraceConfig
from procmem.distill.traces import (
    HIDDEN_ANSWER,
    build_traces,
    export_traces,
    hide_answer,
    load_trace_build,
    save_trace_build,
    training_items,
)
from procmem.llm import Generation, LocalLLM
from procmem.memory import ChromaStore, HashingEmbedder
from procmem.memory._experiences import ExperienceMemory
from procmem.memory._retrieval import ExperienceRetriever
from procmem.verifiers import build_verifier

WRONG = "forty-two-wrong"
ALWAYS = Task(id="always", prompt="Name any colour.", verifier="regex:(?s).*", suite="s")
NEVER = Task(id="never", prompt="What is 6 times 7?", verifier="exact:an answer nobody gives", suite="s")
HELD_OUT = Task(id="held", prompt="What is 5 + 5?", verifier="exact:10", suite="s", split="test")


def _episode(task: Task, *answers: str, when: str = "2026-01-01T00:00:00") -> Episode:
    verifier = build_verifier(task)
    attempts = tuple(Attempt(answer=a, verdict=verifier.verify(a)) for a in answers)
    return Episode(task=task, attempts=attempts, model_id="tiny", id=f"ep-{task.id}-{len(answers)}",
                   started_at=when, finished_at=when)


def _memory_episodes() -> list[Episode]:
    return [_episode(Task(id=f"m{i}", prompt=f"What is {i} times 7?", verifier=f"exact:{7 * i}", suite="s"),
                     str(7 * i)) for i in (2, 3, 4)]


class _Spy:
    """The real tiny model as the teacher, remembering what it was asked."""

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm
        self.prompts: list[str] = []

    @property
    def model_id(self) -> str:
        return "tiny"

    @property
    def adapter_version(self) -> str | None:
        return "v1"

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        self.prompts.extend(prompts)
        return self.llm.generate(prompts, config)


@pytest.fixture(scope="module")
def teacher(tiny_model_dir: Path) -> LocalLLM:
    return LocalLLM(tiny_model_dir)


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[ExperienceMemory]:
    store = ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder())
    memory = ExperienceMemory(store)
    memory.record_many(_memory_episodes())
    yield memory
    memory.close()


def _episodes() -> list[Episode]:
    return [
        _episode(ALWAYS, "blue"),  # solved at once
        _episode(NEVER, WRONG, "also wrong", when="2026-01-02T00:00:00"),  # never solved
        _episode(HELD_OUT, "9"),  # test split: never trained on
    ]


def test_problems_come_failed_first_without_test_items_and_without_the_failed_answers() -> None:
    problems = training_items(_episodes())
    assert [p.task.id for p in problems] == ["never", "always"]
    assert [p.rank for p in problems] == [0, 2]
    never = problems[0]
    assert never.episode_ids == ("ep-never-2",)
    assert never.feedback and all(WRONG not in f and "also wrong" not in f for f in never.feedback)
    assert any(HIDDEN_ANSWER in f for f in never.feedback)
    assert training_items(_episodes(), TraceConfig(include_successes=False))[0].task.id == "never"
    assert len(training_items(_episodes(), TraceConfig(include_successes=False))) == 1


def test_a_cap_on_problems_keeps_every_suites_share() -> None:
    """Suites take turns within a rank: ids sorting ``rg:chain_sum:*`` before ``rg:lcm:*`` must not fill the cap."""
    def never(suite: str, i: int) -> Episode:
        task = Task(id=f"{suite}:{i:02d}", prompt=f"{suite} question {i}?", verifier="exact:nobody", suite=suite)
        return _episode(task, "wrong")

    episodes = [never(suite, i) for suite in ("rg:chain_sum", "rg:gcd", "rg:lcm") for i in range(10)]
    solved = _episode(Task(id="rg:aaa:0", prompt="Solved at once?", verifier="regex:(?s).*", suite="rg:aaa"), "x")
    items = training_items([solved, *episodes], TraceConfig(max_problems=6))
    assert [p.task.suite for p in items] == ["rg:chain_sum", "rg:gcd", "rg:lcm"] * 2
    assert [p.task.id for p in items[:3]] == ["rg:chain_sum:00", "rg:gcd:00", "rg:lcm:00"]
    everything = training_items([solved, *episodes], TraceConfig(max_problems=100))
    assert everything[-1].task.id == "rg:aaa:0" and [p.rank for p in everything] == [0] * 30 + [2], \
        "failed problems still come first"


def test_one_question_asked_under_two_task_ids_is_one_training_item() -> None:
    """Distillation groups episodes into problems as memory does (same normalised prompt or same task id)."""
    twin = Task(id="never-again", prompt="  what is 6 TIMES 7? ", verifier=NEVER.verifier, suite="s")
    items = training_items([*_episodes(), _episode(twin, "41", when="2026-01-03T00:00:00")])
    assert [p.task.id for p in items] == ["never-again", "always"]  # the newest task stands for its problem
    assert items[0].episode_ids == ("ep-never-2", "ep-never-again-1")


def test_traces_keep_verified_answers_drop_wrong_ones_and_keep_provenance(
    teacher: LocalLLM, memory: ExperienceMemory
) -> None:
    spy = _Spy(teacher)
    retriever = ExperienceRetriever(memory)
    config = TraceConfig(k=3, temperature=0.8, max_tokens=6, memory_k=2, keep_per_problem=2)
    build = build_traces(training_items(_episodes()), spy, retriever, config)

    # The teacher saw each problem k times, with memory and feedback, never the failed answer.
    assert len(spy.prompts) == 2 * 3
    contexts = {c.task_id: c for c in build.contexts}
    never_prompt = contexts["never"].teacher_prompt
    assert spy.prompts.count(never_prompt) == 3
    assert "What is 2 times 7?" in never_prompt and "Answer: 14" in never_prompt  # retrieved memory
    assert f"Feedback: {HIDDEN_ANSWER} is not the correct answer" in never_prompt
    assert WRONG not in never_prompt and "also wrong" not in never_prompt

    # The teacher is wrong on the exact task: every candidate is dropped.
    assert not [t for t in build.kept if t.task_id == "never"]
    dropped = [t for t in build.rejected if t.task_id == "never"]
    assert len(dropped) == 3 and {t.status for t in dropped} == {"failed"}
    assert all(t.feedback for t in dropped)

    # Every answer passes the regex task: kept, distinct, at most keep_per_problem.
    kept = [t for t in build.kept if t.task_id == "always"]
    assert 1 <= len(kept) <= 2 and len({t.answer for t in kept}) == len(kept)
    assert len(kept) + len([t for t in build.rejected if t.task_id == "always"]) == 3
    retrieved = retriever.retrieve(ALWAYS, 2)
    for trace in kept:
        assert build_verifier(ALWAYS).verify(trace.answer).passed
        assert trace.prompt == render_prompt(ALWAYS.prompt)  # the student's memory-free prompt, as at inference
        assert trace.completion == render_completion(trace.answer)
        assert trace.memory_ids == retrieved.entry_ids and len(trace.memory_ids) == 2
        assert trace.episode_ids == ("ep-always-1",) and trace.teacher == "tiny@v1"
        assert trace.teacher_prompt == render_prompt(ALWAYS.prompt, memory=retrieved.text)
    assert set(build.memory.entry_ids) == {i for c in build.contexts for i in c.memory_ids}


def test_memory_free_prompts_contain_no_memory_text(teacher: LocalLLM, memory: ExperienceMemory) -> None:
    retriever = ExperienceRetriever(memory)
    build = build_traces(training_items(_episodes()), teacher, retriever,
                         TraceConfig(k=2, max_tokens=4, memory_k=3))
    memory_questions = [e.task.prompt for e in _memory_episodes()]
    for ctx in build.contexts:
        assert ctx.memory_ids, "the teacher had memory"
        assert any(q in ctx.teacher_prompt for q in memory_questions)
        assert not any(q in ctx.prompt for q in memory_questions)
        assert "Feedback:" not in ctx.prompt and ctx.prompt.count("Question:") == 1
    for trace in (*build.kept, *build.rejected):
        assert not any(q in trace.prompt for q in memory_questions)


def test_trace_builds_round_trip_and_export(teacher: LocalLLM, memory: ExperienceMemory, tmp_path: Path) -> None:
    build = build_traces(training_items(_episodes()), teacher, ExperienceRetriever(memory),
                         TraceConfig(k=2, max_tokens=4, memory_k=1))
    assert load_trace_build(tmp_path) is None
    save_trace_build(build, tmp_path)
    assert load_trace_build(tmp_path) == build

    openai = export_traces(build.kept, "openai")
    trl = export_traces([*build.kept, *build.rejected], "trl")  # rejected candidates are never exported
    assert len(openai) == len(trl) == len(build.kept) >= 1
    first = build.kept[0]
    assert openai[0] == {"messages": [{"role": "user", "content": first.prompt},
                                      {"role": "assistant", "content": first.answer}]}
    assert trl[0] == {"prompt": first.prompt, "completion": first.completion}
    json.dumps(openai)


def test_hide_answer_removes_quoted_failed_answers() -> None:
    assert hide_answer("expected an integer, got 'abc'", "abc") == f"expected an integer, got {HIDDEN_ANSWER}"
    long = "x" * 50
    assert hide_answer(f"'{'x' * 40}…' (50 characters) is wrong", long) == f"{HIDDEN_ANSWER} is wrong"
    assert hide_answer("expected 1 word", "1") == "expected 1 word"  # short answers only when quoted
    assert hide_answer("'1' is not the correct answer", "1") == f"{HIDDEN_ANSWER} is not the correct answer"
    assert hide_answer("the answer is empty", "") == "the answer is empty"
    # a short signed answer is hidden where it stands alone, never inside another number
    assert hide_answer("got -2. Worked: 7 - 9 = -2; 5 - 30 = -25", "-2") == (
        f"got {HIDDEN_ANSWER}. Worked: 7 - 9 = {HIDDEN_ANSWER}; 5 - 30 = -25")
    assert hide_answer("answer 1.5 vs 11.55 and 1.5x", "1.5") == f"answer {HIDDEN_ANSWER} vs 11.55 and 1.5x"


def test_the_teacher_prompt_scrubs_failed_answers_quoted_by_memory_too() -> None:
    from procmem.distill.traces import teacher_prompt

    never = training_items(_episodes())[0]
    assert never.failed_answers == (WRONG, "also wrong")
    insight = f"LESSON: answering '{WRONG}' was wrong -> compute the product first."
    prompt = teacher_prompt(never, insight)
    assert WRONG not in prompt and "also wrong" not in prompt
    assert "compute the product first" in prompt and HIDDEN_ANSWER in prompt


CODE = Task(id="code", prompt="Write any program.", verifier="regex:(?s).*", suite="s", metadata={
    "answer_format": "code", "generation": {"stop": ["\n\n\n"], "max_tokens": 12}})


def test_code_tasks_keep_multi_line_answers_with_their_own_decoding(teacher: LocalLLM) -> None:
    from procmem.core.prompts import CODE_STOP
    from procmem.memory import NoMemory

    spy = _Spy(teacher)
    configs: list[GenerationConfig] = []
    original = spy.generate

    def generate(prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        configs.append(config)
        return original(prompts, config)

    spy.generate = generate  # type: ignore[method-assign]
    build = build_traces(training_items([_episode(CODE, "print(1)"), _episode(ALWAYS, "red")]), spy,
                         NoMemory(), TraceConfig(k=2, max_tokens=4, memory_k=0))
    assert {(c.max_tokens, c.stop) for c in configs} == {(12, ("\n\n\n",)), (4, ("\n",))}
    code_ctx = next(c for c in build.contexts if c.task_id == "code")
    assert (code_ctx.answer_format, code_ctx.stop, code_ctx.max_tokens) == ("code", ("\n\n\n",), 12)
    line_ctx = next(c for c in build.contexts if c.task_id == "always")
    assert (line_ctx.answer_format, line_ctx.stop, line_ctx.max_tokens) == ("line", ("\n",), None)
    for trace in build.kept:
        if trace.task_id == "code":
            assert trace.completion == render_completion(trace.answer, "code") and trace.completion.endswith(CODE_STOP)
        else:
            assert "\n" not in trace.answer


# ------------------------------------------------------------------------------------ the canonical answer


def test_verifiers_give_the_canonical_form_of_a_passing_answer() -> None:
    from procmem.verifiers import canonical_answer

    def forms(spec: str, *answers: str) -> list[str | None]:
        verifier = build_verifier(Task(id="t", prompt="q", verifier=spec))
        return [canonical_answer(verifier, a) for a in answers]

    assert forms("numeric:57", "57.", "+57", "5.7e1", "57.0", "56", "fifty-seven") == ["57"] * 4 + [None, None]
    assert forms("numeric:0.75", "3/4", ".750") == ["0.75", "0.75"]
    assert forms("numeric:1/3?tol=0.01", "1/3", "0.333") == ["1/3", "0.333"]
    assert forms("numeric:1,234", "1,234") == ["1234"]
    assert forms("exact:1.", "1", "1.", "2") == ["1", "1", None]  # a served answer someone approved
    assert forms("exact:New  York", "new york.") == ["New York"]
    assert forms("exact:U.S.", "u.s.") == ["U.S."]  # an abbreviation keeps its period
    assert forms("regex:\\d+\\.?", "57.") == [None]  # a pattern has no canonical form: keep the raw text


def test_training_texts_are_the_canonical_answers_of_corrections_and_successes(teacher: LocalLLM) -> None:
    from procmem.core import Verdict
    from procmem.distill.traces import success_traces

    line = Task(id="line", prompt="What is 50 + 7?", verifier="numeric:57", suite="s")
    reasoned = Task(id="reasoned", prompt="What is 50 + 8?", verifier="numeric:58", suite="s",
                    metadata={"answer_format": "reasoned"})
    corrected = [Episode(task=task, model_id="tiny", id=f"ep-{task.id}", attempts=(
        Attempt("wrong", build_verifier(task).verify("wrong")),
        Attempt(correction, Verdict(passed=True, score=1.0, details={"correction": True}))))
        for task, correction in ((line, "57."), (reasoned, "58."))]
    items = training_items(corrected)
    config = TraceConfig(k=1, max_tokens=2, memory_k=0)  # no memory: the retriever is never asked
    build = build_traces(items, teacher, None, config)  # type: ignore[arg-type]
    fixed = {t.task_id: t for t in build.kept if t.teacher == "correction"}
    assert (fixed["line"].answer, fixed["line"].completion, fixed["line"].raw_answer) == ("57", " 57\n", "57.")
    # A reasoned task: only the final answer is canonicalised, after its Answer: mark.
    assert (fixed["reasoned"].answer, fixed["reasoned"].completion) == ("58", "Answer: 58\n\n")

    raw = build_traces(items, teacher, None, config.model_copy(update={"canonical_answers": False}))  # type: ignore[arg-type]
    assert {t.answer for t in raw.kept if t.teacher == "correction"} == {"57.", "58."}

    # RFT's successes: "57." and "57" are one answer, trained as "57".
    successes = success_traces([_episode(line, "57."), _episode(line, "wrong", "57")], keep_per_problem=2)
    assert [(t.answer, t.completion) for t in successes.kept] == [("57", " 57\n")]
