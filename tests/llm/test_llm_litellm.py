"""The litellm backend against a local OpenAI-compatible stub server (the paid API is the one fake)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from openai_stub import OpenAIStub

from procmem.core import GenerationConfig, ProcmemError
from procmem.llm import LiteLLM
from procmem.testing import LLMConformance

PROMPTS, GREEDY = LLMConformance.PROMPTS, LLMConformance.GREEDY

MODEL = "openai/stub-model"


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(api_key="test-key") as server:
        yield server


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


class TestLiteLLMConformance(LLMConformance):
    @pytest.fixture
    def llm(self, stub: OpenAIStub, keyed: None) -> LiteLLM:
        return LiteLLM(MODEL, api_base=stub.api_base)


def test_requests_carry_the_generation_config_as_a_chat(stub: OpenAIStub, keyed: None) -> None:
    llm = LiteLLM(MODEL, api_base=stub.api_base)
    config = GenerationConfig(max_tokens=7, temperature=0.5, top_p=0.9, seed=3, stop=("\n", "."))
    stub.requests.clear()
    g = llm.generate([PROMPTS[0]], config)[0]
    (request,) = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["model"] == "stub-model"
    assert request["messages"] == [{"role": "user", "content": PROMPTS[0]}]
    assert (request["max_tokens"], request["temperature"], request["top_p"], request["seed"]) == (7, 0.5, 0.9, 3)
    assert request["stop"] == ["\n", "."]
    assert g.prompt_tokens == len(PROMPTS[0].split())  # the server's usage figures


def test_more_stop_strings_than_the_api_takes_are_applied_locally(stub: OpenAIStub, keyed: None) -> None:
    llm = LiteLLM(MODEL, api_base=stub.api_base)
    full = llm.generate([PROMPTS[1]], GREEDY)[0].text
    last = full.strip()[-1]
    stops = ("w", "x", "y", "z", last)  # only the fifth occurs
    stub.requests.clear()
    g = llm.generate([PROMPTS[1]], GREEDY.model_copy(update={"stop": stops}))[0]
    assert stub.requests[0]["stop"] == ["w", "x", "y", "z"]
    assert g.text == full[: full.find(last)] and g.finish_reason == "stop"


def test_the_api_base_comes_from_the_environment(stub: OpenAIStub, keyed: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCMEM_API_BASE", stub.api_base)
    llm = LiteLLM(MODEL)
    assert llm.api_base == stub.api_base
    assert llm.generate([PROMPTS[0]], GREEDY)[0].completion_tokens == GREEDY.max_tokens


def test_the_text_completion_route_sends_the_raw_prompt(stub: OpenAIStub, keyed: None) -> None:
    llm = LiteLLM("text-completion-openai/stub-base", api_base=stub.api_base)
    stub.requests.clear()
    g = llm.generate([PROMPTS[0]], GREEDY)[0]
    assert stub.requests[0]["path"] == "/v1/completions" and stub.requests[0]["prompt"] in (PROMPTS[0], [PROMPTS[0]])
    assert g.text and g.completion_tokens == GREEDY.max_tokens


def test_a_missing_api_key_is_one_line_naming_the_variable(stub: OpenAIStub,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProcmemError, match="OPENAI_API_KEY") as err:
        LiteLLM(MODEL, api_base=stub.api_base)
    assert "\n" not in str(err.value) and "export OPENAI_API_KEY" in str(err.value)


def test_a_rejected_api_key_is_one_line(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0123456789abcdef")
    llm = LiteLLM(MODEL, api_base=stub.api_base)
    with pytest.raises(ProcmemError, match="rejected the API key") as err:
        llm.generate([PROMPTS[0]], GREEDY)
    assert "\n" not in str(err.value)
    assert "sk-wrong-key-0123456789abcdef" not in str(err.value), "the key leaked into the message"


def test_an_unreachable_server_is_one_line_naming_it(keyed: None) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api_base = f"http://127.0.0.1:{port}/v1"
    llm = LiteLLM(MODEL, api_base=api_base, num_retries=0)
    with pytest.raises(ProcmemError, match="cannot reach") as err:
        llm.generate([PROMPTS[0]], GREEDY)
    assert api_base in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ProcmemError, match="cannot reach"):
        list(llm.stream(PROMPTS[0], GREEDY))
