"""Parity of the llama.cpp engine with transformers on the bundled model: greedy outputs and per-token log-probs.

On ``--n`` held-out prompts (the test split of six easy reasoning-gym tasks, rendered as the agent renders
them, without memory) both engines decode greedily with the agent's default settings (``max_tokens`` 48, stop
at a newline). Reported per arm (the base model, then the base with a LoRA adapter: ``--adapter DIR``, or
one trained here on train-split items in a few minutes and kept in the cache) and per engine precision
(``--precisions``: the weights llama.cpp runs, ``local:default-<precision>``):

- ``identical``: the share of prompts whose completions are the same text (target >= 0.95);
- ``same_tokenization``: the share of prompts both tokenizers read the same way;
- per-token log-probabilities of transformers' greedy completion under each engine (teacher forcing): the
  mean, 95th percentile and largest absolute difference, and the share within ``--tolerance``;
- the engine's wall time on the prompts (16 sequences at a time).

transformers runs the fp32 weights dequantised from the GGUF. ``f32`` gives llama.cpp exactly those values;
``f16`` rounds them; ``q4_k_m`` (the shipped file, the engine's default) and ``q8_0`` run quantised kernels,
which also quantise activations to 8 bits inside their matrix products, so near-ties can flip a greedy
choice. transformers' outputs and log-probs are computed once per arm and cached under ``--cache``
(keyed by the prompts and settings); its batched greedy texts are checked against one-at-a-time runs on
``--solo-check`` prompts.

    .venv/bin/python eval/bench/parity_engines.py [--json] [--n 200] [--precisions q4_k_m,q8_0,f16,f32]
        [--adapter DIR] [--tolerance 0.1] [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from procmem.core.machine import load_average

__all__ = ["main"]

TASKS = {
    "chain_sum": "min_terms=2&max_terms=2&min_digits=1&max_digits=2",
    "products": "min_terms=2&max_terms=2&min_digits=1&max_digits=2",
    "letter_counting": "min_words=1&max_words=3",
    "spell_backward": "min_word_len=3&max_word_len=5",
    "word_sequence_reversal": "min_words=3&max_words=4",
    "base_conversion": "min_base=2&max_base=10&min_value=1&max_value=31",
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    from procmem.llm import PRECISIONS, EngineConfig, LlamaCppLLM  # first: sets OpenMP's wait policy before torch
    from procmem.llm.bundled import BUNDLED_MODEL_ID, bundled_models_dir, ensure_bundled_gguf, ensure_bundled_model

    torch = importlib.import_module("torch")
    from procmem.core import GenerationConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise SystemExit(f"--precisions: unknown {', '.join(unknown)}; use some of {', '.join(PRECISIONS)}")
    models_dir = bundled_models_dir(Path(args.models_dir))
    cache = Path(args.cache).expanduser()
    prompts = held_out_prompts(args.n)
    config = GenerationConfig(temperature=0.0, max_tokens=args.max_tokens)
    results: dict[str, Any] = {"n": len(prompts), "max_tokens": config.max_tokens, "stop": list(config.stop),
                               "tolerance": args.tolerance, "threads": torch.get_num_threads(),
                               "load_avg_start": load_average()}
    hf_dir = ensure_bundled_model(models_dir)
    adapter = Path(args.adapter) if args.adapter else None
    for arm in ("base", "adapter"):
        if arm == "adapter":
            if adapter is None:
                adapter, results["adapter_training"] = _cached_adapter(hf_dir, cache, args.train_items)
            results["adapter"] = str(adapter)
        reference = _reference(hf_dir, adapter if arm == "adapter" else None, prompts, config, cache,
                               args.solo_check)
        results[arm] = {"transformers": {k: v for k, v in reference.items() if k not in ("texts", "tokens")}}
        for precision in precisions:
            path = ensure_bundled_gguf(models_dir, precision)
            with LlamaCppLLM(path, model_id=BUNDLED_MODEL_ID, config=EngineConfig(n_seq_max=16, n_threads=args.threads),
                             adapter=adapter if arm == "adapter" else None) as engine:
                results[arm][precision] = compare(reference, engine, prompts, config, args.tolerance)
            _log(f"{arm} {precision}: {json.dumps(results[arm][precision])}")
    results["load_avg_end"] = load_average()
    if args.json:
        print(json.dumps(results))
    return results


def held_out_prompts(n: int) -> list[str]:
    """``n`` test-split prompts, spread evenly over :data:`TASKS`, rendered as the agent renders them."""
    from procmem.core.prompts import render_prompt
    from procmem.tasks import load_suite

    per_task = -(-n // len(TASKS))
    prompts = [render_prompt(task.prompt) for name, options in TASKS.items()
               for task in load_suite(f"rg:{name}?{options}", split="test", n=per_task)]
    return prompts[:n]


def compare(reference: dict[str, Any], engine: Any, prompts: list[str], config: Any,
            tolerance: float) -> dict[str, Any]:
    """The engine's greedy texts and per-token log-probabilities against transformers' (``reference``)."""
    start = time.perf_counter()
    engine_out = engine.generate(prompts, config)
    engine_s = time.perf_counter() - start
    identical = [a == b.text for a, b in zip(reference["texts"], engine_out, strict=True)]
    same_tokens, diffs = 0, []
    for prompt, row in zip(prompts, reference["tokens"], strict=True):
        if engine.tokenize(prompt) != row["prompt"]:
            continue
        same_tokens += 1
        if row["completion"]:
            ours = engine.token_logprobs(row["prompt"], row["completion"])
            diffs += [abs(a - b) for a, b in zip(ours, row["logprobs"], strict=True)]
    diffs.sort()
    examples = [{"prompt": p[-60:], "transformers": a, "llamacpp": b.text}
                for p, a, b, same in zip(prompts, reference["texts"], engine_out, identical, strict=True)
                if not same][:5]
    return {
        "identical": round(sum(identical) / len(prompts), 4),
        "identical_count": sum(identical),
        "same_tokenization": round(same_tokens / len(prompts), 4),
        "logprob_tokens": len(diffs),
        "logprob_abs_diff_mean": round(statistics.fmean(diffs), 5) if diffs else None,
        "logprob_abs_diff_p95": round(diffs[int(0.95 * (len(diffs) - 1))], 5) if diffs else None,
        "logprob_abs_diff_max": round(diffs[-1], 5) if diffs else None,
        "logprob_within_tolerance": round(sum(d <= tolerance for d in diffs) / len(diffs), 4) if diffs else None,
        "llamacpp_s": round(engine_s, 1),
        "llamacpp_threads": engine.threads,
        "differing_examples": examples,
    }


def _reference(hf_dir: Path, adapter: Path | None, prompts: list[str], config: Any, cache: Path,
               solo_check: int) -> dict[str, Any]:
    """transformers' greedy texts, token ids and log-probs on ``prompts`` (computed once, then read from ``cache``)."""
    from procmem.core.fileio import write_json
    from procmem.llm import LocalLLM
    from procmem.llm.bundled import BUNDLED_MODEL_ID

    key = hashlib.sha256(json.dumps([prompts, config.model_dump(mode="json"), str(adapter), solo_check]).encode())
    path = cache / f"reference-{key.hexdigest()[:16]}.json"
    if path.is_file():
        _log(f"transformers reference read from {path}")
        return dict(json.loads(path.read_text()))
    hf = LocalLLM(hf_dir, adapter=adapter, model_id=BUNDLED_MODEL_ID)
    start = time.perf_counter()
    texts = [g.text for g in hf.generate(prompts, config)]
    seconds = time.perf_counter() - start
    solo = [hf.generate([p], config)[0].text for p in prompts[:solo_check]]
    tokens = []
    for prompt, text in zip(prompts, texts, strict=True):
        prompt_ids = hf.tokenizer(prompt)["input_ids"]
        completion_ids = hf.tokenizer(text, add_special_tokens=False)["input_ids"]
        logprobs = _hf_logprobs(hf, prompt_ids, completion_ids) if completion_ids else []
        tokens.append({"prompt": prompt_ids, "completion": completion_ids, "logprobs": logprobs})
    reference = {"texts": texts, "tokens": tokens, "batched_s": round(seconds, 1),
                 "batched_equal_solo": sum(a == b for a, b in zip(solo, texts, strict=False)),
                 "solo_checked": len(solo)}
    write_json(path, reference)
    return reference


def _cached_adapter(hf_dir: Path, cache: Path, items: int) -> tuple[Path, dict[str, Any]]:
    """The adapter trained here on ``items`` train items, kept under ``cache`` for later runs."""
    import shutil

    target = cache / f"adapter-{items}"
    info_path = target / "parity_training.json"
    if info_path.is_file():
        return target, dict(json.loads(info_path.read_text()))
    scratch = cache / f".train-{items}"
    shutil.rmtree(scratch, ignore_errors=True)
    adapter_dir, info = train_adapter(hf_dir, scratch, items)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(adapter_dir, target)
    (target / "parity_training.json").write_text(json.dumps(info))
    shutil.rmtree(scratch, ignore_errors=True)
    return target, info


def train_adapter(hf_dir: Path, scratch: Path, items: int) -> tuple[Path, dict[str, Any]]:
    """A LoRA adapter trained with distill's SFT loop on ``items`` train-seed items with gold answers (the
    distill benchmark's examples)."""
    from procmem.distill.config import DistillConfig
    from procmem.distill.objectives import Example, SftObjective
    from procmem.distill.traces import TraceBuild
    from procmem.distill.train import train_adapter as train
    from procmem.eval.bench.bench_distill import make_examples

    examples = make_examples(items)

    class _Fixed(SftObjective):
        def examples(self, build: TraceBuild) -> list[Example]:
            return examples

    config = DistillConfig.model_validate({"train": {"epochs": 1, "batch_size": 4, "lr": 5e-4}})
    _log(f"training a LoRA adapter on {len(examples)} train items ...")
    result = train(TraceBuild(kept=(), rejected=(), contexts=()), config, model_dir=hf_dir, work_dir=scratch / "train",
                   objective_factory=lambda tokenizer, cfg: _Fixed(tokenizer, cfg.train.max_seq_len), quiet=True)
    return result.adapter_dir, {"items": len(examples), "steps": result.steps, "seconds": round(result.seconds, 1),
                                "first_loss": round(result.first_loss, 3), "final_loss": round(result.final_loss, 3)}


def _hf_logprobs(hf: Any, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    import torch

    with torch.inference_mode():  # logits only where a completion token is predicted
        logits = hf.model(torch.tensor([prompt_ids + completion_ids]),
                          logits_to_keep=len(completion_ids) + 1).logits[0].double()
    logprobs = torch.log_softmax(logits[:-1], -1)
    return [float(x) for x in logprobs.gather(1, torch.tensor(completion_ids)[:, None])[:, 0]]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="held-out prompts (default 200)")
    parser.add_argument("--adapter", help="a PEFT LoRA directory for the adapter arm (default: train one here)")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per prompt (default 48, the agent's)")
    parser.add_argument("--train-items", type=int, default=64, help="train items when training the adapter")
    parser.add_argument("--tolerance", type=float, default=0.1, help="log-probability tolerance (default 0.1)")
    parser.add_argument("--models-dir", default=str(Path.home() / ".procmem" / "models"),
                        help="where the bundled model is cached ($PROCMEM_MODELS_CACHE wins)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of both engines (default: torch's choice; llama.cpp: its idle cores)")
    parser.add_argument("--precisions", default="q4_k_m,q8_0,f16,f32",
                        help="llama.cpp weight precisions to compare, comma-separated (default: all four)")
    parser.add_argument("--cache", default=str(Path.home() / ".procmem" / "parity-cache"),
                        help="where transformers' reference outputs and the trained adapter are kept")
    parser.add_argument("--solo-check", type=int, default=16,
                        help="prompts on which transformers' batched texts are checked against solo runs")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line last")
    return parser.parse_args(argv)


def _log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
