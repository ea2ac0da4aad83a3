"""Where distillation keeps its state: run directories with their typed ``run.json``, and the watermark.

Every run lives in ``<home>/distill/runs/<run_id>/``: ``run.json`` (a :class:`RunState`: the stage it
reached), ``episodes.jsonl`` (the episodes it trains on) and each stage's output. The watermark
(``<home>/distill/watermark.json``) holds the episode ids of the last finished run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from procmem.core import Episode, Home, new_id, utc_now
from procmem.core.fileio import read_json, write_json, write_jsonl
from procmem.distill.config import DistillConfig

__all__ = [
    "RunStage",
    "RunState",
    "distill_dir",
    "finish_run",
    "latest_run_dir",
    "new_episode_count",
    "new_run",
    "read_state",
    "unfinished_run",
    "update_state",
]

RunStage = Literal["collected", "traced", "trained", "gated", "registered", "done", "abandoned"]
"""How far a run got: each stage's output is on disk once the run reaches it."""


class RunState(BaseModel):
    """``run.json``: what a run is and how far it got."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="The run id: its directory's name.")
    stage: RunStage = Field(description="The last stage completed.")
    created_at: str = Field(description="When the run started (ISO-8601 UTC).")
    updated_at: str | None = Field(default=None, description="When run.json last changed.")
    config: dict[str, Any] = Field(description="The DistillConfig it runs with, as JSON: a run resumes only under "
                                               "the same settings (compared as JSON, so older configs still load).")
    new_episodes: int = Field(description="Episodes not seen by the previous finished run.")
    episodes: int = Field(description="Train episodes the run trains on.")
    version: str | None = Field(default=None, description="The adapter version it registered.")
    error: str | None = Field(default=None, description="Why it last stopped, if it failed.")
    failed_at: str | None = Field(default=None, description="When it last failed.")


def distill_dir(home: Home) -> Path:
    return home.root / "distill"


def _runs(home: Home) -> Path:
    return distill_dir(home) / "runs"


def read_state(run: Path) -> RunState:
    return RunState.model_validate(read_json(run / "run.json"))


def update_state(run: Path, **changes: Any) -> RunState:
    """Write ``changes`` (validated) into ``run.json``, atomically."""
    state = RunState.model_validate({**read_state(run).model_dump(), **changes, "updated_at": utc_now()})
    write_json(run / "run.json", state.model_dump(mode="json"))
    return state


def new_run(home: Home, config: DistillConfig, episodes: Sequence[Episode], new: int) -> Path:
    """A fresh run directory holding ``episodes``, at stage ``collected``."""
    run = _runs(home) / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{new_id()[:6]}"
    run.mkdir(parents=True)
    write_jsonl(run / "episodes.jsonl", (e.to_dict() for e in episodes))
    state = RunState(id=run.name, stage="collected", created_at=utc_now(), config=config.model_dump(mode="json"),
                     new_episodes=new, episodes=len(episodes))
    write_json(run / "run.json", state.model_dump(mode="json", exclude_none=True))
    return run


def unfinished_run(home: Home, config: DistillConfig) -> Path | None:
    """The newest run not yet done; abandoned if it was started with other settings."""
    for run in sorted(_run_dirs(home), key=lambda r: read_state(r).created_at, reverse=True):
        state = read_state(run)
        if state.stage in ("done", "abandoned"):
            continue
        if state.config == config.model_dump(mode="json"):
            return run
        update_state(run, stage="abandoned")
    return None


def latest_run_dir(home: Home, *, with_traces: bool = False) -> Path | None:
    """The most recent run directory (optionally: the most recent one whose traces are built)."""
    for run in sorted(_run_dirs(home), key=lambda r: (read_state(r).created_at, r.name), reverse=True):
        if not with_traces or (run / "traces" / "traces.jsonl").exists():
            return run
    return None


def _run_dirs(home: Home) -> list[Path]:
    return [path.parent for path in _runs(home).glob("*/run.json")]


def _watermark_path(home: Home) -> Path:
    return distill_dir(home) / "watermark.json"


def new_episode_count(home: Home, episodes: Sequence[Episode]) -> int:
    """How many of ``episodes`` the last finished run did not see."""
    path = _watermark_path(home)
    seen = set(read_json(path)["episode_ids"]) if path.exists() else set()
    return sum(e.id not in seen for e in episodes)


def finish_run(home: Home, run: Path, episodes: Sequence[Episode]) -> None:
    """Advance the watermark to this run's episodes, then mark the run done."""
    write_json(_watermark_path(home), {"episode_ids": sorted(e.id for e in episodes), "run_id": run.name,
                                       "updated_at": utc_now()})
    update_state(run, stage="done", error=None)
