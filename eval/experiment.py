"""The evidence experiment: R rounds of collect -> reflect -> distill -> evaluate, per arm and seed.

Per seed, one agent with memory collects episodes on the train split each round, driven by the
previous round's PMD adapter (policy and memory co-evolve). Every trained arm then builds its own
training set from those same episodes, so data budgets match:

- ``rft``: SFT on the agent's own verified successes, memory-free, no corrections;
- ``pmd``: the memory-conditioned teacher's verified corrections, trained with ``distill.objective``;
- ``pmd-frozen``: as ``pmd``, but the teacher reads the memory as it stood after round 1;
- ``placebo``: as ``pmd``, but the teacher reads the memory retrieved for a problem of another suite
  (same size, unrelated content).

Each trained arm continues from its own previous-round adapter. ``base`` and ``base+memory`` train
nothing. All arms are then scored pass@1, greedily, on the same held-out test items of the seed
(memory-free, except ``base+memory``) and on the general-ability holdout, after the final round (or every
round with ``evaluate_every_round``). Every arm is run for every seed: no row is a copy of another.

**Splits.** Train items come from each suite's train split (a per-seed draw of ``n_train`` from a pool);
dev and test items from its held-out split: the first ``n_dev`` held-out items are dev (only
``eval/bench/calibrate.py`` reads them), then seed number i gets the i-th block of ``n_test``. Train, dev and
every seed's test items are disjoint (:func:`load_splits`).

**Matched budgets.** With ``train_examples`` set, each trained arm's verified traces are subsampled or
repeated to exactly that many examples (:func:`match_budget`), so every arm takes the same optimizer steps.

**Memory uplift.** Each round, before training, the round's policy answers ``n_uplift`` train items per
suite with memory in its prompt (what the PMD teacher sees) and without (what the student sees).

Every stage writes its result atomically under the output directory and is skipped when rerun, so an
interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from procmem.agent import BATCH, AgentSession, SessionConfig, score_tasks
from procmem.core import Episode, GenerationConfig, Home, ProcmemError, Task
from procmem.core.fileio import read_json, write_json
from procmem.core.keys import policy_version
from procmem.core.progress import progress_bar
from procmem.core.prompts import REASONED_STOP
from procmem.distill.traces import (
    TraceBuild,
    build_traces,
    load_trace_build,
    save_trace_build,
    success_traces,
    training_items,
)
from procmem.distill.train import train_adapter
from procmem.eval.config import ARM_SPECS, Arm, ArmSpec, EvalConfig
from procmem.llm import LLM, Limits, local_model_dir, open_policy
from procmem.memory import ProceduralMemory, Retrieval, Retriever, open_memory
from procmem.tasks import load_suite
from procmem.verifiers import build_verifier

__all__ = ["ArmScores", "Experiment", "PlaceboRetriever", "Splits", "Suites", "finished_scores", "load_splits",
           "load_suites", "match_budget", "run_experiment", "seed_dir", "stage_dir", "stage_timings",
           "trace_counts"]

_CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ArmScores:
    """One arm's pass@1 outcomes in one round for one seed, per suite and item (in task order)."""

    arm: Arm
    round: int
    seed: int
    test: dict[str, list[bool]]
    holdout: dict[str, list[bool]]
    tokens: int
    """Completion tokens generated while evaluating."""
    wall_time_s: float
    """Time of this arm's own stages this round: traces, training and evaluation."""
    train_examples: int = 0
    """Examples trained on in the final round (after budget matching)."""
    train_steps: int = 0
    """Optimizer steps of the final round's training."""
    distinct_traces: int = 0
    """Distinct verified traces the final round's training examples were drawn from."""
    item_ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Per test suite, the scored items' ids (the pairing key across arms)."""
    stage_s: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds per stage of this arm (traces, train, eval), as measured when each ran."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmScores:
        return cls(**data)


@dataclass(frozen=True)
class Suites:
    """One seed's items: what it trains on, its test items and its general-holdout items."""

    train: dict[str, list[Task]]
    test: dict[str, list[Task]]
    holdout: dict[str, list[Task]]


@dataclass(frozen=True)
class Splits:
    """Every item the experiment may use, per suite: the train pool, the dev items and each seed's test items
    (keyed by seed), all disjoint."""

    train_pool: dict[str, list[Task]]
    dev: dict[str, list[Task]]
    test: dict[int, dict[str, list[Task]]]
    holdout: dict[int, dict[str, list[Task]]]


def _prepared(config: EvalConfig, tasks: list[Task]) -> list[Task]:
    """Tasks in the config's answer format: a reasoned task carries its stop sequences and token budget, so
    the agent, the teacher and every arm's test decode it alike."""
    if config.answer_format != "reasoned":
        return tasks
    extra = {"answer_format": "reasoned",
             "generation": {"stop": list(REASONED_STOP), "max_tokens": config.session.generation.max_tokens}}
    return [dataclasses.replace(t, metadata={**t.metadata, **extra}) for t in tasks]


def _held_out(config: EvalConfig, suite: str, n_dev: int, per_seed: int) -> tuple[list[Task], list[list[Task]]]:
    """The dev items and one block of ``per_seed`` test items per seed, from the suite's held-out split."""
    want = n_dev + per_seed * len(config.seeds)
    pool = _prepared(config, load_suite(suite, split="test", n=want, check=build_verifier))
    if len(pool) < want:
        raise ProcmemError(f"only {len(pool)} distinct held-out items, {want} needed (n_dev {n_dev} + "
                           f"{len(config.seeds)} seeds x {per_seed})", where=suite,
                           fix="pick a config with a larger question space, or lower n_test / n_dev")
    blocks = [pool[n_dev + i * per_seed:n_dev + (i + 1) * per_seed] for i in range(len(config.seeds))]
    return pool[:n_dev], blocks


def load_splits(config: EvalConfig, *, dev_only: bool = False, with_train: bool = True) -> Splits:
    """The experiment's items (see the module docstring); ``dev_only`` loads no test item beyond what the dev
    items need (calibration); ``with_train=False`` leaves the train pool empty."""
    n_test = 0 if dev_only else config.n_test
    dev: dict[str, list[Task]] = {}
    test: dict[int, dict[str, list[Task]]] = {seed: {} for seed in config.seeds}
    for suite in config.train_suites:
        dev[suite], blocks = _held_out(config, suite, config.n_dev, n_test)
        for seed, block in zip(config.seeds, blocks, strict=True):
            test[seed][suite] = block
    holdout: dict[int, dict[str, list[Task]]] = {seed: {} for seed in config.seeds}
    if config.n_holdout and not dev_only:
        for suite in config.holdout_suites:
            _, blocks = _held_out(config, suite, 0, config.n_holdout)
            for seed, block in zip(config.seeds, blocks, strict=True):
                holdout[seed][suite] = block
    size = int(config.n_train * config.train_pool)
    train_pool = {s: _prepared(config, load_suite(s, split="train", n=size, check=build_verifier))
                  for s in config.train_suites} if with_train else {}
    return Splits(train_pool, dev, test, holdout)


def load_suites(config: EvalConfig, seed: int, splits: Splits | None = None) -> Suites:
    """Seed ``seed``'s items: ``n_train`` train items drawn from the pool with ``Random(seed)`` (in pool
    order), its own test block and its holdout block."""
    splits = splits or load_splits(config)
    train: dict[str, list[Task]] = {}
    for suite, pool in splits.train_pool.items():
        chosen = sorted(random.Random(f"train:{seed}:{suite}").sample(range(len(pool)), min(config.n_train,
                                                                                             len(pool))))
        train[suite] = [pool[i] for i in chosen]
    return Suites(train=train, test=splits.test[seed], holdout=splits.holdout[seed])


def match_budget(build: TraceBuild, n: int, seed: int) -> TraceBuild:
    """``build`` with exactly ``n`` kept traces: a seeded subsample without replacement when it has more, every
    trace repeated in turn (then a seeded subsample of the remainder) when it has fewer. ``n=0`` or no kept
    trace: ``build`` unchanged."""
    kept = [t for t in build.kept if t.status == "kept"]
    if n <= 0 or not kept:
        return build
    rng = random.Random(seed)
    whole, rest = divmod(n, len(kept))
    chosen = kept * whole + rng.sample(kept, rest)
    return dataclasses.replace(build, kept=tuple(chosen))


class PlaceboRetriever:
    """Memory of the right size and kind, but for an unrelated problem: what the teacher would read for a
    random train task of another suite (of any other task when there is one suite)."""

    def __init__(self, inner: Retriever, pool: Sequence[Task], seed: int) -> None:
        self._inner = inner
        self._pool = list(pool)
        self._seed = seed

    def retrieve(self, task: Task, k: int) -> Retrieval:
        others = [t for t in self._pool if t.suite != task.suite] or [t for t in self._pool if t.id != task.id]
        if not others:
            return Retrieval((), "")
        decoy = random.Random(f"{self._seed}:{task.id}").choice(others)
        return self._inner.retrieve(decoy, k)


class Experiment:
    """The stages of one experiment, each cached under ``out`` (see the module docstring)."""

    def __init__(self, config: EvalConfig, out: Path, *, console: Console | None = None, quiet: bool = False,
                 embedder: Any = None) -> None:
        self.config = config
        self.out = out
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._embedder = embedder
        self._model_dir: Path | None = None
        self._progress: Progress | None = None

    # -- driver -------------------------------------------------------------------------------------

    def run(self, seeds: Sequence[int] | None = None) -> list[ArmScores]:
        """Run (or resume) every seed, or only ``seeds``: several processes may share one output directory,
        one seed each, to use more cores; a final run without ``seeds`` then finds everything done."""
        chosen = list(self.config.seeds) if seeds is None else [s for s in self.config.seeds if s in seeds]
        unknown = set(seeds or ()) - set(self.config.seeds)
        if unknown:
            raise ProcmemError(f"seed(s) {sorted(unknown)} are not in the config's seeds {list(self.config.seeds)}",
                               where="--seed", fix="pick seeds listed in the config")
        self._check_out_dir()
        splits = load_splits(self.config)
        scores: list[ArmScores] = []
        with progress_bar(self.console, quiet=self.quiet) as progress:
            self._progress = progress
            overall = progress.add_task("experiment (seed x round)", total=len(chosen) * self.config.rounds)
            for seed in chosen:
                suites = load_suites(self.config, seed, splits)
                for round_ in range(1, self.config.rounds + 1):
                    scores.extend(self._round(seed, round_, suites))
                    progress.advance(overall)
        self._progress = None
        return scores

    def _round(self, seed: int, round_: int, suites: Suites) -> list[ArmScores]:
        memory = self._memory(seed)
        try:
            episodes = self._collect(seed, round_, suites, memory)
            self._reflect(seed, round_, memory)
            self._uplift(seed, round_, suites, memory)
        finally:
            memory.close()
        if round_ == 1:
            self._freeze_memory(seed)  # copied while no client holds it open
        memory = self._memory(seed)
        try:
            rows = [self._arm(arm, seed, round_, suites, memory, episodes) for arm in self.config.arms
                    if ARM_SPECS[arm].starts_in_round <= round_]
        finally:
            memory.close()
        return [row for row in rows if row is not None]

    def _scored(self, round_: int) -> bool:
        return self.config.evaluate_every_round or round_ == self.config.rounds

    def _arm(self, arm: Arm, seed: int, round_: int, suites: Suites, memory: ProceduralMemory,
             episodes: Sequence[Episode]) -> ArmScores | None:
        """Train (a trained arm) and score (in a scored round) one arm; None in a round that is not scored."""
        cached = self._stage(seed, round_, arm) / "scores.json"
        if cached.exists():
            return ArmScores.from_dict(read_json(cached))
        spec = ARM_SPECS[arm]
        started = time.perf_counter()
        stage_s: dict[str, float] = {}
        adapter, trained = (None, _Trained())
        if spec.trains:
            adapter, trained = self._train(spec, seed, round_, suites, memory, episodes)
            stage_s.update(trained.stage_s)
        if not self._scored(round_):
            return None
        clock = time.perf_counter()
        llm = self._llm(adapter)
        retriever = memory.retriever(policy=policy_version(llm)) if spec.memory_at_test else None
        test, tokens_test = self._score(llm, suites.test, retriever, f"{arm} r{round_} s{seed}: test")
        holdout, tokens_holdout = ({}, 0) if spec.memory_at_test else self._score(
            llm, suites.holdout, None, f"{arm} r{round_} s{seed}: holdout")
        stage_s["eval"] = time.perf_counter() - clock
        result = ArmScores(arm, round_, seed, test, holdout, tokens_test + tokens_holdout,
                           time.perf_counter() - started, trained.examples, trained.steps, trained.distinct,
                           {suite: [t.id for t in tasks] for suite, tasks in suites.test.items()}, stage_s)
        write_json(cached, result.to_dict())
        return result

    # -- collection ---------------------------------------------------------------------------------

    def _collect(self, seed: int, round_: int, suites: Suites, memory: ProceduralMemory) -> list[Episode]:
        """The agent with memory solves the train split; round r runs with round r-1's PMD adapter."""
        from langgraph.checkpoint.sqlite import SqliteSaver

        summary = self._stage(seed, round_) / "collect.json"
        tasks = [task for group in suites.train.values() for task in group]
        policy = self._adapter("pmd", seed, round_ - 1)
        if not summary.exists():
            settings = SessionConfig(model=self.config.session.model, attempts=self.config.session.attempts,
                                     memory_k=self.config.session.memory_k, concurrency=self.config.session.concurrency,
                                     generation=self._generation())
            with AgentSession(self._llm(policy), settings, memory=memory) as session, \
                    SqliteSaver.from_conn_string(str(self._seed_dir(seed) / "threads.sqlite")) as saver, \
                    self._bar(f"collect r{round_} s{seed}", len(tasks)) as advance:
                report = session.solve(tasks, checkpointer=saver, run_id=f"seed{seed}-round{round_}",
                                       on_done=lambda _: advance(1))
            write_json(summary, {"n": report.n, "passed": report.passed, "accuracy": report.accuracy,
                                 "mean_attempts": report.mean_attempts, "tokens": report.completion_tokens,
                                 "wall_time_s": report.wall_time_s, "policy": str(policy) if policy else "base"})
        return [e for e in memory.episodes() if e.task.split == "train"]

    def _reflect(self, seed: int, round_: int, memory: ProceduralMemory) -> None:
        """The policy reflects on this round's problems (insights), then patterns are consolidated."""
        summary = self._stage(seed, round_) / "reflect.json"
        if summary.exists() or not self.config.reflect_max_calls:
            return
        reflector = self._llm(self._adapter("pmd", seed, round_ - 1))
        with self._bar(f"reflect r{round_} s{seed}", self.config.reflect_max_calls) as advance:
            shown = [0]

            def on_progress(done: int, _total: int) -> None:
                advance(done - shown[0])
                shown[0] = done

            clock = time.perf_counter()
            report = memory.reflect(reflector, max_calls=self.config.reflect_max_calls, progress=on_progress)
        write_json(summary, {**report.to_dict(), "stats": dict(memory.stats()),
                             "wall_time_s": time.perf_counter() - clock})

    def _uplift(self, seed: int, round_: int, suites: Suites, memory: ProceduralMemory) -> None:
        """The memory uplift on train items: this round's policy (the PMD teacher's model) with memory in its
        prompt against the same model memory-free (the student), on the first ``n_uplift`` items per suite."""
        summary = self._stage(seed, round_) / "uplift.json"
        if summary.exists() or not self.config.n_uplift:
            return
        clock = time.perf_counter()
        llm = self._llm(self._adapter("pmd", seed, round_ - 1))
        items = {suite: tasks[:self.config.n_uplift] for suite, tasks in suites.train.items()}
        with_memory, _ = self._score(llm, items, memory.retriever(policy=policy_version(llm)),
                                     f"uplift r{round_} s{seed}: with memory")
        without, _ = self._score(llm, items, None, f"uplift r{round_} s{seed}: memory-free")
        write_json(summary, {
            "suites": {suite: {"n": len(items[suite]), "with_memory": _rate(with_memory[suite]),
                               "memory_free": _rate(without[suite]),
                               "uplift": _rate(with_memory[suite]) - _rate(without[suite])} for suite in items},
            "wall_time_s": time.perf_counter() - clock})

    def _freeze_memory(self, seed: int) -> None:
        frozen = self._seed_dir(seed) / "memory-frozen"
        if not frozen.exists():
            staging = frozen.with_name("memory-frozen.staging")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self._seed_dir(seed) / "memory", staging)
            staging.rename(frozen)

    # -- training -----------------------------------------------------------------------------------

    def _train(self, spec: ArmSpec, seed: int, round_: int, suites: Suites, memory: ProceduralMemory,
               episodes: Sequence[Episode]) -> tuple[Path | None, _Trained]:
        stage = self._stage(seed, round_, spec.name)
        parent = self._adapter(spec.name, seed, round_ - 1)
        clock = time.perf_counter()
        build = self._traces(spec, seed, round_, suites, memory, episodes, parent)
        timings = {"traces": read_json(stage / "traces.time.json")["s"]} if (stage / "traces.time.json").exists() \
            else {"traces": time.perf_counter() - clock}
        distinct = sum(1 for t in build.kept if t.status == "kept")
        build = match_budget(build, self.config.train_examples, seed * 1000 + round_)
        objective = "sft" if spec.trains_on == "successes" else self.config.distill.objective
        if objective == "sft" and not build.kept:
            self.console.print(f"[yellow]{spec.name} round {round_} seed {seed}: no verified trace to train on; "
                               "the arm keeps its previous adapter[/]")
            return parent, _Trained(distinct=0, stage_s=timings)
        distill = self.config.distill.model_copy(update={
            "objective": objective,
            "train": self.config.distill.train.model_copy(update={"seed": self.config.distill.train.seed + seed}),
        })
        result = train_adapter(build, distill, model_dir=self._base_dir(), work_dir=stage / "train", parent=parent,
                               console=self.console, quiet=self.quiet)
        timings["train"] = result.seconds
        return result.adapter_dir, _Trained(result.examples, result.steps, distinct, timings)

    def _traces(self, spec: ArmSpec, seed: int, round_: int, suites: Suites, memory: ProceduralMemory,
                episodes: Sequence[Episode], parent: Path | None) -> TraceBuild:
        directory = self._stage(seed, round_, spec.name) / "traces"
        saved = load_trace_build(directory)
        if saved is not None:
            return saved
        clock = time.perf_counter()
        traces = self.config.distill.traces
        if spec.trains_on == "successes":
            build = success_traces(episodes, traces.keep_per_problem)
        else:
            traces = traces.model_copy(update={"seed": traces.seed + seed})
            problems = training_items(episodes, traces)
            teacher = self._llm(parent)
            with contextlib.ExitStack() as opened, \
                    self._bar(f"{spec.name} traces r{round_} s{seed}", len(problems)) as advance:
                retriever = self._teacher_retriever(spec, seed, suites, memory, policy_version(teacher), opened)
                build = build_traces(problems, teacher, retriever, traces, on_progress=advance)
        save_trace_build(build, directory)
        write_json(directory.parent / "traces.time.json", {"s": time.perf_counter() - clock})
        return build

    def _teacher_retriever(self, spec: ArmSpec, seed: int, suites: Suites, memory: ProceduralMemory,
                           policy: str, opened: contextlib.ExitStack) -> Retriever:
        live = memory.retriever(policy=policy)
        if spec.teacher_memory == "placebo":
            return PlaceboRetriever(live, [t for group in suites.train.values() for t in group], seed)
        if spec.teacher_memory == "frozen":
            frozen = opened.enter_context(contextlib.closing(
                open_memory(self._seed_dir(seed) / "memory-frozen", embedder=self._embedder_instance())))
            return frozen.retriever(policy=policy)
        return live

    # -- scoring ------------------------------------------------------------------------------------

    def _score(self, llm: LLM, suites: dict[str, list[Task]], retriever: Retriever | None,
               label: str) -> tuple[dict[str, list[bool]], int]:
        """pass@1, greedy; memory in the prompt only with a retriever."""
        total = sum(len(tasks) for tasks in suites.values())
        with self._bar(label, total) as advance:
            scored = score_tasks(llm, suites, self._generation(), retriever=retriever,
                                 memory_k=self.config.session.memory_k, on_progress=advance)
        tokens = sum(item.completion_tokens for items in scored.values() for item in items)
        return {suite: [item.passed for item in items] for suite, items in scored.items()}, tokens

    # -- plumbing -----------------------------------------------------------------------------------

    def _generation(self) -> GenerationConfig:
        return GenerationConfig(max_tokens=self.config.session.generation.max_tokens, temperature=0.0)

    def _base_dir(self) -> Path:
        if self._model_dir is None:
            self._model_dir = local_model_dir(self.config.session.model, models_dir=self.out / "models")
        return self._model_dir

    def _llm(self, adapter: Path | None) -> LLM:
        """The base model, with ``adapter`` labelled by where it was trained (``seed0/round1/pmd``), so that
        episodes and memory trust tell the rounds' policies apart."""
        version = "/".join(adapter.relative_to(self.out).parts[:3]) if adapter is not None else None
        return open_policy(Home(self.out), model=self.config.session.model, adapter=adapter or "none", version=version,
                           limits=Limits(max_batch_size=BATCH))

    def _adapter(self, arm: Arm, seed: int, round_: int) -> Path | None:
        """The adapter ``arm`` ended round ``round_`` with (None before round 1 or for untrained arms)."""
        spec = ARM_SPECS[arm]
        if round_ < 1 or not spec.trains:
            return None
        if round_ < spec.starts_in_round:  # before it starts, the arm is PMD (see ArmSpec.starts_in_round)
            arm = "pmd"
        adapter = self._stage(seed, round_, arm) / "train" / "adapter"
        return adapter if (adapter / "adapter_config.json").exists() else None

    def _memory(self, seed: int) -> ProceduralMemory:
        return open_memory(self._seed_dir(seed) / "memory", embedder=self._embedder_instance())

    def _embedder_instance(self) -> Any:
        if self._embedder is None:
            from procmem.memory import default_embedder

            self._embedder = default_embedder()
        return self._embedder

    def _seed_dir(self, seed: int) -> Path:
        path = seed_dir(self.out, seed)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _stage(self, seed: int, round_: int, arm: str | None = None) -> Path:
        self._seed_dir(seed)
        return stage_dir(self.out, seed, round_, arm)

    def _check_out_dir(self) -> None:
        """An output directory holds one experiment: resuming with a different config would mix results."""
        saved = self.out / _CONFIG_FILE
        current = self.config.model_dump(mode="json")
        if saved.exists() and _normalized(read_json(saved)) != current:
            raise ProcmemError("this output directory holds an experiment with a different config",
                               where=str(self.out), fix="use a new --out directory, or the same config to resume")
        write_json(saved, current)

    def _bar(self, label: str, total: int) -> _Bar:
        return _Bar(self._progress, label, total)


def _normalized(saved: Any) -> Any:
    """A saved config as this version writes it (older files keep the session's keys at the top level, and lack
    fields added since, which take their defaults)."""
    try:
        return EvalConfig.model_validate(saved).model_dump(mode="json")
    except ValueError:
        return saved


@dataclass(frozen=True)
class _Trained:
    """What one arm's training stage did this round."""

    examples: int = 0
    steps: int = 0
    distinct: int = 0
    stage_s: dict[str, float] = dataclasses.field(default_factory=dict)


def _rate(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


class _Bar:
    """A transient sub-bar of the experiment's progress display; ``advance(n)`` moves it."""

    def __init__(self, progress: Progress | None, label: str, total: int) -> None:
        self._progress = progress
        self._label = label
        self._total = total
        self._task: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if self._progress is None:
            return lambda _n: None
        self._task = self._progress.add_task(self._label, total=self._total)
        progress, task = self._progress, self._task
        return lambda n: progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)


def run_experiment(config: EvalConfig, out: Path, *, seeds: Sequence[int] | None = None,
                   console: Console | None = None, quiet: bool = False, embedder: Any = None) -> list[ArmScores]:
    """Run (or resume) the experiment in ``out`` (only ``seeds``, when given) and return the scores it ran."""
    return Experiment(config, out, console=console, quiet=quiet, embedder=embedder).run(seeds)


def seed_dir(out: Path, seed: int) -> Path:
    """Where a run in ``out`` keeps ``seed``'s memory, checkpoints and rounds."""
    return out / f"seed{seed}"


def stage_dir(out: Path, seed: int, round_: int, arm: str | None = None) -> Path:
    """Where a run in ``out`` caches round ``round_`` of ``seed`` (and, with ``arm``, that arm's stages)."""
    path = seed_dir(out, seed) / f"round{round_}"
    return path / arm if arm else path


def stage_timings(config: EvalConfig, out: Path) -> list[dict[str, Any]]:
    """Seconds per stage as measured, one row per seed and round: collect, reflect, uplift, and per arm
    traces / train / eval (what is finished so far)."""
    rows: list[dict[str, Any]] = []
    for seed in config.seeds:
        for round_ in range(1, config.rounds + 1):
            stage = stage_dir(out, seed, round_)
            row: dict[str, Any] = {"seed": seed, "round": round_}
            for name in ("collect", "reflect", "uplift"):
                path = stage / f"{name}.json"
                if path.exists():
                    row[name] = read_json(path).get("wall_time_s")
            for arm in config.arms:
                if (stage / arm / "scores.json").exists():
                    row.update({f"{arm}:{k}": v for k, v in read_json(stage / arm / "scores.json")["stage_s"].items()})
                else:
                    if (stage / arm / "traces.time.json").exists():
                        row[f"{arm}:traces"] = read_json(stage / arm / "traces.time.json")["s"]
                    done = stage / arm / "train" / "train_result.json"
                    if done.exists():
                        row[f"{arm}:train"] = read_json(done).get("seconds")
            if len(row) > 2:
                rows.append(row)
    return rows


def trace_counts(config: EvalConfig, out: Path) -> list[dict[str, Any]]:
    """What each trained arm's traces stage gave, one row per seed, round and arm (what is finished so far):
    the problems its teacher was given (0 for ``rft``, which has no teacher), the candidates it wrote, and the
    distinct problems with a verified trace, in all and per suite (for ``rft``: its own verified successes)."""
    rows: list[dict[str, Any]] = []
    for seed in config.seeds:
        for round_ in range(1, config.rounds + 1):
            for arm in config.arms:
                build = load_trace_build(stage_dir(out, seed, round_, arm) / "traces")
                if build is None:
                    continue
                verified = {t.task_id: t.suite for t in build.kept if t.status == "kept"}
                rows.append({"seed": seed, "round": round_, "arm": arm, "problems": len(build.contexts),
                             "candidates": len(build.kept) + len(build.rejected) if build.contexts else 0,
                             "verified_problems": len(verified),
                             "verified_by_suite": dict(sorted(Counter(verified.values()).items()))})
    return rows


def finished_scores(config: EvalConfig, out: Path) -> list[ArmScores]:
    """Every arm score already in ``out``, in seed, round and arm order (a partial run gives fewer seeds)."""
    scores: list[ArmScores] = []
    for seed in config.seeds:
        for round_ in range(1, config.rounds + 1):
            for arm in config.arms:
                path = stage_dir(out, seed, round_, arm) / "scores.json"
                if path.exists():
                    scores.append(ArmScores.from_dict(read_json(path)))
    return scores
