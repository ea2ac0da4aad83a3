"""What answers a chat request over the session's current policy: a prompt backend (any
:class:`~procmem.llm.LLM`; the local model batched by the policy host) or, for ``litellm:`` models, the messages
themselves (tools pass through). :func:`backend_for` picks one per request; the prompt formats are the agent's
(:mod:`procmem.agent.conversation`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from procmem.agent.conversation import TURN_STOP, Message, render_chat, with_memory
from procmem.core import GenerationConfig, ProcmemError
from procmem.llm import LLM, LiteLLM

__all__ = ["Answer", "ChatBackend", "ChatInput", "LiteLLMChatBackend", "PromptBackend", "backend_for"]


@dataclass(frozen=True)
class ChatInput:
    """A request as a backend needs it."""

    messages: Sequence[Message]
    """The conversation, as text."""
    raw: Sequence[dict[str, Any]]
    """The messages as the client sent them (a chat backend passes them on, tool calls included)."""
    memory: str
    generation: GenerationConfig
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def backend_for(policy: LLM) -> ChatBackend:
    """The backend that answers with ``policy`` (the session's current one, read once per request)."""
    inner = getattr(policy, "llm", policy)  # a MicroBatcher's model
    if isinstance(inner, LiteLLM):
        return LiteLLMChatBackend(inner)
    return PromptBackend(policy, tokenizer=getattr(inner, "tokenizer", None))


class ChatBackend(Protocol):
    model_id: str
    adapter_version: str | None
    supports_tools: bool

    def sent(self, request: ChatInput) -> str:
        """What the model is sent for ``request`` (recorded in the episode)."""
        ...

    def check(self, request: ChatInput) -> None:
        """Refuse a request the model cannot take (a prompt over its context: ContextLengthError) before any
        answer starts, so that a stream can still be answered with a 400."""
        ...

    def complete(self, request: ChatInput) -> Answer: ...

    def stream(self, request: ChatInput) -> Iterator[str]:
        """The answer in pieces; closing the iterator cancels the generation."""
        ...

    def count_tokens(self, text: str) -> int: ...


class PromptBackend:
    """A completion :class:`~procmem.llm.LLM` behind the chat API (its prompt:
    :func:`~procmem.agent.conversation.render_chat`)."""

    supports_tools = False

    def __init__(self, llm: LLM, *, tokenizer: Any = None) -> None:
        self.llm = llm
        self.model_id = llm.model_id
        self.adapter_version = llm.adapter_version
        self._tokenizer = tokenizer

    def sent(self, request: ChatInput) -> str:
        return render_chat(request.messages, request.memory)

    def _config(self, request: ChatInput) -> GenerationConfig:
        stops = request.generation.stop or ("\n",)
        return request.generation.model_copy(update={"stop": (*stops, TURN_STOP)})

    def check(self, request: ChatInput) -> None:
        check = getattr(self.llm, "check_prompts", None)
        if check is not None:
            check([self.sent(request)], self._config(request))

    def complete(self, request: ChatInput) -> Answer:
        out = self.llm.generate([self.sent(request)], self._config(request))[0]
        return Answer(out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens)

    def stream(self, request: ChatInput) -> Iterator[str]:
        return self.llm.stream(self.sent(request), self._config(request))

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return (len(text) + 3) // 4


class LiteLLMChatBackend:
    """A ``litellm:`` model called with the messages (memory in the system message); tools pass through. A vLLM
    server's runtime LoRA adapter (:meth:`~procmem.llm.LiteLLM.with_adapter`) is named as the model."""

    supports_tools = True

    def __init__(self, llm: LiteLLM) -> None:
        self._llm = llm
        self.model_id = llm.model_id
        self.adapter_version = llm.adapter_version

    def sent(self, request: ChatInput) -> str:
        return json.dumps(with_memory(request.raw, request.memory), ensure_ascii=False)

    def check(self, request: ChatInput) -> None:
        """The provider judges the context itself."""

    def _kwargs(self, request: ChatInput, stream: bool) -> dict[str, Any]:
        gen = request.generation
        kwargs: dict[str, Any] = {"model": self._llm.served, "messages": with_memory(request.raw, request.memory),
                                  "max_tokens": gen.max_tokens, "temperature": gen.temperature, "stream": stream,
                                  "timeout": self._llm.timeout_s, "drop_params": True}
        if gen.temperature > 0:
            kwargs["top_p"] = gen.top_p
        if gen.seed is not None:
            kwargs["seed"] = gen.seed
        if gen.stop:
            kwargs["stop"] = list(gen.stop)[:4]
        if request.tools:
            kwargs["tools"] = request.tools
            if request.tool_choice is not None:
                kwargs["tool_choice"] = request.tool_choice
        if self._llm.api_base:
            kwargs["api_base"] = self._llm.api_base
        return kwargs

    def complete(self, request: ChatInput) -> Answer:
        import litellm

        try:
            response = litellm.completion(**self._kwargs(request, False))
        except Exception as err:
            raise ProcmemError(f"the backend failed: {str(err).splitlines()[0] if str(err) else err}",
                               where=f"litellm:{self.model_id}", fix="check the backend server") from err
        choice = response.choices[0]
        calls = getattr(choice.message, "tool_calls", None)
        tool_calls = [c.model_dump() if hasattr(c, "model_dump") else dict(c) for c in calls] if calls else None
        usage = getattr(response, "usage", None)
        return Answer(choice.message.content or "", choice.finish_reason or "stop",
                      int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0),
                      tool_calls=tool_calls)

    def stream(self, request: ChatInput) -> Iterator[str]:
        import litellm

        chunks = litellm.completion(**self._kwargs(request, True))
        try:
            for chunk in chunks:
                if chunk.choices and (piece := chunk.choices[0].delta.content):
                    yield piece
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()

    def count_tokens(self, text: str) -> int:
        return (len(text) + 3) // 4
