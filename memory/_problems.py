"""Level 1 grouped: the episodes of one problem, with the verifier outcomes they hold.

The public API for every package that groups episodes (reflection here; distill's training problems can
build on it too): :func:`group_problems` (by question, or ``by="task"``) and :class:`Problem`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from procmem.core import Attempt, Episode, Task
from procmem.core.keys import policy_version, problem_key

__all__ = ["Grouping", "Problem", "group_problems"]

Grouping = Literal["question", "task"]
"""How :func:`group_problems` groups: ``question`` (the same normalised prompt, or the same suite and task
id) or ``task`` (the same suite and task id only)."""


@dataclass(frozen=True)
class Problem:
    """Every recorded episode of one problem, oldest first (see :func:`group_problems`).

    ``key`` names the problem: :func:`~procmem.core.keys.problem_key` of its question when grouped by
    question, ``<suite>/<task id>`` when grouped by task.
    """

    key: str
    episodes: tuple[Episode, ...]

    @property
    def task(self) -> Task:
        """The task as its newest episode saw it."""
        return self.episodes[-1].task

    @property
    def prompt(self) -> str:
        return self.episodes[-1].task.prompt

    @property
    def suite(self) -> str:
        return self.episodes[-1].task.suite

    @property
    def split(self) -> str:
        return self.episodes[-1].task.split

    @property
    def policy_version(self) -> str:
        """The policy of the newest episode."""
        return policy_version(self.episodes[-1])

    @property
    def has_pass(self) -> bool:
        return any(a.verdict.passed for e in self.episodes for a in e.attempts)

    @property
    def has_failure(self) -> bool:
        return any(not a.verdict.passed for e in self.episodes for a in e.attempts)

    @property
    def passed(self) -> bool:
        """Whether some episode passed (its final attempt was verified)."""
        return any(e.passed for e in self.episodes)

    @property
    def failed_attempts(self) -> tuple[Attempt, ...]:
        """Every attempt the verifier failed, oldest first."""
        return tuple(a for e in self.episodes for a in e.attempts if not a.verdict.passed)

    @property
    def judged(self) -> bool:
        """Whether a verifier judged at least one attempt: only such problems produce insights."""
        return any(e.attempts for e in self.episodes)

    @property
    def episode_ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.episodes)

    def evidence(self) -> dict[str, int]:
        """The verifier outcomes behind anything learned from this problem."""
        return {"episodes": len(self.episodes), "passed": sum(e.passed for e in self.episodes),
                "attempts": sum(len(e.attempts) for e in self.episodes)}

    def signature(self, reflector: str) -> str:
        """Changes when the problem gets a new episode or another reflector: then it is worth reflecting again."""
        text = "\x1f".join([reflector, *sorted(self.episode_ids)])
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def group_problems(episodes: Iterable[Episode], *, by: Grouping = "question") -> list[Problem]:
    """Group episodes into problems: by ``question``, the same normalised prompt or the same (suite, task
    id); by ``task``, the same (suite, task id) only.

    Deterministic: problems come ordered by their oldest episode, episodes oldest first.
    """
    ordered = sorted(episodes, key=lambda e: (e.finished_at, e.id))
    if by == "task":
        tasks: dict[str, list[Episode]] = {}
        for episode in ordered:
            tasks.setdefault(f"{episode.task.suite}/{episode.task.id}", []).append(episode)
        return [Problem(key, tuple(members)) for key, members in tasks.items()]
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    by_task: dict[tuple[str, str], str] = {}
    for episode in ordered:
        key = problem_key(episode.task.prompt)
        first = by_task.setdefault((episode.task.suite, episode.task.id), key)
        a, b = find(key), find(first)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[str, list[Episode]] = {}
    for episode in ordered:
        groups.setdefault(find(problem_key(episode.task.prompt)), []).append(episode)
    return [Problem(key, tuple(members)) for key, members in groups.items()]

