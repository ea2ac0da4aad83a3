"""The experience level and the retrieval seam, on real Chroma with the real MiniLM embedder."""

from __future__ import annotations

from pathlib import Path

import pytest

from procmem.core import Attempt, Episode, ProcmemError, Task, Verdict, render_prompt
from procmem.memory import NoMemory, Retrieval, Retriever, open_memory
from procmem.memory._experiences import ExperienceMemory
from procmem.memory._retrieval import ExperienceRetriever, WorkedExample, fit_memory, render_memory
from procmem.memory.embedding import MiniLMEmbedder


def _episode(task_id: str, prompt: str, *, passed: bool = True, split: str = "train", answer: str = "42",
             suite: str = "unit", finished_at: str = "2026-01-01T00:00:00.000+00:00") -> Episode:
    task = Task(id=task_id, prompt=prompt, verifier="exact:42", suite=suite, split=split)  # type: ignore[arg-type]
    attempts: tuple[Attempt, ...] = (Attempt("wrong", Verdict(False, 0.0, "expected a number")),) if not passed else ()
    attempts += (Attempt(answer, Verdict(passed, float(passed), "" if passed else "still wrong")),)
    return Episode(task=task, attempts=attempts, model_id="m", adapter_version="v1",
                   started_at=finished_at, finished_at=finished_at)


@pytest.fixture
def memory(minilm: MiniLMEmbedder, tmp_path: Path) -> ExperienceMemory:
    mem = open_memory(tmp_path / "chroma", embedder=minilm)
    yield mem
    mem.close()


def test_an_episode_round_trips_exactly(memory: ExperienceMemory) -> None:
    episode = _episode("t1", "What is 3 + 4?", passed=False)
    memory.record(episode)
    assert memory.get(episode.id) == episode
    assert memory.get("missing") is None
    assert memory.stats() == {"experience": 1, "insight": 0, "pattern": 0}
    memory.record(episode)  # recording again overwrites
    assert memory.stats()["experience"] == 1


def test_episodes_filter_and_come_oldest_first(memory: ExperienceMemory) -> None:
    late = _episode("a", "What is 1 + 1?", finished_at="2026-03-01T00:00:00.000+00:00")
    early = _episode("b", "What is 2 + 2?", passed=False, finished_at="2026-01-01T00:00:00.000+00:00")
    other = _episode("c", "What is 3 + 3?", split="test", suite="other", finished_at="2026-02-01T00:00:00.000+00:00")
    memory.record_many([late, early, other])
    assert [e.task.id for e in memory.episodes()] == ["b", "c", "a"]
    assert [e.task.id for e in memory.episodes(passed=True)] == ["c", "a"]
    assert [e.task.id for e in memory.episodes(split="test")] == ["c"]
    assert [e.task.id for e in memory.episodes(suite="unit", passed=False)] == ["b"]
    assert [e.task.id for e in memory.episodes(task_id="a")] == ["a"]


def test_similar_successes_are_train_passes_of_other_problems_nearest_first(memory: ExperienceMemory) -> None:
    memory.record_many([
        _episode("sum1", "What is 5 + 9?", answer="14"),
        _episode("spell", "Spell the word 'house' backwards.", answer="esuoh"),
        _episode("sum-failed", "What is 6 + 2?", passed=False),
        _episode("sum-test", "What is 7 + 1?", split="test", answer="8"),
        _episode("self", "What is 3 + 4?", answer="7"),                      # the task itself
        _episode("same-question", "What  is 3 +  4?", answer="7"),          # same question, other id
        _episode("sum2", "What is 11 + 8?", answer="19"),
    ])
    task = Task(id="self", prompt="What is 3 + 4?", verifier="exact:7")
    found = memory.similar_successes(task, 3)
    ids = [e.task.id for e in found]
    assert set(ids[:2]) == {"sum1", "sum2"} and ids[2] == "spell"
    assert memory.similar_successes(task, 0) == []


def test_a_test_split_task_only_ever_sees_train_successes(memory: ExperienceMemory) -> None:
    memory.record_many([_episode(f"test{i}", f"What is {i} + {i}?", split="test") for i in range(5)])
    held_out = Task(id="new", prompt="What is 9 + 9?", verifier="exact:18", split="test")
    assert memory.similar_successes(held_out, 3) == []
    memory.record(_episode("tr", "What is 2 + 5?", answer="7"))
    assert [e.task.id for e in memory.similar_successes(held_out, 3)] == ["tr"]


def test_repeated_solves_of_one_problem_count_once_and_do_not_hide_others(memory: ExperienceMemory) -> None:
    memory.record_many([_episode("busy", "What is 4 + 4?", finished_at=f"2026-01-01T00:00:{s:02d}.000+00:00")
                        for s in range(30)])
    memory.record(_episode("quiet", "Spell the word 'cat' backwards.", answer="tac"))
    found = memory.similar_successes(Task(id="q", prompt="What is 4 + 5?", verifier="exact:9"), 2)
    assert [e.task.id for e in found] == ["busy", "quiet"]


def test_the_retriever_renders_worked_examples_most_relevant_last(memory: ExperienceMemory) -> None:
    near = _episode("near", "What is 5 + 9?", answer="14")
    far = _episode("far", "Spell the word 'house' backwards.", answer="esuoh")
    memory.record_many([near, far])
    retriever = ExperienceRetriever(memory)
    assert isinstance(retriever, Retriever)
    found = retriever.retrieve(Task(id="q", prompt="What is 3 + 4?", verifier="exact:7"), 2)
    assert found.entry_ids == (near.id, far.id)
    assert found.text == ("Question: Spell the word 'house' backwards.\nAnswer: esuoh\n\n"
                          "Question: What is 5 + 9?\nAnswer: 14")
    prompt = render_prompt("What is 3 + 4?", memory=found.text)
    assert prompt.endswith("Answer: 14\n\nQuestion: What is 3 + 4?\nAnswer:")
    assert retriever.retrieve(Task(id="q", prompt="x", verifier="exact:7"), 0) == Retrieval()
    assert NoMemory().retrieve(Task(id="q", prompt="x", verifier=""), 3) == Retrieval()


def test_the_budget_skips_what_does_not_fit_and_rendering_is_deterministic() -> None:
    short = WorkedExample("a", "What is 1 + 1?", "2")
    long = WorkedExample("b", "Count the letters in " + "word " * 200, "1000")
    also_short = WorkedExample("c", "What is 2 + 2?", "4")
    fitted = fit_memory([short, long, also_short], max_chars=200)
    assert [e.id for e in fitted] == ["a", "c"]
    assert render_memory([short, long, also_short], max_chars=200) == render_memory([short, also_short])
    assert [e.id for e in fit_memory([short, long, also_short], max_entries=1)] == ["a"]
    assert render_memory([long], max_chars=50) == ""


def test_only_verified_answers_become_worked_examples() -> None:
    with pytest.raises(ValueError, match="did not pass"):
        WorkedExample.from_episode(_episode("f", "What is 1 + 1?", passed=False))


def test_open_memory_reports_an_unreachable_server_in_one_line(minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    with pytest.raises(ProcmemError, match="chroma run"):
        open_memory(tmp_path, url="http://127.0.0.1:9", embedder=minilm)
