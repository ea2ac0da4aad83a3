"""The Verifier seam, and the registry that builds a verifier from a task's spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from procmem.core import ProcmemError, Task, Verdict

__all__ = ["Verifier", "VerifierFactory", "build_verifier", "canonical_answer", "reference_answer", "register_verifier",
           "verifier_kinds"]


@runtime_checkable
class Verifier(Protocol):
    """Judges answers to one task.

    ``verify`` never raises on a bad answer: junk gets a failing :class:`Verdict` whose feedback says
    what form was expected and what was got, and never reveals the gold answer.

    A verifier may also define ``canonical(answer) -> str | None``: the canonical form of a *passing*
    answer, as the verifier read it (``numeric:`` reads ``57.`` and ``+5.7e1`` as ``57``), or None (keep the
    answer as it is; also for a failing answer). It is optional: :func:`canonical_answer` is how callers ask,
    and a verifier without it keeps every answer's raw text. Distillation trains on the canonical form, so a
    lenient verifier's accepted noise (a trailing period) is not taught to the model.
    """

    def verify(self, answer: str) -> Verdict: ...


VerifierFactory = Callable[[str, Task], Verifier]
"""Builds a verifier from the part of the spec after ``kind:`` and the task it belongs to."""

_REGISTRY: dict[str, VerifierFactory] = {}


def register_verifier(kind: str) -> Callable[[VerifierFactory], VerifierFactory]:
    """Register a factory for specs of the form ``kind:argument``."""

    def decorate(factory: VerifierFactory) -> VerifierFactory:
        _REGISTRY[kind] = factory
        return factory

    return decorate


def verifier_kinds() -> list[str]:
    return sorted(_REGISTRY)


def build_verifier(task: Task) -> Verifier:
    """The verifier for ``task.verifier`` (e.g. ``exact:42``); an unknown kind is a ProcmemError."""
    kind, _, argument = task.verifier.partition(":")
    factory = _REGISTRY.get(kind.strip())
    if factory is None:
        raise ProcmemError(f"unknown verifier spec {task.verifier!r}", where=f"task {task.id}",
                           fix=f"use one of: {', '.join(f'{k}:...' for k in verifier_kinds())}")
    return factory(argument, task)


def reference_answer(task: Task) -> str | None:
    """The task's gold answer where its verifier holds one as text (``exact:``, ``rg:`` with a stored
    answer), else None. For baselines and reports only: never show it to a model."""
    reference = getattr(build_verifier(task), "reference", None)
    return reference if isinstance(reference, str) and reference.strip() else None


def canonical_answer(verifier: Verifier, answer: str) -> str | None:
    """The canonical form of ``answer`` where ``verifier`` defines one (its optional ``canonical`` method), else
    None (keep the raw text). The form returned is checked: one the verifier itself would fail, or an empty one,
    is ignored (None), so a faulty ``canonical`` can never turn a verified answer into an unverified one."""
    canonical = getattr(verifier, "canonical", None)
    if not callable(canonical):
        return None
    try:
        form = canonical(answer)
    except Exception:
        return None
    if not isinstance(form, str) or not form.strip():
        return None
    return form if form == answer or verifier.verify(form).passed else None
