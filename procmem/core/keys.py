"""Stable identities shared by every layer: a policy's version, a question's normal form, a problem's key."""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

__all__ = ["Versioned", "normalize_question", "policy_version", "problem_key"]

_SPACE_AROUND_PUNCT = re.compile(r"\s*([^\w\s])\s*")


class Versioned(Protocol):
    """Anything that names a policy: an LLM, an episode."""

    @property
    def model_id(self) -> str: ...

    @property
    def adapter_version(self) -> str | None: ...


def policy_version(model: Versioned) -> str:
    """``model_id@adapter`` (``@base`` without an adapter): the version of a policy, an LLM or an episode."""
    return f"{model.model_id}@{model.adapter_version or 'base'}"


def normalize_question(text: str) -> str:
    """The form two prompts share when they are the same question: lower case, single spaces, no spaces
    around punctuation."""
    return _SPACE_AROUND_PUNCT.sub(r"\1", " ".join(text.lower().split()))


def problem_key(prompt: str) -> str:
    """A short stable id of the problem a prompt poses (episodes with the same key are one problem)."""
    return "p" + hashlib.sha1(normalize_question(prompt).encode()).hexdigest()[:15]
