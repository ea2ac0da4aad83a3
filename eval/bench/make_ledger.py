"""Write ``procmem/tasks/data/ledger.jsonl``: the convention suite of the evidence experiment.

Every question posts one entry (``Ledger: post a withdrawal of 37.``); the verifier is ``ledger:<value>``
(:mod:`procmem.verifiers.ledger`): the answer must be the signed amount with two decimals (``-37.00``), a rule
the prompt never states and the verifier's feedback does. The arithmetic is trivial on purpose: what there is
to learn is the convention. Each distinct
question is assigned to the train or test split by its SHA-256 (even first byte: train), as ``rg:`` suites
are, and the file lists each split in a seeded order. Deterministic: rerunning writes the same file.

Run: ``python eval/bench/make_ledger.py`` (the file is committed; this script documents how it was made).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "procmem" / "tasks" / "data" / "ledger.jsonl"
PER_SPLIT = 700


def questions() -> list[tuple[str, int, str]]:
    """Every (question, value, kind): a deposit or a withdrawal of 1 to 999, to be posted as a signed amount."""
    found: list[tuple[str, int, str]] = []
    for amount in range(1, 1000):
        found.append((f"Ledger: post a deposit of {amount}.", amount, "deposit"))
        found.append((f"Ledger: post a withdrawal of {amount}.", -amount, "withdrawal"))
    return found


def main() -> None:
    split: dict[str, list[tuple[str, int, str]]] = {"train": [], "test": []}
    for question, value, expression in questions():
        sha = hashlib.sha256(question.encode()).hexdigest()
        split["train" if int(sha[:2], 16) % 2 == 0 else "test"].append((question, value, expression))
    rows = []
    for name, items in split.items():
        random.Random(f"ledger:{name}").shuffle(items)
        for question, value, expression in items[:PER_SPLIT]:
            sha = hashlib.sha256(question.encode()).hexdigest()[:12]
            rows.append({"id": f"ledger:{sha}", "prompt": question, "verifier": f"ledger:{value}", "split": name,
                         "metadata": {"kind": expression}})
    OUT.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} tasks to {OUT}")


if __name__ == "__main__":
    main()
