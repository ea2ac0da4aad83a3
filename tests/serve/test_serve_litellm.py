"""The messages backend for ``litellm:`` models, against the local OpenAI-compatible stub (it stands in for a
paid API): memory in the system message, tools passed through, streaming, and vLLM's runtime adapter load."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "llm"))
from openai_stub import OpenAIStub

from procmem.agent.conversation import Message
from procmem.core import GenerationConfig, ProcmemError
from procmem.llm import LiteLLM
from procmem.serve.backends import ChatInput, LiteLLMChatBackend

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIStub]:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with OpenAIStub(api_key="test-key") as server:
        yield server


def _input(memory: str = "Question: 1+1?\nAnswer: 2") -> ChatInput:
    raw = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    return ChatInput([Message(m["role"], m["content"]) for m in raw], raw, memory,
                     GenerationConfig(max_tokens=5, stop=()), tools=TOOLS, tool_choice="auto")


def test_memory_goes_in_the_system_message_and_tools_pass_through(stub: OpenAIStub) -> None:
    backend = LiteLLMChatBackend(LiteLLM("openai/stub-model", api_base=stub.api_base))
    answer = backend.complete(_input())
    sent = stub.requests[-1]
    assert answer.text and answer.completion_tokens > 0
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto"
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][0]["content"] == ("Be brief.\n\n<procmem-memory>\nQuestion: 1+1?\nAnswer: 2\n"
                                              "</procmem-memory>")
    assert "".join(backend.stream(_input())) == answer.text


def test_a_vllm_adapter_is_loaded_at_run_time_and_a_refusal_is_one_clear_error(stub: OpenAIStub) -> None:
    llm = LiteLLM("hosted_vllm/base-model", api_base=stub.api_base)
    with pytest.raises(ProcmemError, match=r"vLLM refused the adapter.*--enable-lora"):
        llm.with_adapter("v2", "/adapters/v2")  # the stub has no such route: as a vLLM without --enable-lora
    assert stub.requests[-1] == {"path": "/v1/load_lora_adapter", "lora_name": "v2", "lora_path": "/adapters/v2"}
