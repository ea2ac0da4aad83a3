"""The distillation job: collect -> build traces -> train -> gate -> register/promote.

:func:`run_distillation` is what ``procmem distill --once`` calls. It runs under an inter-process lock
(``<home>/locks/distill.lock``): a second job exits with :class:`DistillBusy` instead of waiting.

Every run lives in ``<home>/distill/runs/<run_id>/`` and records its stage in ``run.json``; each stage
writes its output atomically (dataset, traces, training checkpoints, gate report). Rerunning the
same command after a crash (even ``kill -9``) resumes the unfinished run from its last completed
stage, and training from its last checkpoint. A run with different settings abandons it and starts
afresh.

The watermark (``<home>/distill/watermark.json``) holds the episode ids of the last successful run;
a run starts only when at least ``min_new_episodes`` episodes arrived since.

What the gate will score is settled first (:func:`plan_gate`), before any teacher trace or training: the test
items (each trained suite's test split, the configured ``gate.test_suites``, or, for a suite without a test
split such as ``serve``, its held-out verified episodes, which are then left out of training) and the
general-ability holdout. When too few episodes are held out (``gate.min_heldout``) the run is refused at once:
``skipped``, with the count in the reason, nothing trained and the watermark unmoved. Run directories, their typed
``run.json`` and the watermark live in :mod:`._storage`; the adapter manifest in :mod:`._manifest`; the
long-running scheduler (``--every 6h``) in :mod:`._scheduler`.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from rich.console import Console

from procmem.core import Episode, Home, ProcmemError, Split, Task, utc_now
from procmem.core.fileio import read_json, read_jsonl, write_json
from procmem.core.keys import normalize_question, policy_version
from procmem.core.progress import progress_bar
from procmem.core.registry import GateReport, gate_table, promote
from procmem.distill import _distributed as distributed
from procmem.distill._manifest import register_candidate, registered_version
from procmem.distill._storage import (
    finish_run,
    new_episode_count,
    new_run,
    read_state,
    unfinished_run,
    update_state,
)
from procmem.distill.config import DistillConfig, GateConfig, TrainSettings
from procmem.distill.gate import UNSCORABLE_VERIFIERS, SuiteScores, compare, evaluate, split_held_out
from procmem.distill.traces import (
    TraceBuild,
    build_traces,
    load_trace_build,
    replay_traces,
    save_trace_build,
    training_items,
)
from procmem.distill.train import ObjectiveFactory, train_adapter
from procmem.llm import LLM, choose_policy, close_llm
from procmem.memory import Retriever

__all__ = [
    "DistillBusy",
    "DistillDeps",
    "DistillResult",
    "GatePlan",
    "LLMFactory",
    "TaskLoader",
    "build_run_traces",
    "collect_episodes",
    "default_deps",
    "distill_lock",
    "gate_candidate",
    "job_threads",
    "plan_gate",
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
    replay_traces: int = 0
    """Rehearsal examples trained beside the verified traces (``traces.replay``)."""
    held_out: int = 0
    """Verified episodes held out of training for the gate (suites without a test split, such as ``serve``)."""
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
    help it train (see :mod:`._distributed`); their result is ``skipped`` with the training figures.
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
    plan: GatePlan | None = None
    if run is None:
        episodes = collect_episodes(deps.episodes())
        new = new_episode_count(home, episodes)
        if new < config.min_new_episodes:
            return DistillResult(status="skipped", reason=f"{new} new episodes since the last run "
                                 f"(min_new_episodes={config.min_new_episodes})", new_episodes=new,
                                 episodes=len(episodes))
        plan = plan_gate(config, deps, episodes, console=console)
        if plan.refusal:  # known before any teacher trace or training: refuse now, and leave the watermark
            console.print(f"[yellow]distill refused: {plan.refusal}[/]")
            return DistillResult(status="skipped", reason=plan.refusal, new_episodes=new, episodes=len(episodes),
                                 held_out=plan.held_out)
        run = new_run(home, config, episodes, new)
        console.print(f"distill run {run.name}: {len(episodes)} train episodes, {new} new"
                      + (f", {plan.held_out} held out for the gate" if plan.held_out else ""))
    else:
        console.print(f"resuming distill run {run.name} at stage {read_state(run).stage}")
    try:
        return _advance(run, config, home, deps, force, resumed, console, quiet, workers, plan)
    except BaseException as err:
        update_state(run, error=f"{type(err).__name__}: {err}", failed_at=utc_now())
        raise


def _advance(run: Path, config: DistillConfig, home: Home, deps: DistillDeps, force: bool, resumed: bool,
             console: Console, quiet: bool, workers: _Workers | None = None,
             plan: GatePlan | None = None) -> DistillResult:
    state = read_state(run)
    episodes = [Episode.from_dict(row) for row in read_jsonl(run / "episodes.jsonl")]
    parent = choose_policy(home, model=config.model, adapter=config.parent)
    parent_version, parent_dir = parent.version, parent.adapter_dir
    base = DistillResult(status="skipped", run_id=run.name, resumed=resumed, new_episodes=state.new_episodes,
                         episodes=len(episodes))
    if plan is None:  # a resumed run: the same episodes and settings give the same plan
        plan = plan_gate(config, deps, episodes, console=console)
        if plan.refusal:
            update_state(run, stage="abandoned", error=plan.refusal)
            return _replace(base, reason=plan.refusal, held_out=plan.held_out)
    base = _replace(base, held_out=plan.held_out)
    trained = plan.train_episodes

    build = load_trace_build(run / "traces")
    if build is None:
        teacher = deps.llm_factory(parent_dir, parent_version)
        try:
            retriever = deps.retriever if isinstance(deps.retriever, Retriever) \
                else deps.retriever(policy_version(teacher))
            build = build_run_traces(trained, teacher, retriever, config, load_tasks=deps.load_tasks, console=console,
                                     quiet=quiet)
        finally:
            close_llm(teacher)
        _release(deps.model_dir)
        save_trace_build(build, run / "traces")
        update_state(run, stage="traced")
    counts = {"problems": len(build.contexts), "traces": len(build.kept), "rejected_traces": len(build.rejected),
              "replay_traces": len(build.replay)}
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
        report = gate_candidate(train.adapter_dir, config, home, deps, trained, plan=plan, console=console,
                                quiet=quiet)
        write_json(run / "gate.json", report.model_dump(mode="json"))
        update_state(run, stage="gated")
    console.print(gate_table(report))

    forced = force and not report.passed
    manifest = registered_version(home, run.name) or register_candidate(
        train, build, trained, report, config, home, deps.model_dir, run_id=run.name, parent=parent_version,
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
                     load_tasks: TaskLoader | None = None, console: Console | None = None,
                     quiet: bool = False) -> TraceBuild:
    """Problems from ``episodes`` (failed first), then teacher candidates kept by the verifier; with
    ``load_tasks``, the rehearsal examples the SFT part of the objective trains beside them
    (``traces.replay``)."""
    problems = training_items(episodes, config.traces)
    with progress_bar(console, quiet=quiet) as progress:
        bar = progress.add_task(f"teacher traces (k={config.traces.k})", total=len(problems))
        build = build_traces(problems, teacher, retriever, config.traces,
                             on_progress=lambda n: progress.advance(bar, n))
    if load_tasks is None or config.objective == "self-distill":
        return build
    wanted = replay_count(config, len(build.kept))
    tasks = replay_tasks(config, {e.task.suite for e in episodes}, 2 * wanted, load_tasks)  # some answers are empty
    if not tasks:
        return build
    with progress_bar(console, quiet=quiet) as progress:
        progress.add_task(f"rehearsal answers ({len(tasks)} questions)", total=None)
        replay = replay_traces(teacher, tasks, max_tokens=config.traces.replay.max_tokens)
    return replace(build, replay=tuple(replay[:wanted]))


def replay_count(config: DistillConfig, traces: int) -> int:
    """How many rehearsal examples go beside ``traces`` verified traces: ``share`` of all the examples."""
    share = config.traces.replay.share
    return math.ceil(traces * share / (1.0 - share)) if traces else 0


def replay_tasks(config: DistillConfig, trained_suites: Iterable[str], wanted: int,
                 load_tasks: TaskLoader) -> list[Task]:
    """``wanted`` rehearsal questions, taken in turn from ``traces.replay.suites`` (train split) less the suites
    trained on and the gate's holdout suites (none when ``share`` is 0)."""
    settings = config.traces.replay
    skip = set(trained_suites) | set(config.gate.holdout_suites)
    suites = [suite for suite in settings.suites if suite not in skip]
    if not wanted or not suites or not settings.share:
        return []
    per_suite = math.ceil(wanted / len(suites))
    pools = []
    for suite in suites:
        try:
            pools.append(load_tasks(suite, "train", per_suite))
        except ProcmemError as err:
            raise ProcmemError(f"cannot load rehearsal suite {suite!r}: {err}", where="traces.replay.suites",
                               fix="list loadable suite specs, or set traces.replay.share = 0") from err
    turns = (pool[i] for i in range(per_suite) for pool in pools if i < len(pool))
    return list(itertools.islice(turns, wanted))


@dataclass(frozen=True)
class GatePlan:
    """What the gate will score, settled before the teacher and training run (:func:`plan_gate`)."""

    test: dict[str, list[Task]]
    """Test items per suite: a test split, or the suite's held-out verified episodes."""
    holdout: dict[str, list[Task]]
    """General-ability holdout items per suite (suites never trained on)."""
    train_episodes: list[Episode]
    """The run's episodes minus those of held-out questions: what the teacher and training see."""
    from_episodes: tuple[str, ...] = ()
    """The suites gated on held-out episodes (no test split of their own)."""
    held_out: int = 0
    """Episodes held out of training (every episode of a held-out question)."""
    excluded: int = 0
    """Loaded test items skipped because their question is among the training episodes."""
    refusal: str = ""
    """Why the run cannot be gated (too few held-out episodes); empty when it can."""


def plan_gate(config: DistillConfig, deps: DistillDeps, episodes: Sequence[Episode], *,
              console: Console | None = None) -> GatePlan:
    """Load the gate's items and hold out production episodes, before anything is trained.

    With ``gate.test_suites`` set, those suites' test splits are the test items. Otherwise each trained suite
    is tested on its own test split, and a suite without one (it does not load as a suite, or has no test items:
    ``serve``) on its held-out verified episodes (:func:`~procmem.distill.gate.split_held_out`), which training
    then never sees. Fewer than ``gate.min_heldout`` of them is a refusal (``GatePlan.refusal``), not an error.
    """
    gate = config.gate
    warn = (console or Console(stderr=True)).print
    trained = sorted({e.task.suite for e in episodes})
    test: dict[str, list[Task]] = {}
    from_episodes: list[str] = []
    if gate.test_suites:
        for suite in gate.test_suites:
            test[suite] = _load(deps, suite, "test", gate.n_test)
    else:
        for suite in trained:
            tasks = _try_load(deps, suite, gate.n_test)
            if tasks:
                test[suite] = tasks
            else:
                from_episodes.append(suite)
    train_episodes, held = split_held_out(episodes, from_episodes, gate)
    test.update(held)
    held_out = len(episodes) - len(train_episodes)
    refusal = _heldout_refusal(episodes, held, gate)
    if refusal:
        return GatePlan(test=test, holdout={}, train_episodes=train_episodes, from_episodes=tuple(from_episodes),
                        held_out=held_out, refusal=refusal)
    if not test:
        raise ProcmemError("no test suites for the gate", where="gate.test_suites",
                           fix="set gate.test_suites to suite specs with a test split")
    trained_now = sorted({e.task.suite for e in train_episodes})
    holdout_names = [s for s in gate.holdout_suites if s not in trained_now] if gate.n_holdout else []
    for skipped in set(gate.holdout_suites) & set(trained_now):
        warn(f"[yellow]holdout suite {skipped} was trained on: skipped[/]")
    holdout = {suite: _load(deps, suite, "test", gate.n_holdout) for suite in holdout_names}
    trained_questions = {normalize_question(e.task.prompt) for e in train_episodes}
    excluded = 0
    for loaded in (test, holdout):
        for suite, tasks in loaded.items():
            if suite in from_episodes:
                continue
            kept = [t for t in tasks if normalize_question(t.prompt) not in trained_questions]
            excluded += len(tasks) - len(kept)
            if not kept:
                raise ProcmemError(f"every test item of {suite!r} was trained on", where="gate",
                                   fix="give the suite a test split disjoint from its train split")
            loaded[suite] = kept
    if excluded:
        warn(f"[yellow]gate: {excluded} test items skipped: their question was in the training episodes[/]")
    for suite in from_episodes:
        warn(f"gate: suite {suite!r} has no test split: {len(test[suite])} held-out verified episodes "
             f"(gate.heldout_share={gate.heldout_share:g}), left out of training")
    return GatePlan(test=test, holdout=holdout, train_episodes=train_episodes, from_episodes=tuple(from_episodes),
                    held_out=held_out, excluded=excluded)


def _try_load(deps: DistillDeps, suite: str, n: int) -> list[Task]:
    """A trained suite's test split, or [] when it has none (it is not a loadable suite: ``serve``)."""
    try:
        return deps.load_tasks(suite, "test", n)
    except ProcmemError:
        return []


def _heldout_refusal(episodes: Sequence[Episode], held: Mapping[str, Sequence[Task]], gate: GateConfig) -> str:
    """Why the held-out episodes cannot gate the run, or ''. At most ``n_test`` items are re-asked, so a
    ``min_heldout`` above it asks for ``n_test``."""
    minimum = min(gate.min_heldout, gate.n_test)
    short = {suite: len(items) for suite, items in held.items() if len(items) < minimum}
    if not short:
        return ""
    need = f"gate.min_heldout={gate.min_heldout}" + (
        f" (capped by gate.n_test={gate.n_test})" if gate.n_test < gate.min_heldout else "")
    parts = []
    for suite, count in sorted(short.items()):
        questions = {normalize_question(e.task.prompt) for e in episodes if e.task.suite == suite}
        unscorable = {normalize_question(e.task.prompt) for e in episodes
                      if e.task.suite == suite and e.task.verifier.strip() in UNSCORABLE_VERIFIERS}
        parts.append(f"suite {suite!r} has no test split and {count} held-out verified episodes, fewer than "
                     f"{need} (gate.heldout_share={gate.heldout_share:g} of its {len(questions)} verified "
                     f"questions, of which {len(unscorable)} were judged wrong without a correction and cannot be "
                     "re-scored)")
    return ("; ".join(parts) + ": nothing was trained or promoted. Collect more verified calls (feedback or a "
            "verifier on each), lower gate.min_heldout, raise gate.heldout_share, or name suites with a test split "
            "in gate.test_suites")


def gate_candidate(adapter_dir: Path, config: DistillConfig, home: Home, deps: DistillDeps,
                   episodes: Sequence[Episode], *, plan: GatePlan | None = None, console: Console | None = None,
                   quiet: bool = False) -> GateReport:
    """Evaluate the candidate and the promoted adapter (or the base) on the same held-out items.

    ``plan`` is what :func:`plan_gate` settled before training (default: planned now from ``episodes``).
    """
    if plan is None:
        plan = plan_gate(config, deps, episodes, console=console)
        if plan.refusal:
            raise ProcmemError(f"the gate cannot score this run: {plan.refusal}", where="gate",
                               fix="see gate.min_heldout and gate.test_suites")
    suites = {**plan.test, **plan.holdout}
    baseline = choose_policy(home, model=config.model, adapter="promoted")
    baseline_version, baseline_dir = baseline.version, baseline.adapter_dir
    scores: list[dict[str, SuiteScores]] = []
    total = sum(len(t) for t in suites.values())
    with progress_bar(console, quiet=quiet) as progress:
        for label, adapter, version in (("baseline", baseline_dir, baseline_version),
                                        ("candidate", adapter_dir, "candidate")):
            bar = progress.add_task(f"gate: {label} ({version or 'base'})", total=total)
            llm = deps.llm_factory(adapter, version)
            try:
                scores.append(evaluate(llm, suites, config.gate, on_progress=partial(progress.advance, bar)))
            finally:
                close_llm(llm)
            _release(deps.model_dir)
    report = compare(scores[0], scores[1], test_suites=list(plan.test), holdout_suites=list(plan.holdout),
                     config=config.gate, baseline_name=baseline_version or "base")
    return report.model_copy(update={"excluded": plan.excluded})


def _load(deps: DistillDeps, suite: str, split: Split, n: int) -> list[Task]:
    try:
        tasks = deps.load_tasks(suite, split, n)
    except ProcmemError as err:
        raise ProcmemError(f"gate cannot load suite {suite!r}: {err}", where="gate",
                           fix="set gate.test_suites / gate.holdout_suites to loadable suite specs") from err
    if not tasks:
        raise ProcmemError(f"suite {suite!r} has no {split} items", where="gate", fix="use another suite")
    return tasks


def job_threads(settings: TrainSettings) -> int:
    """The CPU threads each process of a distill job uses: ``settings.threads`` (default: half the usable cores,
    at least 1) shared among the job's processes."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    total = settings.threads or max(1, usable // 2)
    return max(1, total // max(1, distributed.world_size()))


def _load_gate(run: Path) -> GateReport | None:
    path = run / "gate.json"
    return GateReport.model_validate(read_json(path)) if path.exists() else None


# ----------------------------------------------------------------------------------------- real deps


def default_deps(config: DistillConfig, home: Home, *, chroma_url: str | None = None) -> DistillDeps:
    """The real dependencies: the home's memory, the configured local model, the task suites."""
    from procmem.llm import open_policy
    from procmem.memory import open_memory
    from procmem.tasks import load_suite
    from procmem.verifiers import build_verifier

    memory = open_memory(home.chroma, url=chroma_url)
    model_dir = _model_dir(config.model, home)

    def llm_factory(adapter: Path | None, version: str | None) -> LLM:
        return open_policy(home, model=config.model, adapter=adapter or "none", version=version)

    def load_tasks(suite: str, split: Split, n: int) -> list[Task]:
        return load_suite(suite, split=split, n=n, check=build_verifier)

    return DistillDeps(episodes=memory.episodes, retriever=lambda policy: memory.teacher_retriever(policy=policy),
                       llm_factory=llm_factory, model_dir=model_dir, load_tasks=load_tasks)


def _model_dir(spec: str, home: Home) -> Path:
    """The Hugging Face directory of a ``local:`` model spec (distillation needs local weights)."""
    from procmem.llm import local_model_dir

    return local_model_dir(spec, models_dir=home.models)
