"""Benchmark the bundled model's generation: transformers against the llama.cpp engine, in one process.

Measures, one after the other (so the ratios compare like with like on the same machine state):

- transformers (fp32): cold start (the first load converts the GGUF to a cached safetensors copy; then the
  cached copy, in this process and in a fresh one), greedy tokens/s at batch 1 (one prompt at a time),
  batch 16 (left-padded) and through :class:`~procmem.llm.MicroBatcher` with 16 threads;
- the llama.cpp engine (the Q4_K_M GGUF file): load time (in this process and in a fresh one, imports
  included), tokens/s on one sequence (one prompt at a time) and with 16 concurrent requests, each a
  thread calling ``generate`` through the agent's path (``MicroBatcher``, which hands the calls to the
  engine's continuous batching);
- the ratios ``engine_single_x_hf_single`` and ``engine_concurrent16_x_hf_batch16``;
- a distillation teacher's load: 16 requests made of 6 distinct long prompts (~530 tokens: worked examples in
  context, as memory puts them) x 3 (the last once), in one ``generate`` call, with prompt-prefix sharing (the
  engine's default: each copy reads its twin's KV cache) and without (``share_prefix_min_tokens=0``), tokens/s of
  each, the prompt tokens copied, and how many of the 16 greedy completions are equal both ways;
- the compute limit: the measured fp32 GEMM rate per CPU-second x cores / (2 x parameters) tokens/s, and
  the engine's share of it;
- how many of 4 batched completions equal their one-at-a-time runs under greedy decoding, for both engines
  (llama.cpp's quantised kernels accumulate one token's products in another order than a batch's, so a
  near-tie can flip on the bundled model; on F32 weights the tests find them identical).

Both engines run as procmem runs them: ``procmem.llm`` is imported first, so OpenMP threads (torch's and
llama.cpp's share one runtime) wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set).

Every row generates exactly ``--tokens`` new tokens (EOS is ignored, no stop strings), so tokens/s counts
the same work everywhere. Targets (issues 11, 26): engine_single_x_hf_single >= 4, engine_concurrent16_x_hf_batch16
>= 2, engine_concurrent16_share_of_limit >= 0.5.

    .venv/bin/python eval/bench/bench_generation.py [--json] [--tokens 32] [--models-dir DIR] [--threads N]
        [--engine-threads N]

Without ``--models-dir`` the model is converted into a temporary directory (removed afterwards), so the
cold conversion is really measured; ``$PROCMEM_MODELS_CACHE`` is ignored here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from procmem.core.machine import load_average

__all__ = ["main", "shared_prompts"]

PROMPTS = [
    f"Question: A shop sold {a} apples in the morning and {b} in the afternoon. How many apples did it sell?\nAnswer:"
    for a, b in [(12, 7), (31, 45), (8, 9), (60, 14), (23, 23), (5, 77), (40, 41), (19, 2),
                 (88, 11), (3, 65), (27, 36), (50, 50), (14, 9), (71, 6), (33, 44), (9, 90)]
]
_LOAD_SNIPPET = (  # the models directory is the models cache ($PROCMEM_MODELS_CACHE), set by _fresh_load
    "import pathlib, tempfile, time; t = time.perf_counter(); from procmem.core import Home; "
    "from procmem.llm import open_policy; "
    "open_policy(Home(pathlib.Path(tempfile.mkdtemp())), model='local:default', adapter='none', engine={engine!r}); "
    "print(time.perf_counter() - t)"
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    os.environ.pop("PROCMEM_MODELS_CACHE", None)  # measure the directory given here, not a shared cache
    importlib.import_module("procmem.llm")  # before torch: it sets OpenMP's wait policy, as the CLI does
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="procmem-bench-") as scratch:
        models_dir = Path(args.models_dir) if args.models_dir else Path(scratch)
        results: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "tokens": args.tokens,
                                   "load_avg_start": load_average()}
        llm = _cold_start(models_dir, results)
        _throughput(llm, args.tokens, results)
        params = sum(p.numel() for p in llm.model.parameters())
        del llm
        engine = _engine_start(models_dir, results, args.engine_threads or args.threads)
        _engine_throughput(engine, args.tokens, results)
        _shared_prompts(engine, args.tokens, results, "engine_shared16")
        engine.close()
        unshared = _engine(models_dir, engine.threads, share_prefix_min_tokens=0)
        _shared_prompts(unshared, args.tokens, results, "engine_shared16_noshare")
        unshared.close()
        results["engine_shared16_share_x_noshare"] = round(results["engine_shared16_tok_s"]
                                                           / results["engine_shared16_noshare_tok_s"], 2)
        results["engine_shared16_equal_of_16"] = sum(
            a == b for a, b in zip(results.pop("engine_shared16_texts"), results.pop("engine_shared16_noshare_texts"),
                                   strict=True))
        _compute_limit(params, results)
        results["load_avg_end"] = load_average()
    _print(results)
    if args.json:
        print(json.dumps(results))
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    parser.add_argument("--models-dir", help="convert/cache here (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of both engines (default: torch's choice; llama.cpp: its idle cores)")
    parser.add_argument("--engine-threads", type=int, default=0,
                        help="threads of the llama.cpp engine only (default: --threads, else its idle cores)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line last")
    return parser.parse_args(argv)


def _cold_start(models_dir: Path, results: dict[str, Any]) -> Any:
    from procmem.llm import LocalLLM
    from procmem.llm.bundled import BUNDLED_DIR_NAME, ensure_bundled_model

    converted = (models_dir / BUNDLED_DIR_NAME / "config.json").exists()
    start = time.perf_counter()
    path = ensure_bundled_model(models_dir)
    llm = LocalLLM(path, model_id="gemma-3-270m")
    results["first_load_s"] = round(time.perf_counter() - start, 2)
    results["first_load_converted"] = not converted
    start = time.perf_counter()
    llm = LocalLLM(path, model_id="gemma-3-270m")
    results["cached_load_in_process_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    fresh, inner = _fresh_load(models_dir, "transformers")
    results["cached_load_fresh_process_s"] = fresh
    results["cached_load_fresh_process_imports_and_load_s"] = inner
    return llm


def _fresh_load(models_dir: Path, engine: str) -> tuple[float, float]:
    """Seconds to load the cached model in a fresh Python process: the whole process, and imports + load."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _LOAD_SNIPPET.format(engine=engine)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PROCMEM_MODELS_CACHE": str(models_dir)})
    return round(time.perf_counter() - start, 2), round(float(out.stdout.strip().splitlines()[-1]), 2)


def _throughput(llm: Any, tokens: int, results: dict[str, Any]) -> None:
    from procmem.core import GenerationConfig
    from procmem.llm import MicroBatcher

    config = GenerationConfig(max_tokens=tokens, temperature=0.0, top_p=1.0, stop=(), seed=None)
    llm.generate(PROMPTS[:2], config.model_copy(update={"max_tokens": 2}), ignore_eos=True)  # warm-up
    singles, rate1 = _timed(lambda: [llm.generate([p], config, ignore_eos=True)[0] for p in PROMPTS[:4]])
    results["hf_batch1_tok_s"] = rate1
    llm.max_batch_size = 16
    generations, rate = _timed(lambda: llm.generate(PROMPTS, config, ignore_eos=True))
    results["hf_batch16_tok_s"] = rate
    results["hf_batch16_x_batch1"] = round(rate / rate1, 2)
    results["hf_batched_equal_of_4"] = _same(generations[:4], singles)
    results["hf_micro16_tok_s"] = rate = _micro(llm, config, MicroBatcher)[1]
    results["hf_micro16_x_batch1"] = round(rate / rate1, 2)


def _engine_start(models_dir: Path, results: dict[str, Any], threads: int) -> Any:
    from procmem.llm import EngineConfig, LlamaCppLLM
    from procmem.llm.bundled import BUNDLED_MODEL_ID, ensure_bundled_gguf

    start = time.perf_counter()
    path = ensure_bundled_gguf(models_dir)
    results["engine_gguf_assemble_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    engine = LlamaCppLLM(path, model_id=BUNDLED_MODEL_ID, config=EngineConfig(n_seq_max=16, n_threads=threads))
    results["engine_load_in_process_s"] = round(time.perf_counter() - start, 2)
    results["engine_threads"] = engine.threads
    fresh, inner = _fresh_load(models_dir, "llamacpp")
    results["engine_load_fresh_process_s"] = fresh
    results["engine_load_fresh_process_imports_and_load_s"] = inner
    return engine


def _engine(models_dir: Path, threads: int, **config: Any) -> Any:
    from procmem.llm import EngineConfig, LlamaCppLLM
    from procmem.llm.bundled import BUNDLED_MODEL_ID, ensure_bundled_gguf

    return LlamaCppLLM(ensure_bundled_gguf(models_dir), model_id=BUNDLED_MODEL_ID,
                       config=EngineConfig(n_seq_max=16, n_threads=threads, **config))


def shared_prompts(distinct: int = 6, copies: int = 3, total: int = 16) -> list[str]:
    """``total`` prompts: ``distinct`` long ones (~530 tokens: 12 worked examples each, then a question), each
    repeated ``copies`` times in a row, as a teacher asks for k samples of one prompt."""
    prompts = []
    for group in range(distinct):
        examples = "".join(
            f"Question: A shop sold {7 * group + 3 * i + 11} apples in the morning and {5 * i + group + 2} in the "
            f"afternoon. How many apples did it sell?\nAnswer: {7 * group + 3 * i + 11} + {5 * i + group + 2} = "
            f"{7 * group + 8 * i + group + 13}\n\n" for i in range(12))
        prompts += [f"{examples}Question: A shop sold {40 + group} apples in the morning and {9 + group} in the "
                    "afternoon. How many apples did it sell?\nAnswer:"] * copies
    return prompts[:total]


def _shared_prompts(engine: Any, tokens: int, results: dict[str, Any], name: str) -> None:
    from procmem.core import GenerationConfig

    config = GenerationConfig(max_tokens=tokens, temperature=0.0, top_p=1.0, stop=(), seed=None)
    prompts = shared_prompts()
    copied = engine.shared_prompt_tokens
    generations, rate = _timed(lambda: engine.generate(prompts, config, ignore_eos=True))
    results[f"{name}_tok_s"] = rate
    results[f"{name}_prompt_tokens"] = sum(g.prompt_tokens for g in generations)
    results[f"{name}_copied_tokens"] = engine.shared_prompt_tokens - copied
    results[f"{name}_texts"] = [g.text for g in generations]


def _engine_throughput(engine: Any, tokens: int, results: dict[str, Any]) -> None:
    from procmem.core import GenerationConfig
    from procmem.llm import MicroBatcher

    config = GenerationConfig(max_tokens=tokens, temperature=0.0, top_p=1.0, stop=(), seed=None)
    engine.generate(PROMPTS[:2], config.model_copy(update={"max_tokens": 2}), ignore_eos=True)  # warm-up
    singles, rate1 = _timed(lambda: [engine.generate([p], config, ignore_eos=True)[0] for p in PROMPTS[:4]])
    results["engine_single_tok_s"] = rate1
    texts, rate = _micro(engine, config, MicroBatcher)
    results["engine_concurrent16_tok_s"] = rate
    results["engine_concurrent16_x_single"] = round(rate / rate1, 2)
    results["engine_batched_equal_of_4"] = sum(a == b.text for a, b in zip(texts[:4], singles, strict=True))
    results["engine_single_x_hf_single"] = round(rate1 / results["hf_batch1_tok_s"], 2)
    results["engine_concurrent16_x_hf_batch16"] = round(rate / results["hf_batch16_tok_s"], 2)


def _compute_limit(params: int, results: dict[str, Any]) -> None:
    from procmem.eval.bench.bench_distill import gemm_gflops

    gflops = gemm_gflops()
    results["gemm_gflops_per_core"] = round(gflops, 1)
    results["cores"] = os.cpu_count()
    results["params"] = params
    limit = gflops * 1e9 * (os.cpu_count() or 1) / (2 * params)
    results["compute_limit_tok_s"] = round(limit, 1)
    results["engine_concurrent16_share_of_limit"] = round(results["engine_concurrent16_tok_s"] / limit, 3)


def _micro(llm: Any, config: Any, batcher_cls: Any) -> tuple[list[str], float]:
    """16 threads, one prompt each, through a MicroBatcher (what ``procmem solve`` does): texts, tokens/s."""
    counts = [0] * len(PROMPTS)
    texts = [""] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS) + 1)

    class _NoEos:  # MicroBatcher calls generate(prompts, config); keep EOS ignored for equal work
        model_id, adapter_version = llm.model_id, None
        continuous_batching = getattr(llm, "continuous_batching", False)

        def generate(self, prompts: Any, cfg: Any) -> Any:
            return llm.generate(prompts, cfg, ignore_eos=True)

        def stream(self, prompt: Any, cfg: Any) -> Any:
            return llm.stream(prompt, cfg)

    with batcher_cls(_NoEos(), max_batch=16, max_wait_s=0.5) as batched:

        def run(i: int) -> None:
            barrier.wait()
            generation = batched.generate([PROMPTS[i]], config)[0]
            counts[i], texts[i] = generation.completion_tokens, generation.text

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    return texts, round(sum(counts) / elapsed, 1)


def _same(batched: list[Any], singles: list[Any]) -> int:
    return sum(a.text == b.text for a, b in zip(batched, singles, strict=True))


def _timed(work: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    generations = work()
    elapsed = time.perf_counter() - start
    return generations, round(sum(g.completion_tokens for g in generations) / elapsed, 1)


def _print(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bundled Gemma 3 270M: generation, transformers vs llama.cpp")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, str(value))
    Console(stderr=True).print(table)


if __name__ == "__main__":
    main()
