"""LocalLLM on the real tiny model: the conformance suite, then batching, sampling, adapters and errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from procmem.core import GenerationConfig, ProcmemError
from procmem.llm import LocalLLM, load_model_and_tokenizer
from procmem.testing import LLMConformance

PROMPTS, GREEDY = LLMConformance.PROMPTS, LLMConformance.GREEDY


class TestLocalLLMConformance(LLMConformance):
    @pytest.fixture
    def llm(self, local_tiny: LocalLLM) -> LocalLLM:
        return local_tiny


def test_sub_batches_with_left_padding_give_the_same_greedy_text_as_one_prompt_at_a_time(
        tiny_model_dir: Path) -> None:
    llm = LocalLLM(tiny_model_dir, max_batch_size=2)
    prompts = [*PROMPTS, "Question: What is 17 + 25?\nAnswer:"]
    alone = [llm.generate([p], GREEDY)[0] for p in prompts]
    assert llm.generate(prompts, GREEDY) == alone
    assert llm.generate(list(reversed(prompts)), GREEDY) == list(reversed(alone))
    assert llm.tokenizer.padding_side == "left"


def test_token_counts_exclude_padding_and_count_every_new_token(local_tiny: LocalLLM) -> None:
    generations = local_tiny.generate(PROMPTS, GREEDY)
    for prompt, g in zip(PROMPTS, generations, strict=True):
        assert g.prompt_tokens == len(prompt.encode())  # the tiny tokenizer is byte-level
        assert g.completion_tokens == GREEDY.max_tokens or g.finish_reason == "stop"


def test_sampling_is_reproducible_with_a_seed_and_varies_without(local_tiny: LocalLLM) -> None:
    sampled = GenerationConfig(max_tokens=24, temperature=1.0, stop=(), seed=7)
    first = local_tiny.generate(PROMPTS, sampled)
    assert local_tiny.generate(PROMPTS, sampled) == first
    other = local_tiny.generate(PROMPTS, sampled.model_copy(update={"seed": 8}))
    assert [g.text for g in other] != [g.text for g in first]
    assert [g.text for g in first] != [g.text for g in local_tiny.generate(PROMPTS, GREEDY.model_copy(
        update={"max_tokens": 24}))]


def test_a_tiny_nucleus_samples_the_greedy_token(local_tiny: LocalLLM) -> None:
    nucleus = GenerationConfig(max_tokens=16, temperature=1.0, top_p=1e-6, stop=(), seed=1)
    assert [g.text for g in local_tiny.generate(PROMPTS, nucleus)] == \
        [g.text for g in local_tiny.generate(PROMPTS, GREEDY)]


def test_concurrent_callers_get_their_own_results(local_tiny: LocalLLM) -> None:
    expected = {p: local_tiny.generate([p], GREEDY)[0] for p in PROMPTS}
    got: dict[str, object] = {}

    def call(prompt: str) -> None:
        got[prompt] = local_tiny.generate([prompt], GREEDY)[0]

    threads = [threading.Thread(target=call, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_an_empty_prompt_is_completed_from_bos(local_tiny: LocalLLM) -> None:
    g = local_tiny.generate([""], GREEDY)[0]
    assert g.prompt_tokens == 1 and g.completion_tokens == GREEDY.max_tokens


def test_the_models_own_generation_defaults_do_not_change_greedy_decoding(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    import shutil

    from transformers import GenerationConfig as HFGenerationConfig

    copy = tmp_path / "tiny-with-defaults"
    shutil.copytree(tiny_model_dir, copy)
    HFGenerationConfig(do_sample=True, top_k=3, repetition_penalty=5.0, eos_token_id=1, pad_token_id=0,
                       bos_token_id=2).save_pretrained(copy)
    assert LocalLLM(copy).generate(PROMPTS, GREEDY) == LocalLLM(tiny_model_dir).generate(PROMPTS, GREEDY)


def test_an_adapter_changes_the_output_and_names_the_version(tiny_model_dir: Path, adapter_dir: Path,
                                                             local_tiny: LocalLLM) -> None:
    adapted = LocalLLM(tiny_model_dir, adapter=adapter_dir)
    assert adapted.adapter_version == "v1" and local_tiny.adapter_version is None
    texts = [g.text for g in adapted.generate(PROMPTS, GREEDY)]
    assert texts != [g.text for g in local_tiny.generate(PROMPTS, GREEDY)]
    trained, _ = load_model_and_tokenizer(tiny_model_dir, adapter=adapter_dir, trainable=False)
    assert not hasattr(trained, "peft_config"), "inference merges the adapter"


def test_a_merged_adapter_generates_like_the_unmerged_peft_model(tiny_model_dir: Path, adapter_dir: Path) -> None:
    peft_model, tokenizer = load_model_and_tokenizer(tiny_model_dir, adapter=adapter_dir, trainable=True)
    assert hasattr(peft_model, "peft_config") and peft_model.training
    assert any(p.requires_grad for p in peft_model.parameters())
    unmerged = LocalLLM.from_loaded(peft_model.eval(), tokenizer, model_id="tiny", adapter_version="v1")
    merged = LocalLLM(tiny_model_dir, adapter=adapter_dir)
    assert [g.text for g in unmerged.generate(PROMPTS, GREEDY)] == [g.text for g in merged.generate(PROMPTS, GREEDY)]


def test_loading_for_training_keeps_the_tokenizer_left_padded(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, trainable=True)
    assert model.training and tokenizer.padding_side == "left" and tokenizer.pad_token is not None


def test_bad_paths_raise_one_line_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ProcmemError, match="not a Hugging Face model directory") as err:
        LocalLLM(tmp_path)
    assert "\n" not in str(err.value) and err.value.fix
    with pytest.raises(ProcmemError, match="not a LoRA adapter directory") as err:
        LocalLLM(tiny_model_dir, adapter=tmp_path)
    assert err.value.where == "--adapter"
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ProcmemError, match="cannot load the model"):
        LocalLLM(tmp_path)


def test_a_grammar_is_refused_plainly_not_ignored(local_tiny: LocalLLM) -> None:
    """transformers cannot enforce a grammar: it says so (callers check ``supports_grammar`` and fall back)."""
    assert not getattr(local_tiny, "supports_grammar", False)
    bound = GREEDY.model_copy(update={"grammar": 'root ::= "yes"'})
    with pytest.raises(ProcmemError, match="cannot constrain decoding") as raised:
        local_tiny.generate([PROMPTS[0]], bound)
    assert raised.value.where == "GenerationConfig.grammar" and "llama.cpp" in (raised.value.fix or "")
