"""Calibration: how often the bundled base model passes candidate reasoning-gym tasks zero-shot and with
three worked examples in its prompt (what memory gives it), on held-out items.

    python eval/calibrate.py [N] [--tasks name,name]

It picks suites for eval/configs/cpu.toml: accuracy neither ~0 nor ~100, and room for memory to help.
Prompts use procmem's format (``Question: ...\\nAnswer:``); decoding is greedy, batch 16; test items are
seed 1,000,000 minus any question also among the 200 seed-0 train items. Results are in
eval/results/calibration.md.
"""

from __future__ import annotations

import argparse
import time

import reasoning_gym as rg
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from procmem.core import Home
from procmem.llm import ensure_bundled_model

TASKS = {
    "chain_sum": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1),
    "products": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1),
    "letter_counting": dict(min_words=1, max_words=3),
    "spell_backward": dict(min_word_len=3, max_word_len=5),
    "word_sequence_reversal": dict(min_words=3, max_words=4),
    "base_conversion": dict(min_base=2, max_base=10, min_value=1, max_value=31),
    "gcd": dict(min_numbers=2, max_numbers=2, min_value=1, max_value=20),
    "syllogism": {},
    "leg_counting": dict(min_animals=1, max_animals=2, max_instances=2),
    "word_sorting": dict(min_words=3, max_words=3),
}


def _prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="?", type=int, default=24, help="test items drawn per task (before dedup)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args()
    directory = ensure_bundled_model(Home.resolve().models)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()

    def generate(prompts: list[str]) -> list[str]:
        outputs: list[str] = []
        for start in range(0, len(prompts), 16):
            batch = tokenizer(prompts[start:start + 16], return_tensors="pt", padding=True)
            with torch.no_grad():
                ids = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False)
            outputs += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return outputs

    print("task | zero-shot passed/n | 3-shot passed/n")
    for name in args.tasks.split(","):
        config = TASKS[name]
        train = rg.create_dataset(name, seed=0, size=200, **config)
        test = rg.create_dataset(name, seed=1_000_000, size=args.n, **config)
        seen = {entry["question"] for entry in train}
        items = [entry for entry in test if entry["question"] not in seen]
        shots = "\n".join(_prompt(train[i]["question"]) + f" {train[i]['answer']}\n" for i in range(3)).strip()
        row = []
        for prefix in ("", shots + "\n\n"):
            started = time.perf_counter()
            answers = [text.strip().split("\n")[0].strip() for text in generate([prefix + _prompt(e["question"])
                                                                                   for e in items])]
            passed = sum(bool(a) and test.score_answer(a, e) == 1.0 for a, e in zip(answers, items, strict=True))
            row.append(f"{passed}/{len(items)} ({time.perf_counter() - started:.0f} s)")
        print(f"{name} | {row[0]} | {row[1]}", flush=True)


if __name__ == "__main__":
    main()
