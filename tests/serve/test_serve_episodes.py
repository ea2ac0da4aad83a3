"""From the call log to memory and to distillation (the one feedback-to-episode rule, procmem.core.feedback):
what is verified, feedback order, corrections."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from procmem.agent.conversation import Message, chat_question, memory_allowed, with_memory
from procmem.core import Episode, GenerationConfig
from procmem.core.feedback import NO_KNOWN_ANSWER
from procmem.serve.calllog import CallLog, CallRecord
from procmem.serve.wiring import call_episode, call_task


def _call(episode_id: str = "e1", **changes: object) -> CallRecord:
    call = CallRecord(id=episode_id, tenant="default", status="complete", model_id="tiny", adapter_version="v1",
                      messages=[{"role": "user", "content": "What is 2 + 2?"}], prompt="Question: What is 2 + 2?\n"
                      "Answer:", response=" 5", finish_reason="stop", usage={"prompt_tokens": 9,
                      "completion_tokens": 2, "total_tokens": 11}, latency_ms=3.0, started_at="2026-01-01T00:00:00",
                      finished_at="2026-01-01T00:00:01", session_id="s")
    return replace(call, **changes)  # type: ignore[arg-type]


def memory_episode(call: CallRecord, log: CallLog) -> Episode | None:
    return call_episode(call, call_task(call), log.feedback(call.tenant, call.id), None)


def test_unverified_or_incomplete_calls_never_become_memory(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.sqlite")
    log.record(_call())
    assert memory_episode(_call(), log) is None
    log.add_feedback("default", "e1", "f", {"passed": False})
    assert memory_episode(_call(status="incomplete"), log) is None
    episode = memory_episode(_call(), log)
    assert episode is not None and not episode.passed and episode.task.verifier == NO_KNOWN_ANSWER


def test_feedback_before_its_episode_is_kept_and_attached_once(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.sqlite")
    assert log.add_feedback("default", "e1", "fb", {"correction": "4", "source": "human"})
    assert not log.add_feedback("default", "e1", "fb", {"correction": "5"})  # same id: nothing changes
    assert log.record(_call()) and not log.record(_call())
    assert log.pending() == [("default", "e1", 1)]
    episode = memory_episode(_call(), log)
    assert episode is not None and episode.passed and episode.adapter_version == "v1"
    assert [a.answer for a in episode.attempts] == ["5", "4"]
    assert episode.attempts[1].verdict.details["correction"] is True and episode.task.verifier == "exact:4"


class _FeedbackRacesPending(CallLog):
    """A call log where feedback lands on every call just after the memory worker has listed what is pending: the
    race a busy server runs (a client posts feedback as soon as its answer arrives)."""

    def pending(self, limit: int = 100) -> list[tuple[str, str, int]]:
        listed = super().pending(limit)
        for tenant, episode_id, _ in listed:
            self.add_feedback(tenant, episode_id, f"fb-{episode_id}", {"passed": True, "source": "user"})
        return listed


def test_the_memory_worker_writes_each_call_once_when_feedback_races_it(tmp_path: Path) -> None:
    from procmem.core import Home
    from procmem.serve.wiring import MemorySessions, MemoryWorker

    home = Home(tmp_path / "home").ensure()
    log = _FeedbackRacesPending(tmp_path / "calls.sqlite")
    for number in range(3):
        log.record(_call(f"e{number}", messages=[{"role": "user", "content": f"What is {number} + 2?"}]))
    written: list[int] = []
    sessions = MemorySessions(home)
    worker = MemoryWorker(log, sessions, on_written=lambda: written.append(1))
    try:
        assert worker.drain() == 3
        assert sum(written) == 3 and log.pending() == []  # marked at the revision it read: nothing to redo
        assert worker.drain() == 0 and sum(written) == 3
        memory = sessions.get("default").memory
        assert sorted(e.id for e in memory.episodes()) == ["e0", "e1", "e2"]
        assert all(e.passed for e in memory.episodes())  # each written with the feedback it raced
    finally:
        sessions.close()
        log.close()


def test_a_call_the_worker_cannot_judge_stays_pending_and_does_not_block_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A call logged with a verifier that is no longer installed (a plugin removed since) fails on every try: it is
    logged and left pending, and the calls after it are still written."""
    from procmem.core import Home
    from procmem.serve.wiring import MemorySessions, MemoryWorker

    home = Home(tmp_path / "home").ensure()
    log = CallLog(tmp_path / "calls.sqlite")
    log.record(_call("gone", verifier="removed-plugin:4"))
    log.record(_call("judged", verifier="numeric:4", finished_at="2026-01-01T00:00:02"))
    sessions = MemorySessions(home)
    try:
        worker = MemoryWorker(log, sessions)
        assert worker.drain() == 1
        assert log.pending() == [("default", "gone", 1)]
        assert "call gone" in caplog.text and "unknown verifier spec 'removed-plugin:4'" in caplog.text
        assert worker.drain() == 0 and caplog.text.count("call gone") == 1  # retried, logged once
        assert [e.id for e in sessions.get("default").memory.episodes()] == ["judged"]
    finally:
        sessions.close()
        log.close()


def test_distillation_trains_on_a_correction(tiny_model_dir: Path, tmp_path: Path) -> None:
    from procmem.distill import TraceConfig
    from procmem.distill.traces import build_traces, training_items
    from procmem.llm import LocalLLM
    from procmem.memory import NoMemory

    log = CallLog(tmp_path / "calls.sqlite")
    log.record(_call())
    log.add_feedback("default", "e1", "fb", {"correction": "4", "source": "human"})
    episode = memory_episode(_call(), log)
    assert episode is not None
    problems = training_items([episode])
    build = build_traces(problems, LocalLLM(tiny_model_dir), NoMemory(), TraceConfig(k=1, max_tokens=2))
    kept = [t for t in build.kept if t.teacher == "correction"]
    assert len(kept) == 1
    assert kept[0].prompt == "Question: What is 2 + 2?\nAnswer:" and kept[0].completion == " 4\n"


def test_memory_goes_in_the_system_message_only_after_a_user_turn() -> None:
    user, call, tool = Message("user", "hi"), Message("assistant", ""), Message("tool", "42")
    assert memory_allowed([user]) and not memory_allowed([user, call, tool]) and not memory_allowed([user, call])
    sent = with_memory([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                       "Question: a\nAnswer: b")
    assert len(sent) == 2 and sent[0]["content"].startswith("Be brief.\n\n<procmem-memory>\n")
    assert sent[0]["content"].endswith("</procmem-memory>") and sent[1] == {"role": "user", "content": "hi"}
    added = with_memory([{"role": "user", "content": "hi"}], "M")
    assert added[0] == {"role": "system", "content": "<procmem-memory>\nM\n</procmem-memory>"}


def test_a_conversation_becomes_the_agents_question_format() -> None:
    messages = [Message("system", "Be brief."), Message("user", "2+2?"), Message("assistant", "4"),
                Message("user", "and 3+3?")]
    assert chat_question(messages) == "Be brief.\n\n2+2?\nAnswer: 4\nQuestion: and 3+3?"
    assert GenerationConfig().stop == ("\n",)
