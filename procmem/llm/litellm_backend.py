"""Any model litellm can call (OpenAI, Ollama, vLLM, ...) behind the :class:`~procmem.llm.LLM` seam.

Requests go through ``litellm.completion`` as a chat with ONE user message holding the rendered prompt
(``procmem.core.render_prompt``). Chat is what every provider serves (OpenAI's current models have no
text-completion endpoint), and the prompt format already asks for a one-line answer. For a base model
behind an OpenAI-compatible server, use litellm's text-completion route instead, e.g.
``litellm:text-completion-openai/<model>`` with an api_base: litellm then sends the prompt as raw text.

litellm is imported lazily (it takes seconds and, unless told otherwise, fetches a price list from the
internet), so local-only runs never pay for it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from procmem.core.config import GenerationConfig
from procmem.core.errors import ProcmemError
from procmem.core.llm import Generation
from procmem.core.redact import redact
from procmem.llm._stops import cut_at_stop, filter_stream, refuse_grammar

__all__ = ["API_BASE_ENV", "LiteLLM"]

API_BASE_ENV = "PROCMEM_API_BASE"
_MAX_API_STOPS = 4  # OpenAI accepts at most 4 stop sequences; the rest are applied locally
_CONNECTION = re.compile(r"(?i)connection (error|refused|reset)|connecterror|name or service not known|"
                         r"failed to establish|nodename nor servname|timed? ?out|unreachable")
_MISSING_KEY = re.compile(r"(?i)missing credentials|api_key client option must be set|no api key")


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # pydantic warns about litellm's own TypedDicts on first use; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"Item '.*' on TypedDict class", category=UserWarning)
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on errors
    return litellm


class LiteLLM:
    """A litellm model string (``openai/gpt-4o-mini``, ``ollama/llama3``, ``hosted_vllm/<m>``, ...).

    ``api_base`` defaults to ``$PROCMEM_API_BASE``. A missing API key is reported when the object is
    built; an unreachable server or a rejected key on the first request. Both as a
    :class:`~procmem.core.ProcmemError` with one line and a fix.
    """

    def __init__(self, model: str, api_base: str | None = None, *, api_key: str | None = None,
                 timeout_s: float = 120.0, num_retries: int = 1, max_concurrency: int = 8) -> None:
        if not model.strip():
            raise ProcmemError("empty litellm model string", where="--model",
                               fix="use litellm:<provider>/<model>, e.g. litellm:openai/gpt-4o-mini")
        self._model = model.strip()
        self.served = self._model
        """The model name requests send: the model, or a LoRA adapter a vLLM server loaded (:meth:`with_adapter`)."""
        self._adapter_version: str | None = None
        self.api_base = api_base or os.environ.get(API_BASE_ENV) or None
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.num_retries = num_retries
        self.max_concurrency = max_concurrency
        self._litellm = _litellm()
        self._check_environment()

    @property
    def model_id(self) -> str:
        return self._model

    @property
    def adapter_version(self) -> str | None:
        return self._adapter_version

    def with_adapter(self, version: str, path: str) -> LiteLLM:
        """The same server answering with LoRA ``version``, loaded at run time by vLLM's
        ``POST /v1/load_lora_adapter`` (the server needs ``--enable-lora`` and
        ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); requests then name the adapter as the model."""
        import httpx

        if not self.api_base:
            raise ProcmemError("no api_base to load the adapter into", where=f"litellm:{self._model}",
                               fix=f"set {API_BASE_ENV} to the vLLM server, e.g. http://localhost:8000/v1")
        base = self.api_base.rstrip("/")
        try:
            response = httpx.post(f"{base}/load_lora_adapter", json={"lora_name": version, "lora_path": path},
                                  timeout=120)
        except httpx.HTTPError as err:
            raise ProcmemError(f"cannot reach {base}: {err}", where=f"litellm:{self._model}",
                               fix="start the vLLM server or fix the address") from err
        if response.status_code >= 400:
            raise ProcmemError(f"vLLM refused the adapter: {response.text[:200]}", where=base,
                               fix="start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
        other = LiteLLM(self._model, self.api_base, api_key=self._api_key, timeout_s=self.timeout_s,
                        num_retries=self.num_retries, max_concurrency=self.max_concurrency)
        other.served = f"{self._model.split('/', 1)[0]}/{version}"
        other._adapter_version = version
        return other

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        """Complete every prompt (concurrently, up to ``max_concurrency`` requests in flight)."""
        refuse_grammar(config, "LiteLLM")
        prompts = list(prompts)
        if len(prompts) <= 1:
            return [self._complete(p, config) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(lambda ip: self._complete(ip[1], config.for_prompt(ip[0])), enumerate(prompts)))

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        refuse_grammar(config, "LiteLLM")
        chunks = self._call(prompt, config, stream=True)
        try:
            yield from filter_stream(self._deltas(chunks), config.stop)
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()

    # ------------------------------------------------------------------------------------ helpers

    def _complete(self, prompt: str, config: GenerationConfig) -> Generation:
        response = self._call(prompt, config, stream=False)
        choice = response.choices[0]
        text, cut = cut_at_stop(choice.message.content or "", config.stop)
        usage = getattr(response, "usage", None)
        prompt_tokens = _count(getattr(usage, "prompt_tokens", None), prompt)
        completion_tokens = _count(getattr(usage, "completion_tokens", None), text)
        finish: Literal["stop", "length"] = "length" if choice.finish_reason == "length" and not cut else "stop"
        return Generation(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          finish_reason=finish)

    def _deltas(self, chunks: Any) -> Iterator[str]:
        try:
            for chunk in chunks:
                if chunk.choices and (piece := chunk.choices[0].delta.content):
                    yield piece
        except ProcmemError:
            raise
        except Exception as err:
            raise self._error(err) from err

    def _call(self, prompt: str, config: GenerationConfig, *, stream: bool) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.served,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
            "stream": stream,
            "timeout": self.timeout_s,
            "num_retries": self.num_retries,
            "drop_params": True,  # providers that lack a parameter (seed, top_p) ignore it
        }
        if config.temperature > 0:
            kwargs["top_p"] = config.top_p
        if config.seed is not None:
            kwargs["seed"] = config.seed
        stops = [s for s in config.stop if s][:_MAX_API_STOPS]
        if stops:
            kwargs["stop"] = stops
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        try:
            return self._litellm.completion(**kwargs)
        except Exception as err:
            raise self._error(err) from err

    def _check_environment(self) -> None:
        """Fail early, before any work is done, on an unknown provider or a provider's API key not set."""
        try:
            self._litellm.get_llm_provider(model=self._model, api_base=self.api_base)
            if self._api_key:
                return
            report = self._litellm.validate_environment(model=self._model, api_base=self.api_base)
        except Exception as err:
            raise self._error(err) from err
        keys = [k for k in report.get("missing_keys", []) if re.search(r"KEY|TOKEN|SECRET", k)]
        if keys:
            raise ProcmemError(f"missing API key for {self._model}: {', '.join(keys)} is not set",
                               where=f"litellm:{self._model}",
                               fix=f"export {keys[0]}=... (any value for a local server that ignores keys)")

    def _error(self, err: Exception) -> ProcmemError:
        """One clear line for what went wrong with the provider."""
        exc = self._litellm.exceptions
        message = redact(_first_line(err))
        where = f"litellm:{self._model}"
        server = self.api_base or "the provider"
        if isinstance(err, exc.AuthenticationError | exc.PermissionDeniedError):
            return ProcmemError(f"the provider rejected the API key: {message}", where=where,
                                fix="check the provider's API key variable (e.g. OPENAI_API_KEY)")
        if _MISSING_KEY.search(message):
            return ProcmemError(f"missing API key: {message}", where=where,
                                fix="export the provider's API key variable (e.g. OPENAI_API_KEY)")
        if isinstance(err, exc.APIConnectionError | exc.Timeout) or _CONNECTION.search(message):
            return ProcmemError(f"cannot reach {server}: {message}", where=where,
                                fix=f"start the server or fix the address (${API_BASE_ENV}), check the network")
        if isinstance(err, exc.NotFoundError):
            return ProcmemError(f"model not found: {message}", where=where,
                                fix="check the model name the provider serves")
        if "LLM Provider NOT provided" in message:
            return ProcmemError(f"litellm does not know the provider of {self._model!r}", where=where,
                                fix="prefix the model with its provider, e.g. openai/, ollama/ or hosted_vllm/")
        return ProcmemError(f"request failed: {message}", where=where,
                            fix="see the provider's message; retry, or check the model string and api_base")


def _count(reported: int | None, text: str) -> int:
    """The provider's token count, or a rough one (~4 characters a token) when it reports none."""
    if reported is not None:
        return int(reported)
    return (len(text) + 3) // 4


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
