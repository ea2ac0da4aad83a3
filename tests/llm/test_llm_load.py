"""load_llm's model specs, the bundled-model cache, and (marker ``bundled``) the real Gemma 3 270M."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from procmem.core import GenerationConfig, ProcmemError
from procmem.llm import LiteLLM, LlamaCppLLM, LocalLLM, llama_cpp_available, load_llm
from procmem.llm.bundled import (
    BUNDLED_DIR_NAME,
    BUNDLED_GGUF_NAME,
    MODELS_CACHE_ENV,
    bundled_models_dir,
    ensure_bundled_model,
)

GREEDY = GenerationConfig(max_tokens=8, stop=())


def test_local_tiny_is_built_under_the_models_dir(tmp_path: Path) -> None:
    llm = load_llm("local:tiny", models_dir=tmp_path / "models")
    assert isinstance(llm, LocalLLM) and llm.model_id == "tiny" and llm.adapter_version is None
    assert (tmp_path / "models" / "tiny" / "config.json").is_file()
    assert llm.generate(["hi"], GREEDY)[0].completion_tokens == GREEDY.max_tokens


def test_a_local_path_loads_that_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    llm = load_llm(f"local:{tiny_model_dir}", models_dir=tmp_path)
    assert isinstance(llm, LocalLLM) and llm.model_id == tiny_model_dir.name


@pytest.mark.parametrize("spec", ["gpt-4o", "local:", "litellm:", "remote:x", "", "LOCAL:tiny"])
def test_an_unknown_spec_names_it_and_lists_the_valid_forms(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ProcmemError) as err:
        load_llm(spec, models_dir=tmp_path)
    message = str(err.value)
    assert repr(spec) in message and err.value.where == "--model" and "\n" not in message
    for form in ("local:default", "local:tiny", "local:/path/to/hf_model_dir", "litellm:"):
        assert form in message


def test_a_missing_or_non_model_directory_names_the_spec(tmp_path: Path) -> None:
    with pytest.raises(ProcmemError, match="no such model directory") as err:
        load_llm(f"local:{tmp_path / 'nope'}", models_dir=tmp_path)
    assert f"local:{tmp_path / 'nope'}" in str(err.value) and "local:default" in str(err.value)
    with pytest.raises(ProcmemError, match=r"no config\.json"):
        load_llm(f"local:{tmp_path}", models_dir=tmp_path)


def test_an_adapter_goes_with_local_models_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with pytest.raises(ProcmemError, match="only be applied to a local model"):
        load_llm("litellm:openai/gpt-4o-mini", models_dir=tmp_path, adapter=tmp_path)
    assert isinstance(load_llm("litellm:openai/gpt-4o-mini", models_dir=tmp_path), LiteLLM)


def test_a_litellm_model_without_a_known_provider_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(ProcmemError, match="does not know the provider") as err:
        load_llm("litellm:nosuchprovider/some-model", models_dir=tmp_path)
    assert "openai/" in str(err.value) and "\n" not in str(err.value)


def test_a_litellm_spec_without_its_api_key_fails_before_any_request(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProcmemError, match="missing API key for openai/gpt-4o-mini"):
        load_llm("litellm:openai/gpt-4o-mini", models_dir=tmp_path)


def test_the_shared_models_cache_wins_over_the_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    tiny_model_dir: Path) -> None:
    monkeypatch.delenv(MODELS_CACHE_ENV, raising=False)
    assert bundled_models_dir(tmp_path / "home-models") == tmp_path / "home-models"
    cache = tmp_path / "cache"
    monkeypatch.setenv(MODELS_CACHE_ENV, str(cache))
    assert bundled_models_dir(tmp_path / "home-models") == cache
    # A finished conversion in the cache is used as is (the tiny model stands in for the 1.1 GB copy).
    shutil.copytree(tiny_model_dir, cache / BUNDLED_DIR_NAME)
    assert ensure_bundled_model(tmp_path / "home-models") == cache / BUNDLED_DIR_NAME
    llm = load_llm("local:default", models_dir=tmp_path / "home-models", engine="transformers")
    assert isinstance(llm, LocalLLM) and llm.model_id == "gemma-3-270m"
    assert not (tmp_path / "home-models").exists()


@pytest.mark.skipif(not llama_cpp_available(), reason="needs llama-cpp-python")
def test_local_default_runs_the_cached_gguf_on_llama_cpp_when_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path) -> None:
    monkeypatch.setenv(MODELS_CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    shutil.copy(tiny_gguf, tmp_path / "cache" / BUNDLED_GGUF_NAME)  # the tiny model stands in for the 245 MB file
    llm = load_llm("local:default", models_dir=tmp_path / "home-models")
    assert isinstance(llm, LlamaCppLLM) and llm.model_id == "gemma-3-270m"
    assert llm.generate(["hi"], GREEDY)[0].completion_tokens == GREEDY.max_tokens
    llm.close()
    assert not (tmp_path / "home-models").exists()


def test_an_unwritable_models_dir_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODELS_CACHE_ENV, raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ProcmemError, match="cannot write the bundled model") as err:
        ensure_bundled_model(blocker / "models")
    assert err.value.fix and "\n" not in str(err.value)


@pytest.mark.bundled
@pytest.mark.parametrize("engine", ["transformers", "llamacpp"])
def test_the_bundled_gemma_converts_once_then_loads_and_generates(tmp_path_factory: pytest.TempPathFactory,
                                                                  engine: str) -> None:
    """Converts into $PROCMEM_MODELS_CACHE when set (reused across runs), else into a temp dir (~40 s)."""
    if engine == "llamacpp" and not llama_cpp_available():
        pytest.skip("needs llama-cpp-python")
    models_dir = tmp_path_factory.mktemp("models")
    path = ensure_bundled_model(models_dir)
    assert (path / "config.json").is_file() and path.name == BUNDLED_DIR_NAME
    assert (os.environ.get(MODELS_CACHE_ENV) is not None) or path.parent == models_dir
    llm = load_llm("local:default", models_dir=models_dir, engine=engine)
    assert llm.model_id == "gemma-3-270m"
    prompts = ["def reverse_string(s):\n    ", "Question: What is the capital of France?\nAnswer:"]
    code, capital = llm.generate(prompts, GenerationConfig(max_tokens=12))
    assert "s[::-1]" in code.text  # greedy: the body a base model writes for this stub
    assert "Paris" in capital.text
    assert code.prompt_tokens > 1 and code.finish_reason == "stop"
