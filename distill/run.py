"""The distillation job: collect -> build traces -> train -> gate -> register/promote.

:func:`run_distillation` is what ``procmem distill --once`` calls. It runs under an inter-process lock
(``<home>/locks/distill.lock``): a second job exits with :class:`DistillBusy` instead of waiting.

Every run lives in ``<home>/distill/runs/<run_id>/`` and records its stage in ``run.json``; each stage
writes its output atomically (dataset, traces, training checkpoints, gate report). Rerunning the
same command after a crash (even ``kill -9``) resumes the unfinished run from its last completed
stage, and training from its last checkpoint. A run with different settings abandons it and starts
afresh.

The watermark (``<home>/distill/watermark.json``) holds the episode ids of the last successful run;
a run starts only when at least ``min_new_episodes`` episodes arrived since. Run directories, their typed
``run.json`` and the watermark live in :mod:`.storage`; the adapter manifest in :mod:`.manifest`; the
long-running scheduler (``--every 6h``) in :mod:`.scheduler`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from rich.console import Console

from procmem.core import Episode, Home, ProcmemError, Split, Task, utc_now
from procmem.core.fileio import read_json, read_jsonl, write_json
from procmem.core.keys import normalize_question, policy_version
from procmem.core.progress import progress_bar
from procmem.core.registry import GateReport, gate_table, promote, promotion_state, resolve_adapter
from procmem.distill import distributed
from procmem.distill.config import DistillConfig
from procmem.distill.gate import SuiteScores, compare, evaluate
from procmem.distill.manifest import register_candidate, registered_version
from procmem.distill.storage import (
    finish_run,
    new_episode_count,
    new_run,
    read_state,
    unfinished_run,
    update_state,
)
from procmem.distill.traces import TraceBuild, build_traces, load_trace_build, save_trace_build, training_items
from procmem.distill.train import ObjectiveFactory, train_adapter
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
    "distill_lock",
    "gate_candidate",
    "run_distillation",
]

LLMFactory = Callable[[Path | None, str | None], LLM]
"""Loads the base model with an adapter directory (None: none) labelled with a version (or None)."""
TaskLoader = Callable[[str, Split, int], list[Task]]
"""``(suite spec, split, n) -> tasks`` (default: ``procmem.tasks.load_suite``)."""

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

    Started by ``accelerate launch`` in several processes, the main process runs the job and the others only
    help it train (see :mod:`.distributed`); their result is ``skipped`` with the training figures.
    """
    console = console or Console(stderr=True, quiet=quiet)
    if distributed.world_size() > 1 and not distributed.is_main_process():
        return _follow(config, deps, console)
    workers = _Workers() if distributed.world_size() > 1 else None
    try:
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
            return _run_locked(config, home, deps, force, console, quiet, workers)
        finally:
            lock.release()
    finally:
        if workers is not None:
            workers.release()


@dataclass(frozen=True)
class _TrainOrder:
    """What the main process tells the other processes to train."""

    run: str
    model_dir: str
    parent: str | None


class _Workers:
    """The other processes of a job started by ``accelerate launch``: they wait for one train order (or None)."""

    def __init__(self) -> None:
        distributed.accelerator()  # join the process group now: the others are waiting in it
        self.told = False

    def train(self, order: _TrainOrder) -> None:
        distributed.broadcast(order)
        self.told = True

    def release(self) -> None:
        """Tell them there is nothing (more) to train, unless they were given their order."""
        if not self.told:
            distributed.broadcast(None)
            self.told = True


def _follow(config: DistillConfig, deps: DistillDeps | Callable[[], DistillDeps] | None,
            console: Console) -> DistillResult:
    """A process other than the main one: train the run the main process names, then leave."""
    order: _TrainOrder | None = distributed.broadcast(None)
    where = f"process {distributed.rank()} of {distributed.world_size()}"
    if order is None:
        return DistillResult(status="skipped", reason=f"{where}: the main process had nothing to train")
    run = Path(order.run)
    build = load_trace_build(run / "traces")
    if build is None:
        raise ProcmemError(f"{where}: no traces in {run / 'traces'}", where=str(run),
                           fix="put PROCMEM_HOME on a file system every process of the job can read")
    train = train_adapter(build, config, model_dir=Path(order.model_dir), work_dir=run / "train",
                          parent=Path(order.parent) if order.parent else None,
                          objective_factory=deps.objective_factory if isinstance(deps, DistillDeps) else None,
                          console=console, quiet=True)
    return DistillResult(status="skipped", run_id=run.name, train=train.to_dict(),
                         reason=f"{where}: trained its shards; the main process gates and registers")


def _run_locked(config: DistillConfig, home: Home, deps: DistillDeps, force: bool, console: Console,
                quiet: bool, workers: _Workers | None = None) -> DistillResult:
    run = unfinished_run(home, config)
    resumed = run is not None
    if run is None:
        episodes = collect_episodes(deps.episodes())
        new = new_episode_count(home, episodes)
        if new < config.min_new_episodes:
            return DistillResult(status="skipped", reason=f"{new} new episodes since the last run "
                                 f"(min_new_episodes={config.min_new_episodes})", new_episodes=new,
                                 episodes=len(episodes))
        run = new_run(home, config, episodes, new)
        console.print(f"distill run {run.name}: {len(episodes)} train episodes, {new} new")
    else:
        console.print(f"resuming distill run {run.name} at stage {read_state(run).stage}")
    try:
        return _advance(run, config, home, deps, force, resumed, console, quiet, workers)
    except BaseException as err:
        update_state(run, error=f"{type(err).__name__}: {err}", failed_at=utc_now())
        raise


def _advance(run: Path, config: DistillConfig, home: Home, deps: DistillDeps, force: bool, resumed: bool,
             console: Console, quiet: bool, workers: _Workers | None = None) -> DistillResult:
    state = read_state(run)
    episodes = [Episode.from_dict(row) for row in read_jsonl(run / "episodes.jsonl")]
    parent_version = _parent_version(home, config)
    parent_dir = resolve_adapter(home, parent_version) if parent_version else None
    base = DistillResult(status="skipped", run_id=run.name, resumed=resumed, new_episodes=state.new_episodes,
                         episodes=len(episodes))

    build = load_trace_build(run / "traces")
    if build is None:
        teacher = deps.llm_factory(parent_dir, parent_version)
        retriever = deps.retriever if isinstance(deps.retriever, Retriever) else deps.retriever(policy_version(teacher))
        build = build_run_traces(episodes, teacher, retriever, config, console=console, quiet=quiet)
        del teacher
        _release(deps.model_dir)
        save_trace_build(build, run / "traces")
        update_state(run, stage="traced")
    counts = {"problems": len(build.contexts), "traces": len(build.kept), "rejected_traces": len(build.rejected)}
    if config.objective != "self-distill" and len(build.kept) < config.min_traces:
        finish_run(home, run, episodes)
        return _replace(base, reason=f"{len(build.kept)} verified traces (min_traces={config.min_traces})",
                        **counts)

    if workers is not None:
        workers.train(_TrainOrder(str(run), str(deps.model_dir), str(parent_dir) if parent_dir else None))
    train = train_adapter(build, config, model_dir=deps.model_dir, work_dir=run / "train", parent=parent_dir,
                          objective_factory=deps.objective_factory,
                          console=console, quiet=quiet)
    _release(deps.model_dir)
    update_state(run, stage="trained")

    report = _load_gate(run)
    if report is None:
        report = gate_candidate(train.adapter_dir, config, home, deps, episodes, console=console, quiet=quiet)
        write_json(run / "gate.json", report.model_dump(mode="json"))
        update_state(run, stage="gated")
    console.print(gate_table(report))

    forced = force and not report.passed
    manifest = registered_version(home, run.name) or register_candidate(
        train, build, episodes, report, config, home, deps.model_dir, run_id=run.name, parent=parent_version,
        forced=forced)
    update_state(run, stage="registered", version=manifest.version)
    promoted = report.passed or force
    if promoted:
        promote(home.adapters, manifest.version, force=force, reason="forced" if forced else "gate")
        console.print(f"[green]promoted {manifest.version}[/]" + (" (forced past a failed gate)" if forced else ""))
    else:
        console.print(f"[yellow]{manifest.version} registered but not promoted: the gate failed[/]")
    finish_run(home, run, episodes)
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
        test = report.test_stats
        reasons.append(f"test accuracy {report.test_baseline:.1%} -> {report.test_candidate:.1%} "
                       f"(needs +{report.min_improvement:.1%}"
                       + (f" at p <= {report.level:g}; McNemar p={test.p_better:.3g}, {test.wins} won/"
                          f"{test.losses} lost of {test.n})" if test is not None and report.level < 1.0 else ")"))
    if not report.holdout_ok:
        hold = report.holdout_stats
        reasons.append(f"holdout accuracy {report.holdout_baseline:.1%} -> {report.holdout_candidate:.1%} "
                       f"(may drop {report.max_holdout_drop:.1%}, not significantly"
                       + (f"; McNemar p={hold.p_worse:.3g}, {hold.losses} lost/{hold.wins} won of {hold.n})"
                          if hold is not None and report.level < 1.0 else ")"))
    return "; ".join(reasons)


# ---------------------------------------------------------------------------------------------- steps


def collect_episodes(episodes: Iterable[Episode]) -> list[Episode]:
    """The train-split episodes, oldest first, each once (test episodes never train)."""
    unique = {e.id: e for e in episodes if e.task.split == "train"}
    return sorted(unique.values(), key=lambda e: (e.finished_at, e.id))


def build_run_traces(episodes: Sequence[Episode], teacher: LLM, retriever: Retriever, config: DistillConfig, *,
                     console: Console | None = None, quiet: bool = False) -> TraceBuild:
    """Problems from ``episodes`` (failed first), then teacher candidates kept by the verifier."""
    problems = training_items(episodes, config.traces)
    with progress_bar(console, quiet=quiet) as progress:
        bar = progress.add_task(f"teacher traces (k={config.traces.k})", total=len(problems))
        return build_traces(problems, teacher, retriever, config.traces,
                            on_progress=lambda n: progress.advance(bar, n))


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
