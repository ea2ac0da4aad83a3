"""Datasets out (``procmem export``): verified episodes as training data a trainer or a hub reads directly.

- ``hf``: a Hugging Face dataset directory: Parquet files per config (``sft``: prompt, completion and the chat
  ``messages`` with provenance columns; ``dpo``: prompt, chosen, rejected) and a dataset card (``README.md`` with
  a YAML header naming the configs), readable with ``datasets.load_dataset(DIR)`` or
  ``load_dataset("parquet", data_files=...)``;
- ``openai``: OpenAI chat fine-tuning JSONL (``{"messages": [...]}``);
- ``trl``: TRL's SFT prompt/completion JSONL;
- ``dpo``: TRL's preference pairs (prompt, chosen, rejected) JSONL.

SFT rows are the passing verified answers, in their canonical form (:func:`~procmem.distill.traces.success_traces`,
the same rows RFT trains on, written by :func:`~procmem.distill.traces.export_traces`); a correction counts as
the passing answer. Preference pairs come from answers to the same question (the same
:func:`~procmem.core.keys.problem_key`) judged both ways: each failing answer is paired with a passing one, within
one episode (a wrong answer and its correction) or across episodes. Prompts are rendered exactly as at inference
(:func:`~procmem.core.render_prompt`), the same format the student is trained on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from procmem.core import Episode, ProcmemError, Task, render_completion, render_prompt, utc_now
from procmem.core.fileio import atomic_write_text, write_jsonl
from procmem.core.keys import problem_key
from procmem.distill.traces import Trace, export_traces, success_traces

__all__ = ["DATASET_FORMATS", "DatasetFormat", "EpisodeFilter", "Unverified", "dpo_pairs", "sft_rows",
           "write_dataset"]

DatasetFormat = Literal["hf", "openai", "trl", "dpo"]
DATASET_FORMATS: tuple[DatasetFormat, ...] = ("hf", "openai", "trl", "dpo")
_EVERY = 1 << 30


@dataclass(frozen=True)
class Unverified:
    """A recorded answer nobody judged (a call without feedback or verifier), exported only when asked for."""

    task: Task
    answer: str
    episode_id: str
    model_id: str
    adapter_version: str | None
    finished_at: str
    session_id: str | None = None


@dataclass(frozen=True)
class EpisodeFilter:
    """Which episodes go out: by adapter version (``base`` for none), finish time (ISO ``since`` <= t < ``until``)
    and session id."""

    adapter: str | None = None
    since: str | None = None
    until: str | None = None
    session: str | None = None

    def keeps(self, *, adapter_version: str | None, finished_at: str, session_id: str | None) -> bool:
        if self.adapter is not None and (adapter_version or "base") != self.adapter:
            return False
        if self.since is not None and finished_at < self.since:
            return False
        if self.until is not None and finished_at >= self.until:
            return False
        return self.session is None or session_id == self.session

    def episodes(self, episodes: Iterable[Episode]) -> list[Episode]:
        return [e for e in episodes if self.keeps(adapter_version=e.adapter_version, finished_at=e.finished_at,
                                                  session_id=_session(e.task))]

    def unverified(self, answers: Iterable[Unverified]) -> list[Unverified]:
        return [u for u in answers if self.keeps(adapter_version=u.adapter_version, finished_at=u.finished_at,
                                                 session_id=u.session_id)]


def _session(task: Task) -> str | None:
    value = task.metadata.get("session_id")
    return None if value is None else str(value)


def _trace_rows(episodes: Sequence[Episode], unverified: Sequence[Unverified]) -> list[tuple[Trace, dict[str, Any]]]:
    """The SFT traces (passing verified answers, then unjudged ones) with each one's provenance columns."""
    by_id = {e.id: e for e in episodes}
    out: list[tuple[Trace, dict[str, Any]]] = []
    for trace in success_traces(episodes, _EVERY).kept:
        episode = by_id[trace.episode_ids[0]]
        out.append((trace, {"episode_id": episode.id, "task_id": episode.task.id, "suite": episode.task.suite,
                            "question": episode.task.prompt, "verified": True, "model_id": episode.model_id,
                            "adapter_version": episode.adapter_version or "base",
                            "session_id": _session(episode.task), "finished_at": episode.finished_at,
                            "source": str(episode.task.metadata.get("source") or "")}))
    for answer in unverified:
        task = answer.task
        prompt = render_prompt(task.prompt, answer_format=task.answer_format)
        trace = Trace(task_id=task.id, suite=task.suite, prompt=prompt, teacher_prompt=prompt,
                      episode_ids=(answer.episode_id,), answer_format=task.answer_format,
                      completion=render_completion(answer.answer.strip(), task.answer_format),
                      answer=answer.answer.strip(), sample=0, score=0.0, status="kept",
                      teacher=f"{answer.model_id}@{answer.adapter_version or 'base'}")
        out.append((trace, {"episode_id": answer.episode_id, "task_id": task.id, "suite": task.suite,
                            "question": task.prompt, "verified": False, "model_id": answer.model_id,
                            "adapter_version": answer.adapter_version or "base", "session_id": answer.session_id,
                            "finished_at": answer.finished_at, "source": str(task.metadata.get("source") or "")}))
    return out


def sft_rows(episodes: Sequence[Episode], fmt: Literal["hf", "openai", "trl"],
             unverified: Sequence[Unverified] = ()) -> list[dict[str, Any]]:
    """SFT rows in ``fmt``: ``openai`` and ``trl`` as :func:`~procmem.distill.traces.export_traces` writes them;
    ``hf`` as TRL's prompt/completion plus the chat ``messages`` and provenance columns."""
    traced = _trace_rows(episodes, unverified)
    traces = [t for t, _ in traced]
    if fmt in ("openai", "trl"):
        return export_traces(traces, fmt)
    openai = export_traces(traces, "openai")
    trl = export_traces(traces, "trl")
    return [{**trl_row, "messages": chat["messages"], **extra}
            for trl_row, chat, (_, extra) in zip(trl, openai, traced, strict=True)]


def dpo_pairs(episodes: Sequence[Episode]) -> list[dict[str, Any]]:
    """Preference pairs (prompt, chosen, rejected) from answers to the same question judged both ways."""
    passing: dict[str, list[tuple[str, str]]] = defaultdict(list)
    failing: dict[str, list[tuple[str, str]]] = defaultdict(list)
    tasks: dict[str, Task] = {}
    for episode in sorted(episodes, key=lambda e: (e.finished_at, e.id)):
        key = problem_key(episode.task.prompt)
        tasks.setdefault(key, episode.task)
        for attempt in episode.attempts:
            answer = attempt.answer.strip()
            if not answer:
                continue
            bucket = passing if attempt.verdict.passed else failing
            if (answer, episode.id) not in bucket[key] and all(a != answer for a, _ in bucket[key]):
                bucket[key].append((answer, episode.id))
    rows = []
    for key, rejected in failing.items():
        chosen = passing.get(key)
        if not chosen:
            continue
        task = tasks[key]
        prompt = render_prompt(task.prompt, answer_format=task.answer_format)
        for index, (bad, _) in enumerate(rejected):
            good = chosen[index % len(chosen)][0]
            if good == bad:
                continue
            rows.append({"prompt": prompt, "chosen": render_completion(good, task.answer_format),
                         "rejected": render_completion(bad, task.answer_format)})
    return rows


def write_dataset(out: Path, fmt: DatasetFormat, episodes: Sequence[Episode], *,
                  unverified: Sequence[Unverified] = (), description: Mapping[str, Any] | None = None,
                  overwrite: bool = False) -> dict[str, int]:
    """Write ``fmt`` to ``out`` (a directory for ``hf``, a JSONL file otherwise), atomically; returns the row counts
    per part. Raises ProcmemError when there is nothing to write or ``out`` is in the way."""
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise ProcmemError(f"{out} already exists", where=str(out), fix="choose a new path, or pass --overwrite")
    if fmt == "dpo":
        rows = dpo_pairs(episodes)
        _nonempty(rows, "no preference pairs (no question has answers judged both ways)")
        write_jsonl(out, rows)
        return {"dpo": len(rows)}
    if fmt in ("openai", "trl"):
        rows = sft_rows(episodes, fmt, unverified)
        _nonempty(rows, "no passing answers to export")
        write_jsonl(out, rows)
        return {"sft": len(rows)}
    if fmt != "hf":
        raise ProcmemError(f"unknown format {fmt!r}", where="--format", fix=f"use one of {', '.join(DATASET_FORMATS)}")
    parts = {"sft": sft_rows(episodes, "hf", unverified), "dpo": dpo_pairs(episodes)}
    _nonempty([r for rows in parts.values() for r in rows], "no passing answers and no preference pairs to export")
    _write_hf(out, {name: rows for name, rows in parts.items() if rows}, dict(description or {}), overwrite)
    return {name: len(rows) for name, rows in parts.items()}


def _nonempty(rows: Sequence[Any], why: str) -> None:
    if not rows:
        raise ProcmemError(f"nothing to export: {why}", where="procmem export",
                           fix="widen the filters, record verified episodes first, or try --all")


def _write_hf(out: Path, parts: Mapping[str, list[dict[str, Any]]], description: dict[str, Any],
              overwrite: bool) -> None:
    try:
        from datasets import Dataset
        from datasets.utils.logging import disable_progress_bar
    except ImportError as err:
        raise ProcmemError("the hf format needs the datasets package", where="--format hf",
                           fix="pip install 'procmem[export]'") from err
    disable_progress_bar()  # procmem prints its own summary
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, rows in parts.items():
            (staging / name).mkdir()
            Dataset.from_list(rows).to_parquet(str(staging / name / "train-00000-of-00001.parquet"))
        atomic_write_text(staging / "README.md", _card(parts, description))
        if out.exists() and overwrite:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        elif out.exists():
            out.rmdir()  # an empty directory
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _card(parts: Mapping[str, list[dict[str, Any]]], description: Mapping[str, Any]) -> str:
    """The dataset card: a YAML header naming the configs, then what is in them and where it came from."""
    import json

    lines = ["---", "configs:"]
    for index, name in enumerate(parts):
        lines += [f"- config_name: {name}", "  data_files:", "  - split: train",
                  f"    path: {name}/train-*.parquet"]
        if index == 0:
            lines.append("  default: true")
    total = sum(len(rows) for rows in parts.values())
    size = "n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else \
        "100K<n<1M"
    lines += ["task_categories:", "- text-generation", "tags:", "- procmem", *[f"- {name}" for name in parts],
              "size_categories:", f"- {size}", "---", "", "# procmem export", "",
              f"Verified episodes exported by `procmem export` on {utc_now()}.", ""]
    for key, value in description.items():
        lines.append(f"- **{key}**: {json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value}")
    lines += ["", "| config | rows | columns |", "|---|---:|---|"]
    for name, rows in parts.items():
        lines.append(f"| {name} | {len(rows)} | {', '.join(rows[0])} |")
    lines += ["", "`sft`: passing verified answers (a correction counts as the answer), as TRL prompt/completion with "
              "the chat `messages`; `verified` is false for unjudged answers (exported with `--all`). `dpo`: "
              "preference pairs from answers to the same question judged both ways. Prompts are rendered as the "
              "model sees them at inference.", ""]
    return "\n".join(lines)
