"""The shared core every package may import: value types, configs, errors, the data home and the
prompt format. It imports nothing else from procmem.

The configs (:mod:`procmem.core.config`, built on pydantic) load on first use, so that a command that
needs none of them (``procmem --help``) does not pay for pydantic.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from procmem.core.errors import ContextLengthError, ProcmemError
from procmem.core.home import Home
from procmem.core.prompts import PriorAttempt, extract_answer, render_completion, render_prompt
from procmem.core.redact import RedactingFilter, install_log_redaction, redact, redact_obj
from procmem.core.types import AnswerFormat, Attempt, Episode, Split, Task, Verdict, new_id, utc_now

if TYPE_CHECKING:
    from procmem.core.config import Config, GenerationConfig, config_from_flags, generation_for, load_config

__all__ = [
    "AnswerFormat",
    "Attempt",
    "Config",
    "ContextLengthError",
    "Episode",
    "GenerationConfig",
    "Home",
    "PriorAttempt",
    "ProcmemError",
    "RedactingFilter",
    "Split",
    "Task",
    "Verdict",
    "config_from_flags",
    "extract_answer",
    "generation_for",
    "install_log_redaction",
    "load_config",
    "new_id",
    "redact",
    "redact_obj",
    "render_completion",
    "render_prompt",
    "utc_now",
]

_LAZY = {name: "procmem.core.config" for name in
         ("Config", "GenerationConfig", "config_from_flags", "generation_for", "load_config")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
