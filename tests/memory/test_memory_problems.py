"""Problems: episodes grouped by question or by task, and what a problem says about its attempts."""

from __future__ import annotations

from memory_helpers import episode

from procmem.core import Episode
from procmem.core.keys import problem_key
from procmem.memory._problems import group_problems


def _episodes() -> list[Episode]:
    return [
        episode("t1", "What is 2 + 2?", ["five", "4"], finished_at="2026-01-01T00:00:00"),
        episode("t2", "what is 2+2 ?", ["4"], finished_at="2026-01-02T00:00:00"),  # same question, other id
        episode("t3", "What is 3 + 3?", ["seven"], passed=False, finished_at="2026-01-03T00:00:00"),
        episode("t3", "What is three plus three?", ["6"], finished_at="2026-01-04T00:00:00"),  # same id, reworded
    ]


def test_by_question_joins_the_same_question_and_the_same_task_id() -> None:
    problems = group_problems(_episodes())
    assert [[e.task.id for e in p.episodes] for p in problems] == [["t1", "t2"], ["t3", "t3"]]
    assert problems[0].key == problem_key("What is 2 + 2?")


def test_by_task_keeps_tasks_apart_even_when_they_ask_the_same_question() -> None:
    problems = group_problems(_episodes(), by="task")
    assert [p.key for p in problems] == ["rg:chain_sum/t1", "rg:chain_sum/t2", "rg:chain_sum/t3"]
    assert [len(p.episodes) for p in problems] == [1, 1, 2]


def test_a_problem_reports_its_newest_task_its_passes_and_its_failed_attempts() -> None:
    first, second, third = group_problems(_episodes(), by="task")
    assert third.task.prompt == "What is three plus three?" and third.prompt == third.task.prompt
    assert third.passed and third.has_failure
    assert [a.answer for a in third.failed_attempts] == ["seven"]
    assert first.passed and [a.answer for a in first.failed_attempts] == ["five"]
    assert second.passed and second.failed_attempts == () and not second.has_failure
    unsolved = group_problems([episode("u", "What is 9 + 9?", ["nineteen"], passed=False)])[0]
    assert not unsolved.passed and unsolved.judged
