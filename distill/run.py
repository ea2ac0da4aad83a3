"""The distillation job: collect -> build traces -> train -> gate -> register/promote.

:func:`run_distillation` is what ``procmem distill --once`` calls. It runs under an inter-process lock
(``<home>/locks/distill.lock``): a second job exits with :class:`DistillBusy` instead of waiting.

Every run lives in ``<home>/distill/runs/<run_id>/`` and records its stage in ``run.json``; each stage
writes its output atomically (dataset, traces, training checkpoints, gate report). Rerunning the
same command after a crash (even ``kill -9``) resumes the unfinished run from its last completed
stage, and training from its last checkpoint. A run with different settings abandons it and starts
afresh.

The watermark (``<home>/distill/watermark.json``) holds the episode ids of the last successful run;
a run starts only when at least ``min_new_episodes`` episodes arrived since. :func:`run_every` is the
long-running scheduler (``--every 6h``): a failed tick is logged and retried at the next one.
"""

from __future__ import annotations

import gc
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from rich.console import Console
from rich.markup import escape

from procmem.core import Episode, Home, ProcmemError, Split, Task, new_id, redact, utc_now
from procmem.core.fileio import hash_strings, read_json, read_jsonl, write_json, write_jsonl
from procmem.core.keys import normalize_question, policy_version
from procmem.core.progress import progress_bar
from procmem.core.registry import (
    AdapterManifest,
    BaseModelInfo,
    DatasetSnapshot,
    GateReport,
    base_model_hash,
    gate_table,
    list_adapters,
    promote,
    promotion_state,
    resolve_adapter,
)
from procmem.core.registry import register_adapter as _register
from procmem.distill.config import DistillConfig
from procmem.distill.gate import SuiteScores, compare, evaluate
from procmem.distill.traces import TraceBuild, build_traces, load_trace_build, problems_from_episodes, save_trace_build
from procmem.distill.train import ObjectiveFactory, TrainResult, train_adapter
from procmem.llm import LLM
from procmem.memory import Retriever

__all__ = [
    "DistillBusy",
    "DistillDeps",
    "DistillResult",
    "LLMFactory",
    "TaskLoader",
    "build_run_traces",
    "collect_episodes",
    "default_deps",
    "distill_dir",
    "distill_lock",
    "gate_candidate",
    "latest_run_dir",
    "parse_interval",
    "register_candidate",
    "run_distillation",
    "run_every",
]

LLMFactory = Callable[[Path | None, str | None], LLM]
"""Loads the base model with an adapter directory (None: none) labelled with a version (or None)."""
TaskLoader = Callable[[str, Split, int], list[Task]]
"""``(suite spec, split, n) -> tasks`` (default: ``procmem.tasks.load_suite``)."""

Stage = Literal["collected", "traced", "trained", "gated", "registered", "done", "abandoned"]


class DistillBusy(ProcmemError):
    """Another distillation job holds the lock."""


@dataclass(frozen=True)
class DistillDeps:
    """What a run calls out to; :func:`default_deps` builds the real ones from the home."""

    episodes: Callable[[], Iterable[Episode]]
    retriever: Retriever | Callable[[str], Retriever]
    """The teacher's memory; a factory gets the teacher's policy version (``model_id@adapter``), which
    procedural memory trusts fully (co-evolution)."""
    llm_factory: LLMFactory
    model_dir: Path
    load_tasks: TaskLoader
    objective_factory: ObjectiveFactory | None = None


@dataclass(frozen=True)
class DistillResult:
    """What one run did; ``to_dict`` is the ``--json`` line."""

    status: Literal["promoted", "rejected", "skipped"]
    run_id: str | None = None
    reason: str = ""
    version: str | None = None
    promoted: bool = False
    forced: bool = False
    resumed: bool = False
    new_episodes: int = 0
    episodes: int = 0
    problems: int = 0
    traces: int = 0
    rejected_traces: int = 0
    train: dict[str, Any] | None = None
    gate: GateReport | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gate"] = self.gate.model_dump(mode="json") if self.gate is not None else None
        return data


def distill_dir(home: Home) -> Path:
    return home.root / "distill"


def distill_lock(home: Home) -> FileLock:
    """The lock that keeps two distillation jobs from running at once."""
    home.locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(home.locks / "distill.lock"))


# ------------------------------------------------------------------------------------------- the run


def run_distillation(config: DistillConfig, home: Home, *, deps: DistillDeps | Callable[[], DistillDeps] | None = None,
                     force: bool = False, console: Console | None = None, quiet: bool = False) -> DistillResult:
    """One distillation run (or the resumption of an interrupted one) under the job lock.

    ``deps`` may be a factory, called only once the lock is held (default: :func:`default_deps`).
    A second job while one runs raises :class:`DistillBusy` at once instead of waiting.
    """
    console = console or Console(stderr=True, quiet=quiet)
    home.ensure()
    lock = distill_lock(home)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DistillBusy("another distillation job is running", where=str(home.locks / "distill.lock"),
                          fix="wait for it to finish; the lock is released when it exits") from None
    try:
        if deps is None:
            deps = default_deps(config, home)
        elif not isinstance(deps, DistillDeps):
            deps = deps()
        return _run_locked(config, home, deps, force, console, quiet)
    finally:
        lock.release()


def _run_locked(config: DistillConfig, home: Home, deps: DistillDeps, force: bool, console: Console,
                quiet: bool) -> DistillResult:
    run = _unfinished_run(home, config)
    resumed = run is not None
    if run is None:
        episodes = collect_episodes(deps.episodes())
        new = _new_episode_count(home, episodes)
        if new < config.min_new_episodes:
            return DistillResult(status="skipped", reason=f"{new} new episodes since the last run "
                                 f"(min_new_episodes={config.min_new_episodes})", new_episodes=new,
                                 episodes=len(episodes))
        run = _new_run(home, config, episodes, new)
        console.print(f"distill run {run.name}: {len(episodes)} train episodes, {new} new")
    else:
        console.print(f"resuming distill run {run.name} at stage {_meta(run)['stage']}")
    try:
        return _advance(run, config, home, deps, force, resumed, console, quiet)
    except BaseException as err:
        _update(run, error=f"{type(err).__name__}: {err}", failed_at=utc_now())
        raise


def _advance(run: Path, config: DistillConfig, home: Home, deps: DistillDeps, force: bool, resumed: bool,
             console: Console, quiet: bool) -> DistillResult:
    meta = _meta(run)
    episodes = [Episode.from_dict(row) for row in read_jsonl(run / "episodes.jsonl")]
    parent_version = _parent_version(home, config)
    parent_dir = resolve_adapter(home, parent_version) if parent_version else None
    base = DistillResult(status="skipped", run_id=run.name, resumed=resumed, new_episodes=meta["new_episodes"],
                         episodes=len(episodes))

    build = load_trace_build(run / "traces")
    if build is None:
        teacher = deps.llm_factory(parent_dir, parent_version)
        retriever = deps.retriever if isinstance(deps.retriever, Retriever) else deps.retriever(policy_version(teacher))
        build = build_run_traces(episodes, teacher, retriever, config, console=console, quiet=quiet)
        del teacher
        _release(deps.model_dir)
        save_trace_build(build, run / "traces")
        _update(run, stage="traced")
    counts = {"problems": len(build.contexts), "traces": len(build.kept), "rejected_traces": len(build.rejected)}
    if config.objective != "self-distill" and len(build.kept) < config.min_traces:
        _finish(home, run, episodes)
        return _replace(base, reason=f"{len(build.kept)} verified traces (min_traces={config.min_traces})",
                        **counts)

    train = train_adapter(build, config, model_dir=deps.model_dir, work_dir=run / "train", parent=parent_dir,
                          objective_factory=deps.objective_factory,
                          console=console, quiet=quiet)
    _release(deps.model_dir)
    _update(run, stage="trained")

    report = _load_gate(run)
    if report is None:
        report = gate_candidate(train.adapter_dir, config, home, deps, episodes, console=console, quiet=quiet)
        write_json(run / "gate.json", report.model_dump(mode="json"))
        _update(run, stage="gated")
    console.print(gate_table(report))

    forced = force and not report.passed
    manifest = _registered(home, run.name) or register_candidate(
        train, build, episodes, report, config, home, deps, run_id=run.name, parent=parent_version, forced=forced)
    _update(run, stage="registered", version=manifest.version)
    promoted = report.passed or force
    if promoted:
        promote(home.adapters, manifest.version, force=force, reason="forced" if forced else "gate")
        console.print(f"[green]promoted {manifest.version}[/]" + (" (forced past a failed gate)" if forced else ""))
    else:
        console.print(f"[yellow]{manifest.version} registered but not promoted: the gate failed[/]")
    _finish(home, run, episodes)
    return _replace(base, status="promoted" if promoted else "rejected", version=manifest.version,
                    promoted=promoted, forced=forced, train=train.to_dict(), gate=report,
                    reason="" if report.passed else _gate_reason(report), **counts)


_BIG_MODEL_BYTES = 256 << 20


def _release(model_dir: Path) -> None:
    """Free the model just dropped before the next one loads.

    Loaded models sit in reference cycles, so only a full collection frees them. It costs ~0.5 s with
    torch and transformers imported, which only pays off for big models (the bundled one is 1.1 GB).
    """
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    if weights > _BIG_MODEL_BYTES:
        gc.collect()


def _replace(result: DistillResult, **changes: Any) -> DistillResult:
    return DistillResult(**{**asdict(result), "gate": result.gate, **changes})


def _gate_reason(report: GateReport) -> str:
    reasons = []
    if not report.improved:
        reasons.append(f"test accuracy {report.test_baseline:.1%} -> {report.test_candidate:.1%} "
                       f"(needs +{report.min_improvement:.1%})")
    if not report.holdout_ok:
        reasons.append(f"holdout accuracy {report.holdout_baseline:.1%} -> {report.holdout_candidate:.1%} "
                       f"(may drop {report.max_holdout_drop:.1%})")
    return "; ".join(reasons)


# ---------------------------------------------------------------------------------------------- steps


def collect_episodes(episodes: Iterable[Episode]) -> list[Episode]:
    """The train-split episodes, oldest first, each once (test episodes never train)."""
    unique = {e.id: e for e in episodes if e.task.split == "train"}
    return sorted(unique.values(), key=lambda e: (e.finished_at, e.id))


def build_run_traces(episodes: Sequence[Episode], teacher: LLM, retriever: Retriever, config: DistillConfig, *,
                     console: Console | None = None, quiet: bool = False) -> TraceBuild:
    """Problems from ``episodes`` (failed first), then teacher candidates kept by the verifier."""
    trace = config.traces
    problems = problems_from_episodes(episodes, max_feedback=trace.max_feedback,
                                      include_successes=trace.include_successes, limit=trace.max_problems)
    with progress_bar(console, quiet=quiet) as progress:
        bar = progress.add_task(f"teacher traces (k={trace.k})", total=len(problems))
        return build_traces(problems, teacher, retriever, trace, on_progress=lambda n: progress.advance(bar, n))


def gate_candidate(adapter_dir: Path, config: DistillConfig, home: Home, deps: DistillDeps,
                   episodes: Sequence[Episode], *, console: Console | None = None, quiet: bool = False) -> GateReport:
    """Evaluate the candidate and the promoted adapter (or the base) on the same held-out items."""
    trained = sorted({e.task.suite for e in episodes})
    test_suites = list(config.gate.test_suites) or trained
    if not test_suites:
        raise ProcmemError("no test suites for the gate", where="gate.test_suites",
                           fix="set gate.test_suites to suite specs with a test split")
    holdout = [s for s in config.gate.holdout_suites if s not in trained] if config.gate.n_holdout else []
    for skipped in set(config.gate.holdout_suites) & set(trained):
        (console or Console(stderr=True)).print(f"[yellow]holdout suite {skipped} was trained on: skipped[/]")
    trained_questions = {normalize_question(e.task.prompt) for e in episodes}
    suites: dict[str, list[Task]] = {}
    excluded = 0
    for names, n in ((test_suites, config.gate.n_test), (holdout, config.gate.n_holdout)):
        for suite in names:
            tasks = _load(deps, suite, "test", n)
            suites[suite] = [t for t in tasks if normalize_question(t.prompt) not in trained_questions]
            excluded += len(tasks) - len(suites[suite])
            if not suites[suite]:
                raise ProcmemError(f"every test item of {suite!r} was trained on", where="gate",
                                   fix="give the suite a test split disjoint from its train split")
    if excluded:
        (console or Console(stderr=True)).print(f"[yellow]gate: {excluded} test items skipped: their question "
                                                "was in the training episodes[/]")
    baseline_version = promotion_state(home.adapters).current
    baseline_dir = resolve_adapter(home, baseline_version) if baseline_version else None
    scores: list[dict[str, SuiteScores]] = []
    total = sum(len(t) for t in suites.values())
    with progress_bar(console, quiet=quiet) as progress:
        for label, adapter, version in (("baseline", baseline_dir, baseline_version),
                                        ("candidate", adapter_dir, "candidate")):
            bar = progress.add_task(f"gate: {label} ({version or 'base'})", total=total)
            llm = deps.llm_factory(adapter, version)
            scores.append(evaluate(llm, suites, config.gate, on_progress=partial(progress.advance, bar)))
            del llm
            _release(deps.model_dir)
    report = compare(scores[0], scores[1], test_suites=test_suites, holdout_suites=holdout, config=config.gate,
                     baseline_name=baseline_version or "base")
    return report.model_copy(update={"excluded": excluded})


def _load(deps: DistillDeps, suite: str, split: Split, n: int) -> list[Task]:
    try:
        tasks = deps.load_tasks(suite, split, n)
    except ProcmemError as err:
        raise ProcmemError(f"gate cannot load suite {suite!r}: {err}", where="gate",
                           fix="set gate.test_suites / gate.holdout_suites to loadable suite specs") from err
    if not tasks:
        raise ProcmemError(f"suite {suite!r} has no {split} items", where="gate", fix="use another suite")
    return tasks


def register_candidate(train: TrainResult, build: TraceBuild, episodes: Sequence[Episode], report: GateReport | None,
                       config: DistillConfig, home: Home, deps: DistillDeps, *, run_id: str, parent: str | None,
                       forced: bool) -> AdapterManifest:
    """Register the trained adapter as the next ``vN`` with its full manifest."""
    manifest = AdapterManifest(
        version="v0", run_id=run_id,
        base_model=BaseModelInfo(id=config.model, name=deps.model_dir.name,
                                 hash=base_model_hash(deps.model_dir, distill_dir(home) / "base_hashes.json")),
        objective=config.objective, objective_config=config.model_dump(mode="json"),
        dataset=DatasetSnapshot(episode_ids=tuple(sorted(e.id for e in episodes)), hash=_episodes_hash(episodes),
                                n_traces=len(build.kept), n_rejected=len(build.rejected),
                                traces_hash=hash_strings(sorted(f"{t.prompt}\x00{t.completion}" for t in build.kept))),
        memory=build.memory,
        metrics={k: v for k, v in train.to_dict().items() if k != "adapter_dir"}, gate=report, parent=parent,
        created_at=utc_now(), forced=forced,
    )
    return _register(home.adapters, train.adapter_dir, manifest)


def _registered(home: Home, run_id: str) -> AdapterManifest | None:
    """The version this run already registered (a crash between registering and recording it)."""
    return next((m for m in list_adapters(home.adapters) if m.run_id == run_id), None)


def _episodes_hash(episodes: Sequence[Episode]) -> str:
    return hash_strings(json.dumps(e.to_dict(), sort_keys=True) for e in sorted(episodes, key=lambda e: e.id))


def _parent_version(home: Home, config: DistillConfig) -> str | None:
    if config.parent == "none":
        return None
    if config.parent == "promoted":
        return promotion_state(home.adapters).current
    resolve_adapter(home, config.parent)  # checks it exists
    return config.parent


def _load_gate(run: Path) -> GateReport | None:
    path = run / "gate.json"
    return GateReport.model_validate(read_json(path)) if path.exists() else None


# ------------------------------------------------------------------------------ run dirs and watermark


def _runs(home: Home) -> Path:
    return distill_dir(home) / "runs"


def latest_run_dir(home: Home, *, with_traces: bool = False) -> Path | None:
    """The most recent run directory (optionally: the most recent one whose traces are built)."""
    runs = sorted(_runs(home).glob("*/run.json"), key=lambda p: (_meta(p.parent)["created_at"], p.parent.name))
    for path in reversed(runs):
        if not with_traces or (path.parent / "traces" / "traces.jsonl").exists():
            return path.parent
    return None


def _meta(run: Path) -> dict[str, Any]:
    data = read_json(run / "run.json")
    assert isinstance(data, dict)
    return data


def _update(run: Path, **changes: Any) -> None:
    write_json(run / "run.json", {**_meta(run), **changes, "updated_at": utc_now()})


def _unfinished_run(home: Home, config: DistillConfig) -> Path | None:
    """The newest run not yet done; abandoned if it was started with other settings."""
    for path in sorted(_runs(home).glob("*/run.json"), key=lambda p: _meta(p.parent)["created_at"], reverse=True):
        meta = _meta(path.parent)
        if meta["stage"] in ("done", "abandoned"):
            continue
        if meta["config"] == config.model_dump(mode="json"):
            return path.parent
        _update(path.parent, stage="abandoned")
    return None


def _new_run(home: Home, config: DistillConfig, episodes: Sequence[Episode], new: int) -> Path:
    run = _runs(home) / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{new_id()[:6]}"
    run.mkdir(parents=True)
    write_jsonl(run / "episodes.jsonl", (e.to_dict() for e in episodes))
    write_json(run / "run.json", {"id": run.name, "stage": "collected", "created_at": utc_now(),
                                  "config": config.model_dump(mode="json"), "new_episodes": new,
                                  "episodes": len(episodes)})
    return run


def _watermark_path(home: Home) -> Path:
    return distill_dir(home) / "watermark.json"


def _new_episode_count(home: Home, episodes: Sequence[Episode]) -> int:
    path = _watermark_path(home)
    seen = set(read_json(path)["episode_ids"]) if path.exists() else set()
    return sum(e.id not in seen for e in episodes)


def _finish(home: Home, run: Path, episodes: Sequence[Episode]) -> None:
    """Advance the watermark to this run's episodes, then mark the run done."""
    write_json(_watermark_path(home), {"episode_ids": sorted(e.id for e in episodes), "run_id": run.name,
                                       "updated_at": utc_now()})
    _update(run, stage="done", error=None)


# ------------------------------------------------------------------------------------------ scheduling


_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_interval(text: str) -> float:
    """``'6h'``, ``'30m'``, ``'90s'``, ``'1d'`` or plain seconds -> seconds."""
    match = _INTERVAL.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ProcmemError(f"not an interval: {text!r}", where="--every", fix="use e.g. 6h, 30m, 90s or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _log_tick(home: Home, **entry: Any) -> None:
    """Append one line to ``<home>/distill/log.jsonl`` (the scheduler's record of every tick)."""
    path = distill_dir(home) / "log.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = redact(json.dumps({"at": utc_now(), **entry}, sort_keys=True, default=str))  # errors may quote keys
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def run_every(config: DistillConfig, home: Home, interval_s: float, *,
              deps_factory: Callable[[], DistillDeps] | None = None, max_ticks: int | None = None,
              force: bool = False, sleep: Callable[[float], None] = time.sleep, console: Console | None = None,
              quiet: bool = False, on_result: Callable[[DistillResult], None] | None = None) -> list[DistillResult]:
    """Run :func:`run_distillation` every ``interval_s`` seconds (forever unless ``max_ticks``).

    Only one scheduler per home (a second one exits with :class:`DistillBusy`). Each tick builds its
    dependencies afresh (``deps_factory``, default :func:`default_deps`), so it sees new episodes. A
    tick that is skipped (too few new episodes), finds another job running, or fails is logged to
    ``<home>/distill/log.jsonl``; a failed run is retried (resumed) at the next tick.
    """
    console = console or Console(stderr=True, quiet=quiet)
    home.ensure()
    scheduler = FileLock(str(home.locks / "distill-scheduler.lock"))
    try:
        scheduler.acquire(timeout=0)
    except Timeout:
        raise DistillBusy("another `procmem distill --every` scheduler is running for this home",
                          where=str(home.locks / "distill-scheduler.lock"), fix="stop it first") from None
    results: list[DistillResult] = []
    try:
        tick = 0
        while max_ticks is None or tick < max_ticks:
            started = time.monotonic()
            result = _tick(config, home, deps_factory or (lambda: default_deps(config, home)), force, console, quiet)
            if result is not None:
                results.append(result)
                if on_result is not None:
                    on_result(result)
            tick += 1
            if max_ticks is not None and tick >= max_ticks:
                break
            sleep(max(0.0, interval_s - (time.monotonic() - started)))
    finally:
        scheduler.release()
    return results


def _tick(config: DistillConfig, home: Home, deps_factory: Callable[[], DistillDeps], force: bool,
          console: Console, quiet: bool) -> DistillResult | None:
    try:
        result = run_distillation(config, home, deps=deps_factory, force=force, console=console, quiet=quiet)
    except DistillBusy as err:
        console.print(f"[yellow]tick skipped: {escape(redact(str(err)))}[/]")
        _log_tick(home, event="busy", message=str(err))
        return None
    except Exception as err:  # a failed run must not stop the scheduler; it is retried next tick
        console.print(f"[red]distill run failed: {type(err).__name__}: {escape(redact(str(err)))} "
                      "(retried at the next tick)[/]")
        _log_tick(home, event="failed", error=f"{type(err).__name__}: {err}")
        return None
    _log_tick(home, event=result.status, result=result.to_dict())
    return result


# ----------------------------------------------------------------------------------------- real deps


def default_deps(config: DistillConfig, home: Home, *, chroma_url: str | None = None) -> DistillDeps:
    """The real dependencies: the home's memory, the configured local model, the task suites."""
    from procmem.llm import load_llm
    from procmem.memory import open_memory
    from procmem.tasks import load_suite
    from procmem.verifiers import build_verifier

    memory = open_memory(home.chroma, url=chroma_url)
    model_dir = _model_dir(config.model, home)

    def llm_factory(adapter: Path | None, version: str | None) -> LLM:
        return load_llm(config.model, models_dir=home.models, adapter=adapter)

    def load_tasks(suite: str, split: Split, n: int) -> list[Task]:
        return load_suite(suite, split=split, n=n, check=build_verifier)

    return DistillDeps(episodes=memory.episodes, retriever=lambda policy: memory.retriever(policy=policy),
                       llm_factory=llm_factory, model_dir=model_dir, load_tasks=load_tasks)


def _model_dir(spec: str, home: Home) -> Path:
    """The Hugging Face directory of a ``local:`` model spec (distillation needs local weights)."""
    from procmem.llm import local_model_dir

    return local_model_dir(spec, models_dir=home.models)
