"""The agent's configs: :class:`SessionConfig` (how a session runs the agent: policy, memory, attempts, decoding),
held as the ``session`` table of every job that runs one (``procmem solve``'s :class:`SolveConfig`, ``procmem serve``'s
``ServeConfig``), and :class:`SessionJob`, the base of such jobs.

A job's config file may also give the session's settings at its top level, as configs written before the
``[session]`` table did (``model = "local:tiny"`` beside ``suite = ...``); flags such as ``--model`` set them too.
They land in ``session``; where both are given, the top-level value (a flag) wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, model_validator

from procmem.core.config import Config, GenerationConfig
from procmem.core.llm import Engine
from procmem.llm import Limits
from procmem.llm._limits import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_SEQUENCE_TOKENS

__all__ = ["SessionConfig", "SessionJob", "SolveConfig"]


class SessionConfig(Config):
    """How a session runs the agent: the policy (model, engine, adapter), its memory, attempts and decoding.
    ``procmem solve``, ``procmem serve`` and ``procmem eval`` hold one as their ``session`` table."""

    model: str = Field(default="local:default", description="'local:default', 'local:tiny', "
                       "'local:/path/to/hf_dir' or 'litellm:<model>' (used by AgentSession.open).")
    engine: Engine = Field(default="auto", description="How a local model runs: llamacpp (the GGUF on llama.cpp), "
                           "transformers, or auto (llama.cpp for local:default when llama-cpp-python is installed).")
    adapter: str = Field(default="promoted", description="LoRA adapter of a local model: 'none', 'promoted' (the "
                         "registry's current version, the base model if none; a long-running session follows "
                         "promotions), 'vN' or an adapter directory.")
    attempts: int = Field(default=2, ge=1, le=20, description="Most attempts per task; retries see verifier feedback.")
    use_memory: bool = Field(default=True, description="Retrieve procedural memory before answering.")
    memory_k: int = Field(default=3, ge=0, le=32, description="How many memory entries to put in the prompt.")
    record: bool = Field(default=True, description="Record every judged episode to memory.")
    reflect: bool = Field(default=False, description="Reflect on each problem right after its episode "
                          "(one more model call per task); the cost is summed in AgentSession.reflection.")
    concurrency: int = Field(default=8, ge=1, le=256,
                             description="Requests at once; the local model batches up to this many prompts.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding settings.")
    max_sequence_tokens: int = Field(default=DEFAULT_MAX_SEQUENCE_TOKENS, ge=64, le=131072,
                                     description="Most prompt + answer tokens of one sequence (below the model's "
                                     "context): a longer prompt is refused before anything is allocated (serve: "
                                     "400 context_length_exceeded); llama.cpp sizes its KV cache from it.")
    max_batch_tokens: int = Field(default=DEFAULT_MAX_BATCH_TOKENS, ge=64, description="The memory budget of "
                                  "concurrent requests on transformers: a batch holds at most this many tokens (rows "
                                  "x longest prompt + answer); larger batches are split.")

    @property
    def limits(self) -> Limits:
        """The local model's memory bounds: ``concurrency`` sequences, and the token bounds above."""
        return Limits(max_batch_size=self.concurrency, max_sequence_tokens=self.max_sequence_tokens,
                      max_batch_tokens=self.max_batch_tokens)


class SessionJob(Config):
    """A job that runs an agent session: its settings live in ``session`` (see the module docstring)."""

    session: SessionConfig = Field(default_factory=SessionConfig,
                                   description="The agent session: model, engine, adapter, memory, attempts, decoding.")

    SESSION_KEYS: ClassVar[Mapping[str, str]] = {name: name for name in (
        "model", "engine", "adapter", "attempts", "use_memory", "memory_k", "record", "reflect", "concurrency",
        "generation", "max_sequence_tokens", "max_batch_tokens")}
    """Top-level keys that belong to the session, and their field there."""
    SESSION_DEFAULTS: ClassVar[Mapping[str, Any]] = {}
    """This job's own defaults for session fields, under whatever the file or flags give."""

    @model_validator(mode="before")
    @classmethod
    def _nest_session(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        given = data.get("session", {})
        if isinstance(given, SessionConfig):
            given = given.model_dump(exclude_unset=True)
        if not isinstance(given, dict):
            return data
        session = _merged(dict(cls.SESSION_DEFAULTS), given)
        for key, field in cls.SESSION_KEYS.items():
            if key in data:
                _set_path(session, field, data.pop(key))
        data["session"] = session
        return data


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``, table by table (a file's ``[session.generation] temperature`` keeps a job's
    default ``max_tokens``)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    """``target["generation"]["max_tokens"] = value`` for ``"generation.max_tokens"``."""
    head, _, rest = dotted.partition(".")
    if not rest:
        target[head] = value
        return
    inner = target.get(head)
    if isinstance(inner, Config):
        inner = inner.model_dump(exclude_unset=True)
    inner = dict(inner or {})
    _set_path(inner, rest, value)
    target[head] = inner


class SolveConfig(SessionJob):
    """``procmem solve``: run the agent over a task suite and record every episode."""

    suite: str = Field(description="Task suite: 'rg:<dataset>?key=value&...' or a path to a JSONL task file.")
    n: int = Field(default=10, ge=1, description="How many tasks to take from the suite.")
    split: str = Field(default="train", pattern="^(train|test)$", description="Which split: train or test.")
