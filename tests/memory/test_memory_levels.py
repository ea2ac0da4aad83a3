"""Memory levels that fill on a small model (issue 15, item 1): grammar-constrained reflection, verifier-grounded
lessons and operator-seeded procedures, each labelled with its source; on real Chroma and the real tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from memory_helpers import SUMS, episode
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import Attempt, Episode, Home, Task, Verdict
from procmem.memory import ProceduralMemory, open_memory
from procmem.memory._feedback_lessons import feedback_lessons
from procmem.memory._problems import group_problems
from procmem.memory._reflection import (
    parse_reflection,
    reflection_generation,
    reflection_grammar,
    reflection_primer,
    reflection_prompt,
)
from procmem.memory.embedding import MiniLMEmbedder


def _problems(memory: ProceduralMemory) -> list[Any]:
    for task_id, prompt, answers in SUMS:
        memory.record(episode(task_id, prompt, answers, passed=False))
    return group_problems(memory.episodes())


def test_the_reflection_grammar_makes_the_random_tiny_model_parse(tmp_path: Path, tiny_gguf: Path,
                                                                   minilm: MiniLMEmbedder) -> None:
    """Unconstrained, a random model never writes a parseable reflection; under the grammar it always does."""
    pytest.importorskip("llama_cpp", reason="the grammar runs on the llama.cpp engine")
    from procmem.llm import EngineConfig, LlamaCppLLM

    problems = _problems(open_memory(tmp_path / "chroma", embedder=minilm))
    prompts = [reflection_prompt(p) for p in problems]
    # Sampled (seeded), not greedy: a random model decoded greedily repeats one token, which the content checks
    # reject as repeated words whatever the format; the grammar's job is the format.
    sampled = reflection_generation(96).model_copy(update={"temperature": 1.0, "seed": 7})
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=4, n_threads=1)) as llm:
        assert llm.supports_grammar
        free = llm.generate(prompts, sampled)
        bound = [llm.generate([prompt], sampled.model_copy(update={"grammar": reflection_grammar(p)}))[0]
                 for p, prompt in zip(problems, prompts, strict=True)]

    def parsed(problem: Any, text: str) -> bool:
        return not parse_reflection(reflection_primer(problem) + text, has_pass=problem.has_pass,
                                    has_failure=problem.has_failure).unparseable

    assert not any(parsed(p, g.text) for p, g in zip(problems, free, strict=True)), [g.text for g in free]
    assert all(parsed(p, g.text) for p, g in zip(problems, bound, strict=True)), [g.text for g in bound]
    assert all(g.text.startswith(" ") and g.text.rstrip().endswith(".") for g in bound if g.finish_reason == "stop")


def test_reflect_on_the_llamacpp_engine_decodes_every_call_under_the_grammar(
    tmp_path: Path, tiny_gguf: Path, minilm: MiniLMEmbedder
) -> None:
    pytest.importorskip("llama_cpp", reason="the grammar runs on the llama.cpp engine")
    from procmem.llm import EngineConfig, LlamaCppLLM

    memory = open_memory(tmp_path / "chroma", embedder=minilm)
    _problems(memory)
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=4, n_threads=1)) as llm:
        report = memory.reflect(llm, feedback=False, consolidate=False)
    assert report.calls == 3 and report.constrained_calls == 3 and report.retries == 0, "no fallback retry"
    assert report.parse_rate == report.parsed_calls / 3
    assert report.parsed_calls + report.unparseable == 3
    assert {e.source for e in memory.entries("insight")} <= {"reflection"}


def _failed(task_id: str, prompt: str, answers: list[tuple[str, str]], suite: str = "rg:products?min_digits=1"
            ) -> Episode:
    task = Task(id=task_id, prompt=prompt, verifier="rg:products", suite=suite)
    return Episode(task=task, attempts=tuple(Attempt(a, Verdict(False, 0.0, f)) for a, f in answers),
                   model_id="m")


FEEDBACK = [
    _failed("a", "What is 2 * 3?", [("6.", "expected an integer, got '6.'"), ("5", "'5' is not the correct answer"),
                                     ("5", "'5' is not the correct answer")]),
    _failed("b", "What is 4 * 3?", [("4 * 3 = 12", "expected an integer, got '4 * 3 = 12'"),
                                     ("", "the answer is empty; expected an integer on one line")]),
    _failed("c", "What is 7 * 8?", [("54", "the answer is only partly right; give exactly the answer and nothing "
                                           "else"), ("54", "'54' is not the correct answer")]),
]


def test_verifier_lessons_say_what_known_feedback_says() -> None:
    lessons = feedback_lessons(group_problems(FEEDBACK), min_problems=2)
    per_problem = sorted(lesson.text for lesson in lessons if lesson.problem)
    assert per_problem == sorted([
        "Answer with an integer and nothing else: the answer '6.' was rejected for its form.",
        "The answer '5' was wrong 2 times here: a retry must give a different answer.",
        "Answer with an integer and nothing else: the answer '4 * 3 = 12' was rejected for its form.",
        "Never leave the answer empty: an empty answer was rejected.",
        "Give exactly the answer and nothing else: the answer '54' was only partly right.",
    ])
    family = [lesson for lesson in lessons if not lesson.problem]
    assert [(f.kind, f.scope, len(f.problems)) for f in family] == [("form", "rg:products", 2)], \
        "only the form failure was met by 2 problems; '54' once wrong is not a repeat"
    assert family[0].text.startswith("In rg:products, answer with an integer and nothing else: answers of another "
                                     "form failed on 2 problems (e.g. ")
    assert "'6.'" in family[0].text and "'4 * 3 = 12'" in family[0].text
    assert feedback_lessons(group_problems(FEEDBACK), min_problems=2) == lessons, "deterministic"


def test_reflect_writes_verifier_lessons_labelled_and_scoped(tmp_path: Path, minilm: MiniLMEmbedder) -> None:
    from memory_helpers import ScriptedPolicy

    memory = open_memory(tmp_path / "chroma", embedder=minilm)
    for ep in FEEDBACK:
        memory.record(ep)
    report = memory.reflect(ScriptedPolicy(), consolidate=False)
    verifier = [e for e in memory.entries("insight") if e.source == "verifier"]
    assert report.verifier_insights_added + report.verifier_insights_merged == 5 and verifier
    assert all(e.method == "feedback" and e.reflector == "verifier" and e.problem for e in verifier)
    patterns = [e for e in memory.entries("pattern") if e.source == "verifier"]
    assert report.verifier_patterns_added == 1 and [p.scope for p in patterns] == ["rg:products"]
    again = memory.reflect(ScriptedPolicy(), consolidate=False)
    assert again.verifier_insights_added == 0 and again.verifier_patterns_added == 0, "idempotent: merged"


def test_a_problems_verifier_lessons_reach_that_problem_only(tmp_path: Path, minilm: MiniLMEmbedder) -> None:
    """"The answer '5' was wrong 2 times here" helps a retry of that problem; on a neighbour it is noise that
    even primes a wrong number, so similar-problem retrieval must not carry it there."""
    from memory_helpers import ScriptedPolicy

    memory = open_memory(tmp_path / "chroma", embedder=minilm)
    for ep in FEEDBACK:
        memory.record(ep)
    memory.reflect(ScriptedPolicy(), consolidate=False)
    retriever = memory.retriever()
    own = retriever.retrieve(_failed("a2", "What is 2 * 3?", []).task, 3).text
    assert "The answer '5' was wrong 2 times here" in own
    neighbour_task = Task(id="n", prompt="What is 2 * 4?", verifier="rg:products", suite="rg:products?min_digits=1")
    context = retriever.context(neighbour_task, 3)
    assert context.insights, "the neighbour still gets the nearest problems' reflected insights"
    neighbour = retriever.retrieve(neighbour_task, 3).text
    for lesson in ("'5' was wrong 2 times here", "the answer '6.' was rejected", "'54' was only partly right"):
        assert lesson not in neighbour, neighbour
    verifier = {e.id for e in memory.entries("insight") if e.source == "verifier"}
    assert verifier and not verifier & {a.id for a in context.insights}


def _run(home: Home, *args: str) -> Any:
    return CliRunner().invoke(app, ["--home", str(home.root), "memory", *args])


def _task(suite: str) -> Task:
    return Task(id="t1", prompt="What is 6 * 7?", verifier="rg:products", suite=suite)


def test_memory_add_reaches_tasks_of_its_scope_only(home: Home, minilm: MiniLMEmbedder) -> None:
    added = _run(home, "add", "--level", "insight", "--scope", "rg:products",
                 "Multiply the two numbers digit by digit, then write the product alone.", "--json")
    assert added.exit_code == 0, added.output
    entry = json.loads(added.stdout.strip().splitlines()[-1])
    assert entry["source"] == "operator" and entry["scope"] == "rg:products" and entry["written"] == "added"
    pattern = _run(home, "add", "--level", "pattern", "--scope", "rg:products?min_digits=2",
                   "Give the bare product as the answer, with nothing after it.")
    assert pattern.exit_code == 0, pattern.output
    memory = open_memory(home.chroma, embedder=minilm)
    retriever = memory.retriever()
    mine = retriever.retrieve(_task("rg:products?min_digits=2"), 3)
    assert "Strategy: Multiply the two numbers digit by digit" in mine.text
    assert "Pattern: Give the bare product as the answer" in mine.text
    family_only = retriever.retrieve(_task("rg:products?min_digits=1"), 3).text
    assert "digit by digit" in family_only and "bare product" not in family_only, "a spec scope is that spec only"
    other = retriever.retrieve(_task("rg:chain_sum"), 3)
    assert "digit by digit" not in other.text and "bare product" not in other.text
    test_split = retriever.retrieve(Task(id="t2", prompt="What is 3 * 3?", verifier="rg:products",
                                         suite="rg:products", split="test"), 3)
    assert "digit by digit" in test_split.text, "a playbook comes from no test problem: test tasks get it too"
    listed = _run(home, "ls", "--level", "insight")
    assert listed.exit_code == 0 and "operator" in listed.stdout


def test_the_distill_teacher_sees_operator_entries(home: Home, minilm: MiniLMEmbedder, tiny_model_dir: Path) -> None:
    """Distillation absorbs them: the teacher's retriever reads a person's playbook at once (reflected advice
    waits for the verifier to validate it in use), so its context holds the playbook."""
    from procmem.distill.config import TraceConfig
    from procmem.distill.traces import TrainingItem, build_traces
    from procmem.llm import LocalLLM

    assert _run(home, "add", "--scope", "rg:products", "Multiply the two numbers, then write the product alone."
                ).exit_code == 0
    retriever = open_memory(home.chroma, embedder=minilm).teacher_retriever()
    task = Task(id="t1", prompt="What is 6 * 7?", verifier="exact:42", suite="rg:products?min_digits=1")
    item = TrainingItem(task=task, episode_ids=("e1",), feedback=(), rank=0)
    built = build_traces([item], LocalLLM(tiny_model_dir), retriever, TraceConfig(k=1, max_tokens=4))
    (context,) = built.contexts
    assert "write the product alone" in context.teacher_prompt and context.memory_ids
    assert "write the product alone" not in context.prompt, "the student's prompt stays memory-free"


@pytest.mark.parametrize(("args", "where"), [
    (("add", "--level", "experience", "--scope", "rg:products", "Some text here."), "--level"),
    (("add", "--scope", "rg:no_such_dataset", "Some text here."), "--scope"),
    (("add", "--scope", "builtin:nope", "Some text here."), "--scope"),
    (("add", "--scope", "/no/such/file.jsonl", "Some text here."), "--scope"),
    (("add", "Some text here."), "--scope"),
    (("add", "--scope", "rg:products", "   "), "TEXT"),
])
def test_bad_add_input_is_one_line_and_exit_2(home: Home, args: tuple[str, ...], where: str) -> None:
    result = _run(home, *args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith(f"error: {where}") and len(message.splitlines()) == 1 and "Traceback" not in message


def _letters(task_id: str, word: str, answers: list[str], passed: bool) -> Episode:
    prompt = f'How many times does the letter "a" appear in the text: "{word}"?'
    return episode(task_id, prompt, answers, passed=passed, suite="rg:letter_counting")


def test_each_prompt_shows_few_examples_far_from_its_problem_and_varied_across_problems() -> None:
    from procmem.memory._reflection import _REFLECTION_EXAMPLES, _SHOWN_EXAMPLES, reflection_examples

    problems = group_problems([_letters(f"l{i}", word, ["2"], True)
                               for i, word in enumerate(["banana", "paperwork", "data set", "alpaca", "a cat"])])
    shown = [reflection_examples(p) for p in problems]
    assert all(len(s) == _SHOWN_EXAMPLES and set(s) <= set(_REFLECTION_EXAMPLES) for s in shown)
    assert all("How many days" not in e for s in shown for e in s), "shares 'how many' with the question"
    assert len({s for s in shown}) > 1, "rotated by problem"
    assert all(e in reflection_prompt(p) for p, s in zip(problems, shown, strict=True) for e in s)


def test_the_grammar_opens_a_lesson_with_the_failed_answer_and_a_strategy_with_a_word_of_the_question() -> None:
    from procmem.memory._reflection import problem_anchors

    failed = group_problems([_letters("f", "paperwork", ["1", "1"], False)])[0]
    assert problem_anchors(failed)[:4] == ("times", "letter", "appear", "text")
    grammar = reflection_grammar(failed)
    assert 'lesson ::= "When " ("1") " failed"' in grammar and "STRATEGY" not in grammar
    passed = group_problems([_letters("p", "banana", ["3"], True)])[0]
    strategy = reflection_grammar(passed)
    assert '"paperwork"' not in strategy and '"banana"' in strategy and "LESSON" not in strategy


def test_under_the_grammar_the_tiny_model_speaks_of_its_own_problem(tmp_path: Path, tiny_gguf: Path) -> None:
    """Whatever a (random) model writes under the grammar, a lesson names its failed answer and a strategy a
    word of its question: it cannot be a worked example copied word for word."""
    pytest.importorskip("llama_cpp", reason="the grammar runs on the llama.cpp engine")
    from procmem.llm import EngineConfig, LlamaCppLLM
    from procmem.memory._reflection import problem_anchors

    problems = sorted(group_problems([_letters("f", "paperwork", ["1", "7"], False),
                                      _letters("p", "banana", ["3"], True)]), key=lambda p: p.has_pass)
    sampled = reflection_generation(96).model_copy(update={"temperature": 1.0, "seed": 3})
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=2, n_threads=1)) as llm:
        outputs = [llm.generate([reflection_prompt(p)], sampled.model_copy(update={"grammar": reflection_grammar(p)}))
                   [0].text for p in problems]
    lesson = outputs[0].splitlines()[0]
    assert lesson.startswith((" When 1 failed", " When 7 failed")), outputs[0]
    words = outputs[1].splitlines()[0].lower().replace(",", " ").split()[:5]
    assert any(w.startswith(problem_anchors(problems[1])) for w in words), outputs[1]


def test_the_vocabulary_trie_matches_its_words_and_no_other(tmp_path: Path, tiny_gguf: Path) -> None:
    """The trie writes each shared prefix once; under it the random model writes only listed words."""
    pytest.importorskip("llama_cpp", reason="the grammar runs on the llama.cpp engine")
    from procmem.llm import EngineConfig, LlamaCppLLM
    from procmem.memory._reflection import _trie

    words = ("a", "an", "and", "answer", "add", "by")
    assert _trie(words) == '("a" ("dd" | "n" ("d" | "swer")?)? | "by")'
    grammar = f'root ::= w (" " w){{5,9}} "."\nw ::= {_trie(words)}'
    sampled = reflection_generation(48).model_copy(update={"temperature": 1.0, "seed": 11, "stop": (),
                                                           "grammar": grammar})
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=1, n_threads=1)) as llm:
        text = llm.generate(["Words:"], sampled)[0].text
    written = text.rstrip(".").split()
    assert len(written) >= 6 and set(written) <= set(words), text


def test_under_the_grammar_every_word_is_a_procedure_word_or_the_problems_own(tmp_path: Path,
                                                                             tiny_gguf: Path) -> None:
    """A random model, sampled freely under the grammar, writes nothing but the procedure vocabulary, its
    problem's anchors, numbers and quoted letters: no worked review's subject (mouse, month, ocean) can appear."""
    pytest.importorskip("llama_cpp", reason="the grammar runs on the llama.cpp engine")
    import re

    from procmem.llm import EngineConfig, LlamaCppLLM
    from procmem.memory._reflection import _VOCABULARY, pattern_grammar, problem_anchors

    problems = sorted(group_problems([_letters("f", "paperwork", ["1", "7"], False),
                                      _letters("p", "banana", ["3"], True)]), key=lambda p: p.has_pass)
    sampled = reflection_generation(96).model_copy(update={"temperature": 1.0, "seed": 5})
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=2, n_threads=1)) as llm:
        texts = [(problem_anchors(p), llm.generate([reflection_prompt(p)], sampled.model_copy(
            update={"grammar": reflection_grammar(p)}))[0].text) for p in problems]
        texts.append(((), llm.generate(["PATTERN:"], sampled.model_copy(update={"grammar": pattern_grammar()}))
                      [0].text))
    for anchors, text in texts:
        for word in re.findall(r"[A-Za-z]+", text.replace("LESSON:", "").replace("STRATEGY:", "")):
            lowered = word.lower()
            assert (lowered in _VOCABULARY or len(word) == 1
                    or any(lowered in (a, a + "s", a + "es", a + "ed", a + "ing") for a in anchors)), (word, text)


def test_advice_words_are_said_without_a_copula() -> None:
    """After its verb, advice cannot write is/was/are/were/be (a small model ends with "the answer is 36", which
    validation rejects); a situation ("When the sum is 12, ...") can. Read off the grammar's rules: the trie is
    literals, groups, ``|`` and ``?``, the same in a regular expression."""
    import re

    from procmem.memory._reflection import _ADVICE_RULES, _COPULAS, _VOCABULARY, _VOCABULARY_RULES

    def words_of(name: str) -> re.Pattern[str]:
        body = next(r for r in _VOCABULARY_RULES if r.startswith(f"{name} ::= ")).split(" ::= ", 1)[1]
        return re.compile(re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), body).replace(" ", ""))

    spoken, vocabulary = words_of("spoken"), words_of("vocabulary")
    assert all(vocabulary.fullmatch(w) for w in _VOCABULARY) and not vocabulary.fullmatch("ocean")
    assert all(spoken.fullmatch(w) for w in _VOCABULARY if w not in _COPULAS)
    assert not any(spoken.fullmatch(w) for w in _COPULAS) and set(_VOCABULARY) >= _COPULAS
    advice = {r.split(" ::= ")[0]: r for r in _ADVICE_RULES}
    assert "known" not in advice["word"] + advice["letters"] and "said" in advice["word"]
