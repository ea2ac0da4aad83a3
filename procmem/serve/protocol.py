"""The OpenAI chat-completions wire format: requests as typed models, responses and error objects as dicts."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from procmem.agent.conversation import Message
from procmem.core import ContextLengthError, ProcmemError, redact

__all__ = [
    "MAX_DEPTH",
    "ApiError",
    "ChatMessage",
    "ChatRequest",
    "FeedbackRequest",
    "completion_chunk",
    "completion_object",
    "conversation",
    "message_text",
    "parse_chat_request",
    "parse_feedback",
]


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, fix: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = f"{message} ({fix})" if fix else message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    @classmethod
    def from_backend(cls, err: ProcmemError) -> ApiError:
        """The answer to a backend's error: 400 ``context_length_exceeded`` for a prompt over the model's context
        (the caller's input is at fault), else 502 ``backend_error``."""
        if isinstance(err, ContextLengthError):
            tokens = f"at least {err.prompt_tokens}" if err.at_least else str(err.prompt_tokens)
            return cls(400, f"the messages come to {tokens} prompt tokens (with the prompt format and procedural "
                       f"memory), but {err.model} holds {err.limit} tokens per request, prompt and answer "
                       "together", param="messages", code="context_length_exceeded",
                       fix=f"shorten the messages or send fewer, to well under {err.limit} tokens, so the answer "
                       "has room; header X-Procmem-Memory: off leaves procedural memory out")
        return cls(502, redact(str(err)), fix="", code="backend_error", kind="server_error")


class ChatMessage(BaseModel):
    """One message; ``content`` may be a string, a list of text parts, or None (an assistant tool call)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"] = Field(
        description="Who wrote it.")
    content: str | list[dict[str, Any]] | None = Field(default=None, description="Text or content parts.")
    name: str | None = Field(default=None, description="Optional author name.")
    tool_calls: list[dict[str, Any]] | None = Field(default=None, description="An assistant's tool calls.")
    tool_call_id: str | None = Field(default=None, description="The call a tool message answers.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(default=False, description="Send a last chunk with the usage.")


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``. Unknown OpenAI fields are accepted and ignored (kept in the record)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="The served model's id (see GET /v1/models) or 'procmem'.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation, oldest first.")
    stream: bool = Field(default=False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = Field(default=None, description="include_usage for streams.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 decodes greedily.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(default=None, ge=1, le=8192, description="Most new tokens.")
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192, description="Same as max_tokens.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop strings.")
    seed: int | None = Field(default=None, description="Sampling seed.")
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request.")
    user: str | None = Field(default=None, description="The end user, recorded with the episode.")
    metadata: dict[str, Any] | None = Field(default=None, description="Recorded; procmem_verifier scores at once.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Tools (backends that support them).")
    tool_choice: Any = Field(default=None, description="Tool choice (backends that support tools).")

    @model_validator(mode="after")
    def _check(self) -> ChatRequest:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ValueError("stop: at most 4 stop strings")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else (self.stop or [])) if s)

    @property
    def wants_tools(self) -> bool:
        return bool(self.tools) or any(m.role in ("tool", "function") or m.tool_calls for m in self.messages)


class FeedbackRequest(BaseModel):
    """``POST /v1/episodes/{id}/feedback``: what the caller learned about an answer, later."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, min_length=1, max_length=200,
                           description="Client-chosen id: a repeat with the same id changes nothing.")
    score: float | None = Field(default=None, ge=0.0, le=1.0, description="How good the answer was, 0..1.")
    passed: bool | None = Field(default=None, description="Whether the answer was right.")
    comment: str = Field(default="", max_length=20_000, description="Why (becomes the verdict's feedback).")
    correction: str | None = Field(default=None, min_length=1, max_length=100_000,
                                   description="The right answer: recorded as a verified passing attempt.")
    source: Literal["user", "verifier", "human"] = Field(default="user", description="Who judged.")

    @model_validator(mode="after")
    def _check(self) -> FeedbackRequest:
        if self.score is None and self.passed is None and self.correction is None:
            raise ValueError("give at least one of score, passed or correction")
        return self

    def verdict_passed(self) -> bool:
        """``passed`` if given, else a score of 1.0 counts as a pass."""
        return self.passed if self.passed is not None else (self.score is not None and self.score >= 1.0)

    def verdict_score(self) -> float:
        return self.score if self.score is not None else (1.0 if self.verdict_passed() else 0.0)


MAX_DEPTH = 64
"""Deepest nesting of objects and arrays a request body may have (OpenAI requests, tool schemas included, need a
dozen levels; deeper bodies would exhaust Python's recursion limit in the JSON parser or later)."""
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _parse(model: type[BaseModel], raw: bytes, what: str) -> Any:
    try:
        data = json.loads(raw)
    except RecursionError as err:  # nested ~1000 deep: the parser's own limit
        raise _too_deep(_deep_field(raw), what) from err
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON: {err}", fix=f"send a JSON object ({what})",
                       code="invalid_json") from err
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", fix=f"send a JSON object ({what})",
                       code="invalid_json")
    deep = _deep_path(data)
    if deep is not None:
        raise _too_deep(deep, what)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param or 'body'}: {first['msg']}", param=param, code="invalid_value",
                       fix=f"see {what} in docs/reference/http-api.md") from err


def _too_deep(where: str | None, what: str) -> ApiError:
    at = f" at {where}" if where else ""
    field = re.split(r"[.\[]", where, maxsplit=1)[0] if where else None
    return ApiError(400, f"the body nests objects and arrays more than {MAX_DEPTH} levels deep{at}", param=field,
                    code="nesting_too_deep", fix=f"send {what} with at most {MAX_DEPTH} levels of nesting")


def _deep_path(data: Any) -> str | None:
    """Where ``data`` first nests deeper than :data:`MAX_DEPTH` (e.g. ``metadata.a[0]``), or None (no recursion)."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            if isinstance(item, dict | list):
                where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
                if depth + 1 > MAX_DEPTH:
                    return _short(where)
                stack.append((item, depth + 1, where))
    return None


def _deep_field(raw: bytes) -> str | None:
    """The top-level field of a body too deep to parse, found by scanning its brackets (strings skipped)."""
    text = raw.decode("utf-8", "replace")
    depth, field = 0, None
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return field
        elif token in "]}":
            depth -= 1
        elif depth == 1 and text[match.end():match.end() + 64].lstrip().startswith(":"):
            field = token[1:-1][:64]
    return field


def _short(path: str, keep: int = 48) -> str:
    return path if len(path) <= keep else f"{path[:keep]}..."


def parse_chat_request(raw: bytes, *, text_only: bool = True) -> ChatRequest:
    """The request in ``raw``, or :class:`ApiError` 400 saying what is wrong and where. With ``text_only`` (models
    that read text: every backend but a multimodal ``litellm:`` one) a content part other than text (an image,
    audio, a file) is refused rather than dropped."""
    request: ChatRequest = _parse(ChatRequest, raw, "the chat completions request")
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
            kind = part.get("type")
            if kind != "text" and text_only:
                raise ApiError(400, f"messages[{i}].content[{j}] is a content part of type {str(kind)[:40]!r}, but "
                               "this model takes text only", param=f"messages[{i}].content[{j}].type",
                               code="unsupported_content",
                               fix="send text parts ({\"type\": \"text\", \"text\": ...}) or a string; describe "
                               "an image, audio or file in words")
            if kind == "text" and not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{i}].content[{j}] is a text part without a string 'text'",
                               param=f"messages[{i}].content[{j}].text", code="invalid_value",
                               fix='give each text part a string: {"type": "text", "text": "..."}')
    return request


def parse_feedback(raw: bytes) -> FeedbackRequest:
    feedback: FeedbackRequest = _parse(FeedbackRequest, raw, "the feedback object")
    return feedback


def message_text(message: ChatMessage) -> str:
    """A message's text: a string, or its text parts joined (other parts are dropped)."""
    if isinstance(message.content, str):
        return message.content
    if not message.content:
        return ""
    return "".join(str(p.get("text", "")) for p in message.content if p.get("type") == "text")


def completion_object(*, completion_id: str, created: int, model: str, text: str, finish_reason: str,
                      usage: dict[str, int], tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage}


def completion_chunk(*, completion_id: str, created: int, model: str, delta: dict[str, Any] | None,
                     finish_reason: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": None}]
    chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                             "model": model, "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def conversation(messages: Sequence[ChatMessage | dict[str, Any]]) -> list[Message]:
    """The request's messages (or a call log's copy of them) as the agent's conversation."""
    parsed = [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in messages]
    return [Message(role=m.role, text=message_text(m)) for m in parsed]
