"""A hostile client against a real ``procmem serve`` process, on both engines: malformed requests get a 4xx that
says what is wrong and where (never a 500, a 502 or a silent 200), and a prompt far over the model's context is
refused before the server allocates anything for it (its resident memory stays bounded)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import Server

from procmem.serve.protocol import MAX_DEPTH, ApiError, parse_chat_request

pytestmark = pytest.mark.slow

ENGINES = ["transformers", "llamacpp"]
RSS_LIMIT_KB = 2 * 1024 * 1024
"""The done criterion: a 60,000-token prompt leaves the server under 2 GB resident."""
LONG = 60_000
"""Characters, and so tokens: the tiny model's tokenizer is byte-level (one token per ASCII character)."""


@pytest.fixture(scope="module", params=ENGINES)
def engine_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per engine on the tiny model (transformers, then llama.cpp when it is installed)."""
    engine = request.param
    if engine == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the llama.cpp engine needs llama-cpp-python (pip install procmem[llamacpp])")
    home = tmp_path_factory.mktemp(f"hostile-{engine}") / "home"
    with Server(home, "--engine", engine) as running:
        running.engine = engine  # type: ignore[attr-defined]
        yield running


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300,
                         default_headers={"X-Procmem-Memory": "off"})


def _post(server: Server, body: bytes | dict[str, Any]) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/chat/completions", content=content, timeout=300,
                      headers={"Content-Type": "application/json", "X-Procmem-Memory": "off"})


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def _vm(pid: int, field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (the peak resident) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _still_answers(server: Server) -> None:
    answer = _client(server).chat.completions.create(model="procmem", max_tokens=2,
                                                     messages=[{"role": "user", "content": "Say hi."}])
    assert answer.choices[0].finish_reason in ("stop", "length")


# --- nesting -------------------------------------------------------------------------------------------------


def test_a_body_nested_5000_deep_gets_a_400_that_names_the_field(engine_server: Server) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    cases = {
        "messages": b'{"model": "procmem", "messages": ' + deep + b"}",
        "metadata": b'{"model": "procmem", "messages": [{"role": "user", "content": "hi"}], "metadata": {"a": '
                    + deep + b"}}",
    }
    for field, body in cases.items():
        response = _post(engine_server, body)
        assert response.status_code == 400, response.text
        error = _error(response)
        assert error["code"] == "nesting_too_deep" and error["param"] == field
        assert f"more than {MAX_DEPTH} levels" in error["message"] and "at most" in error["message"]
    bare = _post(engine_server, deep)
    assert bare.status_code == 400 and _error(bare)["code"] == "nesting_too_deep"
    _still_answers(engine_server)


def test_a_body_nested_past_the_limit_but_parseable_gets_a_400_with_its_path(engine_server: Server) -> None:
    nested: Any = "x"
    for _ in range(MAX_DEPTH + 5):
        nested = {"k": nested}
    response = _post(engine_server, {"model": "procmem", "messages": [{"role": "user", "content": "hi"}],
                                     "metadata": nested})
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["code"] == "nesting_too_deep" and error["param"] == "metadata"
    assert "at metadata.k.k" in error["message"]


# --- content parts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "file", "file": {"file_id": "file-123"}},
])
def test_a_part_other_than_text_gets_a_400_naming_it(engine_server: Server, part: dict[str, Any]) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "What is in this?"}, part]}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            _client(engine_server).chat.completions.create(model="procmem", messages=messages, stream=stream)
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["param"] == "messages[1].content[1].type" and error["code"] == "unsupported_content"
        assert part["type"] in error["message"] and "text only" in error["message"]


def test_text_parts_still_work(engine_server: Server) -> None:
    answer = _client(engine_server).chat.completions.create(
        model="procmem", max_tokens=2, messages=[{"role": "user", "content": [{"type": "text", "text": "Hi."}]}])
    assert answer.choices[0].message.content is not None


# --- the context ---------------------------------------------------------------------------------------------


def _assert_context_error(err: openai.BadRequestError, at_least: int) -> None:
    error = err.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["type"] == "invalid_request_error"
    counted = int(error["message"].split(" prompt tokens")[0].split()[-1])
    assert counted >= at_least, error["message"]
    assert "tokens per request" in error["message"] and "shorten the messages" in error["message"]


def test_one_60000_token_message_gets_400_context_length_exceeded(engine_server: Server) -> None:
    assert engine_server.proc is not None
    with pytest.raises(openai.BadRequestError) as caught:
        _client(engine_server).chat.completions.create(model="procmem", max_tokens=16,
                                                       messages=[{"role": "user", "content": "x" * LONG}])
    _assert_context_error(caught.value, LONG)
    _still_answers(engine_server)


def test_a_streamed_over_long_prompt_is_refused_without_an_answer(engine_server: Server) -> None:
    """Streamed, the same prompt is refused with a plain 400 before the stream starts (the backend checks the prompt
    first), and the server still answers."""
    body = {"model": "procmem", "stream": True, "max_tokens": 16, "messages": [{"role": "user", "content": "x" * LONG}]}
    with httpx.stream("POST", f"{engine_server.url}/chat/completions", json=body, timeout=60,
                      headers={"X-Procmem-Memory": "off"}) as response:
        text = response.read().decode()
    assert response.status_code == 400, text[-500:]
    error = json.loads(text)["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    _still_answers(engine_server)


def test_10000_messages_get_400_context_length_exceeded(engine_server: Server) -> None:
    messages: Any = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
                     for i in range(10_000)]
    with pytest.raises(openai.BadRequestError) as caught:
        _client(engine_server).chat.completions.create(model="procmem", max_tokens=16, messages=messages)
    _assert_context_error(caught.value, 10_000)
    _still_answers(engine_server)


def test_a_prompt_that_fits_gets_an_answer_cut_at_the_context(engine_server: Server) -> None:
    """Near the limit the prompt is answered, and the answer ends where the context does (as on OpenAI's
    ``length``), rather than being refused for its max_tokens."""
    size = {"transformers": 2000, "llamacpp": 4050}[engine_server.engine]  # type: ignore[attr-defined]
    answer = _client(engine_server).chat.completions.create(
        model="procmem", max_tokens=4000, stop=["\u2603"], messages=[{"role": "user", "content": "y" * size}])
    assert answer.usage is not None and answer.usage.prompt_tokens >= size
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_a_60000_token_prompt_to_local_tiny_is_refused_with_the_server_under_2_gb(tmp_path: Path) -> None:
    """The done criterion, on the transformers engine (where, unrefused, one such prompt grew the server to 24 GB
    and the OOM killer ended it): 400, and the server's peak resident memory stays under 2 GB, also with 8 such
    prompts and 16 prompts that fit, all at once."""
    with Server(tmp_path / "home", "--engine", "transformers") as server:
        assert server.proc is not None
        pid = server.proc.pid
        _still_answers(server)
        before = _vm(pid, "VmRSS")
        with pytest.raises(openai.BadRequestError) as caught:
            _client(server).chat.completions.create(model="procmem", max_tokens=16,
                                                    messages=[{"role": "user", "content": "x" * LONG}])
        _assert_context_error(caught.value, LONG)

        def one(i: int) -> int:
            content = ("z" * LONG) if i % 3 == 0 else f"{i} " + "w" * 1900
            try:
                _client(server).chat.completions.create(model="procmem", max_tokens=8,
                                                        messages=[{"role": "user", "content": content}])
            except openai.BadRequestError:
                return 400
            return 200

        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(one, range(24)))
        assert statuses.count(400) == 8 and statuses.count(200) == 16
        peak, now = _vm(pid, "VmHWM"), _vm(pid, "VmRSS")
        print(f"serve --model local:tiny: VmRSS {before // 1024} MB at rest, peak VmHWM {peak // 1024} MB, "
              f"now {now // 1024} MB")
        assert peak < RSS_LIMIT_KB, f"the server peaked at {peak // 1024} MB resident"
        _still_answers(server)


# --- the same checks, in process -----------------------------------------------------------------------------


def test_parse_chat_request_locates_each_problem() -> None:
    def refused(body: bytes) -> ApiError:
        with pytest.raises(ApiError) as caught:
            parse_chat_request(body)
        return caught.value

    deep = refused(b'{"model": "m", "tools": ' + b"[" * 3000 + b"]" * 3000 + b"}")
    assert (deep.status, deep.param, deep.code) == (400, "tools", "nesting_too_deep")
    image = {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    error = refused(json.dumps(image).encode())
    assert (error.status, error.param, error.code) == (400, "messages[0].content[0].type", "unsupported_content")
    assert parse_chat_request(json.dumps(image).encode(), text_only=False).messages[0].content
    bad_text = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}
    assert refused(json.dumps(bad_text).encode()).param == "messages[0].content[0].text"
    shallow: Any = "x"
    for _ in range(MAX_DEPTH - 1):
        shallow = [shallow]
    assert parse_chat_request(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                          "metadata": {"a": shallow[0]}}).encode())
