"""The shared core every package may import: value types, configs, errors, the data home and the
prompt format. It imports nothing else from procmem."""

from procmem.core.config import (
    Config,
    GenerationConfig,
    SolveConfig,
    config_from_flags,
    generation_for,
    load_config,
)
from procmem.core.errors import ProcmemError
from procmem.core.home import Home
from procmem.core.prompts import PriorAttempt, extract_answer, render_completion, render_prompt
from procmem.core.redact import RedactingFilter, install_log_redaction, redact, redact_obj
from procmem.core.types import AnswerFormat, Attempt, Episode, Split, Task, Verdict, new_id, utc_now

__all__ = [
    "AnswerFormat",
    "Attempt",
    "Config",
    "Episode",
    "GenerationConfig",
    "Home",
    "PriorAttempt",
    "ProcmemError",
    "RedactingFilter",
    "SolveConfig",
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
