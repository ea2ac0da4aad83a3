from __future__ import annotations

import json

import pytest

from procmem.core import Attempt, Episode, Task, Verdict


def _episode() -> Episode:
    task = Task(id="t1", prompt="What is 2 + 2?", verifier="exact:4", suite="s", split="test",
                metadata={"k": [1, 2]})
    attempts = (Attempt("5", Verdict(False, 0.0, "expected a number")), Attempt("4", Verdict(True, 1.0)))
    return Episode(task=task, attempts=attempts, model_id="m", adapter_version="v2", memory_ids=("a", "b"))


def test_episode_round_trips_through_json() -> None:
    episode = _episode()
    assert Episode.from_dict(json.loads(json.dumps(episode.to_dict()))) == episode


def test_episode_passed_is_the_last_attempt_and_policy_version_names_the_adapter() -> None:
    episode = _episode()
    assert episode.passed
    assert episode.policy_version == "m@v2"
    failed = Episode(task=episode.task, attempts=episode.attempts[:1], model_id="m")
    assert not failed.passed
    assert failed.policy_version == "m@base"


@pytest.mark.parametrize("score", [-0.1, 1.5])
def test_verdict_rejects_scores_outside_unit_interval(score: float) -> None:
    with pytest.raises(ValueError, match="score"):
        Verdict(True, score)
