"""Typed job configs, loadable from TOML with located errors.

Every field carries a help string (``Field(description=...)``), which the CLI and README reuse. The
configs shared by several jobs live here; each job's own config lives with its job (``SolveConfig`` in
:mod:`procmem.agent.config`, ``DistillConfig`` in :mod:`procmem.distill.config`, ``EvalConfig`` in
:mod:`procmem.eval.config`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from procmem.core.errors import ProcmemError
from procmem.core.types import Task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "GenerationConfig", "config_from_flags", "generation_for", "load_config"]

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every job config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class GenerationConfig(Config):
    """How a model decodes one request."""

    max_tokens: int = Field(default=48, ge=1, le=8192, description="Most new tokens per completion.")
    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="0 decodes greedily; above 0 samples.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (sampling only).")
    stop: tuple[str, ...] = Field(default=("\n",), description="Generation ends at the first of these strings.")
    seed: int | None = Field(default=None, description="Sampling seed; None leaves the generator as it is. Prompt i "
                                                       "of one generate call draws with seed + i, so copies of one "
                                                       "prompt in a call are sampled afresh, reproducibly.")
    grammar: str | None = Field(
        default=None,
        description="A GBNF grammar (llama.cpp's format, root rule `root`) the completion must follow; honoured by "
                    "engines whose `supports_grammar` is True (llama.cpp), refused by the others.")

    def for_prompt(self, index: int) -> GenerationConfig:
        """The config prompt ``index`` of one generate call decodes with: its own seed (``seed + index``) when
        sampling with a seed, so engines that seed each request's sampler do not draw one sample for every copy
        of a prompt (as a teacher asking for k candidates sends them)."""
        if self.seed is None or self.temperature <= 0 or index == 0:
            return self
        return self.model_copy(update={"seed": self.seed + index})


def generation_for(task: Task, base: GenerationConfig) -> GenerationConfig:
    """``base`` with the task's own decoding needs (``metadata["generation"]``, e.g. a code task's longer
    ``max_tokens`` and multi-line ``stop``) laid over it."""
    override = task.metadata.get("generation")
    if not override:
        return base
    try:
        return GenerationConfig.model_validate({**base.model_dump(), **dict(override)})
    except (ValidationError, TypeError) as err:
        raise ProcmemError(f"invalid metadata.generation: {err}", where=f"task {task.id}",
                           fix="use GenerationConfig keys: max_tokens, temperature, top_p, stop, seed") from err


def load_config(cls: type[C], path: str | Path, **overrides: object) -> C:
    """Load ``cls`` from a TOML file; ``overrides`` (e.g. CLI flags that were set) win over the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ProcmemError(f"cannot read config: {err.strerror}", where=str(path),
                           fix="pass an existing TOML file") from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = getattr(err, "lineno", None) or _line_from_message(str(err))
        raise ProcmemError(f"invalid TOML: {err}", where=f"{path}:{line}" if line else str(path),
                           fix="fix the TOML syntax at that line") from err
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        line = _line_of_key(text, str(first["loc"][-1])) if first["loc"] else None
        raise ProcmemError(f"{key}: {first['msg']}", where=f"{path}:{line}" if line else str(path),
                           fix=_field_help(cls, first["loc"]) if first["loc"] else None) from err


def config_from_flags(cls: type[C], flags: dict[str, object]) -> C:
    """``cls`` from command-line flags (those left unset are None and take the default); a bad value is
    reported against its flag, e.g. ``--split``, with the field's help."""
    try:
        return cls.model_validate({k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][-1]) if first["loc"] else ""  # a nested setting's flag is its own name
        flag = "--" + name.replace("_", "-") if name else "the command line"
        raise ProcmemError(f"{first['msg']} (got {first.get('input')!r})", where=flag,
                           fix=_field_help(cls, first["loc"]) if name else None) from err


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _line_of_key(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _field_help(cls: type[Config], loc: tuple[int | str, ...]) -> str | None:
    """The help of the setting at ``loc`` (``("session", "attempts")`` for a nested one)."""
    owner: Any = cls
    name, field = str(loc[0]), None
    for part in loc:
        fields = getattr(owner, "model_fields", {})
        if str(part) not in fields:
            break
        name, field = str(part), fields[str(part)]
        owner = field.annotation
    if field is None:
        return f"'{name}' is not a setting; valid ones: {', '.join(cls.model_fields)}"
    return f"{name}: {field.description}" if field.description else None
