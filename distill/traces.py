"""Memory-guided corrected traces: the training data of distillation.

The teacher is the base model with the current adapter. For each problem it sees the task, the
procedural memory the retriever renders for it, and the verifier's feedback on earlier failed
attempts (never the failed answers themselves). It samples ``k`` candidates; the task's verifier keeps
the passing ones. Each kept trace trains the student on the memory-free prompt, rendered exactly as
at inference (``render_prompt(question)``), followed by ``render_completion(answer)``.

**The canonical answer.** The answer trained on is the verified answer in the canonical form the task's
verifier read it as (:func:`~procmem.verifiers.canonical_answer`), where the verifier defines one: a
``numeric:`` verifier that accepted ``57.`` trains ``57``, so a lenient verifier's accepted noise is not taught
to the model. Only the answer is canonicalised (for a ``reasoned`` task, the part after ``Answer:``); a verifier
without a canonical form (``regex:``, ``math:``, ``code``) keeps the raw text. ``traces.canonical_answers =
false`` turns it off. The raw text is kept in ``Trace.raw_answer``.

Problems are ordered: never solved first, then solved after a failure, then solved at once.
Every trace keeps its provenance: the episodes it came from and the memory entries that conditioned it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from procmem.core import (
    AnswerFormat,
    Episode,
    GenerationConfig,
    PriorAttempt,
    ProcmemError,
    Task,
    extract_answer,
    generation_for,
    render_completion,
    render_prompt,
)
from procmem.core.feedback import is_correction
from procmem.core.fileio import hash_strings, read_jsonl, write_jsonl
from procmem.core.keys import policy_version
from procmem.core.prompts import ANSWER_STOP
from procmem.core.registry import MemorySnapshot
from procmem.distill.config import TraceConfig
from procmem.llm import LLM, generate_for_tasks
from procmem.memory import Retriever
from procmem.memory._problems import group_problems
from procmem.verifiers import Verifier, build_verifier, canonical_answer

__all__ = [
    "HIDDEN_ANSWER",
    "Example",
    "ExportFormat",
    "TeacherContext",
    "Trace",
    "TraceBuild",
    "TrainingItem",
    "build_traces",
    "export_traces",
    "feedback_contexts",
    "hide_answer",
    "load_trace_build",
    "replay_traces",
    "save_trace_build",
    "success_traces",
    "teacher_contexts",
    "teacher_prompt",
    "training_answer",
    "training_items",
]

ExportFormat = Literal["openai", "trl"]
TraceStatus = Literal["kept", "failed", "duplicate", "replay"]
_TRACES, _REJECTED, _CONTEXTS, _REPLAY = "traces.jsonl", "rejected.jsonl", "contexts.jsonl", "replay.jsonl"
_CHUNK = 8
"""Problems per teacher ``generate`` call (k prompts each): batching without losing progress granularity."""


@dataclass(frozen=True)
class TrainingItem:
    """A problem (memory's grouping, :func:`~procmem.memory.group_problems`: the episodes of one question)
    as distillation uses it: its newest task and what its episodes taught, the feedback of failed attempts."""

    task: Task
    episode_ids: tuple[str, ...]
    feedback: tuple[str, ...]
    rank: int
    """0: never solved, 1: solved after a failed attempt, 2: solved at once (the generation order)."""
    failed_answers: tuple[str, ...] = ()
    """The student's failed answers: kept only to scrub them from everything the teacher reads."""
    corrections: tuple[str, ...] = ()
    """Verified answers a person gave (passing attempts marked ``details.correction``, e.g. sent to
    ``procmem serve`` as feedback): each becomes a trace itself when the task's verifier passes it."""
    failed_attempts: tuple[PriorAttempt, ...] = ()
    """The latest failed attempts, answer and raw feedback, oldest first (at most ``max_feedback``): what the
    episode-local (SDPO) teacher reads (:func:`feedback_contexts`)."""


_C = TypeVar("_C", bound="TeacherContext")


@dataclass(frozen=True, kw_only=True)
class TeacherContext:
    """A problem as the teacher sees it (with memory) and as the student sees it (without).

    :class:`Example` (a training unit) and :class:`Trace` (a teacher candidate) extend it.
    """

    task_id: str
    suite: str = ""
    prompt: str
    """Memory-free student prompt, exactly as at inference."""
    teacher_prompt: str
    memory_ids: tuple[str, ...] = ()
    episode_ids: tuple[str, ...] = ()
    answer_format: AnswerFormat = "line"
    stop: tuple[str, ...] = (ANSWER_STOP,)
    """Where the task's answers end (its generation stop strings)."""
    max_tokens: int | None = None
    """The task's own answer length limit, if it sets one (code tasks do)."""

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        return cls(**{**data, "memory_ids": tuple(data.get("memory_ids", ())),
                      "episode_ids": tuple(data.get("episode_ids", ())),
                      "stop": tuple(data.get("stop", (ANSWER_STOP,)))})

    def example(self, completion: str | None = None) -> Example:
        """This context as a training unit: an SFT example with a ``completion``, a self-distill one without."""
        return Example(**{f.name: getattr(self, f.name) for f in fields(TeacherContext)}, completion=completion)


@dataclass(frozen=True, kw_only=True)
class Example(TeacherContext):
    """One training unit. With a ``completion`` it is an SFT trace; without, a self-distill problem."""

    completion: str | None = None


@dataclass(frozen=True, kw_only=True)
class Trace(Example):
    """One teacher candidate and its verdict; kept ones are student examples ``prompt -> completion``."""

    completion: str
    answer: str
    sample: int
    score: float
    status: TraceStatus
    feedback: str = ""
    teacher: str = ""
    """Policy that wrote it: ``model_id@adapter``."""
    raw_answer: str = ""
    """The answer as it was written, where ``answer`` is its canonical form (empty when they are the same)."""


@dataclass(frozen=True)
class TraceBuild:
    """The result of :func:`build_traces`: kept traces, rejected candidates and one context per problem."""

    kept: tuple[Trace, ...]
    rejected: tuple[Trace, ...]
    contexts: tuple[TeacherContext, ...]
    memory: MemorySnapshot = field(default_factory=lambda: MemorySnapshot(entry_ids=(), hash=hash_strings([])))
    replay: tuple[Trace, ...] = ()
    """Rehearsal examples (status ``replay``): the policy's own unverified answers to questions of other kinds,
    trained beside ``kept`` by SFT against forgetting (:func:`replay_traces`)."""


def training_items(episodes: Iterable[Episode], config: TraceConfig | None = None) -> list[TrainingItem]:
    """The problems of the train-split episodes, in generation order (failed problems first), at most
    ``config.max_problems``. Within a rank the suites take turns, so a cap keeps every suite's share (sorted by
    task id alone, ``rg:chain_sum:*`` ids filled a cap of 120 before any ``rg:lcm:*`` problem was reached).

    Test-split episodes are ignored: the gate evaluates on them.
    """
    config = config or TraceConfig()
    problems = group_problems(e for e in episodes if e.task.split == "train")
    items = [_item(list(problem.episodes), config.max_feedback) for problem in problems]
    if not config.include_successes:
        items = [p for p in items if p.rank < 2]
    return sorted(items, key=_turn_order(items))[:config.max_problems]


def _turn_order(items: Sequence[TrainingItem]) -> Callable[[TrainingItem], tuple[int, int, str, str]]:
    """Sort key: rank, then the item's place in its suite (by task id), then suite: suites take turns."""
    place: dict[str, int] = {}
    seen: dict[tuple[int, str], int] = defaultdict(int)
    for item in sorted(items, key=lambda p: (p.rank, p.task.suite, p.task.id)):
        place[item.task.id] = seen[(item.rank, item.task.suite)]
        seen[(item.rank, item.task.suite)] += 1
    return lambda p: (p.rank, place[p.task.id], p.task.suite, p.task.id)


def _item(episodes: list[Episode], max_feedback: int) -> TrainingItem:
    failed_attempts = [a for e in episodes for a in e.attempts if not a.verdict.passed]
    feedback: list[str] = []
    for attempt in reversed(failed_attempts):  # the latest feedback first, without repeats
        text = hide_answer(attempt.verdict.feedback.strip(), attempt.answer)
        if text and text not in feedback:
            feedback.append(text)
    solved = any(e.passed for e in episodes)
    rank = 0 if not solved else (1 if failed_attempts else 2)
    corrections = tuple(dict.fromkeys(a.answer for e in episodes for a in e.attempts if is_correction(a)))
    latest = failed_attempts[-max_feedback:] if max_feedback else []
    return TrainingItem(task=episodes[-1].task, episode_ids=tuple(e.id for e in episodes),
                        feedback=tuple(reversed(feedback[:max_feedback])), rank=rank,
                        failed_answers=tuple(dict.fromkeys(a.answer for a in failed_attempts)),
                        corrections=corrections,
                        failed_attempts=tuple(PriorAttempt(feedback=a.verdict.feedback, answer=a.answer)
                                              for a in latest))


_QUOTED = re.compile(r"'([^']*)'(\s*\(\d+ characters\))?")
HIDDEN_ANSWER = "the previous answer"
"""What a failed answer quoted in verifier feedback becomes in the teacher prompt."""


def hide_answer(feedback: str, answer: str) -> str:
    """``feedback`` without the failed ``answer`` it quotes (verifiers echo it: ``got '30'``).

    The teacher must not see the student's failed answer, not even inside the feedback. Quoted spans
    that hold the answer (or, when the verifier cut it, a prefix ending in ``…``) become
    :data:`HIDDEN_ANSWER`; any other whole occurrence of a non-trivial answer (not part of a longer number
    or word) is replaced too.
    """
    shown = " ".join(answer.split())
    if not shown:
        return feedback

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1)
        cut = inner.endswith("…")
        if inner == shown or (cut and inner[:-1] and shown.startswith(inner[:-1])):
            return HIDDEN_ANSWER
        return match.group(0)

    text = _QUOTED.sub(replace, feedback)
    if len(shown) >= 3 or not shown.isalnum():
        # whole occurrences only: a failed ``-2`` must not eat the ``-2`` of another problem's ``-25``
        text = re.sub(rf"(?<![\w.]){re.escape(shown)}(?!\w|\.\w)", HIDDEN_ANSWER, text)
    return text


def teacher_prompt(problem: TrainingItem, memory_text: str) -> str:
    """The teacher's prompt: memory and verifier feedback, but never the failed answers, not even where an
    insight reflected on this very problem quotes one."""
    for answer in problem.failed_answers:
        memory_text = hide_answer(memory_text, answer)
    prior = [PriorAttempt(feedback=text, answer=None) for text in problem.feedback]
    return render_prompt(problem.task.prompt, memory=memory_text, prior=prior,
                         answer_format=problem.task.answer_format)


def build_traces(problems: Sequence[TrainingItem], teacher: LLM, retriever: Retriever, config: TraceConfig, *,
                 on_progress: Callable[[int], None] | None = None) -> TraceBuild:
    """Sample ``config.k`` teacher candidates per problem and keep the ones the verifier passes."""
    contexts = teacher_contexts(problems, retriever, config.memory_k)
    policy = policy_version(teacher)
    kept: list[Trace] = []
    rejected: list[Trace] = []
    for start in range(0, len(problems), _CHUNK):
        chunk = list(zip(problems[start:start + _CHUNK], contexts[start:start + _CHUNK], strict=True))
        base = GenerationConfig(max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p,
                                stop=(ANSWER_STOP,), seed=config.seed + start)
        requests = [(problem.task, ctx.teacher_prompt) for problem, ctx in chunk for _ in range(config.k)]
        outputs = generate_for_tasks(teacher, requests, base)
        for index, (problem, ctx) in enumerate(chunk):
            texts = [o.text for o in outputs[index * config.k:(index + 1) * config.k]]
            good, bad = _judge(problem, ctx, texts, config.keep_per_problem, policy,
                               canonical=config.canonical_answers)
            if problem.corrections:  # a person's verified answer trains the student (in canonical form)
                fixed, _ = _judge(problem, ctx, problem.corrections, len(problem.corrections), "correction",
                                  canonical=config.canonical_answers, given=True)
                good = [*fixed, *(t for t in good if t.answer not in {f.answer for f in fixed})]
            kept.extend(good)
            rejected.extend(bad)
        if on_progress is not None:
            on_progress(len(chunk))
    return TraceBuild(tuple(kept), tuple(rejected), tuple(contexts), _memory_snapshot(contexts))


def teacher_contexts(problems: Sequence[TrainingItem], retriever: Retriever, memory_k: int) -> list[TeacherContext]:
    """PMD's teacher view of each problem: the memory ``retriever`` gives for it (``memory_k`` entries) and the
    verifier feedback of its failed attempts, never the failed answers (:func:`teacher_prompt`)."""
    contexts = []
    for problem in problems:
        found = retriever.retrieve(problem.task, memory_k) if memory_k > 0 else None
        contexts.append(_context(problem, teacher_prompt(problem, found.text if found is not None else ""),
                                 tuple(found.entry_ids) if found is not None else ()))
    return contexts


def feedback_contexts(problems: Sequence[TrainingItem]) -> list[TeacherContext]:
    """The episode-local (SDPO) teacher view of each problem: its own latest failed attempt(s) and their verifier
    feedback, as the agent's retry prompt shows them, and nothing from any other episode (no memory). A problem
    solved at once has no feedback: its teacher prompt is the student's."""
    return [_context(problem, render_prompt(problem.task.prompt, prior=problem.failed_attempts,
                                            answer_format=problem.task.answer_format), ())
            for problem in problems]


def _context(problem: TrainingItem, teacher_text: str, memory_ids: tuple[str, ...]) -> TeacherContext:
    decoding = generation_for(problem.task, GenerationConfig(stop=(ANSWER_STOP,)))
    override = problem.task.metadata.get("generation")  # the task's own decoding needs, see generation_for
    max_tokens = override.get("max_tokens") if isinstance(override, Mapping) else None
    return TeacherContext(
        task_id=problem.task.id, suite=problem.task.suite,
        prompt=render_prompt(problem.task.prompt, answer_format=problem.task.answer_format),
        teacher_prompt=teacher_text, memory_ids=memory_ids, episode_ids=problem.episode_ids,
        answer_format=problem.task.answer_format, stop=decoding.stop,
        max_tokens=int(max_tokens) if max_tokens is not None else None,
    )


def _judge(problem: TrainingItem, ctx: TeacherContext, texts: Sequence[str], keep: int,
           policy: str, *, canonical: bool = True, given: bool = False) -> tuple[list[Trace], list[Trace]]:
    """Verify ``texts`` (completions; ``given``: answers a person gave, which a reasoned task reads whole when
    they have no ``Answer:`` line) and split them into kept traces and rejected ones."""
    verifier = build_verifier(problem.task)
    kept: list[Trace] = []
    rejected: list[Trace] = []
    seen: set[str] = set()
    for sample, text in enumerate(texts):
        raw = extract_answer(text, ctx.answer_format) or (text.strip() if given else "")
        verdict = verifier.verify(raw)
        status: TraceStatus = "failed"
        answer = raw
        if verdict.passed:
            answer = training_answer(verifier, raw) if canonical else raw
            status = "duplicate" if answer in seen or len(kept) >= keep else "kept"
            seen.add(answer)
        trace = Trace(**asdict(ctx), completion=render_completion(answer, ctx.answer_format), answer=answer,
                      sample=sample, score=verdict.score, status=status, feedback=verdict.feedback, teacher=policy,
                      raw_answer=raw if answer != raw else "")
        (kept if status == "kept" else rejected).append(trace)
    return kept, rejected


def replay_traces(policy: LLM, tasks: Sequence[Task], *, max_tokens: int) -> list[Trace]:
    """Rehearsal examples: ``policy``'s own greedy answers to ``tasks``, memory-free, as it answers them now
    (unverified: what is kept is the behaviour, right or wrong). Trained beside the verified traces, they keep a
    narrow training run from changing how the model answers other kinds of question. Empty answers are skipped."""
    prompts = [render_prompt(task.prompt, answer_format=task.answer_format) for task in tasks]
    outputs = generate_for_tasks(policy, list(zip(tasks, prompts, strict=True)),
                                 GenerationConfig(max_tokens=max_tokens, temperature=0.0, stop=(ANSWER_STOP,)))
    teacher = f"replay:{policy_version(policy)}"
    traces = []
    for task, prompt, output in zip(tasks, prompts, outputs, strict=True):
        answer = extract_answer(output.text, task.answer_format)
        if not answer:
            continue
        decoding = generation_for(task, GenerationConfig(stop=(ANSWER_STOP,)))
        traces.append(Trace(task_id=task.id, suite=task.suite, prompt=prompt, teacher_prompt=prompt,
                            answer_format=task.answer_format, stop=decoding.stop,
                            completion=render_completion(answer, task.answer_format), answer=answer, sample=0,
                            score=0.0, status="replay", teacher=teacher))
    return traces


def training_answer(verifier: Verifier, answer: str) -> str:
    """What a verified ``answer`` trains: its canonical form where the verifier gives one, else the answer."""
    form = canonical_answer(verifier, answer)
    return form if form is not None else answer


def _memory_snapshot(contexts: Sequence[TeacherContext]) -> MemorySnapshot:
    ids = sorted({entry for ctx in contexts for entry in ctx.memory_ids})
    # The hash covers what the teacher actually read, so an edited entry under the same id changes it.
    texts = sorted(ctx.teacher_prompt for ctx in contexts)
    return MemorySnapshot(entry_ids=tuple(ids), hash=hash_strings([*ids, *texts]))


def save_trace_build(build: TraceBuild, directory: Path) -> None:
    """Write ``traces.jsonl`` (kept), ``rejected.jsonl`` and ``contexts.jsonl``, each atomically."""
    write_jsonl(directory / _REJECTED, (asdict(t) for t in build.rejected))
    write_jsonl(directory / _CONTEXTS, (asdict(c) for c in build.contexts))
    write_jsonl(directory / _REPLAY, (asdict(t) for t in build.replay))
    write_jsonl(directory / _TRACES, (asdict(t) for t in build.kept))  # last: its presence marks completion


def load_trace_build(directory: Path) -> TraceBuild | None:
    """The build saved in ``directory``, or None if none was completed there."""
    if not (directory / _TRACES).exists():
        return None
    kept = tuple(Trace.from_dict(row) for row in read_jsonl(directory / _TRACES))
    rejected = tuple(Trace.from_dict(row) for row in read_jsonl(directory / _REJECTED))
    contexts = tuple(TeacherContext.from_dict(row) for row in read_jsonl(directory / _CONTEXTS))
    replay = tuple(Trace.from_dict(row) for row in read_jsonl(directory / _REPLAY)) \
        if (directory / _REPLAY).exists() else ()
    return TraceBuild(kept, rejected, contexts, _memory_snapshot(contexts), replay)


def success_traces(episodes: Iterable[Episode], keep_per_problem: int, *, canonical: bool = True) -> TraceBuild:
    """RFT's data: the distinct verified answers of the agent's own episodes (at most ``keep_per_problem`` per
    task, the same cap the teacher's traces have), as memory-free examples, each in its canonical form unless
    ``canonical`` is False."""
    kept: list[Trace] = []
    seen: set[tuple[str, str]] = set()
    for episode in sorted(episodes, key=lambda e: (e.task.id, e.id)):
        per_task = sum(task_id == episode.task.id for task_id, _ in seen)
        if not episode.passed or per_task >= keep_per_problem:
            continue
        raw = episode.attempts[-1].answer
        answer = _canonical_success(episode.task, raw) if canonical else raw
        if (episode.task.id, answer) in seen:
            continue
        seen.add((episode.task.id, answer))
        prompt = render_prompt(episode.task.prompt, answer_format=episode.task.answer_format)
        kept.append(Trace(task_id=episode.task.id, suite=episode.task.suite, prompt=prompt, teacher_prompt=prompt,
                          episode_ids=(episode.id,), answer_format=episode.task.answer_format,
                          completion=render_completion(answer, episode.task.answer_format), answer=answer, sample=0,
                          score=1.0, status="kept", teacher=episode.policy_version,
                          raw_answer=raw if answer != raw else ""))
    return TraceBuild(tuple(kept), (), ())


def _canonical_success(task: Task, answer: str) -> str:
    try:
        verifier = build_verifier(task)
    except ProcmemError:  # the episode's verifier no longer builds: its answer stays as it was recorded
        return answer
    return training_answer(verifier, answer)


def export_traces(traces: Iterable[Trace], fmt: ExportFormat) -> list[dict[str, Any]]:
    """Kept traces as OpenAI chat fine-tuning rows or TRL prompt/completion rows."""
    rows: list[dict[str, Any]] = []
    for trace in traces:
        if trace.status != "kept":
            continue
        if fmt == "openai":
            rows.append({"messages": [{"role": "user", "content": trace.prompt},
                                      {"role": "assistant", "content": trace.answer}]})
        elif fmt == "trl":
            rows.append({"prompt": trace.prompt, "completion": trace.completion})
        else:
            raise ProcmemError(f"unknown export format {fmt!r}", where="--format", fix="use openai or trl")
    return rows
