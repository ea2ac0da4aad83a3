"""The llama.cpp engine on the tiny model (as an F32 GGUF): the conformance suite, continuous batching
(each sequence equals its solo run; joining mid-batch, stop strings, errors and cancelled streams leave the
others unharmed), sampling, adapters swapped at run time, parity with transformers, and load_llm wiring."""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs llama-cpp-python (pip install procmem[llamacpp])")

from procmem.core import GenerationConfig, ProcmemError
from procmem.llm import EngineConfig, LlamaCppLLM, LocalLLM, MicroBatcher, load_llm
from procmem.llm.gguf_io import GGUF_LORA_NAME, write_gguf_lora
from procmem.testing import LLMConformance

PROMPTS, GREEDY = LLMConformance.PROMPTS, LLMConformance.GREEDY

SLOTS = 4
CONTEXT = 256
MORE_PROMPTS = [*PROMPTS, "Question: What is 17 + 25?\nAnswer:", "def reverse_string(s):", "abc abc abc", "Zebra"]


@pytest.fixture(scope="module")
def engine(tiny_gguf: Path) -> Iterator[LlamaCppLLM]:
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=SLOTS, n_ctx_per_seq=CONTEXT,
                                                                      n_threads=1)) as llm:
        yield llm


class TestLlamaCppConformance(LLMConformance):
    @pytest.fixture
    def llm(self, engine: LlamaCppLLM) -> LlamaCppLLM:
        return engine


def _solo(engine: LlamaCppLLM, prompt: str, config: GenerationConfig = GREEDY) -> Any:
    return engine.generate([prompt], config)[0]


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run each call on its own thread, all released at once; results (or raised errors) in order."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_each_sequence_of_a_batch_equals_its_solo_run(engine: LlamaCppLLM) -> None:
    alone = [_solo(engine, p) for p in MORE_PROMPTS]
    assert len(MORE_PROMPTS) > SLOTS, "more prompts than slots: later ones join as earlier ones leave"
    assert engine.generate(MORE_PROMPTS, GREEDY) == alone
    lengths = [GREEDY.model_copy(update={"max_tokens": 3 + 5 * i}) for i in range(len(MORE_PROMPTS))]
    threaded = _concurrently([lambda p=p, c=c: engine.generate([p], c)[0] for p, c in zip(MORE_PROMPTS, lengths,
                                                                                           strict=True)])
    assert threaded == [_solo(engine, p, c) for p, c in zip(MORE_PROMPTS, lengths, strict=True)]


def test_a_request_joining_mid_batch_leaves_the_running_one_unharmed(engine: LlamaCppLLM) -> None:
    long_config = GREEDY.model_copy(update={"max_tokens": 48})
    expected_long = _solo(engine, PROMPTS[2], long_config).text
    expected_joiner = _solo(engine, PROMPTS[0])
    stream = engine.stream(PROMPTS[2], long_config)
    first = next(stream)  # the long sequence is decoding now
    joiner = engine.generate([PROMPTS[0]], GREEDY)[0]  # joins, runs beside it, leaves first
    rest = "".join(stream)
    assert joiner == expected_joiner
    assert first + rest == expected_long


def test_a_stop_string_in_one_request_leaves_the_others_unharmed(engine: LlamaCppLLM) -> None:
    full = _solo(engine, PROMPTS[0])
    stop = next(c for c in full.text[2:] if c.isascii() and c.isprintable() and not c.isspace())
    stopped = GREEDY.model_copy(update={"stop": (stop,)})
    calls = [lambda: engine.generate([PROMPTS[0]], stopped)[0], *[lambda p=p: engine.generate([p], GREEDY)[0]
                                                                   for p in PROMPTS[1:]]]
    results = _concurrently(calls)
    assert results[0].text == full.text[:full.text.find(stop)] and results[0].finish_reason == "stop"
    assert results[1:] == [_solo(engine, p) for p in PROMPTS[1:]]


def test_an_error_in_one_request_leaves_the_others_unharmed(engine: LlamaCppLLM) -> None:
    too_long = "x" * (CONTEXT + 10)  # one token per byte: more than a sequence holds
    calls = [lambda p=p: engine.generate([p], GREEDY)[0] for p in PROMPTS]
    results = _concurrently([*calls[:2], lambda: engine.generate([too_long], GREEDY), *calls[2:]])
    error = results.pop(2)
    assert isinstance(error, ProcmemError) and "holds" in str(error) and "\n" not in str(error)
    assert results == [_solo(engine, p) for p in PROMPTS]
    with pytest.raises(ProcmemError):
        engine.generate([PROMPTS[0], too_long], GREEDY)  # a call with a failing prompt raises
    assert engine.generate(PROMPTS[:1], GREEDY) == [_solo(engine, PROMPTS[0])]


def test_a_stream_closed_early_leaves_the_others_unharmed(engine: LlamaCppLLM) -> None:
    expected = [_solo(engine, p) for p in PROMPTS]
    stream = engine.stream(PROMPTS[2], GREEDY.model_copy(update={"max_tokens": 200}))
    next(stream)
    results = _concurrently([lambda p=p: engine.generate([p], GREEDY)[0] for p in PROMPTS])
    stream.close()  # type: ignore[attr-defined]
    assert results == expected


def test_token_counts_count_prompt_bytes_and_new_tokens(engine: LlamaCppLLM) -> None:
    for prompt, g in zip(PROMPTS, engine.generate(PROMPTS, GREEDY), strict=True):
        assert g.prompt_tokens == len(prompt.encode())  # the tiny tokenizer is byte-level, without BOS
        assert g.completion_tokens == GREEDY.max_tokens or g.finish_reason == "stop"
    assert len(engine.tokenize("ab")) == 2


def test_seeded_sampling_is_reproducible_batched_or_alone(engine: LlamaCppLLM) -> None:
    sampled = GenerationConfig(max_tokens=24, temperature=1.0, stop=(), seed=7)
    first = engine.generate(PROMPTS, sampled)
    assert engine.generate(PROMPTS, sampled) == first
    solo = [_solo(engine, p, sampled.for_prompt(i)) for i, p in enumerate(PROMPTS)]
    assert solo == first, "a seed fixes each sequence's draws: prompt i of a call draws with seed + i"
    twins = engine.generate([PROMPTS[0]] * 2, sampled)
    assert twins[0].text != twins[1].text, "copies of one prompt in a call are sampled afresh (a teacher's k)"
    assert engine.generate([PROMPTS[0]] * 2, sampled) == twins
    other = engine.generate(PROMPTS, sampled.model_copy(update={"seed": 8}))
    assert [g.text for g in other] != [g.text for g in first]
    greedy = engine.generate(PROMPTS, GREEDY.model_copy(update={"max_tokens": 24}))
    assert [g.text for g in first] != [g.text for g in greedy]
    nucleus = sampled.model_copy(update={"top_p": 1e-6})
    assert [g.text for g in engine.generate(PROMPTS, nucleus)] == [g.text for g in greedy]


def test_ignore_eos_runs_every_row_to_max_tokens(engine: LlamaCppLLM) -> None:
    config = GREEDY.model_copy(update={"max_tokens": 40})
    assert all(g.completion_tokens == 40 for g in engine.generate(PROMPTS, config, ignore_eos=True))


def test_greedy_text_and_logprobs_match_transformers(engine: LlamaCppLLM, local_tiny: LocalLLM) -> None:
    assert [g.text for g in engine.generate(PROMPTS, GREEDY)] == [g.text for g in local_tiny.generate(PROMPTS, GREEDY)]
    _assert_logprobs_close(engine, local_tiny, PROMPTS[0])


def _assert_logprobs_close(engine: LlamaCppLLM, hf: LocalLLM, prompt: str, tolerance: float = 1e-3) -> None:
    import torch

    prompt_ids = engine.tokenize(prompt)
    assert prompt_ids == hf.tokenizer(prompt)["input_ids"]
    completion_ids = hf.tokenizer(_solo(engine, prompt).text)["input_ids"]
    ours = engine.token_logprobs(prompt_ids, completion_ids)
    with torch.inference_mode():
        logits = hf.model(torch.tensor([prompt_ids + completion_ids])).logits[0].double()
    theirs = torch.log_softmax(logits, -1)[len(prompt_ids) - 1:-1].gather(1, torch.tensor(completion_ids)[:, None])
    assert max(abs(a - b) for a, b in zip(ours, theirs[:, 0].tolist(), strict=True)) < tolerance


def test_an_adapter_swapped_at_run_time_changes_outputs_without_a_reload(
        tiny_gguf: Path, tiny_model_dir: Path, adapter_dir: Path, local_tiny: LocalLLM) -> None:
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=SLOTS, n_ctx_per_seq=CONTEXT,
                                                                      n_threads=1)) as llm:
        model = llm._model  # the base model's handle: a swap must keep it
        base = llm.generate(PROMPTS, GREEDY)
        assert llm.adapter_version is None
        llm.set_adapter(adapter_dir)
        assert llm.adapter_version == "v1" and (adapter_dir / GGUF_LORA_NAME).is_file()
        adapted = llm.generate(PROMPTS, GREEDY)
        assert [g.text for g in adapted] != [g.text for g in base]
        hf_adapted = LocalLLM(tiny_model_dir, adapter=adapter_dir)
        assert [g.text for g in adapted] == [g.text for g in hf_adapted.generate(PROMPTS, GREEDY)], \
            "the GGUF LoRA computes what the PEFT adapter does"
        _assert_logprobs_close(llm, hf_adapted, PROMPTS[0])
        llm.set_adapter(None)
        assert llm.generate(PROMPTS, GREEDY) == base and llm.adapter_version is None
        assert llm._model is model


def test_a_swap_lets_running_requests_finish_with_their_adapter(tiny_gguf: Path, adapter_dir: Path) -> None:
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=SLOTS, n_ctx_per_seq=CONTEXT,
                                                                      n_threads=1)) as llm:
        long_config = GREEDY.model_copy(update={"max_tokens": 48})
        llm.set_adapter(adapter_dir)
        adapted_long = _solo(llm, PROMPTS[2], long_config).text
        llm.set_adapter(None)
        base_long, base_short = _solo(llm, PROMPTS[2], long_config).text, _solo(llm, PROMPTS[0])
        stream = llm.stream(PROMPTS[2], long_config)
        first = next(stream)
        llm.set_adapter(adapter_dir)  # while the base-model sequence runs
        after = _concurrently([lambda: _solo(llm, PROMPTS[2], long_config).text, lambda: "".join(stream)])
        assert first + after[1] == base_long
        assert after[0] == adapted_long
        llm.set_adapter(None)
        assert _solo(llm, PROMPTS[0]) == base_short


def test_micro_batcher_passes_calls_straight_to_the_engine(engine: LlamaCppLLM) -> None:
    with MicroBatcher(engine, max_batch=8, max_wait_s=5.0) as batched:
        assert batched.generate(PROMPTS[:1], GREEDY) == [_solo(engine, PROMPTS[0])]  # no 5 s wait for company
        assert batched._worker is None


def test_load_llm_picks_the_engine(tmp_path: Path, tiny_gguf: Path) -> None:
    llm = load_llm("local:tiny", models_dir=tmp_path, engine="llamacpp", max_batch_size=2)
    assert isinstance(llm, LlamaCppLLM) and llm.model_id == "tiny" and llm.config.n_seq_max == 2
    llm.close()
    assert isinstance(load_llm("local:tiny", models_dir=tmp_path), LocalLLM), "auto keeps HF dirs on transformers"
    gguf_llm = load_llm(f"local:{tiny_gguf}", models_dir=tmp_path)
    assert isinstance(gguf_llm, LlamaCppLLM) and gguf_llm.model_id == "tiny"
    gguf_llm.close()
    with pytest.raises(ProcmemError, match="unknown engine") as err:
        load_llm("local:tiny", models_dir=tmp_path, engine="vllm")
    assert err.value.where == "--engine"
    with pytest.raises(ProcmemError, match="does not read"):
        load_llm(f"local:{tiny_gguf}", models_dir=tmp_path, engine="transformers")
    with pytest.raises(ProcmemError, match=r"needs a \.gguf"):
        load_llm(f"local:{tmp_path}", models_dir=tmp_path, engine="llamacpp")
    with pytest.raises(ProcmemError, match="local models only"):
        load_llm("litellm:openai/gpt-4o-mini", models_dir=tmp_path, engine="llamacpp")


def test_bad_adapters_raise_one_line_errors(engine: LlamaCppLLM, tmp_path: Path) -> None:
    with pytest.raises(ProcmemError, match="not a LoRA adapter directory"):
        engine.set_adapter(tmp_path)
    with pytest.raises(ProcmemError, match="no such LoRA adapter"):
        engine.set_adapter(tmp_path / "missing.gguf")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ProcmemError, match="cannot load the LoRA adapter"):
        engine.set_adapter(tmp_path / "broken.gguf")
    assert engine.adapter_version is None and len(engine.generate(PROMPTS[:1], GREEDY)) == 1


def test_write_gguf_lora_refuses_what_llama_cpp_cannot_apply(adapter_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    dora = tmp_path / "dora"
    shutil.copytree(adapter_dir, dora, ignore=shutil.ignore_patterns("*.gguf"))
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ProcmemError, match="use_dora"):
        write_gguf_lora(dora)
    assert not (dora / GGUF_LORA_NAME).exists()


def test_a_precision_suffix_runs_a_converted_copy_written_once(tmp_path: Path) -> None:
    import gguf

    plain = load_llm("local:tiny", models_dir=tmp_path, engine="llamacpp", max_batch_size=2)
    f32 = load_llm("local:tiny-f32", models_dir=tmp_path, max_batch_size=2)  # auto: a precision means llama.cpp
    f16 = load_llm("local:tiny-f16", models_dir=tmp_path, max_batch_size=2)
    assert isinstance(plain, LlamaCppLLM) and isinstance(f32, LlamaCppLLM) and isinstance(f16, LlamaCppLLM)
    assert f16.model_id == "tiny"
    try:
        assert f32.generate(PROMPTS, GREEDY) == plain.generate(PROMPTS, GREEDY), "f32 is the tiny model's own file"
        assert len(f16.generate(PROMPTS, GREEDY)) == len(PROMPTS)
    finally:
        for llm in (plain, f32, f16):
            llm.close()
    converted = tmp_path / "tiny-f16.gguf"
    types = {t.tensor_type.name for t in gguf.GGUFReader(converted).tensors}
    assert "F16" in types, types
    stamp = converted.stat().st_mtime_ns
    again = load_llm("local:tiny-f16", models_dir=tmp_path, engine="llamacpp")
    assert isinstance(again, LlamaCppLLM)
    again.close()
    assert converted.stat().st_mtime_ns == stamp, "written once, then reused"
    assert isinstance(load_llm("local:tiny-f16", models_dir=tmp_path, engine="transformers"), LocalLLM)
    with pytest.raises(ProcmemError, match="no such model directory"):
        load_llm("local:tiny-f64", models_dir=tmp_path, engine="transformers")


def test_threads_default_to_theidle_cores_and_openmp_waits_passively(tiny_gguf: Path) -> None:
    import os
    import subprocess
    import sys

    from procmem.llm.llamacpp import idle_cores

    cores = len(os.sched_getaffinity(0))
    assert idle_cores([1, 1, 1]) == cores, "only the sampling thread runs: every core"
    assert idle_cores([1, cores + 5, cores + 5]) == 1, "the median of the samples, at least one"
    assert idle_cores([]) == cores
    with LlamaCppLLM(tiny_gguf, config=EngineConfig(n_seq_max=1, n_ctx_per_seq=CONTEXT)) as llm:
        assert 1 <= llm.threads <= cores
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    probe = "import os, procmem.llm; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE", "a user's own setting wins"


def test_a_promoted_adapter_swaps_into_a_running_engine_without_a_reload(tmp_path: Path, tiny_gguf: Path,
                                                                         adapter_dir: Path) -> None:
    """What distill and a gateway do: register the trained adapter (its GGUF LoRA written at registration),
    promote it, and swap the running engine onto it."""
    import shutil

    from procmem.core import Home
    from procmem.core.registry import (
        AdapterManifest,
        BaseModelInfo,
        DatasetSnapshot,
        MemorySnapshot,
        promote,
        resolve_adapter,
    )
    from procmem.core.registry import register_adapter as register

    home = Home.resolve(tmp_path / "home").ensure()
    source = tmp_path / "trained"
    shutil.copytree(adapter_dir, source, ignore=shutil.ignore_patterns("*.gguf"))
    manifest = AdapterManifest(
        version="v0", run_id="r1", base_model=BaseModelInfo(id="local:tiny", name="tiny", hash="sha256:ab"),
        objective="sft", objective_config={}, dataset=DatasetSnapshot(episode_ids=(), hash="sha256:cd", n_traces=0,
                                                                      n_rejected=0, traces_hash="sha256:ef"),
        memory=MemorySnapshot(entry_ids=(), hash="sha256:01"), metrics={}, gate=None, parent=None,
        created_at="2026-01-01T00:00:00+00:00")
    version = register(home.adapters, source, manifest, derive=write_gguf_lora).version
    assert (home.adapters / version / GGUF_LORA_NAME).is_file(), "written at registration"
    with LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=SLOTS, n_ctx_per_seq=CONTEXT,
                                                                      n_threads=1)) as llm:
        model, base = llm._model, llm.generate(PROMPTS, GREEDY)
        promote(home.adapters, version, force=True)
        promoted = resolve_adapter(home, "promoted")
        assert promoted == home.adapters / version
        llm.set_adapter(promoted, version=version)
        assert llm.adapter_version == version
        assert [g.text for g in llm.generate(PROMPTS, GREEDY)] != [g.text for g in base]
        assert llm._model is model, "the base model stayed loaded"


def test_a_grammar_constrains_each_request_alone(engine: LlamaCppLLM) -> None:
    """The random tiny model writes noise; under ``root ::= ("yes" | "no") "."`` it can only write one of two
    words, while the unconstrained request beside it in the batch is its solo run."""
    assert engine.supports_grammar
    bound = GREEDY.model_copy(update={"grammar": 'root ::= ("yes" | "no") "."', "max_tokens": 16, "stop": ()})
    free = GREEDY.model_copy(update={"max_tokens": 16, "stop": ()})
    alone = _solo(engine, PROMPTS[1], free)
    assert alone.text not in ("yes.", "no.")
    results = _concurrently([lambda p=p: engine.generate([p], bound)[0] for p in MORE_PROMPTS]
                            + [lambda: engine.generate([PROMPTS[1]], free)[0]])
    assert all(r.text in ("yes.", "no.") and r.finish_reason == "stop" for r in results[:-1]), results
    assert results[-1] == alone


def test_a_bad_grammar_fails_its_request_only(engine: LlamaCppLLM) -> None:
    bad = GREEDY.model_copy(update={"grammar": "root ::= (unclosed"})
    with pytest.raises(ProcmemError, match="cannot parse the grammar"):
        engine.generate([PROMPTS[0]], bad)
    assert engine.generate([PROMPTS[0]], GREEDY)[0] == _solo(engine, PROMPTS[0])


def _sharing_engines(tiny_gguf: Path, **config: Any) -> tuple[LlamaCppLLM, LlamaCppLLM]:
    """The same engine twice: with prompt-prefix sharing (the default) and without."""
    on = LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=SLOTS, n_threads=1, **config))
    off = LlamaCppLLM(tiny_gguf, model_id="tiny", config=EngineConfig(n_seq_max=SLOTS, n_threads=1,
                                                                       share_prefix_min_tokens=0, **config))
    return on, off


def test_requests_with_a_common_prompt_prefix_share_its_kv_cache_and_decode_the_same(tiny_gguf: Path) -> None:
    """A teacher's k samples of one prompt, and prompts that differ only at the end: each copies the first one's KV
    cache for the common part. Greedy and seeded outputs equal those of an engine that reads every prompt."""
    head = "Memory: 3 + 4 = 7. 10 + 5 = 15. 8 + 8 = 16.\nQuestion: "
    prompts = [head + "What is 17 + 25?\nAnswer:"] * 3 + [head + "What is 2 + 2?\nAnswer:", "Zebra"]
    sampled = GenerationConfig(max_tokens=24, temperature=1.0, stop=(), seed=3)
    on, off = _sharing_engines(tiny_gguf, n_ctx_per_seq=CONTEXT)
    with on, off:
        for config in (GREEDY, sampled):
            before = on.shared_prompt_tokens
            assert on.generate(prompts, config) == off.generate(prompts, config)
            # the 2nd and 3rd copy the whole prompt but its last token; the 4th the common head (+ "What is ")
            assert on.shared_prompt_tokens - before >= 2 * (len(prompts[0]) - 1) + len(head)
        assert off.shared_prompt_tokens == 0
        threaded = _concurrently([lambda p=p: on.generate([p], GREEDY)[0] for p in prompts])
        assert threaded == off.generate(prompts, GREEDY)


def test_prefix_sharing_respects_the_sliding_window_cache(tiny_gguf: Path) -> None:
    """Prompts longer than the sliding-window layers keep (512 positions; a 768-cell cache per sequence at
    n_batch 64): a sequence's old positions are evicted as it goes on. A request copying the common head where the
    source stops for it (or its whole identical prompt) decodes as alone; one that joins after its twin generated
    400 tokens would miss positions the twin evicted, so it reads its prompt itself (a short one copies)."""
    long_head = "".join(f"{i} + {i + 1} = {2 * i + 1}. " for i in range(90))  # ~1,150 byte tokens
    prompts = [long_head + "17 + 25 =", long_head + "2 + 2 =", long_head + "17 + 25 ="]
    sampled = GenerationConfig(max_tokens=24, temperature=1.0, stop=(), seed=5)
    twin = GREEDY.model_copy(update={"max_tokens": 700, "stop": ()})
    on, off = _sharing_engines(tiny_gguf, n_ctx_per_seq=2048, n_batch=64)
    with on, off:
        alone = [_solo(off, p, sampled.for_prompt(i)) for i, p in enumerate(prompts)]
        assert on.generate(prompts, sampled) == alone
        assert on.shared_prompt_tokens >= len(long_head) + len(prompts[2]) - 1
        for late, short in ((prompts[2], False), ("Question: what is 12 + 30?\nAnswer:", True)):
            stream = on.stream(late, twin)
            for _ in itertools.islice(stream, 400):  # each piece is at least one token
                pass
            before = on.shared_prompt_tokens
            assert on.generate([late], sampled) == [_solo(off, late, sampled)]
            if short:
                assert on.shared_prompt_tokens == before + len(late) - 1, "nothing evicted: the late twin copies"
            else:
                assert on.shared_prompt_tokens == before, "the late twin read its prompt itself"
            stream.close()  # type: ignore[attr-defined]


def test_widening_q5_0_weights_to_q8_0_keeps_every_weight_and_output(tiny_gguf: Path, tmp_path: Path) -> None:
    """The bundled engine file stores its Q5_0 tensors as Q8_0 (faster kernels): the same numbers, so llama.cpp
    computes the same log-probabilities to the last bit, and the file's metadata is unchanged."""
    import ctypes

    import gguf
    import llama_cpp
    import numpy as np
    from gguf.quants import dequantize

    from procmem.llm.gguf_io import widen_q5_0

    q5_0 = tmp_path / "tiny-q5_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0
    assert llama_cpp.llama_model_quantize(str(tiny_gguf).encode(), str(q5_0).encode(), ctypes.byref(params)) == 0
    wide = widen_q5_0(q5_0, tmp_path / "tiny-wide.gguf")
    before, after = gguf.GGUFReader(q5_0), gguf.GGUFReader(wide)
    assert {k: f.contents() for k, f in before.fields.items() if not k.startswith("GGUF.")} == \
        {k: f.contents() for k, f in after.fields.items() if not k.startswith("GGUF.")}
    kinds = gguf.GGMLQuantizationType
    widened = 0
    for old, new in zip(before.tensors, after.tensors, strict=True):
        assert old.name == new.name and list(old.shape) == list(new.shape)
        if old.tensor_type == kinds.Q5_0:
            assert new.tensor_type == kinds.Q8_0
            widened += 1
        else:
            assert new.tensor_type == old.tensor_type and np.array_equal(old.data, new.data)
        assert np.array_equal(dequantize(old.data, old.tensor_type), dequantize(new.data, new.tensor_type))
    assert widened >= 8, "the tiny model's projections were Q5_0"
    config = EngineConfig(n_seq_max=SLOTS, n_ctx_per_seq=CONTEXT, n_threads=1)
    with LlamaCppLLM(q5_0, config=config) as narrow_llm, LlamaCppLLM(wide, config=config) as wide_llm:
        texts = narrow_llm.generate(MORE_PROMPTS, GREEDY)
        assert wide_llm.generate(MORE_PROMPTS, GREEDY) == texts
        prompt, completion = narrow_llm.tokenize(PROMPTS[0]), narrow_llm.tokenize(texts[0].text)
        assert wide_llm.token_logprobs(prompt, completion) == narrow_llm.token_logprobs(prompt, completion)



def _engine_threads() -> int:
    return sum(t.name == "procmem-llamacpp" for t in threading.enumerate())


def test_opened_policy_frees_the_engine_that_dropping_it_would_not(tmp_path: Path, tiny_gguf: Path) -> None:
    """A llama.cpp engine's worker thread holds it: dropping the last reference frees nothing, so a job that loads
    policy after policy piles them up. ``close_llm`` (and ``opened_policy``, also when its block raises) stops
    the thread and frees the model."""
    from procmem.core import Home
    from procmem.llm import close_llm, open_policy, opened_policy

    home = Home(tmp_path / "home").ensure()
    before = _engine_threads()
    dropped = weakref.ref(open_policy(home, model="local:tiny", adapter="none", engine="llamacpp"))
    gc.collect()
    assert dropped() is not None and _engine_threads() == before + 1  # not freed
    close_llm(dropped())
    gc.collect()
    assert dropped() is None and _engine_threads() == before

    with opened_policy(home, model="local:tiny", adapter="none", engine="llamacpp") as llm:
        assert isinstance(llm, LlamaCppLLM) and _engine_threads() == before + 1
        assert llm.generate(["a"], GREEDY)[0].completion_tokens > 0
    assert _engine_threads() == before
    with pytest.raises(RuntimeError, match="inside"), \
            opened_policy(home, model="local:tiny", adapter="none", engine="llamacpp"):
        raise RuntimeError("inside")
    assert _engine_threads() == before
    close_llm(object())  # a backend with nothing to free
