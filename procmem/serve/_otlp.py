"""OTLP traces in: ExportTraceServiceRequests (protobuf, or OTLP/JSON with hex ids) to calls.

A call is a GenAI span (``gen_ai.operation.name`` chat, text_completion, generate_content or invoke_agent) with no
such span above it: procmem's own ``invoke_agent procmem`` request span, or another instrumentation's ``chat`` span.
Its conversation and answer come from ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (or the older
``gen_ai.*.message`` / ``gen_ai.choice`` events, or ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*`` attributes):
spans need content capture on. Its verdict comes from a ``procmem.verify`` span under it, its feedback from
``procmem.feedback`` spans linked to it or below it, and ``gen_ai.evaluation.result`` events of other tools.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procmem.core import ProcmemError
from procmem.core import telemetry as tm
from procmem.core.telemetry import messages_from_semconv, ns_iso
from procmem.serve._formats import FAIL_LABELS, PASS_LABELS, checked_verifier, episode_id_of, make_call
from procmem.serve.calllog import CallStatus
from procmem.serve.ingest import ImportItem, LineError, checked_feedback, read_records

__all__ = ["CALL_OPERATIONS", "decode_request", "items_from_file", "items_from_requests"]

CALL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "invoke_agent"})
_CAPTURE_FIX = f"turn on content capture where the spans are made ({tm.CAPTURE_CONTENT_ENV}=true)"


@dataclass
class _Span:
    trace_id: str
    span_id: str
    parent: str
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    links: list[str]
    error: bool
    where: str
    children: list[_Span] = field(default_factory=list)


def decode_request(body: bytes, content_type: str, where: str) -> Any:
    """An ExportTraceServiceRequest from an OTLP/HTTP body (protobuf or JSON, gzip or not); raises ProcmemError."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except OSError as err:
            raise ProcmemError(f"not gzip: {err}", where=where, fix="send gzip or plain bodies") from err
    if "json" in content_type:
        try:
            data = json.loads(body)
        except ValueError as err:
            raise ProcmemError(f"not JSON: {err}", where=where, fix="send OTLP/JSON") from err
        return request_from_json(data, where)
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as err:
        raise ProcmemError(f"not an OTLP ExportTraceServiceRequest: {err}", where=where,
                           fix="send OTLP protobuf (Content-Type: application/x-protobuf) or OTLP/JSON") from err
    return request


def request_from_json(data: Any, where: str) -> Any:
    """OTLP/JSON (ids in hex, as the OTLP spec encodes them) as an ExportTraceServiceRequest."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if not isinstance(data, dict) or not ("resourceSpans" in data or "resource_spans" in data):
        raise ProcmemError("not an OTLP/JSON ExportTraceServiceRequest (no resourceSpans)", where=where,
                           fix="export traces with an OTLP file exporter (JSON), one request per line or file")
    try:
        return json_format.ParseDict(_hex_ids_to_b64(data), ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError) as err:
        raise ProcmemError(f"bad OTLP/JSON: {err}", where=where, fix="check the file is OTLP/JSON") from err


def _hex_ids_to_b64(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id") and \
                    isinstance(item, str) and item and all(c in "0123456789abcdefABCDEF" for c in item):
                out[key] = base64.b64encode(bytes.fromhex(item)).decode()
            else:
                out[key] = _hex_ids_to_b64(item)
        return out
    if isinstance(value, list):
        return [_hex_ids_to_b64(v) for v in value]
    return value


def items_from_file(path: Path) -> Iterator[ImportItem | LineError]:
    """Every call in an OTLP file: protobuf (``.pb``: one request), or OTLP/JSON (one request, or one per line)."""
    requests: list[tuple[str, Any]] = []
    if path.suffix.lower() in (".pb", ".bin", ".protobuf", ".binpb"):
        try:
            requests.append((path.name, decode_request(path.read_bytes(), "application/x-protobuf", path.name)))
        except ProcmemError as err:
            yield LineError(path.name, err.message, err.fix or "")
            return
    else:
        for where, value in read_records(path):
            if isinstance(value, LineError):
                yield value
                continue
            try:
                requests.append((where, request_from_json(value, where)))
            except ProcmemError as err:
                yield LineError(where, err.message, err.fix or "")
    yield from items_from_requests(requests)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def _attrs(attributes: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in attributes}


def items_from_requests(requests: Iterable[tuple[str, Any]]) -> Iterator[ImportItem | LineError]:
    """Every call in ``requests`` (``(where, ExportTraceServiceRequest)``; a call's feedback may come in a later
    request than the call itself)."""
    spans: dict[tuple[str, str], _Span] = {}
    for where, request in requests:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    item = _Span(trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                                 parent=span.parent_span_id.hex(), name=span.name,
                                 start_ns=int(span.start_time_unix_nano), end_ns=int(span.end_time_unix_nano),
                                 attrs=_attrs(span.attributes),
                                 events=[(e.name, _attrs(e.attributes)) for e in span.events],
                                 links=[f"{link.trace_id.hex()}-{link.span_id.hex()}" for link in span.links],
                                 error=span.status.code == 2, where=f"{where}: span {span.span_id.hex()}")
                    spans[(item.trace_id, item.span_id)] = item
    for span in spans.values():
        parent = spans.get((span.trace_id, span.parent)) if span.parent else None
        if parent is not None:
            parent.children.append(span)
    linked: dict[str, list[_Span]] = {}
    for span in spans.values():
        for link in span.links:
            linked.setdefault(link, []).append(span)

    def is_call(span: _Span) -> bool:
        return str(span.attrs.get(tm.OPERATION, "")) in CALL_OPERATIONS

    def under_call(span: _Span) -> bool:
        seen = 0
        parent = spans.get((span.trace_id, span.parent)) if span.parent else None
        while parent is not None and seen < 1000:
            if is_call(parent):
                return True
            parent = spans.get((parent.trace_id, parent.parent)) if parent.parent else None
            seen += 1
        return False

    calls = sorted((s for s in spans.values() if is_call(s) and not under_call(s)), key=lambda s: s.start_ns)
    for span in calls:
        try:
            yield _call_item(span, linked.get(f"{span.trace_id}-{span.span_id}", []))
        except ProcmemError as err:
            yield LineError(err.where or span.where, err.message, err.fix or "")


def _descendants(span: _Span) -> Iterator[_Span]:
    stack = list(span.children)
    while stack:
        item = stack.pop()
        yield item
        stack.extend(item.children)


def _call_item(span: _Span, linked: list[_Span]) -> ImportItem:
    where = f"{span.where} ({span.name})"
    a = span.attrs
    below = list(_descendants(span))
    messages = _input_messages(span) or next((m for s in below if (m := _input_messages(s))), None)
    if not messages:
        raise ProcmemError("no captured input messages (gen_ai.input.messages)", where=where, fix=_CAPTURE_FIX)
    answer = _output(span) or next((o for s in below if (o := _output(s))), None)
    if answer is None:
        raise ProcmemError("no captured answer (gen_ai.output.messages)", where=where, fix=_CAPTURE_FIX)
    text, finish = answer
    reasons = a.get(tm.FINISH_REASONS)
    if isinstance(reasons, list) and reasons:
        finish = str(reasons[0])
    given = a.get(tm.EPISODE_ID)
    episode_id = episode_id_of(given, where, tm.EPISODE_ID) if given else f"otel-{span.trace_id}-{span.span_id}"
    verdict = None
    verifier = checked_verifier(a.get(tm.VERIFIER), where)
    verifies = sorted((s for s in below if s.name == tm.VERIFY_SPAN),
                      key=lambda s: (s.start_ns, s.attrs.get("procmem.attempt", 0)))
    if verifies and verifier:
        last = verifies[-1]
        explanation = next((str(e.get(tm.EVALUATION_EXPLANATION, "")) for n, e in last.events
                            if n == tm.EVALUATION_EVENT), "")
        verdict = {"passed": bool(last.attrs.get(tm.VERDICT_PASSED)),
                   "score": min(1.0, max(0.0, float(last.attrs.get(tm.VERDICT_SCORE) or 0.0))),
                   "feedback": explanation, "details": {}}
    feedback: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for item in sorted([*linked, *(s for s in below if s.name == tm.FEEDBACK_SPAN)], key=lambda s: s.start_ns):
        if item.name != tm.FEEDBACK_SPAN or item.span_id in seen:
            continue
        seen.add(item.span_id)
        feedback.append(_procmem_feedback(item))
    for owner in (span, *below):
        for index, (name, event) in enumerate(owner.events):
            if name == tm.EVALUATION_EVENT and not str(event.get(tm.EVALUATION_NAME, "")).startswith("procmem."):
                body = _evaluation_feedback(event, f"{owner.where} event {index}")
                if body is not None:
                    feedback.append((f"otel:{owner.span_id}:{index}", body))
    model = str(a.get(tm.RESPONSE_MODEL) or a.get(tm.REQUEST_MODEL) or "unknown")
    usage = {"prompt_tokens": a.get(tm.INPUT_TOKENS, a.get("gen_ai.usage.prompt_tokens")),
             "completion_tokens": a.get(tm.OUTPUT_TOKENS, a.get("gen_ai.usage.completion_tokens"))}
    memory = a.get(tm.MEMORY_IDS)
    status: CallStatus = "error" if span.error or a.get(tm.CALL_STATUS) == "error" else \
        "incomplete" if a.get(tm.CALL_STATUS) == "incomplete" else "complete"
    traceparent = f"00-{span.trace_id}-{span.span_id}-01"
    call = make_call(episode_id, messages, text, model=model, source="otlp", usage=usage,
                     started_at=ns_iso(span.start_ns), finished_at=ns_iso(span.end_ns), finish_reason=finish,
                     session_id=a.get(tm.CONVERSATION_ID), metadata={"otel_trace_id": span.trace_id},
                     verifier=verifier, verdict=verdict, adapter_version=a.get(tm.ADAPTER_VERSION),
                     memory_ids=tuple(str(m) for m in memory) if isinstance(memory, list) else (),
                     task_id=str(a[tm.TASK_ID]) if a.get(tm.TASK_ID) and a.get(tm.TASK_ID) != episode_id else None,
                     trace=traceparent, status=status,
                     latency_ms=round((span.end_ns - span.start_ns) / 1e6, 3))
    return ImportItem(call, tuple(feedback), where)


def _semconv_messages(span: _Span, attribute: str) -> list[dict[str, Any]]:
    """The messages of a GenAI conventions' JSON attribute (input or output), or a located error."""
    try:
        return messages_from_semconv(span.attrs[attribute])
    except ValueError as err:
        raise ProcmemError(f"bad {attribute}: {err}", where=span.where,
                           fix="record the messages as the GenAI conventions' JSON") from err


def _input_messages(span: _Span) -> list[dict[str, Any]] | None:
    a = span.attrs
    if a.get(tm.INPUT_MESSAGES):
        messages = _semconv_messages(span, tm.INPUT_MESSAGES)
        return [{"role": m["role"], "content": m["content"]} for m in messages] or None
    events = [(n, e) for n, e in span.events if n in ("gen_ai.system.message", "gen_ai.user.message",
                                                        "gen_ai.assistant.message", "gen_ai.tool.message")]
    if events:
        return [{"role": str(e.get("role") or n.split(".")[1]), "content": str(e.get("content", ""))}
                for n, e in events]
    legacy = []
    for index in range(200):
        role = a.get(f"gen_ai.prompt.{index}.role")
        if role is None:
            break
        legacy.append({"role": str(role), "content": str(a.get(f"gen_ai.prompt.{index}.content", ""))})
    return legacy or None


def _output(span: _Span) -> tuple[str, str] | None:
    a = span.attrs
    if a.get(tm.OUTPUT_MESSAGES):
        messages = _semconv_messages(span, tm.OUTPUT_MESSAGES)
        if messages:
            return messages[0]["content"], messages[0].get("finish_reason", "stop")
    for name, event in span.events:
        if name == "gen_ai.choice":
            message = event.get("message")
            if isinstance(message, str):
                try:
                    message = json.loads(message)
                except ValueError:
                    message = {"content": message}
            content = message.get("content") if isinstance(message, dict) else event.get("content")
            return str(content or ""), str(event.get("finish_reason") or "stop")
    if a.get("gen_ai.completion.0.content") is not None:
        return str(a["gen_ai.completion.0.content"]), str(a.get("gen_ai.completion.0.finish_reason") or "stop")
    return None


def _procmem_feedback(span: _Span) -> tuple[str, dict[str, Any]]:
    a = span.attrs
    body = {"passed": a.get(tm.FEEDBACK_PASSED), "score": a.get(tm.FEEDBACK_SCORE),
            "comment": str(a.get(tm.FEEDBACK_COMMENT) or ""), "correction": a.get(tm.FEEDBACK_CORRECTION),
            "source": a.get(tm.FEEDBACK_SOURCE) or "user"}
    where = f"{span.where} ({tm.FEEDBACK_SPAN})"
    if body["passed"] is None and body["score"] is None and body["correction"] is None:
        raise ProcmemError("feedback without a judgement (a correction needs content capture)", where=where,
                           fix=_CAPTURE_FIX)
    return str(a.get(tm.FEEDBACK_ID) or f"otel:{span.span_id}"), checked_feedback(body, where)


def _evaluation_feedback(event: dict[str, Any], where: str) -> dict[str, Any] | None:
    """Another tool's ``gen_ai.evaluation.result`` as feedback: a pass/fail label judges; else a score in 0..1."""
    label = str(event.get(tm.EVALUATION_LABEL, "")).strip().lower()
    score = event.get(tm.EVALUATION_SCORE)
    body: dict[str, Any] = {"comment": str(event.get(tm.EVALUATION_EXPLANATION) or ""), "source": "verifier"}
    if label in PASS_LABELS | FAIL_LABELS:
        body["passed"] = label in PASS_LABELS
    if isinstance(score, (int, float)) and 0.0 <= float(score) <= 1.0:
        body["score"] = float(score)
    if "passed" not in body and "score" not in body:
        return None
    return checked_feedback(body, where)
