"""Value types shared by every package: tasks, verdicts, attempts and episodes.

They are frozen dataclasses that round-trip through plain JSON (``to_dict`` / ``from_dict``),
which is how they are stored in Chroma, SQLite checkpoints and JSONL exports.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from procmem.core.keys import policy_version

__all__ = ["AnswerFormat", "Attempt", "Episode", "Split", "Task", "Verdict", "new_id", "utc_now"]

Split = Literal["train", "test"]
AnswerFormat = Literal["line", "code", "reasoned"]
"""``line``: the answer is the completion's first line; ``code``: the whole completion (a program);
``reasoned``: the completion may work the problem out over several lines, and the answer is on the line
marked ``Answer:`` (see :mod:`procmem.core.prompts`)."""


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (what every record stores)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one answer.

    ``feedback`` explains a failure (expected form, what was got) without revealing the gold answer.
    ``details`` holds optional JSON-plain facts about how the verdict was reached (e.g. the code
    verifier's isolation level and test counts); it never holds the gold answer either.
    """

    passed: bool
    score: float
    feedback: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Verdict.score must be in [0, 1], got {self.score}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["details"] = dict(self.details)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Also reads records written before ``details`` existed (the key is then absent)."""
        return cls(passed=bool(data["passed"]), score=float(data["score"]), feedback=str(data["feedback"]),
                   details=dict(data.get("details") or {}))


@dataclass(frozen=True)
class Task:
    """One verifiable problem.

    ``verifier`` is a verifier spec such as ``exact:42`` or ``rg:chain_sum`` (see ``procmem.verifiers``);
    ``metadata`` carries what the verifier needs beyond the spec (e.g. a reasoning-gym entry).
    """

    id: str
    prompt: str
    verifier: str
    suite: str = "adhoc"
    split: Split = "train"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def answer_format(self) -> AnswerFormat:
        """``metadata["answer_format"]``; one-line answers unless a task says ``code`` or ``reasoned``."""
        value = self.metadata.get("answer_format")
        return value if value in ("code", "reasoned") else "line"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metadata"] = dict(self.metadata)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            id=str(data["id"]),
            prompt=str(data["prompt"]),
            verifier=str(data["verifier"]),
            suite=str(data.get("suite", "adhoc")),
            split=data.get("split", "train"),
            metadata=dict(data.get("metadata") or {}),
        )


@dataclass(frozen=True)
class Attempt:
    """One answer the policy gave, and how the verifier judged it."""

    answer: str
    verdict: Verdict
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "verdict": self.verdict.to_dict(),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            answer=str(data["answer"]),
            verdict=Verdict.from_dict(data["verdict"]),
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
        )


@dataclass(frozen=True)
class Episode:
    """A whole solve of one task: every attempt, the memory it used, and who produced it.

    ``model_id`` plus ``adapter_version`` is the policy version that produced the episode.
    """

    task: Task
    attempts: tuple[Attempt, ...]
    model_id: str
    adapter_version: str | None = None
    memory_ids: tuple[str, ...] = ()
    id: str = field(default_factory=new_id)
    started_at: str = field(default_factory=utc_now)
    finished_at: str = field(default_factory=utc_now)

    @property
    def passed(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].verdict.passed

    @property
    def policy_version(self) -> str:
        return policy_version(self)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.attempts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task.to_dict(),
            "attempts": [a.to_dict() for a in self.attempts],
            "model_id": self.model_id,
            "adapter_version": self.adapter_version,
            "memory_ids": list(self.memory_ids),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Episode:
        return cls(
            id=str(data["id"]),
            task=Task.from_dict(data["task"]),
            attempts=tuple(Attempt.from_dict(a) for a in data["attempts"]),
            model_id=str(data["model_id"]),
            adapter_version=data.get("adapter_version"),
            memory_ids=tuple(data.get("memory_ids") or ()),
            started_at=str(data["started_at"]),
            finished_at=str(data["finished_at"]),
        )
