"""``rg:<dataset>``: reasoning-gym's own scorer for a task built by an ``rg:`` suite.

The spec names the dataset; ``task.metadata["rg"]`` says how to rebuild the exact entry that was
asked (the gold answer is never stored in the prompt)::

    {"dataset": "chain_sum", "config": {"min_terms": 2, ...}, "seed": 0, "size": 10000,
     "index": 17, "question_sha": "<sha256 of the question>"}

The verifier rebuilds the dataset and entry ``index`` (reasoning-gym is deterministic in seed, size and
config), checks that it is the same question, and scores with ``dataset.score_answer(answer, entry)``:

- the answer is stripped first (reasoning-gym gives ``' 1'`` only 0.5);
- a pass is a score of exactly 1.0; partial credit is kept as the score but fails;
- a scorer that raises on junk (``prime_factorization`` does) counts as 0;
- where the gold has a simple form (an integer, a number, one word), ``details["well_formed"]`` says whether
  the answer has it.

The canonical form of a passing answer (:meth:`RGVerifier.canonical`, what distillation trains on) is the
entry's stored gold answer, when it has one (and the scorer passes it).

Datasets in :data:`procmem.tasks.rg.REFUSED_DATASETS` have broken scoring and are refused with a clear
error. Building datasets and entries is the task suite's job (:mod:`procmem.tasks.rg`); this module scores.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from procmem.core import ProcmemError, Task, Verdict
from procmem.core.errors import one_line
from procmem.tasks.rg import question_sha, rg_dataset, rg_entry
from procmem.verifiers._feedback import describe_form, fail, form_mismatch, malformed_spec, show
from procmem.verifiers.base import register_verifier

__all__ = ["RGVerifier"]

_SYNTAX = "rg:<dataset> on a task built by an rg: suite (procmem solve --suite 'rg:<dataset>?key=value')"


@lru_cache(maxsize=4096)
def _cached_entry(dataset: Any, index: int) -> Mapping[str, Any]:
    """Entries are rebuilt once per process: some datasets take a second per item, and the agent rebuilds
    the verifier on every attempt. The scorer gets a copy (see :meth:`RGVerifier.verify`)."""
    return rg_entry(dataset, index)


@dataclass(frozen=True)
class RGVerifier:
    """Scores answers to one reasoning-gym entry."""

    dataset: Any
    entry: Mapping[str, Any]

    @property
    def reference(self) -> str | None:
        """The entry's stored gold answer (None for tasks scored by simulation)."""
        gold = self.entry.get("answer")
        return gold.strip() if isinstance(gold, str) else None

    def verify(self, answer: str) -> Verdict:
        got = answer.strip()
        gold = self.entry.get("answer")
        secrets = (gold,) if isinstance(gold, str) and gold.strip() else ()
        try:
            raw = float(self.dataset.score_answer(got, copy.deepcopy(dict(self.entry))))
        except Exception:
            raw = None
        score = 0.0 if raw is None or not math.isfinite(raw) else min(1.0, max(0.0, raw))
        form = describe_form(gold if isinstance(gold, str) else None)
        details = {"well_formed": bool(got) and not form_mismatch(form, got)} if form is not None else {}
        if score == 1.0:
            return Verdict(passed=True, score=1.0, details=details)
        verdict = fail(_messages(got, gold if isinstance(gold, str) else None, score, raw is None), secrets, score)
        return Verdict(passed=False, score=verdict.score, feedback=verdict.feedback, details=details)

    def canonical(self, answer: str) -> str | None:
        """The stored gold answer for a passing ``answer`` (None without one, or for a failing answer)."""
        reference = self.reference
        if reference is None or not self.verify(answer).passed:
            return None
        return reference if reference == answer.strip() or self.verify(reference).passed else None


def _messages(got: str, gold: str | None, score: float, raised: bool) -> list[str]:
    form = describe_form(gold)
    expected = form or "the answer in the form the question asks for"
    if not got:
        return [f"the answer is empty; expected {expected} on one line"]
    if form_mismatch(form, got):
        return [f"expected {form}, got {show(got)}", f"expected {form} and nothing else"]
    if raised:
        return [f"could not read {show(got)}; expected {expected}", f"could not read the answer; expected {expected}"]
    if gold is None:
        return [f"{show(got)} does not solve the task", "the answer does not solve the task"]
    if score > 0.0:
        return [f"{show(got)} is only partly right; give exactly the answer and nothing else",
                "the answer is only partly right; give exactly the answer and nothing else"]
    return [f"{show(got)} is not the correct answer"]


@register_verifier("rg")
def _build(argument: str, task: Task) -> RGVerifier:
    name = argument.strip()
    meta = task.metadata.get("rg")
    if not isinstance(meta, Mapping):
        raise malformed_spec(task, "the task has no metadata['rg'] saying which entry to score", _SYNTAX)
    try:
        dataset_name, config = str(meta["dataset"]), dict(meta["config"])
        seed, size, index, sha = int(meta["seed"]), int(meta["size"]), int(meta["index"]), str(meta["question_sha"])
    except (KeyError, TypeError, ValueError) as err:
        raise malformed_spec(task, f"metadata['rg'] is incomplete ({one_line(err)})", _SYNTAX) from None
    if dataset_name != name:
        raise malformed_spec(task, f"the spec names {name!r} but the metadata is from {dataset_name!r}", _SYNTAX)
    dataset = rg_dataset(name, config, seed, size, where=f"task {task.id}")
    entry = _cached_entry(dataset, index)
    if question_sha(entry["question"]) != sha:
        raise ProcmemError("reasoning-gym rebuilt a different question than the one asked", where=f"task {task.id}",
                           fix="rescore with the reasoning-gym version that built the task")
    return RGVerifier(dataset, entry)
