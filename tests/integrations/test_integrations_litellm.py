"""The LiteLLM callback: a LiteLLM ``Router`` with ``mock_response`` (LiteLLM's own test facility) records every call
through :class:`procmem.integrations.litellm.ProcmemLogger`; a verifier named in the metadata judges at once, and
feedback attaches later by episode id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest

from procmem.core import Home
from procmem.integrations.litellm import ProcmemLogger
from procmem.memory import open_memory
from procmem.serve.calllog import CallLog, calls_path


@pytest.fixture
def logger(tmp_path: Path) -> Iterator[ProcmemLogger]:
    saved = litellm.callbacks
    logger = ProcmemLogger(tmp_path / "home")
    litellm.callbacks = [logger]
    try:
        yield logger
    finally:
        litellm.callbacks = saved
        logger.close()


def _router() -> litellm.Router:
    return litellm.Router(model_list=[{"model_name": "gpt-x", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_key": "sk-fake", "mock_response": "42"}}])


def _calls(home: Path) -> int:
    log = CallLog(calls_path(Home(home)))
    try:
        return log.count("default")
    finally:
        log.close()


def _episodes(home: Path) -> dict[str, Any]:
    memory = open_memory(Home(home).chroma)
    try:
        return {e.id: e for e in memory.episodes()}
    finally:
        memory.close()


def _wait(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_router_calls_are_recorded_and_feedback_attaches(logger: ProcmemLogger, tmp_path: Path) -> None:
    home = tmp_path / "home"
    router = _router()
    judged = router.completion(model="gpt-x", messages=[{"role": "user", "content": "What is 40 + 2?"}],
                               metadata={"procmem_verifier": "numeric:42"})

    async def later() -> Any:
        reply = await router.acompletion(model="gpt-x", messages=[{"role": "user", "content": "What is 2 + 2?"}],
                                         metadata={"procmem_episode_id": "mine-1", "procmem_session_id": "s9"})
        deadline = time.monotonic() + 60
        while _calls(home) < 2 and time.monotonic() < deadline:  # LiteLLM logs async calls in a task of this loop
            await asyncio.sleep(0.1)
        return reply

    asyncio.run(later())
    router.completion(model="gpt-x", messages=[{"role": "user", "content": "Say hi."}])
    _wait(lambda: _calls(home) == 3)
    logger.flush()
    assert set(_episodes(home)) == {judged.id}  # only the call with a verifier is verified so far
    assert _episodes(home)[judged.id].passed and logger.errors == 0

    reply = logger.feedback("mine-1", passed=False, correction="4", comment="2 + 2 is 4", feedback_id="fb-1")
    assert reply == {"id": "fb-1", "episode_id": "mine-1", "duplicate": False, "attached": True}
    assert logger.feedback("mine-1", passed=True, feedback_id="fb-1")["duplicate"] is True
    logger.flush()
    episode = _episodes(home)["mine-1"]
    assert [(a.answer, a.verdict.passed) for a in episode.attempts] == [("42", False), ("4", True)]
    assert episode.task.metadata["session_id"] == "s9" and episode.task.metadata["source"] == "litellm"
    assert episode.model_id == "openai/gpt-4o-mini"


def test_bad_feedback_is_refused_with_the_field(logger: ProcmemLogger) -> None:
    from procmem.core import ProcmemError

    with pytest.raises(ProcmemError, match="score"):
        logger.feedback("any", score=3.0)


def test_the_proxy_config_line_names_the_logger() -> None:
    from litellm.proxy.types_utils.utils import get_instance_fn

    from procmem.integrations.litellm import procmem_logger

    assert get_instance_fn("procmem.integrations.litellm.procmem_logger") is procmem_logger
