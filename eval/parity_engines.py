"""Parity of the llama.cpp engine with transformers on the bundled model: greedy outputs and per-token log-probs.

On ``--n`` held-out prompts (the test split of six easy reasoning-gym tasks, rendered as the agent renders
them, without memory) both engines decode greedily with the agent's default settings (``max_tokens`` 48, stop
at a newline). Reported per arm (the base model, then the base with a LoRA adapter: ``--adapter DIR``, or
one trained here on train-split items in a few minutes):

- ``identical``: the share of prompts whose completions are the same text (target >= 0.95);
- ``same_tokenization``: the share of prompts both tokenizers read the same way;
- per-token log-probabilities of transformers' greedy completion under each engine (teacher forcing): the
  mean, 95th percentile and largest absolute difference, and the share within ``--tolerance``.

transformers runs the fp32 weights dequantised from the GGUF; llama.cpp runs the Q4_K_M kernels on the
same quantised values, so differences come from kernel rounding (activations are quantised to 8 bits
inside llama.cpp's matrix products) and near-ties can flip a greedy choice.

    .venv/bin/python eval/parity_engines.py [--json] [--n 200] [--adapter DIR] [--tolerance 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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
    import torch

    from procmem.core import GenerationConfig
    from procmem.llm import EngineConfig, LlamaCppLLM, LocalLLM
    from procmem.llm.bundled import BUNDLED_MODEL_ID, bundled_models_dir, ensure_bundled_gguf, ensure_bundled_model

    if args.threads:
        torch.set_num_threads(args.threads)
    models_dir = bundled_models_dir(Path(args.models_dir))
    prompts = held_out_prompts(args.n)
    config = GenerationConfig(temperature=0.0, max_tokens=args.max_tokens)
    results: dict[str, Any] = {"n": len(prompts), "max_tokens": config.max_tokens, "stop": list(config.stop),
                               "tolerance": args.tolerance, "threads": torch.get_num_threads()}
    hf_dir = ensure_bundled_model(models_dir)
    engine = LlamaCppLLM(ensure_bundled_gguf(models_dir), model_id=BUNDLED_MODEL_ID,
                         config=EngineConfig(n_seq_max=16, n_threads=1))  # its numbers do not depend on threads
    with tempfile.TemporaryDirectory(prefix="procmem-parity-") as scratch:
        adapter = Path(args.adapter) if args.adapter else None
        for arm in ("base", "adapter"):
            if arm == "adapter":
                if adapter is None:
                    adapter, results["adapter_training"] = train_adapter(hf_dir, Path(scratch), args.train_items)
                results["adapter"] = str(adapter)
                engine.set_adapter(adapter)
            hf = LocalLLM(hf_dir, adapter=adapter if arm == "adapter" else None, model_id=BUNDLED_MODEL_ID)
            results[arm] = compare(hf, engine, prompts, config, args.tolerance)
            _log(f"{arm}: {json.dumps(results[arm])}")
            del hf
    engine.close()
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


def compare(hf: Any, engine: Any, prompts: list[str], config: Any, tolerance: float) -> dict[str, Any]:
    """Greedy texts and per-token log-probabilities of both engines on ``prompts``."""
    start = time.perf_counter()
    hf_out = hf.generate(prompts, config)
    hf_s = time.perf_counter() - start
    start = time.perf_counter()
    engine_out = engine.generate(prompts, config)
    engine_s = time.perf_counter() - start
    identical = [a.text == b.text for a, b in zip(hf_out, engine_out, strict=True)]
    same_tokens, diffs = 0, []
    for prompt, generation in zip(prompts, hf_out, strict=True):
        prompt_ids = hf.tokenizer(prompt)["input_ids"]
        if engine.tokenize(prompt) != prompt_ids:
            continue
        same_tokens += 1
        completion_ids = hf.tokenizer(generation.text, add_special_tokens=False)["input_ids"]
        if not completion_ids:
            continue
        ours = engine.token_logprobs(prompt_ids, completion_ids)
        theirs = _hf_logprobs(hf, prompt_ids, completion_ids)
        diffs += [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    diffs.sort()
    examples = [{"prompt": p[-60:], "transformers": a.text, "llamacpp": b.text}
                for p, a, b, same in zip(prompts, hf_out, engine_out, identical, strict=True) if not same][:5]
    return {
        "identical": round(sum(identical) / len(prompts), 4),
        "identical_count": sum(identical),
        "same_tokenization": round(same_tokens / len(prompts), 4),
        "logprob_tokens": len(diffs),
        "logprob_abs_diff_mean": round(statistics.fmean(diffs), 5) if diffs else None,
        "logprob_abs_diff_p95": round(diffs[int(0.95 * (len(diffs) - 1))], 5) if diffs else None,
        "logprob_abs_diff_max": round(diffs[-1], 5) if diffs else None,
        "logprob_within_tolerance": round(sum(d <= tolerance for d in diffs) / len(diffs), 4) if diffs else None,
        "transformers_s": round(hf_s, 1),
        "llamacpp_s": round(engine_s, 1),
        "differing_examples": examples,
    }


def train_adapter(hf_dir: Path, scratch: Path, items: int) -> tuple[Path, dict[str, Any]]:
    """A LoRA adapter trained with distill's SFT loop on ``items`` train-seed items with gold answers (the
    distill benchmark's examples)."""
    from procmem.distill.config import DistillConfig
    from procmem.distill.objectives import Example, SftObjective
    from procmem.distill.traces import TraceBuild
    from procmem.distill.train import train_adapter as train
    from procmem.eval.bench_distill import make_examples

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

    with torch.inference_mode():
        logits = hf.model(torch.tensor([prompt_ids + completion_ids])).logits[0].double()
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1:-1], -1)
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
    parser.add_argument("--threads", type=int, default=0, help="threads of both engines (default: every core)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line last")
    return parser.parse_args(argv)


def _log(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
