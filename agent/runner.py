"""Solve many tasks concurrently through the agent graph, with resumable threads."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langgraph.types import Checkpointer

from procmem.agent.graph import AgentDeps, build_agent, episode_from_state, initial_state
from procmem.core import Episode, Task

__all__ = ["SolveReport", "solve_tasks", "thread_id"]


@dataclass(frozen=True)
class SolveReport:
    """What a solve run produced, in task order."""

    episodes: tuple[Episode, ...]
    wall_time_s: float
    resumed: int = 0
    """Tasks whose finished episode was taken from an earlier, interrupted run."""

    @property
    def n(self) -> int:
        return len(self.episodes)

    @property
    def passed(self) -> int:
        return sum(e.passed for e in self.episodes)

    @property
    def accuracy(self) -> float:
        return self.passed / self.n if self.n else 0.0

    @property
    def mean_attempts(self) -> float:
        return sum(len(e.attempts) for e in self.episodes) / self.n if self.n else 0.0

    @property
    def completion_tokens(self) -> int:
        return sum(e.completion_tokens for e in self.episodes)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0


def thread_id(run_id: str, task: Task) -> str:
    return f"solve:{run_id}:{task.id}"


def solve_tasks(
    tasks: Sequence[Task],
    deps: AgentDeps,
    *,
    concurrency: int = 8,
    checkpointer: Checkpointer = None,
    run_id: str = "",
    on_done: Callable[[Episode], None] | None = None,
) -> SolveReport:
    """Run every task through the agent, ``concurrency`` at a time.

    With a checkpointer, each task is a thread ``solve:<run_id>:<task id>``: rerunning the same
    ``run_id`` skips finished tasks and resumes unfinished ones from their last step.
    """
    start = time.perf_counter()
    agent = build_agent(deps, checkpointer=checkpointer)
    finished: dict[int, Episode] = {}
    todo: list[int] = []
    for index, task in enumerate(tasks):
        done = _finished_episode(agent, run_id, task) if checkpointer is not None else None
        if done is not None:
            finished[index] = done
            if on_done:
                on_done(done)
        else:
            todo.append(index)
    resumed = len(finished)
    if todo:
        inputs = [_input_for(agent, run_id, tasks[i], checkpointer) for i in todo]
        configs: list[Any] = [
            {"configurable": {"thread_id": thread_id(run_id, tasks[i])}, "max_concurrency": concurrency}
            for i in todo
        ]
        for position, state in agent.batch_as_completed(inputs, configs):
            episode = episode_from_state(state)
            finished[todo[position]] = episode
            if on_done:
                on_done(episode)
    episodes = tuple(finished[i] for i in range(len(tasks)))
    return SolveReport(episodes, time.perf_counter() - start, resumed)


def _finished_episode(agent: Any, run_id: str, task: Task) -> Episode | None:
    snapshot = agent.get_state({"configurable": {"thread_id": thread_id(run_id, task)}})
    if snapshot.values.get("episode") and not snapshot.next:
        return episode_from_state(snapshot.values)
    return None


def _input_for(agent: Any, run_id: str, task: Task, checkpointer: Checkpointer) -> Any:
    """A fresh start, or None to resume a thread that stopped mid-task (a thread checkpointed before the state
    was typed holds its task as a dict: it starts afresh)."""
    if checkpointer is not None:
        snapshot = agent.get_state({"configurable": {"thread_id": thread_id(run_id, task)}})
        if snapshot.next and isinstance(snapshot.values.get("task"), Task):
            return None
    return initial_state(task)
