"""Run directories: a typed run.json, the newest unfinished run resumed, the watermark."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from procmem.core import Attempt, Episode, Home, Task, Verdict
from procmem.distill import DistillConfig
from procmem.distill._storage import (
    RunState,
    finish_run,
    latest_run_dir,
    new_episode_count,
    new_run,
    read_state,
    unfinished_run,
    update_state,
)


def _episodes(n: int) -> list[Episode]:
    task = Task(id="t", prompt="q", verifier="exact:1")
    return [Episode(task=task, attempts=(Attempt("1", Verdict(True, 1.0)),), model_id="m", id=f"e{i}")
            for i in range(n)]


def test_a_run_moves_through_typed_stages_and_advances_the_watermark(home: Home) -> None:
    config = DistillConfig()
    episodes = _episodes(3)
    assert new_episode_count(home, episodes) == 3
    run = new_run(home, config, episodes, 3)
    state = read_state(run)
    assert isinstance(state, RunState) and state.stage == "collected" and state.episodes == 3
    assert unfinished_run(home, config) == run and latest_run_dir(home) == run
    assert update_state(run, stage="traced").stage == "traced"
    with pytest.raises(ValidationError):
        update_state(run, stage="half-done")
    assert json.loads((run / "run.json").read_text())["stage"] == "traced"  # the bad update wrote nothing

    finish_run(home, run, episodes)
    assert read_state(run).stage == "done" and unfinished_run(home, config) is None
    assert new_episode_count(home, [*episodes, *_episodes(5)[3:]]) == 2


def test_an_unfinished_run_with_other_settings_is_abandoned(home: Home) -> None:
    run = new_run(home, DistillConfig(), _episodes(1), 1)
    assert unfinished_run(home, DistillConfig(min_traces=5)) is None
    assert read_state(run).stage == "abandoned"
