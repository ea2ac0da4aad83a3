"""Level 1 grouped: the episodes of one problem, with the verifier outcomes they hold."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from procmem.core import Episode
from procmem.core.keys import policy_version, problem_key

__all__ = ["Problem", "group_problems"]


@dataclass(frozen=True)
class Problem:
    """Every recorded episode of one question (same task id or same normalised prompt), oldest first."""

    key: str
    episodes: tuple[Episode, ...]

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


def group_problems(episodes: Iterable[Episode]) -> list[Problem]:
    """Group episodes into problems: the same normalised prompt, or the same (suite, task id).

    Deterministic: problems come ordered by their oldest episode, episodes oldest first.
    """
    ordered = sorted(episodes, key=lambda e: (e.finished_at, e.id))
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

