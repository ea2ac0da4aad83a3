"""OpenTelemetry out and in, over the real wire: a real ``procmem serve`` exports spans over OTLP/HTTP to a collector
this test runs (decoded with opentelemetry-proto); the attribute names are the GenAI conventions' (checked against
opentelemetry-semantic-conventions); ``procmem import`` of those same spans rebuilds the episodes; the receiver
endpoint takes another tool's GenAI spans; ``procmem solve`` emits one trace per task."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as semconv
from otlp_collector import Collector, attrs
from serve_helpers import PROCMEM, Server, wait_for

from procmem.core import Home
from procmem.memory import open_memory

SPEEDY = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # the SDK's batch export interval (ms): spans arrive at once


def _procmem(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROCMEM), "--home", str(home), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def _by_name(collector: Collector, name: str) -> list[Any]:
    return [span for _, span in collector.spans() if span.name == name]


def _episodes(home: Path) -> dict[str, Any]:
    memory = open_memory(Home(home).chroma)
    try:
        return {e.id: e for e in memory.episodes()}
    finally:
        memory.close()


def _write_otlp_json(request: ExportTraceServiceRequest, path: Path) -> None:
    """OTLP/JSON as the spec encodes it (ids in hex), one request per line."""
    data = json_format.MessageToDict(request)
    for rs in data.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = __import__("base64").b64decode(span[key]).hex()
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        link[key] = __import__("base64").b64decode(link[key]).hex()
    path.write_text(json.dumps(data) + "\n")


def test_serve_spans_follow_the_genai_conventions_and_import_rebuilds_the_episodes(
        tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SPEEDY.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "home"
    config = tmp_path / "serve.toml"
    config.write_text(f'[telemetry]\notlp_endpoint = "{collector.url}"\ncapture_content = true\nreceiver = true\n')
    secret = "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0kLmN"
    with Server(home, "--config", str(config)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)

        def ask(episode_id: str, question: str, **extra: Any) -> None:
            client.chat.completions.create(model="procmem", messages=[{"role": "user", "content": question}],
                                           max_tokens=4, extra_headers={"X-Procmem-Episode-Id": episode_id,
                                                                        "X-Procmem-Session-Id": "s1"}, **extra)

        ask("ep-verified", "Say anything.", metadata={"procmem_verifier": "regex:(?s).*"})
        ask("ep-corrected", f"What is 3 + 3? my key is {secret}")
        ask("ep-open", "What is 5 + 5?")
        httpx.post(f"{server.url}/episodes/ep-corrected/feedback", timeout=10,
                   json={"passed": False, "correction": "6", "comment": "off by one", "id": "fb-1"}).raise_for_status()
        wait_for(lambda: _by_name(collector, "procmem.verify") and _by_name(collector, "procmem.feedback"),
                 timeout=120)
        wait_for(lambda: "procmem_memory_episodes_total 2" in httpx.get(f"{server.root}/metrics", timeout=5).text,
                 timeout=120)

        # another tool's GenAI span, sent to serve's own OTLP receiver, with an evaluation: a verified episode
        foreign = {"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "chat gpt-4o",
            "startTimeUnixNano": "1767225600000000000", "endTimeUnixNano": "1767225601000000000",
            "attributes": [
                {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                {"key": "gen_ai.input.messages", "value": {"stringValue": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "Capital of France?"}]}])}},
                {"key": "gen_ai.output.messages", "value": {"stringValue": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "Paris"}],
                      "finish_reason": "stop"}])}}],
            "events": [{"name": "gen_ai.evaluation.result", "timeUnixNano": "1767225601000000000", "attributes": [
                {"key": "gen_ai.evaluation.name", "value": {"stringValue": "correctness"}},
                {"key": "gen_ai.evaluation.score.label", "value": {"stringValue": "pass"}}]}]}]}]}]}
        reply = httpx.post(f"{server.root}/v1/traces", json=foreign, timeout=10)
        assert reply.status_code == 200 and "rejectedSpans" not in reply.json(), reply.text
        bad = httpx.post(f"{server.root}/v1/traces", content=b"\x00garbage", timeout=10,
                         headers={"Content-Type": "application/x-protobuf"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_otlp"
        otel_id = "otel-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"
        wait_for(lambda: httpx.get(f"{server.url}/episodes/{otel_id}", timeout=5).status_code == 200, timeout=30)
        wait_for(lambda: "procmem_memory_episodes_total 3" in httpx.get(f"{server.root}/metrics", timeout=5).text,
                 timeout=120)
    assert not collector.bad

    # the spans: names and attributes of the GenAI semantic conventions
    roots = {attrs(s)["procmem.episode.id"]: s for s in _by_name(collector, "invoke_agent procmem")}
    assert set(roots) == {"ep-verified", "ep-corrected", "ep-open"}
    root = roots["ep-verified"]
    a = attrs(root)
    assert a[semconv.GEN_AI_OPERATION_NAME] == semconv.GenAiOperationNameValues.INVOKE_AGENT.value
    assert a[semconv.GEN_AI_AGENT_NAME] == "procmem" and a[semconv.GEN_AI_REQUEST_MODEL] == "procmem"
    assert a[semconv.GEN_AI_USAGE_INPUT_TOKENS] > 0 and a[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    assert a[semconv.GEN_AI_RESPONSE_FINISH_REASONS] in (["stop"], ["length"])
    assert a[semconv.GEN_AI_CONVERSATION_ID] == "s1" and a["procmem.adapter.version"] == "base"
    assert "procmem.memory.ids" in a and a[semconv.GEN_AI_RESPONSE_MODEL]
    assert json.loads(a[semconv.GEN_AI_INPUT_MESSAGES])[0]["parts"][0]["content"] == "Say anything."
    assert root.kind == root.SPAN_KIND_SERVER
    children = [s for _, s in collector.spans() if s.parent_span_id == root.span_id and s.trace_id == root.trace_id]
    kinds = {attrs(s).get(semconv.GEN_AI_OPERATION_NAME, s.name) for s in children}
    assert kinds == {"retrieval", "chat", "procmem.verify"}, kinds
    chat = next(s for s in children if s.name.startswith("chat "))
    assert attrs(chat)[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == a[semconv.GEN_AI_USAGE_OUTPUT_TOKENS]
    verify = next(s for s in children if s.name == "procmem.verify")
    event = verify.events[0]
    assert event.name == "gen_ai.evaluation.result"
    assert attrs(event)[semconv.GEN_AI_EVALUATION_SCORE_LABEL] == "pass"
    assert attrs(event)[semconv.GEN_AI_EVALUATION_NAME] == "procmem.verifier"
    feedback = _by_name(collector, "procmem.feedback")[0]
    corrected = roots["ep-corrected"]
    assert feedback.links[0].span_id == corrected.span_id and feedback.trace_id == corrected.trace_id
    assert attrs(feedback)["procmem.feedback.correction"] == "6"
    assert secret not in str(collector.merged())  # content is captured after redaction

    # import the same spans into a fresh home: the episodes are rebuilt; a second import adds nothing
    served = _episodes(home)
    exported = tmp_path / "spans.pb"
    exported.write_bytes(collector.merged().SerializeToString())
    fresh = tmp_path / "fresh"
    done = _procmem(fresh, "import", str(exported), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["format"] == "otlp" and report["new_calls"] == 3 and report["episodes"] == 2, report
    rebuilt = _episodes(fresh)
    assert set(rebuilt) == {"ep-verified", "ep-corrected"}
    for episode_id, episode in rebuilt.items():
        original = served[episode_id]
        assert episode.task.prompt == original.task.prompt and episode.task.verifier == original.task.verifier
        assert [(x.answer, x.verdict.passed) for x in episode.attempts] == \
               [(x.answer, x.verdict.passed) for x in original.attempts]
        assert episode.adapter_version == original.adapter_version and episode.model_id == original.model_id
    again = _procmem(fresh, "import", str(exported), "--json")
    assert json.loads(again.stdout.strip().splitlines()[-1])["new_calls"] == 0
    assert json.loads(again.stdout.strip().splitlines()[-1])["episodes"] == 0

    # the same spans as OTLP/JSON (hex ids, one request per line): the same calls, nothing new
    as_json = tmp_path / "spans.jsonl"
    _write_otlp_json(collector.merged(), as_json)
    same = _procmem(fresh, "import", str(as_json), "--format", "otlp", "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout.strip().splitlines()[-1])["read"] == 3
    assert json.loads(same.stdout.strip().splitlines()[-1])["new_calls"] == 0


def test_otlp_import_locates_spans_without_content_and_imports_the_rest(tmp_path: Path) -> None:
    def span(span_id: str, content: bool) -> dict[str, Any]:
        attributes = [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}]
        if content:
            attributes += [{"key": "gen_ai.input.messages", "value": {"stringValue": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "Hi?"}]}])}},
                {"key": "gen_ai.output.messages", "value": {"stringValue": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "Hello"}]}])}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "3"}}]
        return {"traceId": "11" * 16, "spanId": span_id, "name": "chat m", "startTimeUnixNano": "1",
                "endTimeUnixNano": "2", "attributes": attributes}

    path = tmp_path / "traces.json"
    path.write_text(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span("aa" * 8, True),
                                                                              span("bb" * 8, False)]}]}]}))
    done = _procmem(tmp_path / "home", "import", str(path), "--json")
    assert done.returncode == 2
    assert f"traces.json:1: span {'bb' * 8}" in done.stderr and "OTEL_INSTRUMENTATION_GENAI_CAPTURE" in done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["new_calls"] == 1 and report["episodes"] == 0  # imported, but nobody judged it


def test_solve_emits_one_trace_per_task(tmp_path: Path, collector: Collector) -> None:
    env = {**SPEEDY, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
           "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    done = _procmem(tmp_path / "home", "solve", "--suite", "builtin:arith", "--n", "2", "--model", "local:tiny",
                    "--json", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    roots = _by_name(collector, "invoke_agent procmem")
    assert len(roots) == 2
    for root in roots:
        a = attrs(root)
        assert a[semconv.GEN_AI_OPERATION_NAME] == "invoke_agent" and a["procmem.suite"] == "builtin:arith"
        children = [s for _, s in collector.spans() if s.parent_span_id == root.span_id]
        names = [s.name for s in children]
        assert names.count("retrieval procmem.memory") == 1
        chats = [n for n in names if n.startswith("chat ")]
        assert names.count("procmem.verify") == len(chats) >= 1, names
        assert all(s.start_time_unix_nano >= root.start_time_unix_nano for s in children)
    services = {kv.value.string_value for resource, _ in collector.spans() for kv in resource.attributes
                if kv.key == "service.name"}
    assert services == {"procmem-solve"}


@pytest.mark.slow
def test_bench_serve_with_tracing_exports_the_spans_it_measures() -> None:
    from procmem.eval.bench.bench_serve import main

    results = main(["--model", "local:tiny", "--tokens", "2", "--n", "2", "--calls", "1", "--trace"])
    assert results["tracing"] is True and results["otlp_export_requests"] > 0
    assert "added_p50_ms" in results and results["calls_recorded"] == 2 + 2 * 2 + 1 + 8 + 16 + 32
