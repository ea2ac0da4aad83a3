"""What answers a chat request: a prompt backend (any :class:`~procmem.llm.LLM`, the local model batched by the
MicroBatcher) or, for ``litellm:`` models, the messages themselves (tools pass through)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from procmem.core import GenerationConfig, ProcmemError
from procmem.llm import LLM
from procmem.serve.prompting import render_chat, with_memory
from procmem.serve.protocol import ChatMessage

__all__ = ["TURN_STOP", "Answer", "ChatBackend", "ChatInput", "LiteLLMChatBackend", "PromptBackend"]

TURN_STOP = "\nQuestion:"
"""A base model's answer always ends where it would start the next question."""


@dataclass(frozen=True)
class ChatInput:
    """A request as a backend needs it."""

    messages: Sequence[ChatMessage]
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


class ChatBackend(Protocol):
    model_id: str
    adapter_version: str | None
    supports_tools: bool

    def sent(self, request: ChatInput) -> str:
        """What the model is sent for ``request`` (recorded in the episode)."""
        ...

    def complete(self, request: ChatInput) -> Answer: ...

    def stream(self, request: ChatInput) -> Iterator[str]:
        """The answer in pieces; closing the iterator cancels the generation."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


class PromptBackend:
    """A completion :class:`~procmem.llm.LLM` behind the chat API (see :mod:`procmem.serve.prompting`)."""

    supports_tools = False

    def __init__(self, llm: LLM, *, tokenizer: Any = None, on_close: Any = None) -> None:
        self.llm = llm
        self.model_id = llm.model_id
        self.adapter_version = llm.adapter_version
        self._tokenizer = tokenizer
        self._on_close = on_close

    def sent(self, request: ChatInput) -> str:
        return render_chat(request.messages, request.memory)

    def _config(self, request: ChatInput) -> GenerationConfig:
        stops = request.generation.stop or ("\n",)
        return request.generation.model_copy(update={"stop": (*stops, TURN_STOP)})

    def complete(self, request: ChatInput) -> Answer:
        out = self.llm.generate([self.sent(request)], self._config(request))[0]
        return Answer(out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens)

    def stream(self, request: ChatInput) -> Iterator[str]:
        return self.llm.stream(self.sent(request), self._config(request))

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return (len(text) + 3) // 4

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()


class LiteLLMChatBackend:
    """A ``litellm:`` model called with the messages (memory in the system message); tools pass through.

    For a vLLM server started with ``--enable-lora``, :meth:`load_adapter` calls its runtime
    ``POST /v1/load_lora_adapter`` and later requests name the adapter as the model.
    """

    supports_tools = True

    def __init__(self, model: str, *, api_base: str | None = None, adapter_version: str | None = None) -> None:
        from procmem.llm import LiteLLM

        self._llm = LiteLLM(model, api_base)  # checks the provider and its API key now
        self.model_id = model
        self.adapter_version = adapter_version
        self._served = model

    def sent(self, request: ChatInput) -> str:
        return json.dumps(with_memory(request.messages, request.memory), ensure_ascii=False)

    def _kwargs(self, request: ChatInput, stream: bool) -> dict[str, Any]:
        gen = request.generation
        kwargs: dict[str, Any] = {"model": self._served, "messages": with_memory(request.messages, request.memory),
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

    def with_adapter(self, version: str, path: str) -> LiteLLMChatBackend:
        """A backend for the same server that answers with LoRA ``version``, loaded at run time by vLLM's
        ``POST /v1/load_lora_adapter`` (the server needs ``--enable-lora`` and
        ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); requests then name the adapter as the model."""
        import httpx

        if not self._llm.api_base:
            raise ProcmemError("no api_base to load the adapter into", where=f"litellm:{self.model_id}",
                               fix="set PROCMEM_API_BASE to the vLLM server, e.g. http://localhost:8000/v1")
        base = self._llm.api_base.rstrip("/")
        response = httpx.post(f"{base}/load_lora_adapter", json={"lora_name": version, "lora_path": path},
                              timeout=120)
        if response.status_code >= 400:
            raise ProcmemError(f"vLLM refused the adapter: {response.text[:200]}", where=base,
                               fix="start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
        other = LiteLLMChatBackend(self.model_id, api_base=self._llm.api_base, adapter_version=version)
        other._served = f"{self.model_id.split('/', 1)[0]}/{version}"
        return other

    def close(self) -> None:
        return None
