"""The session: one model, memory and recorder wired once, served per request and per batch."""

from __future__ import annotations

import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from procmem.agent import AgentSession, SessionConfig, initial_state
from procmem.core import Attempt, GenerationConfig, Home, ProcmemError, Task, Verdict
from procmem.memory import open_memory

SETTINGS = SessionConfig(attempts=2, generation=GenerationConfig(max_tokens=6), concurrency=4)
KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"


def _task(i: int, verifier: str = "exact:this answer is never produced") -> Task:
    return Task(id=f"s{i}", prompt=f"What is {i} + {i}?", verifier=verifier, suite="unit")


def test_answer_judges_records_and_a_chat_question_is_only_answered(spy: Any, home: Home) -> None:
    memory = open_memory(home.chroma)
    with AgentSession(spy, SETTINGS, memory=memory) as session:
        judged = session.answer(_task(1))
        assert judged.episode is not None and len(judged.episode.attempts) == 2
        assert memory.get(judged.episode.id) == judged.episode
        assert judged.episode.model_id == spy.model_id
        chat = session.answer(Task(id="q", prompt="Hello?", verifier=""))
        assert chat.episode is None and isinstance(chat.answer, str)
    assert memory.stats()["experience"] == 1
    memory.close()


def test_requests_from_several_threads_share_one_model_and_are_batched(spy: Any, home: Home) -> None:
    memory = open_memory(home.chroma)
    with AgentSession(spy, SETTINGS.model_copy(update={"attempts": 1}), memory=memory) as session, \
            ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(session.answer, [_task(i, "regex:(?s).*") for i in range(8)]))
    assert all(r.episode is not None and r.episode.passed for r in replies)
    assert memory.stats()["experience"] == 8 and sum(spy.batch_sizes) == 8 and max(spy.batch_sizes) > 1
    memory.close()


def test_the_steps_of_one_request_retrieve_verify_and_record(spy: Any, home: Home) -> None:
    """The steps the gateway calls per request: retrieve (trusted for the answering policy), verify, record."""
    memory = open_memory(home.chroma)
    with AgentSession(spy, SETTINGS, memory=memory) as session:
        first = session.answer(_task(2, "regex:(?s).*")).episode
        assert first is not None
        found = session.retrieve(_task(3), session.policy)
        assert found.entry_ids == (first.id,) and "What is 2 + 2?" in found.text
        assert session.verify(_task(3, "numeric:6"), "6").passed
        assert not session.verify(_task(3, "numeric:6"), "Answer: 7").passed
        session.record(first)  # idempotent: the same episode is not stored twice
    assert memory.stats()["experience"] == 1
    memory.close()


def test_without_memory_nothing_is_retrieved_or_recorded(spy: Any) -> None:
    with AgentSession(spy, SETTINGS) as session:
        reply = session.answer(_task(4))
        assert reply.memory_ids == () and reply.episode is not None
        assert session.retrieve(_task(4)).text == ""
        with pytest.raises(ProcmemError, match="no memory to reflect on"):
            session.reflect()


def test_checkpoints_hold_typed_state_read_back_without_warnings(
    spy: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = sqlite3.connect(tmp_path / "threads.sqlite", check_same_thread=False)
    with AgentSession(spy, SETTINGS) as session, caplog.at_level(logging.WARNING):
        graph = session.graph(checkpointer=SqliteSaver(conn))
        config: Any = {"configurable": {"thread_id": "t"}}
        graph.invoke(initial_state(Task(id="k", prompt=f"My key is {KEY}. 1+1?", verifier="exact:nope")), config)
        values = graph.get_state(config).values
    conn.close()
    assert isinstance(values["task"], Task) and KEY not in values["task"].prompt  # redacted once, on the way in
    attempts = values["attempts"]
    assert len(attempts) == 2 and all(isinstance(a, Attempt) and isinstance(a.verdict, Verdict) for a in attempts)
    assert not attempts[-1].verdict.passed and values["episode"]["attempts"][-1] == attempts[-1].to_dict()
    assert "unregistered" not in caplog.text and "Blocked" not in caplog.text


def test_open_loads_the_model_and_the_homes_memory(home: Home, tiny_model_dir: Path) -> None:
    settings = SETTINGS.model_copy(update={"model": "local:tiny"})
    with AgentSession.open(settings, home) as session:
        reply = session.answer(_task(5))
        assert session.memory is not None and session.memory.stats()["experience"] == 1
        assert reply.episode is not None and reply.episode.model_id == "tiny"
