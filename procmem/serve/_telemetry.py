"""The gateway's spans (:mod:`procmem.core.telemetry`): one trace per chat completion, its verification and feedback
joined to it later. Off unless an OTLP endpoint is configured; then a call costs a few span objects, and the export
runs on the SDK's background batch thread."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from procmem.core import Verdict
from procmem.core import telemetry as tm
from procmem.core.telemetry import Telemetry
from procmem.serve.calllog import CallRecord
from procmem.serve.config import ServeConfig

if TYPE_CHECKING:
    from starlette.datastructures import Headers

__all__ = ["GatewayTracing"]


class GatewayTracing:
    """Builds the spans of served calls; every method is a no-op while tracing is off."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    @classmethod
    def from_config(cls, config: ServeConfig) -> GatewayTracing:
        settings = config.telemetry
        return cls(Telemetry.configure(endpoint=settings.otlp_endpoint, service_name=settings.service_name,
                                       capture_content=settings.capture_content))

    @property
    def enabled(self) -> bool:
        return self.telemetry.enabled

    def close(self) -> None:
        self.telemetry.shutdown()

    def call(self, call: CallRecord, *, headers: Headers, marks: Mapping[str, int], request_model: str,
             sent: str) -> CallRecord:
        """Emit ``call``'s trace (the request, its retrieval and its model call, timed by ``marks``: ``start``,
        ``retrieval_start``, ``retrieval_end``) and return the call with its span's ``traceparent``. The request
        span continues the client's trace when it sent a ``traceparent`` header."""
        t = self.telemetry
        if not t.enabled:
            return call
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        end = time.time_ns()
        start = marks.get("start", end)
        parent = TraceContextTextMapPropagator().extract(carrier={k: v for k, v in headers.items()})
        usage = call.usage
        params = call.params
        query = next((tm.message_text(m.get("content")) for m in reversed(call.messages) if m.get("role") == "user"),
                     "")
        attrs: dict[str, Any] = {
            tm.OPERATION: "invoke_agent", tm.AGENT_NAME: tm.AGENT, tm.PROVIDER: tm.AGENT,
            tm.REQUEST_MODEL: request_model, tm.RESPONSE_MODEL: call.model_id, tm.RESPONSE_ID: f"chatcmpl-{call.id}",
            tm.FINISH_REASONS: [call.finish_reason], tm.INPUT_TOKENS: int(usage.get("prompt_tokens", 0)),
            tm.OUTPUT_TOKENS: int(usage.get("completion_tokens", 0)),
            tm.MAX_TOKENS: params.get("max_completion_tokens") or params.get("max_tokens"),
            tm.TEMPERATURE: params.get("temperature"), tm.TOP_P: params.get("top_p"), tm.SEED: params.get("seed"),
            tm.STREAM: call.stream, tm.CONVERSATION_ID: call.session_id, tm.EPISODE_ID: call.id,
            tm.TASK_ID: call.task_id or call.id, tm.ADAPTER_VERSION: call.adapter_version or "base",
            tm.MEMORY_IDS: list(call.memory_ids), tm.VERIFIER: call.verifier or None, tm.CALL_STATUS: call.status,
            "procmem.tenant": call.tenant,
        }
        if t.capture_content:
            # the gateway redacted the call's messages, prompt and answer before it recorded them
            attrs[tm.INPUT_MESSAGES] = tm.input_messages(call.messages, redacted=True)
            attrs[tm.OUTPUT_MESSAGES] = tm.output_messages(call.response, call.finish_reason, redacted=True)
        from opentelemetry import trace

        root = t.tracer.start_span(f"invoke_agent {tm.AGENT}", context=parent, kind=trace.SpanKind.SERVER,
                                   start_time=start, attributes=_clean(attrs))
        if "retrieval_start" in marks:
            retrieval = t.start(f"retrieval {tm.MEMORY_SOURCE}", parent=root, start_ns=marks["retrieval_start"],
                                attributes={tm.OPERATION: "retrieval", tm.DATA_SOURCE_ID: tm.MEMORY_SOURCE,
                                            tm.MEMORY_IDS: list(call.memory_ids),
                                            tm.RETRIEVAL_QUERY: query if t.capture_content else None})
            retrieval.end(end_time=marks.get("retrieval_end", end))
        generation = t.start(f"chat {call.model_id}", kind="CLIENT", parent=root,
                             start_ns=marks.get("retrieval_end", start), attributes={
                                 tm.OPERATION: "chat", tm.PROVIDER: tm.AGENT, tm.REQUEST_MODEL: call.model_id,
                                 tm.RESPONSE_MODEL: call.model_id, tm.FINISH_REASONS: [call.finish_reason],
                                 tm.INPUT_TOKENS: attrs[tm.INPUT_TOKENS], tm.OUTPUT_TOKENS: attrs[tm.OUTPUT_TOKENS],
                                 tm.ADAPTER_VERSION: attrs[tm.ADAPTER_VERSION],
                                 tm.INPUT_MESSAGES: tm.input_messages([{"role": "user", "content": sent}],
                                                                      redacted=True) if t.capture_content else None,
                                 tm.OUTPUT_MESSAGES: attrs.get(tm.OUTPUT_MESSAGES)})
        if call.status == "error":
            generation.set_status(Status(StatusCode.ERROR, call.error[:200]))
            root.set_status(Status(StatusCode.ERROR, call.error[:200]))
            root.set_attribute("error.type", "backend_error")
        generation.end(end_time=end)
        root.end(end_time=end)
        from dataclasses import replace

        return replace(call, trace=Telemetry.traceparent(root))

    def verification(self, call: CallRecord, verdict: Verdict) -> None:
        """The memory worker's verdict on ``call``, as a ``procmem.verify`` span in the call's trace."""
        if self.telemetry.enabled and call.trace:
            self.telemetry.verification(call.trace, verdict, verifier=call.verifier, episode_id=call.id)

    def feedback(self, call: CallRecord, feedback_id: str, body: Mapping[str, Any]) -> None:
        """Feedback on ``call``, as a ``procmem.feedback`` span in (and linked to) the call's trace."""
        if self.telemetry.enabled and call.trace:
            self.telemetry.feedback(call.trace, episode_id=call.id, feedback_id=feedback_id, body=body)


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(str(x) for x in v) if isinstance(v, list) else v for k, v in attrs.items() if v is not None}
