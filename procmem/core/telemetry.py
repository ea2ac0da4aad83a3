"""OpenTelemetry spans under the GenAI semantic conventions: what ``procmem serve`` and ``procmem solve`` emit, and
what ``procmem import`` reads back.

Off unless configured: an OTLP endpoint in ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
(the standard variables; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off), or serve's
``[telemetry] otlp_endpoint``. Spans go out over OTLP/HTTP (protobuf) from a background batch processor, so a request
never waits for the collector.

One request is one trace::

    invoke_agent procmem            the request (serve: SERVER kind); model, tokens, finish reason, episode id,
    ├── retrieval procmem.memory    adapter version, memory ids
    ├── chat <model>                the model call (one per attempt in solve)
    └── procmem.verify              the verifier's verdict (serve: later, from the memory worker)
    procmem.feedback                feedback sent later: a child of the request's span and linked to it

Verdicts and feedback also carry a ``gen_ai.evaluation.result`` span event. Message content (the conversation, the
answer, the retrieval query, comments and corrections) is recorded only with content capture on
(``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``, or serve's ``[telemetry] capture_content``), and always
after :func:`~procmem.core.redact`. The opentelemetry packages are imported only when tracing is configured.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from procmem.core.redact import redact

if TYPE_CHECKING:
    from procmem.core.types import Episode, Verdict

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "Step",
    "StepTracer",
    "Telemetry",
    "capture_content_from_env",
    "input_messages",
    "iso_ns",
    "message_text",
    "messages_from_semconv",
    "ns_iso",
    "otlp_endpoint_from_env",
    "output_messages",
]

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_ON = {"1", "true", "yes", "on", "span_only", "span_and_event"}

# GenAI semantic conventions (opentelemetry.semconv._incubating.attributes.gen_ai_attributes)
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
AGENT_NAME = "gen_ai.agent.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
MAX_TOKENS = "gen_ai.request.max_tokens"
TEMPERATURE = "gen_ai.request.temperature"
TOP_P = "gen_ai.request.top_p"
SEED = "gen_ai.request.seed"
STREAM = "gen_ai.request.stream"
CONVERSATION_ID = "gen_ai.conversation.id"
DATA_SOURCE_ID = "gen_ai.data_source.id"
RETRIEVAL_QUERY = "gen_ai.retrieval.query.text"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
EVALUATION_EVENT = "gen_ai.evaluation.result"
EVALUATION_NAME = "gen_ai.evaluation.name"
EVALUATION_SCORE = "gen_ai.evaluation.score.value"
EVALUATION_LABEL = "gen_ai.evaluation.score.label"
EVALUATION_EXPLANATION = "gen_ai.evaluation.explanation"
# procmem's own
EPISODE_ID = "procmem.episode.id"
TASK_ID = "procmem.task.id"
SUITE = "procmem.suite"
ADAPTER_VERSION = "procmem.adapter.version"
MEMORY_IDS = "procmem.memory.ids"
VERIFIER = "procmem.verifier"
VERDICT_PASSED = "procmem.verdict.passed"
VERDICT_SCORE = "procmem.verdict.score"
FEEDBACK_ID = "procmem.feedback.id"
FEEDBACK_PASSED = "procmem.feedback.passed"
FEEDBACK_SCORE = "procmem.feedback.score"
FEEDBACK_SOURCE = "procmem.feedback.source"
FEEDBACK_COMMENT = "procmem.feedback.comment"
FEEDBACK_CORRECTION = "procmem.feedback.correction"
CALL_STATUS = "procmem.call.status"
AGENT = "procmem"
MEMORY_SOURCE = "procmem.memory"
VERIFY_SPAN = "procmem.verify"
FEEDBACK_SPAN = "procmem.feedback"


def capture_content_from_env() -> bool:
    """Whether ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` opts in to message content."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in _ON


def otlp_endpoint_from_env() -> str | None:
    """The OTLP endpoint the standard variables name, or None when tracing is off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def ns_iso(ns: int) -> str:
    """Nanoseconds since the epoch as procmem's ISO-8601 UTC string."""
    from datetime import timezone

    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def iso_ns(text: str) -> int:
    """procmem's ISO-8601 time as nanoseconds since the epoch (now, for an unreadable one)."""
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1e9)
    except (TypeError, ValueError):
        return time.time_ns()


# --- message content (semconv JSON) ---------------------------------------------------------------

def message_text(content: Any) -> str:
    """A message's content as text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def input_messages(messages: Sequence[Mapping[str, Any]], *, redacted: bool = False) -> str:
    """OpenAI-style chat messages as ``gen_ai.input.messages`` JSON (text parts), redacted unless ``redacted``
    says they already are."""
    clean = (lambda text: text) if redacted else redact
    out = [{"role": str(m.get("role", "user")),
            "parts": [{"type": "text", "content": clean(message_text(m.get("content")))}]} for m in messages]
    return json.dumps(out, ensure_ascii=False)


def output_messages(text: str, finish_reason: str, *, redacted: bool = False) -> str:
    """An answer as ``gen_ai.output.messages`` JSON, redacted unless ``redacted`` says it already is."""
    return json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text if redacted else redact(text)}],
                        "finish_reason": finish_reason}], ensure_ascii=False)


def messages_from_semconv(value: Any) -> list[dict[str, Any]]:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages`` (a JSON string or a list) as OpenAI-style messages
    (``role``, ``content``: the text parts joined, plus ``finish_reason`` where given). Raises ValueError."""
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, list):
        raise ValueError("not a JSON list of messages")
    messages = []
    for item in data:
        if not isinstance(item, dict) or "role" not in item:
            raise ValueError("a message without a role")
        if "parts" in item:
            parts = item["parts"] if isinstance(item["parts"], list) else []
            content = "".join(str(p.get("content", "")) for p in parts
                              if isinstance(p, dict) and p.get("type") == "text")
        else:
            content = message_text(item.get("content"))
        message = {"role": str(item["role"]), "content": content}
        if item.get("finish_reason"):
            message["finish_reason"] = str(item["finish_reason"])
        messages.append(message)
    return messages


# --- the tracer -----------------------------------------------------------------------------------

class Telemetry:
    """A tracer (or none: every call is then a no-op) and whether message content is captured."""

    def __init__(self, tracer: Any = None, *, provider: Any = None, capture_content: bool = False) -> None:
        self.tracer = tracer
        self.provider = provider
        self.capture_content = capture_content

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def configure(cls, *, endpoint: str | None = None, service_name: str = "procmem",
                  capture_content: bool | None = None, provider: Any = None) -> Telemetry:
        """Tracing to ``endpoint`` (an OTLP/HTTP base URL such as ``http://collector:4318``; ``/v1/traces`` is
        added), else to what the standard variables name, else off. ``provider`` (a TracerProvider) is used as
        given instead (tests)."""
        capture = capture_content_from_env() if capture_content is None else capture_content
        if provider is None:
            from_env = otlp_endpoint_from_env()
            if endpoint is None and from_env is None:
                return cls(capture_content=capture)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            url = None
            if endpoint:
                url = endpoint.rstrip("/")
                url = url if url.endswith("/v1/traces") else f"{url}/v1/traces"
            provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        from procmem import __version__

        return cls(provider.get_tracer("procmem", __version__), provider=provider, capture_content=capture)

    def flush(self) -> None:
        if self.provider is not None:
            self.provider.force_flush()

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None
            self.tracer = None

    # --- span helpers ---------------------------------------------------------------------------

    def start(self, name: str, *, kind: str = "INTERNAL", parent: Any = None, start_ns: int | None = None,
              attributes: Mapping[str, Any] | None = None, links: Sequence[Any] = ()) -> Any:
        """A started span (end it with ``span.end(end_time=...)``); ``parent`` is a span, a span context or a
        W3C ``traceparent`` string."""
        from opentelemetry import trace

        return self.tracer.start_span(name, context=_context(parent), kind=getattr(trace.SpanKind, kind),
                                      attributes=_clean(attributes or {}), start_time=start_ns,
                                      links=[trace.Link(_span_context(link)) for link in links if link])

    @staticmethod
    def traceparent(span: Any) -> str:
        """A span's W3C ``traceparent``, stored with a call so that later spans join its trace."""
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def verification(self, parent: str | Any, verdict: Verdict, *, verifier: str, episode_id: str,
                     start_ns: int | None = None, end_ns: int | None = None, attempt: int | None = None) -> None:
        """A ``procmem.verify`` span under ``parent`` with a ``gen_ai.evaluation.result`` event."""
        if not self.enabled:
            return
        attrs: dict[str, Any] = {EPISODE_ID: episode_id, VERIFIER: verifier, VERDICT_PASSED: verdict.passed,
                                  VERDICT_SCORE: float(verdict.score)}
        if attempt is not None:
            attrs["procmem.attempt"] = attempt
        span = self.start(VERIFY_SPAN, parent=parent, start_ns=start_ns, attributes=attrs)
        self._evaluation(span, "procmem.verifier", verdict.passed, verdict.score, verdict.feedback)
        span.end(end_time=end_ns)

    def feedback(self, parent: str, *, episode_id: str, feedback_id: str, body: Mapping[str, Any]) -> None:
        """A ``procmem.feedback`` span, child of and linked to the call's span ``parent`` (a traceparent)."""
        if not self.enabled:
            return
        passed, score = body.get("passed"), body.get("score")
        attrs: dict[str, Any] = {EPISODE_ID: episode_id, FEEDBACK_ID: feedback_id,
                                 FEEDBACK_SOURCE: str(body.get("source") or "user"), FEEDBACK_PASSED: passed,
                                 FEEDBACK_SCORE: score}
        if self.capture_content:
            attrs[FEEDBACK_COMMENT] = redact(str(body.get("comment") or "")) or None
            attrs[FEEDBACK_CORRECTION] = redact(str(body["correction"])) if body.get("correction") else None
        span = self.start(FEEDBACK_SPAN, parent=parent, attributes=attrs, links=[parent])
        judged = passed if passed is not None else (None if score is None else float(score) >= 1.0)
        if judged is not None or score is not None:
            self._evaluation(span, "procmem.feedback", judged, score, str(body.get("comment") or ""))
        span.end()

    def _evaluation(self, span: Any, name: str, passed: bool | None, score: float | None, explanation: str) -> None:
        attrs: dict[str, Any] = {EVALUATION_NAME: name, EVALUATION_SCORE: None if score is None else float(score),
                                 EVALUATION_LABEL: None if passed is None else ("pass" if passed else "fail")}
        if self.capture_content and explanation:
            attrs[EVALUATION_EXPLANATION] = redact(explanation)
        span.add_event(EVALUATION_EVENT, _clean(attrs))


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes without None values, sequences as tuples of one primitive type."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = tuple(str(v) for v in value)
        out[key] = value
    return out


def _span_context(parent: Any) -> Any:
    from opentelemetry import trace

    if isinstance(parent, str):
        try:
            _, trace_id, span_id, flags = parent.split("-")
            return trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                     trace_flags=trace.TraceFlags(int(flags, 16)))
        except ValueError:
            return trace.INVALID_SPAN_CONTEXT
    if isinstance(parent, trace.SpanContext):
        return parent
    return parent.get_span_context()


def _context(parent: Any) -> Any:
    if parent is None:
        return None
    from opentelemetry import trace

    if not isinstance(parent, (str, trace.SpanContext)):
        return trace.set_span_in_context(parent)
    ctx = _span_context(parent)
    return trace.set_span_in_context(trace.NonRecordingSpan(ctx)) if ctx.is_valid else None


# --- solve: the agent's steps, as spans -----------------------------------------------------------

@dataclass
class Step:
    """One timed step of an agent run: ``retrieval``, ``generation`` or ``verification``."""

    kind: str
    start_ns: int
    end_ns: int
    attempt: int = 0


@dataclass
class _Run:
    start_ns: int = field(default_factory=time.time_ns)
    steps: list[Step] = field(default_factory=list)


class StepTracer:
    """The agent's steps timed per episode and, when the episode is recorded, emitted as one trace (the shape in the
    module docstring). ``procmem solve`` hands one to its session when tracing is configured."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    @contextmanager
    def step(self, episode_id: str, kind: str) -> Iterator[None]:
        start = time.time_ns()
        try:
            yield
        finally:
            end = time.time_ns()
            with self._lock:
                run = self._runs.setdefault(episode_id, _Run(start_ns=start))
                attempt = sum(s.kind == kind for s in run.steps)
                run.steps.append(Step(kind, start, end, attempt))

    def finish(self, episode: Episode) -> None:
        """Emit ``episode``'s trace: the request span, its retrieval, and a generation and a verification per
        attempt (the steps timed for it)."""
        with self._lock:
            run = self._runs.pop(episode.id, None) or _Run()
        t = self.telemetry
        if not t.enabled:
            return
        end = time.time_ns()
        last = episode.attempts[-1] if episode.attempts else None
        attrs: dict[str, Any] = {
            OPERATION: "invoke_agent", AGENT_NAME: AGENT, REQUEST_MODEL: episode.model_id,
            RESPONSE_MODEL: episode.model_id, EPISODE_ID: episode.id, TASK_ID: episode.task.id,
            SUITE: episode.task.suite, ADAPTER_VERSION: episode.adapter_version or "base",
            MEMORY_IDS: list(episode.memory_ids), VERIFIER: episode.task.verifier,
            INPUT_TOKENS: sum(a.prompt_tokens for a in episode.attempts),
            OUTPUT_TOKENS: sum(a.completion_tokens for a in episode.attempts),
            VERDICT_PASSED: episode.passed,
        }
        if t.capture_content:
            attrs[INPUT_MESSAGES] = input_messages([{"role": "user", "content": episode.task.prompt}])
            if last is not None:
                attrs[OUTPUT_MESSAGES] = output_messages(last.answer, "stop")
        root = t.start(f"invoke_agent {AGENT}", start_ns=run.start_ns, attributes=attrs)
        for step in run.steps:
            if step.kind == "retrieval":
                span = t.start(f"retrieval {MEMORY_SOURCE}", parent=root, start_ns=step.start_ns, attributes={
                    OPERATION: "retrieval", DATA_SOURCE_ID: MEMORY_SOURCE, MEMORY_IDS: list(episode.memory_ids),
                    RETRIEVAL_QUERY: redact(episode.task.prompt) if t.capture_content else None})
                span.end(end_time=step.end_ns)
            elif step.kind == "generation":
                attempt = episode.attempts[step.attempt] if step.attempt < len(episode.attempts) else None
                span = t.start(f"chat {episode.model_id}", parent=root, start_ns=step.start_ns, attributes={
                    OPERATION: "chat", REQUEST_MODEL: episode.model_id, RESPONSE_MODEL: episode.model_id,
                    INPUT_TOKENS: attempt.prompt_tokens if attempt else None,
                    OUTPUT_TOKENS: attempt.completion_tokens if attempt else None, "procmem.attempt": step.attempt,
                    OUTPUT_MESSAGES: output_messages(attempt.answer, "stop") if attempt and t.capture_content
                    else None})
                span.end(end_time=step.end_ns)
            elif step.kind == "verification" and step.attempt < len(episode.attempts):
                t.verification(root, episode.attempts[step.attempt].verdict, verifier=episode.task.verifier,
                               episode_id=episode.id, start_ns=step.start_ns, end_ns=step.end_ns,
                               attempt=step.attempt)
        root.end(end_time=end)

