"""From the call log to procedural memory: which calls are verified, and the episode each one becomes.

A call is **verified** when it has feedback (a score, passed/failed, or a correction) or a verifier's verdict
(``metadata.procmem_verifier``). Only verified calls become memory episodes; the rest stay in the call log
only, so they never become worked examples, insights, patterns or training data.

The episode's task is the conversation as one question (:func:`~procmem.serve.prompting.chat_question`), in the
``serve`` suite and the train split. Its attempts are the model's answer with the latest judgement of it, then,
when a correction was sent, the correction as a passing attempt marked ``details.correction``. Its
verifier is the request's own, else ``exact:<correction>``, else ``exact:<answer>`` for an answer judged
right, else :data:`NO_KNOWN_ANSWER` (nothing is known to pass).
"""

from __future__ import annotations

from collections.abc import Sequence

from procmem.core import Attempt, Episode, Task, Verdict
from procmem.serve.calllog import CallRecord, FeedbackRecord
from procmem.serve.prompting import chat_question
from procmem.serve.protocol import ChatMessage

__all__ = ["NO_KNOWN_ANSWER", "SERVE_SUITE", "memory_episode", "serve_task"]

SERVE_SUITE = "serve"
NO_KNOWN_ANSWER = "regex:(?!)"
"""The verifier of a call judged wrong without a correction: a pattern that matches nothing."""


def serve_task(call: CallRecord, verifier: str = "") -> Task:
    """The task a call answered."""
    messages = [ChatMessage.model_validate(m) for m in call.messages]
    metadata = {"source": "serve", "tenant": call.tenant, "session_id": call.session_id, "user": call.user}
    return Task(id=call.task_id or call.id, prompt=chat_question(messages), verifier=verifier or call.verifier,
                suite=SERVE_SUITE, split="train", metadata={k: v for k, v in metadata.items() if v is not None})


def memory_episode(call: CallRecord, feedback: Sequence[FeedbackRecord]) -> Episode | None:
    """The memory episode of a verified call, or None while it is unverified (or did not complete)."""
    if call.status != "complete":
        return None
    judged = [f.body for f in feedback if f.body.get("passed") is not None or f.body.get("score") is not None]
    corrections = [f.body for f in feedback if f.body.get("correction")]
    if not judged and not corrections and call.verdict is None:
        return None
    answer = call.response.strip()
    if judged:
        last = judged[-1]
        passed = bool(last["passed"]) if last.get("passed") is not None else float(last["score"]) >= 1.0
        score = float(last["score"]) if last.get("score") is not None else float(passed)
        verdict = Verdict(passed=passed, score=score, feedback=str(last.get("comment") or ""),
                          details={"source": str(last.get("source") or "user")})
    elif call.verdict is not None:
        verdict = Verdict.from_dict(call.verdict)
    else:  # only a correction: the answer it corrects was wrong
        verdict = Verdict(passed=False, score=0.0, feedback=str(corrections[-1].get("comment") or "corrected"),
                          details={"source": str(corrections[-1].get("source") or "user")})
    tokens = call.usage
    attempts = [Attempt(answer, verdict, int(tokens.get("prompt_tokens", 0)), int(tokens.get("completion_tokens", 0)))]
    spec = call.verifier
    if corrections:
        correction = str(corrections[-1]["correction"]).strip()
        source = str(corrections[-1].get("source") or "user")
        attempts.append(Attempt(correction, Verdict(passed=True, score=1.0, feedback="",
                                                    details={"correction": True, "source": source})))
        spec = spec or f"exact:{correction}"
    elif verdict.passed:
        spec = spec or f"exact:{answer}"
    return Episode(task=serve_task(call, spec or NO_KNOWN_ANSWER), attempts=tuple(attempts), model_id=call.model_id,
                   adapter_version=call.adapter_version, memory_ids=call.memory_ids, id=call.id,
                   started_at=call.started_at, finished_at=call.finished_at)
