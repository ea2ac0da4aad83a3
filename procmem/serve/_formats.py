"""Readers of the JSON formats ``procmem import`` takes (besides OTLP, :mod:`procmem.serve._otlp`): OpenAI chat
JSONL, LiteLLM's StandardLoggingPayload and a Langfuse trace export. Each record becomes an
:class:`~procmem.serve.ingest.ImportItem` (a call and its feedback) or a located ProcmemError."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from procmem.core import ProcmemError, Task, utc_now
from procmem.serve.calllog import CallRecord, CallStatus
from procmem.serve.ingest import ImportItem, LineError, checked_feedback

__all__ = ["PASS_LABELS", "langfuse_items", "litellm_item", "make_call", "openai_item"]

_EPISODE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PASS_LABELS = frozenset({"pass", "passed", "correct", "good", "true", "yes", "1", "thumbs_up", "accept", "accepted"})
FAIL_LABELS = frozenset({"fail", "failed", "incorrect", "wrong", "bad", "false", "no", "0", "thumbs_down", "reject",
                         "rejected"})


def stable_id(prefix: str, *parts: Any) -> str:
    """A deterministic episode id from a record's content (re-importing it gives the same id)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:24]}"


def episode_id_of(value: Any, where: str, what: str) -> str:
    text = str(value).strip()
    if not _EPISODE_ID.match(text):
        raise ProcmemError(f"bad {what} {text[:40]!r}", where=where,
                           fix="use 1-128 characters from A-Z a-z 0-9 . _ : -")
    return text


def checked_verifier(spec: Any, where: str) -> str:
    """A verifier spec checked as the gateway checks ``metadata.procmem_verifier``."""
    if spec is None or spec == "":
        return ""
    if not isinstance(spec, str) or not spec.strip():
        raise ProcmemError("the verifier must be a spec string", where=where, fix="e.g. 'numeric:42' or 'exact:Paris'")
    from procmem.verifiers import build_verifier

    try:
        build_verifier(Task(id="check", prompt="", verifier=spec.strip()))
    except ProcmemError as err:
        raise ProcmemError(f"verifier: {err.message}", where=where, fix=err.fix or "use a spec such as numeric:42"
                           ) from err
    return spec.strip()


def make_call(episode_id: str, messages: list[dict[str, Any]], response: str, *, model: str, source: str,
              usage: Mapping[str, Any] | None = None, started_at: str | None = None, finished_at: str | None = None,
              finish_reason: str = "stop", session_id: str | None = None, user: str | None = None,
              metadata: Mapping[str, Any] | None = None, verifier: str = "", verdict: dict[str, Any] | None = None,
              adapter_version: str | None = None, memory_ids: tuple[str, ...] = (), task_id: str | None = None,
              trace: str = "", status: CallStatus = "complete", latency_ms: float = 0.0) -> CallRecord:
    """A call log record for a call made elsewhere (tenant and redaction are the :class:`Ingest`'s)."""
    prompt_tokens = int((usage or {}).get("prompt_tokens") or 0)
    completion_tokens = int((usage or {}).get("completion_tokens") or 0)
    finished = finished_at or started_at or utc_now()
    return CallRecord(
        id=episode_id, tenant="", status=status, model_id=model or "unknown",
        adapter_version=None if adapter_version in (None, "", "base") else adapter_version, messages=messages,
        prompt=json.dumps(messages, ensure_ascii=False), response=response, finish_reason=finish_reason or "stop",
        usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
               "total_tokens": prompt_tokens + completion_tokens},
        latency_ms=latency_ms, started_at=started_at or finished, finished_at=finished, session_id=session_id,
        task_id=task_id, user=user, metadata={"procmem_source": source, **dict(metadata or {})},
        memory_ids=tuple(memory_ids), verifier=verifier, verdict=verdict, trace=trace)


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ProcmemError("messages must be a non-empty list of {role, content} objects", where=where,
                           fix='e.g. [{"role": "user", "content": "What is 2 + 2?"}]')
    out = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ProcmemError(f"messages[{index}] is not a {{role, content}} object", where=where,
                               fix="give each message a role and a content")
        out.append({k: v for k, v in message.items() if k in ("role", "content", "name", "tool_calls",
                                                              "tool_call_id")})
    return out


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def _iso(value: Any) -> str | None:
    """An epoch number or a date string as procmem's ISO-8601 UTC."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (int, float)):
            moment = datetime.fromtimestamp(float(value), tz=timezone.utc)
        else:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00").replace(" ", "T", 1))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError):
        return None


def _feedback_of(data: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    """The feedback fields of an OpenAI-format line (``feedback``: {...}, or passed/score/correction at the top)."""
    given = data.get("feedback")
    if given is None:
        given = {k: data[k] for k in ("passed", "score", "correction", "comment") if data.get(k) is not None}
        if not any(k in given for k in ("passed", "score", "correction")):
            return None
    if not isinstance(given, dict):
        raise ProcmemError("feedback must be an object", where=where,
                           fix='e.g. "feedback": {"passed": true} or {"score": 0.0, "correction": "4"}')
    return checked_feedback({k: v for k, v in given.items() if k != "id"}, where)


# --- OpenAI chat JSONL ----------------------------------------------------------------------------

def openai_item(data: Any, where: str) -> ImportItem:
    """One line of OpenAI-format chat JSONL: ``messages`` (the answer is the last assistant message, or
    ``response``), and optionally ``id``, ``model``, ``feedback`` (or ``passed``/``score``/``correction``),
    ``verifier``, ``session_id``, ``metadata``."""
    if not isinstance(data, dict):
        raise ProcmemError("the line is not a JSON object", where=where, fix='write {"messages": [...]} per line')
    messages = _messages(data.get("messages"), where)
    response = data.get("response", data.get("completion"))
    if response is None:
        if messages[-1]["role"] != "assistant":
            raise ProcmemError("no answer: the last message is not the assistant's and there is no response field",
                               where=where, fix="end messages with the assistant's answer, or add \"response\"")
        response = _content_text(messages.pop()["content"])
    if not messages:
        raise ProcmemError("no question before the answer", where=where, fix="add the user's message")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ProcmemError("metadata must be an object", where=where, fix='e.g. "metadata": {"team": "support"}')
    episode = data.get("episode_id") or data.get("id")
    episode_id = episode_id_of(episode, where, "id") if episode else stable_id("oai", messages, response)
    feedback = _feedback_of(data, where)
    verifier = checked_verifier(data.get("verifier") or metadata.get("procmem_verifier"), where)
    call = make_call(episode_id, messages, _content_text(response), model=str(data.get("model") or "unknown"),
                     source="openai", usage=data.get("usage") if isinstance(data.get("usage"), dict) else None,
                     started_at=_iso(data.get("created_at") or data.get("created") or data.get("timestamp")),
                     session_id=data.get("session_id") or metadata.get("session_id"), user=data.get("user"),
                     metadata={k: v for k, v in metadata.items() if k != "procmem_verifier"}, verifier=verifier)
    return ImportItem(call, ((f"{episode_id}:import", feedback),) if feedback else (), where)


# --- LiteLLM StandardLoggingPayload ---------------------------------------------------------------

def litellm_item(data: Any, where: str, extra_metadata: Mapping[str, Any] | None = None) -> ImportItem:
    """A LiteLLM ``StandardLoggingPayload`` (or ``{"standard_logging_object": ...}``). procmem reads its own keys
    from the request metadata (``metadata`` in the SDK, ``requester_metadata`` behind the proxy):
    ``procmem_episode_id`` (else the response id), ``procmem_verifier``, ``procmem_feedback`` and
    ``procmem_session_id``."""
    if isinstance(data, dict) and isinstance(data.get("standard_logging_object"), dict):
        data = data["standard_logging_object"]
    if not isinstance(data, dict):
        raise ProcmemError("the line is not a StandardLoggingPayload object", where=where,
                           fix="log with a LiteLLM logger that writes the standard logging payload")
    status = data.get("status", "success")
    if status != "success":
        raise ProcmemError(f"the call did not succeed (status {status!r}): not imported", where=where,
                           fix="only successful calls become calls and episodes")
    metadata: dict[str, Any] = {}
    logged: dict[str, Any] = data["metadata"] if isinstance(data.get("metadata"), dict) else {}
    for source in (logged.get("spend_logs_metadata"), logged.get("requester_metadata"), extra_metadata):
        if isinstance(source, Mapping):
            metadata.update({k: v for k, v in source.items() if isinstance(k, str)})
    raw = data.get("messages")
    if isinstance(raw, str):
        messages = [{"role": "user", "content": raw}]
    elif isinstance(raw, dict):
        messages = _messages(raw.get("messages", [raw]), where)
    else:
        messages = _messages(raw, where)
    response, finish = _litellm_response(data.get("response"), where)
    episode = metadata.get("procmem_episode_id") or data.get("id") or data.get("litellm_call_id")
    if not episode:
        raise ProcmemError("the payload has no id", where=where, fix="log payloads with their id or litellm_call_id")
    episode_id = episode_id_of(episode, where, "episode id")
    feedback = metadata.get("procmem_feedback")
    checked = None
    if feedback is not None:
        if not isinstance(feedback, dict):
            raise ProcmemError("procmem_feedback must be an object", where=where, fix='e.g. {"passed": true}')
        checked = checked_feedback(feedback, where)
    start, end = _iso(data.get("startTime")), _iso(data.get("endTime"))
    latency = 0.0
    if isinstance(data.get("startTime"), (int, float)) and isinstance(data.get("endTime"), (int, float)):
        latency = round((float(data["endTime"]) - float(data["startTime"])) * 1000, 3)
    keep = {k: v for k, v in metadata.items() if not k.startswith("procmem_") and _plain(v)}
    call = make_call(episode_id, messages, response, model=str(data.get("model") or data.get("model_group") or ""),
                     source="litellm", usage={"prompt_tokens": data.get("prompt_tokens"),
                                              "completion_tokens": data.get("completion_tokens")},
                     started_at=start, finished_at=end, finish_reason=finish,
                     session_id=metadata.get("procmem_session_id") or data.get("session_id") or None,
                     user=data.get("end_user") or None,
                     metadata={**keep, "litellm_call_id": data.get("litellm_call_id"),
                               "model_group": data.get("model_group")},
                     verifier=checked_verifier(metadata.get("procmem_verifier"), where), latency_ms=latency)
    return ImportItem(call, ((f"{episode_id}:litellm", checked),) if checked else (), where)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _litellm_response(value: Any, where: str) -> tuple[str, str]:
    if isinstance(value, str):
        return value, "stop"
    if isinstance(value, dict):
        choices = value.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            message = choice.get("message") or {}
            text = _content_text(message.get("content") if isinstance(message, dict) else None)
            if not text and "text" in choice:
                text = str(choice["text"])
            return text, str(choice.get("finish_reason") or "stop")
    raise ProcmemError("the payload has no response to import", where=where,
                       fix="only chat or text completions (with a response) are imported")


# --- Langfuse -------------------------------------------------------------------------------------

def _get(data: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` present (Langfuse's API is camelCase, its blob exports snake_case)."""
    for name in names:
        if data.get(name) is not None:
            return data[name]
    return None


def _is_score(data: Mapping[str, Any]) -> bool:
    return _get(data, "traceId", "trace_id") is not None and "name" in data and "input" not in data and (
        "value" in data or "stringValue" in data or "string_value" in data)


def _is_observation(data: Mapping[str, Any]) -> bool:
    return _get(data, "traceId", "trace_id") is not None and str(data.get("type", "")).upper() in (
        "GENERATION", "SPAN", "EVENT", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EMBEDDING", "EVALUATOR", "GUARDRAIL")


def langfuse_items(records: Iterable[tuple[str, Any]]) -> Iterator[ImportItem | LineError]:
    """Traces of a Langfuse export (the public API's trace objects, with ``scores`` and ``observations``, or the
    blob export's trace, observation and score rows, in any order), each with its scores as feedback."""
    traces: list[tuple[str, dict[str, Any]]] = []
    scores: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    observations: dict[str, list[dict[str, Any]]] = {}
    for where, value in records:
        if isinstance(value, LineError):
            yield value
        elif not isinstance(value, dict) or (not value.get("id") and not _is_score(value)):
            yield LineError(where, "not a Langfuse trace, observation or score object",
                            "export traces from Langfuse as JSON or JSONL")
        elif _is_score(value):
            scores.setdefault(str(_get(value, "traceId", "trace_id")), []).append((where, value))
        elif _is_observation(value):
            observations.setdefault(str(_get(value, "traceId", "trace_id")), []).append(value)
        else:
            traces.append((where, value))
    for where, trace in traces:
        trace_id = str(trace["id"])
        try:
            yield _langfuse_item(trace, where, [*((where, s) for s in trace.get("scores") or ()
                                                  if isinstance(s, dict)), *scores.get(trace_id, [])],
                                 [*(o for o in trace.get("observations") or () if isinstance(o, dict)),
                                  *observations.get(trace_id, [])])
        except ProcmemError as err:
            yield LineError(where, err.message, err.fix or "")


def _langfuse_item(trace: dict[str, Any], where: str, scores: list[tuple[str, dict[str, Any]]],
                   observations: list[dict[str, Any]]) -> ImportItem:
    trace_id = str(trace["id"])
    generation = next((o for o in sorted(observations, key=lambda o: str(_get(o, "startTime", "start_time") or ""))
                       if str(o.get("type", "")).upper() == "GENERATION"), None)
    messages = _lf_messages(trace.get("input"))
    if messages is None and generation is not None:
        messages = _lf_messages(generation.get("input"))
    if not messages:
        raise ProcmemError(f"trace {trace_id} has no input to import", where=where,
                           fix="export traces with their input (a string, messages, or {messages: [...]})")
    response = _lf_text(trace.get("output"))
    if response is None and generation is not None:
        response = _lf_text(generation.get("output"))
    if response is None:
        raise ProcmemError(f"trace {trace_id} has no output to import", where=where,
                           fix="export traces with their output")
    usage: dict[str, Any] = {}
    model = ""
    if generation is not None:
        model = str(generation.get("model") or "")
        details = _get(generation, "usageDetails", "usage_details", "usage") or {}
        if isinstance(details, dict):
            usage = {"prompt_tokens": _get(details, "input", "promptTokens", "prompt_tokens", "input_tokens"),
                     "completion_tokens": _get(details, "output", "completionTokens", "completion_tokens",
                                               "output_tokens")}
    metadata: dict[str, Any] = trace["metadata"] if isinstance(trace.get("metadata"), dict) else {}
    feedback = []
    for score_where, score in scores:
        body = _score_feedback(score, score_where)
        feedback.append((str(score.get("id") or f"{trace_id}:{score.get('name')}"), body))
    episode_id = trace_id if _EPISODE_ID.match(trace_id) else stable_id("lf", trace_id)
    call = make_call(episode_id, messages, response, model=model or str(metadata.get("model") or "unknown"),
                     source="langfuse", usage=usage, started_at=_iso(trace.get("timestamp")),
                     session_id=_get(trace, "sessionId", "session_id"), user=_get(trace, "userId", "user_id"),
                     metadata={"langfuse_trace_id": trace_id, "trace_name": trace.get("name"),
                               "release": trace.get("release"), "tags": list(trace.get("tags") or [])},
                     verifier=checked_verifier(metadata.get("procmem_verifier"), where))
    return ImportItem(call, tuple(feedback), where)


def _lf_messages(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        if isinstance(value.get("messages"), list):
            value = value["messages"]
        elif "role" in value and "content" in value:
            value = [value]
        elif isinstance(value.get("input"), str):
            return [{"role": "user", "content": value["input"]}]
        else:
            return None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return [{"role": str(m["role"]), "content": _content_text(m.get("content"))} for m in value]
    return None


def _lf_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "content" in value:
            return _content_text(value["content"])
        choices = value.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            message = choices[0].get("message") or {}
            return _content_text(message.get("content")) if isinstance(message, dict) else None
        for key in ("output", "text", "answer", "completion"):
            if isinstance(value.get(key), str):
                return str(value[key])
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return _content_text(value[-1]["content"])
    return None


def _score_feedback(score: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A Langfuse score as feedback: BOOLEAN as passed, NUMERIC in 0..1 as score (1.0 passes), CATEGORICAL by its
    label (pass/fail words); ANNOTATION scores count as a human's, EVAL as a verifier's."""
    name = str(score.get("name") or "score")
    kind = str(_get(score, "dataType", "data_type") or "").upper()
    value = score.get("value")
    label = _get(score, "stringValue", "string_value")
    body: dict[str, Any] = {"comment": str(score.get("comment") or ""),
                            "source": {"ANNOTATION": "human", "EVAL": "verifier"}.get(
                                str(score.get("source") or "").upper(), "user")}
    if kind == "BOOLEAN" or (not kind and isinstance(value, bool)):
        if label is not None and str(label).lower() in PASS_LABELS | FAIL_LABELS:
            body["passed"] = str(label).lower() in PASS_LABELS
        else:
            body["passed"] = bool(value)
    elif kind == "CATEGORICAL" or (not kind and value is None and label is not None):
        text = str(label or "").strip().lower()
        if text not in PASS_LABELS | FAIL_LABELS:
            raise ProcmemError(f"categorical score {name!r} = {label!r} is neither a pass nor a fail label",
                               where=where, fix=f"use one of {sorted(PASS_LABELS)} or {sorted(FAIL_LABELS)}")
        body["passed"] = text in PASS_LABELS
    else:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ProcmemError(f"score {name!r} has no numeric value", where=where,
                               fix="give it a value (0..1), or a BOOLEAN/CATEGORICAL data type") from None
        if not 0.0 <= number <= 1.0:
            raise ProcmemError(f"score {name!r} = {number} is outside 0..1", where=where,
                               fix="scale numeric scores to 0..1 (1.0 counts as a pass), or use a BOOLEAN score")
        body["score"] = number
    return checked_feedback(body, where)
