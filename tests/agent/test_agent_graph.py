"""The agent loop on the real tiny model, real verifiers, real Chroma and real LangGraph checkpoints."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite import SqliteSaver

from procmem.agent import AgentDeps, solve_tasks
from procmem.core import Attempt, Episode, GenerationConfig, Home, Task, Verdict
from procmem.llm import MicroBatcher
from procmem.memory import open_memory
from procmem.memory._retrieval import ExperienceRetriever
from procmem.verifiers import build_verifier

GEN = GenerationConfig(max_tokens=6)
ANYTHING = "regex:(?s).*"  # every answer passes
NOTHING = "exact:this answer is never produced"  # every answer fails


def _task(i: int, verifier: str, prompt: str | None = None) -> Task:
    return Task(id=f"t{i}", prompt=prompt or f"What is {i} + {i}?", verifier=verifier, suite="unit")


def test_a_pass_stops_after_one_attempt_and_a_failure_retries_with_feedback(spy: Any) -> None:
    deps = AgentDeps(llm=spy, generation=GEN, attempts=3)
    report = solve_tasks([_task(1, ANYTHING), _task(2, NOTHING)], deps, concurrency=1)
    passed, failed = report.episodes
    assert passed.passed and len(passed.attempts) == 1
    assert not failed.passed and len(failed.attempts) == 3
    retry_prompts = [p for p in spy.prompts if "What is 2 + 2?" in p]
    assert len(retry_prompts) == 3
    assert "Feedback:" not in retry_prompts[0]
    assert retry_prompts[1].count("Feedback:") == 1 and retry_prompts[2].count("Feedback:") == 2
    assert "never produced" not in retry_prompts[2], "feedback leaked the gold answer"
    assert report.passed == 1 and report.mean_attempts == 2.0


def test_episodes_are_recorded_in_chroma_with_the_verdicts_of_their_answers(spy: Any, home: Home) -> None:
    memory = open_memory(home.chroma)
    deps = AgentDeps(llm=spy, generation=GEN, recorder=memory.record, attempts=2)
    tasks = [_task(i, ANYTHING if i % 2 else NOTHING) for i in range(6)]
    report = solve_tasks(tasks, deps, concurrency=3)
    assert memory.stats()["experience"] == 6
    for episode in report.episodes:
        stored = memory.get(episode.id)
        assert stored == episode
        verifier = build_verifier(stored.task)
        for attempt in stored.attempts:
            assert verifier.verify(attempt.answer) == attempt.verdict
        assert stored.model_id == spy.model_id


def test_retrieved_successes_reach_the_prompt_and_the_episode(spy: Any, home: Home) -> None:
    memory = open_memory(home.chroma)
    solved = Task(id="old", prompt="What is 3 + 4?", verifier="exact:7", suite="unit")
    memory.record(Episode(task=solved, attempts=(Attempt("7", Verdict(True, 1.0)),), model_id="m"))
    deps = AgentDeps(llm=spy, generation=GEN, retriever=ExperienceRetriever(memory), attempts=1, memory_k=2)
    episode = solve_tasks([_task(5, NOTHING, "What is 5 + 6?")], deps).episodes[0]
    assert len(episode.memory_ids) == 1
    assert "What is 3 + 4?" in spy.prompts[0] and spy.prompts[0].rstrip().endswith("Answer:")


def test_concurrent_tasks_share_batched_generation_calls(spy: Any) -> None:
    tasks = [_task(i, ANYTHING) for i in range(8)]
    with MicroBatcher(spy, max_batch=8, max_wait_s=0.2) as batched:
        report = solve_tasks(tasks, AgentDeps(llm=batched, generation=GEN, attempts=1), concurrency=8)
    assert report.n == 8
    assert max(spy.batch_sizes) > 1, f"no batching happened: {spy.batch_sizes}"
    assert sum(spy.batch_sizes) == 8


def test_a_rerun_of_the_same_run_id_resumes_instead_of_solving_again(spy: Any, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "threads.sqlite", check_same_thread=False)
    saver = SqliteSaver(conn)
    recorded: list[Episode] = []
    deps = AgentDeps(llm=spy, generation=GEN, recorder=recorded.append, attempts=2)
    tasks = [_task(i, NOTHING) for i in range(3)]
    first = solve_tasks(tasks, deps, checkpointer=saver, run_id="r1", concurrency=2)
    calls = len(spy.prompts)
    second = solve_tasks(tasks, deps, checkpointer=saver, run_id="r1", concurrency=2)
    assert second.resumed == 3 and len(spy.prompts) == calls and len(recorded) == 3
    assert [e.id for e in second.episodes] == [e.id for e in first.episodes]
    third = solve_tasks(tasks, deps, checkpointer=saver, run_id="r2")
    assert third.resumed == 0 and len(recorded) == 6
    conn.close()
