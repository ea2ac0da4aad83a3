"""A local OpenAI-compatible HTTP server for testing the litellm backend offline.

It stands in for a paid external API (the one thing tests may fake). Its "model" is deterministic: the
completion of a prompt is an endless stream of tokens picked by hashing the prompt, cut at
``max_tokens`` or after the first stop string, like a real server. It serves ``/v1/chat/completions``
(also streamed, as server-sent events) and ``/v1/completions``, checks the bearer key and records
every request body.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OpenAIStub", "stub_tokens"]

_VOCAB = [" alpha", " beta", " gamma", " delta", ".", ",", " 42", " 7", "\n", " the", " sum", " is"]


def stub_tokens(prompt: str) -> Iterator[str]:
    """The stub model's endless token stream for ``prompt``."""
    seed = hashlib.sha256(prompt.encode()).digest()
    i = 0
    while True:
        digest = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        yield _VOCAB[digest[0] % len(_VOCAB)]
        i += 1


def _complete(prompt: str, max_tokens: int, stops: list[str]) -> tuple[list[str], str]:
    """The tokens the server sends (the last one may end in a stop string, which it cuts) and why it ended."""
    text, pieces = "", []
    for count, token in enumerate(stub_tokens(prompt), start=1):
        text += token
        hits = [text.find(s) for s in stops if s and s in text]
        if hits:
            cut = min(hits)
            pieces.append(token[: len(token) - (len(text) - cut)])
            return pieces, "stop"
        pieces.append(token)
        if count >= max_tokens:
            return pieces, "length"
    raise AssertionError("unreachable")


class OpenAIStub:
    """``with OpenAIStub(api_key="k") as stub:`` serves at ``stub.api_base`` until the block ends."""

    def __init__(self, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                stub.requests.append({"path": self.path, **body})
                if self.headers.get("Authorization") != f"Bearer {stub.api_key}":
                    self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                               "code": "invalid_api_key"}})
                elif self.path.endswith("/chat/completions"):
                    self._chat(body)
                elif self.path.endswith("/completions"):
                    self._text(body)
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def _chat(self, body: dict[str, Any]) -> None:
                prompt = body["messages"][-1]["content"]
                pieces, finish = _complete(prompt, body.get("max_tokens") or 16, _stops(body))
                if body.get("stream"):
                    self._sse(body["model"], pieces, finish)
                    return
                self._json(200, {
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": "".join(pieces)}}],
                    "usage": _usage(prompt, pieces),
                })

            def _text(self, body: dict[str, Any]) -> None:
                prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
                pieces, finish = _complete(prompt, body.get("max_tokens") or 16, _stops(body))
                self._json(200, {
                    "id": "cmpl-stub", "object": "text_completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": finish, "text": "".join(pieces), "logprobs": None}],
                    "usage": _usage(prompt, pieces),
                })

            def _sse(self, model: str, pieces: list[str], finish: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                chunks = [{"content": p} for p in pieces]
                for i, delta in enumerate([{"role": "assistant", "content": ""}, *chunks, {}]):
                    data = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": model,
                            "choices": [{"index": 0, "delta": delta,
                                         "finish_reason": finish if i == len(chunks) + 1 else None}]}
                    self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop") or []
    return [stop] if isinstance(stop, str) else list(stop)


def _usage(prompt: str, pieces: list[str]) -> dict[str, int]:
    prompt_tokens = max(1, len(prompt.split()))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces)}
