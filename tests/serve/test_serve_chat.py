"""The gateway through the official ``openai`` client: answers, capture, feedback, memory."""

from __future__ import annotations

import httpx
import openai
import pytest
from serve_helpers import Server, wait_for


def _client(server: Server, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", default_headers=headers, max_retries=0)


def _episode(server: Server, episode_id: str) -> dict:  # type: ignore[type-arg]
    response = httpx.get(f"{server.url}/episodes/{episode_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_non_streaming_call_is_answered_and_recorded(server: Server) -> None:
    client = _client(server, **{"X-Procmem-Session-Id": "s-1", "X-Procmem-Task-Id": "t-1"})
    raw = client.chat.completions.with_raw_response.create(
        model="procmem", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=8, user="alice",
        metadata={"app": "demo"})
    completion = raw.parse()
    episode_id = raw.headers["x-procmem-episode-id"]
    assert raw.headers["x-procmem-adapter-version"] == "base"
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    episode = _episode(server, episode_id)
    assert episode["status"] == "complete"
    assert episode["session_id"] == "s-1" and episode["task_id"] == "t-1" and episode["user"] == "alice"
    assert episode["response"] == completion.choices[0].message.content
    assert episode["prompt"].endswith("Question: What is 2 + 2?\nAnswer:")
    assert episode["metadata"] == {"app": "demo"}
    assert episode["verified"] is False and episode["adapter_version"] is None


def test_streaming_is_captured_like_non_streaming(server: Server) -> None:
    client = _client(server, **{"X-Procmem-Episode-Id": "stream-1", "X-Procmem-Session-Id": "s-2"})
    with client.chat.completions.with_streaming_response.create(
            model="procmem", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["x-procmem-episode-id"] == "stream-1"  # before the stream starts
        assert response.headers["x-procmem-adapter-version"] == "base"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].completion_tokens > 0
    episode = _episode(server, "stream-1")
    assert episode["status"] == "complete" and episode["stream"] is True
    assert episode["response"] == text and episode["session_id"] == "s-2"
    assert episode["usage"]["completion_tokens"] == usage[-1].completion_tokens


def test_same_episode_id_is_answered_once(server: Server) -> None:
    client = _client(server, **{"X-Procmem-Episode-Id": "idem-1"})
    first = client.chat.completions.create(model="procmem", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=6)
    raw = client.chat.completions.with_raw_response.create(
        model="procmem", messages=[{"role": "user", "content": "Hi"}], max_tokens=6)
    assert raw.headers["x-procmem-replayed"] == "true"
    assert raw.parse().choices[0].message.content == first.choices[0].message.content


def test_feedback_is_idempotent_and_attached(server: Server) -> None:
    raw = _client(server).chat.completions.with_raw_response.create(
        model="procmem", messages=[{"role": "user", "content": "Is the sky green?"}], max_tokens=6)
    episode_id = raw.headers["x-procmem-episode-id"]
    url = f"{server.url}/episodes/{episode_id}/feedback"
    body = {"id": "fb-1", "passed": False, "score": 0.0, "comment": "wrong colour", "source": "user"}
    first = httpx.post(url, json=body, timeout=10).json()
    again = httpx.post(url, json={**body, "comment": "changed"}, timeout=10).json()
    assert first["duplicate"] is False and again["duplicate"] is True
    episode = _episode(server, episode_id)
    assert episode["verified"] is True
    assert [f["comment"] for f in episode["feedback"]] == ["wrong colour"]


def test_correction_becomes_memory_that_later_calls_use(server: Server) -> None:
    client = _client(server)
    raw = client.chat.completions.with_raw_response.create(
        model="procmem", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=6)
    episode_id = raw.headers["x-procmem-episode-id"]
    httpx.post(f"{server.url}/episodes/{episode_id}/feedback",
               json={"correction": "Paris", "source": "human", "id": "fix-1"}, timeout=10).raise_for_status()

    def memory_used() -> dict | None:  # type: ignore[type-arg]
        probe = client.chat.completions.with_raw_response.create(
            model="procmem", messages=[{"role": "user", "content": "What is the capital of Italy?"}], max_tokens=4)
        episode = _episode(server, probe.headers["x-procmem-episode-id"])
        return episode if episode["memory_ids"] else None

    episode = wait_for(memory_used, timeout=90, every=1.0)
    assert "Question: What is the capital of France?\nAnswer: Paris" in episode["prompt"]
    off = _client(server, **{"X-Procmem-Memory": "off"}).chat.completions.with_raw_response.create(
        model="procmem", messages=[{"role": "user", "content": "What is the capital of Italy?"}], max_tokens=4)
    plain = _episode(server, off.headers["x-procmem-episode-id"])
    assert plain["memory_ids"] == [] and plain["prompt"] == "Question: What is the capital of Italy?\nAnswer:"


def test_a_named_verifier_scores_the_call_at_once(server: Server) -> None:
    raw = _client(server).chat.completions.with_raw_response.create(
        model="procmem", messages=[{"role": "user", "content": "Say anything."}], max_tokens=4,
        metadata={"procmem_verifier": "regex:(?s).*"})
    episode_id = raw.headers["x-procmem-episode-id"]
    episode = wait_for(lambda: (e := _episode(server, episode_id))["verdict"] and e, timeout=60)
    assert episode["verdict"]["passed"] is True and episode["verified"] is True


def test_keys_in_messages_are_redacted_before_storage(server: Server) -> None:
    secret = "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0kLmN"
    raw = _client(server).chat.completions.with_raw_response.create(
        model="procmem", messages=[{"role": "user", "content": f"my key is {secret}"}], max_tokens=4)
    episode = _episode(server, raw.headers["x-procmem-episode-id"])
    assert secret not in str(episode) and "[REDACTED]" in episode["messages"][0]["content"]


def test_models_health_and_metrics(server: Server) -> None:
    models = _client(server).models.list()
    ids = [m.id for m in models.data]
    assert "procmem" in ids and "tiny" in ids
    assert httpx.get(f"{server.root}/healthz", timeout=5).json()["status"] == "ok"
    text = httpx.get(f"{server.root}/metrics", timeout=5).text
    for name in ("procmem_requests_total", "procmem_chat_latency_seconds_bucket", "procmem_tokens_total",
                 "procmem_episodes_written_total", "procmem_feedback_total", "procmem_adapter_info"):
        assert name in text


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
    (b'{"model": "procmem", "messages": []}', 400, "invalid_value"),
    (b'{"model": "procmem", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", '
     b'"function": {"name": "f"}}]}', 400, "tools_unsupported"),
    (b'{"model": "procmem", "messages": [{"role": "user", "content": "x"}], "metadata": '
     b'{"procmem_verifier": "nope:1"}}', 400, "invalid_verifier"),
    (b'{"model": "procmem", "messages": [{"role": "user", "content": "' + b"x" * (1 << 20) + b'"}]}', 413,
     "body_too_large"),
])
def test_bad_input_gets_an_openai_error_and_records_nothing(server: Server, body: bytes, status: int,
                                                            code: str) -> None:
    before = httpx.get(f"{server.root}/metrics", timeout=5).text.split("procmem_episodes_written_total ")[1]
    response = httpx.post(f"{server.url}/chat/completions", content=body, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "(" in error["message"]  # what, and how to fix it
    after = httpx.get(f"{server.root}/metrics", timeout=5).text.split("procmem_episodes_written_total ")[1]
    assert before.split()[0] == after.split()[0]


def test_feedback_for_an_unknown_episode_is_404(server: Server) -> None:
    response = httpx.post(f"{server.url}/episodes/nope/feedback", json={"passed": True}, timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "episode_not_found"
    bad = httpx.post(f"{server.url}/episodes/nope/feedback", json={"comment": "no verdict"}, timeout=10)
    assert bad.status_code == 400


def test_a_client_that_disconnects_mid_stream_leaves_an_incomplete_episode(server: Server) -> None:
    body = {"model": "procmem", "messages": [{"role": "user", "content": "Tell a long story."}], "stream": True,
            "max_tokens": 400, "stop": ["<<never said>>"]}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=120,
                      headers={"X-Procmem-Episode-Id": "cut-1", "X-Procmem-Memory": "off"}) as response:
        assert response.headers["x-procmem-episode-id"] == "cut-1"
        first = next(response.iter_lines())  # the role chunk, sent before the model's first token
    assert first.startswith("data: ")
    episode = wait_for(lambda: (r := httpx.get(f"{server.url}/episodes/cut-1", timeout=10)).status_code == 200
                       and r.json(), timeout=120)
    assert episode["status"] == "incomplete" and episode["finish_reason"] == "incomplete"


def test_feedback_sent_while_the_call_is_answered_is_attached_when_it_is_written(server: Server) -> None:
    body = {"model": "procmem", "messages": [{"role": "user", "content": "Count to three."}], "stream": True,
            "max_tokens": 40}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=120,
                      headers={"X-Procmem-Episode-Id": "early-1", "X-Procmem-Memory": "off"}) as response:
        lines = response.iter_lines()
        next(lines)  # the role chunk: the call is in flight, its episode not written yet
        early = httpx.post(f"{server.url}/episodes/early-1/feedback", timeout=10,
                           json={"id": "early-fb", "passed": True, "comment": "nice"})
        rest = list(lines)
    assert early.status_code == 200 and early.json()["attached"] is False
    assert [line for line in rest if line][-1] == "data: [DONE]"
    episode = _episode(server, "early-1")
    assert episode["status"] == "complete" and episode["verified"] is True
    assert [f["id"] for f in episode["feedback"]] == ["early-fb"]
