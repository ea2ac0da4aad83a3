"""Benchmark the bundled model: generation throughput by batch size, and cold start.

Measures, in one process (so the ratios compare like with like):

- cold start: the first load, which converts the GGUF to a cached safetensors copy, against loading
  that cached copy (in this process, and in a fresh Python process including its imports);
- greedy tokens/s at batch 1 (one prompt at a time), batch 8 and batch 16 (left-padded batches), and
  through :class:`~procmem.llm.MicroBatcher` with 16 threads each asking for one prompt (the agent's
  path); each with its ratio to batch 1;
- whether the batched completions equal the one-at-a-time ones (they should, for greedy decoding).

Every row generates exactly ``--tokens`` new tokens (EOS is ignored, no stop strings), so tokens/s
counts the same work at every batch size. Targets (issue 2): batched >= 6x batch 1; cached cold
start <= 5 s.

    .venv/bin/python eval/bench_generation.py [--tokens 32] [--models-dir DIR] [--threads N]

Without ``--models-dir`` the model is converted into a temporary directory (removed afterwards), so the
cold conversion is really measured; ``$PROCMEM_MODELS_CACHE`` is ignored here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

PROMPTS = [
    f"Question: A shop sold {a} apples in the morning and {b} in the afternoon. How many apples did it sell?\nAnswer:"
    for a, b in [(12, 7), (31, 45), (8, 9), (60, 14), (23, 23), (5, 77), (40, 41), (19, 2),
                 (88, 11), (3, 65), (27, 36), (50, 50), (14, 9), (71, 6), (33, 44), (9, 90)]
]
_LOAD_SNIPPET = (
    "import time; t = time.perf_counter(); from procmem.llm import load_llm; "
    "load_llm('local:default', models_dir={models_dir!r}); print(time.perf_counter() - t)"
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    os.environ.pop("PROCMEM_MODELS_CACHE", None)  # measure the directory given here, not a shared cache
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="procmem-bench-") as scratch:
        models_dir = Path(args.models_dir) if args.models_dir else Path(scratch)
        results: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "load_avg_start": _load_avg()}
        llm = _cold_start(models_dir, results)
        _throughput(llm, args.tokens, results)
        results["load_avg_end"] = _load_avg()
    _print(results)
    print(json.dumps(results))
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    parser.add_argument("--models-dir", help="convert/cache here (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
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
    out = subprocess.run([sys.executable, "-c", _LOAD_SNIPPET.format(models_dir=str(models_dir))],
                         capture_output=True, text=True, check=True, env={**os.environ})
    results["cached_load_fresh_process_s"] = round(time.perf_counter() - start, 2)
    results["cached_load_fresh_process_imports_and_load_s"] = round(float(out.stdout.strip().splitlines()[-1]), 2)
    return llm


def _throughput(llm: Any, tokens: int, results: dict[str, Any]) -> None:
    from procmem.core import GenerationConfig
    from procmem.llm import MicroBatcher

    config = GenerationConfig(max_tokens=tokens, temperature=0.0, top_p=1.0, stop=(), seed=None)
    llm.generate(PROMPTS[:2], config.model_copy(update={"max_tokens": 2}), ignore_eos=True)  # warm-up
    singles, rate1 = _timed(lambda: [llm.generate([p], config, ignore_eos=True)[0] for p in PROMPTS[:4]])
    results["batch1_tok_s"] = rate1
    texts: dict[int, list[str]] = {}
    for batch in (8, 16):
        llm.max_batch_size = batch
        generations, rate = _timed(lambda: llm.generate(PROMPTS, config, ignore_eos=True))
        results[f"batch{batch}_tok_s"] = rate
        results[f"batch{batch}_x_batch1"] = round(rate / rate1, 2)
        texts[batch] = [g.text for g in generations]
    results["batched_equals_unbatched"] = all(texts[b][:4] == [g.text for g in singles] for b in texts)
    results["micro16_tok_s"] = rate = _micro(llm, config, MicroBatcher)
    results["micro16_x_batch1"] = round(rate / rate1, 2)


def _micro(llm: Any, config: Any, batcher_cls: Any) -> float:
    """16 threads, one prompt each, through a MicroBatcher (what ``procmem solve`` does)."""
    counts = [0] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS) + 1)

    class _NoEos:  # MicroBatcher calls generate(prompts, config); keep EOS ignored for equal work
        model_id, adapter_version = llm.model_id, None

        def generate(self, prompts: Any, cfg: Any) -> Any:
            return llm.generate(prompts, cfg, ignore_eos=True)

        def stream(self, prompt: Any, cfg: Any) -> Any:
            return llm.stream(prompt, cfg)

    with batcher_cls(_NoEos(), max_batch=16, max_wait_s=0.5) as batched:

        def run(i: int) -> None:
            barrier.wait()
            counts[i] = batched.generate([PROMPTS[i]], config)[0].completion_tokens

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    return round(sum(counts) / elapsed, 1)


def _timed(work: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    generations = work()
    elapsed = time.perf_counter() - start
    return generations, round(sum(g.completion_tokens for g in generations) / elapsed, 1)


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _print(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bundled Gemma 3 270M: generation benchmark")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, str(value))
    Console(stderr=True).print(table)


if __name__ == "__main__":
    main()
