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
nothing. All arms are then scored pass@1, greedily, on the same held-out test items (memory-free, except
``base+memory``) and on the general-ability holdout.

Every stage writes its result atomically under the output directory and is skipped when rerun, so an
interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from procmem.agent import BATCH, AgentSession, SessionConfig, score_tasks
from procmem.core import Episode, GenerationConfig, ProcmemError, Task
from procmem.core.fileio import read_json, write_json
from procmem.core.keys import policy_version
from procmem.core.progress import progress_bar
from procmem.distill import (
    TraceBuild,
    build_traces,
    load_trace_build,
    save_trace_build,
    success_traces,
    train_adapter,
    training_items,
)
from procmem.eval.config import ARM_SPECS, Arm, ArmSpec, EvalConfig
from procmem.llm import LLM, load_llm, local_model_dir
from procmem.memory import ProceduralMemory, Retrieval, Retriever, open_memory
from procmem.tasks import load_suite
from procmem.verifiers import build_verifier

__all__ = ["ArmScores", "Experiment", "PlaceboRetriever", "Suites", "finished_scores", "load_held_out", "load_suites",
           "run_experiment"]

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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmScores:
        return cls(**data)


@dataclass(frozen=True)
class Suites:
    """The fixed evaluation items: the same for every arm, round and seed."""

    train: dict[str, list[Task]]
    test: dict[str, list[Task]]
    holdout: dict[str, list[Task]]


def load_suites(config: EvalConfig) -> Suites:
    """The experiment's items: train, held-out test and general-holdout tasks, the same on every run."""
    test, holdout = load_held_out(config)
    return Suites(train={s: load_suite(s, split="train", n=config.n_train, check=build_verifier)
                         for s in config.train_suites},
                  test=test, holdout=holdout)


def load_held_out(config: EvalConfig) -> tuple[dict[str, list[Task]], dict[str, list[Task]]]:
    """The items every arm answers: each train suite's test split, and the general-holdout suites."""
    test = {s: load_suite(s, split="test", n=config.n_test, check=build_verifier) for s in config.train_suites}
    holdout = {s: load_suite(s, split="test", n=config.n_holdout, check=build_verifier)
               for s in config.holdout_suites} if config.n_holdout else {}
    return test, holdout


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
        suites = load_suites(self.config)
        scores: list[ArmScores] = []
        with progress_bar(self.console, quiet=self.quiet) as progress:
            self._progress = progress
            overall = progress.add_task("experiment (seed x round)", total=len(chosen) * self.config.rounds)
            for seed in chosen:
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
        finally:
            memory.close()
        if round_ == 1:
            self._freeze_memory(seed)  # copied while no client holds it open
        memory = self._memory(seed)
        try:
            return [self._arm(arm, seed, round_, suites, memory, episodes) for arm in self.config.arms]
        finally:
            memory.close()

    def _arm(self, arm: Arm, seed: int, round_: int, suites: Suites, memory: ProceduralMemory,
             episodes: Sequence[Episode]) -> ArmScores:
        cached = self._stage(seed, round_, arm) / "scores.json"
        if cached.exists():
            return ArmScores.from_dict(read_json(cached))
        spec = ARM_SPECS[arm]
        if spec.round_1_same_as is not None and round_ == 1:
            return self._alias(spec.round_1_same_as, arm, seed, round_, suites, memory, episodes)
        first = self._stage(self.config.seeds[0], 1, arm) / "scores.json"
        if spec.same_every_round and first.exists():
            return self._alias_of(self.config.seeds[0], 1, arm, seed, round_)
        started = time.perf_counter()
        adapter, examples = (None, 0)
        if spec.trains:
            adapter, examples = self._train(spec, seed, round_, suites, memory, episodes)
        llm = self._llm(adapter)
        retriever = memory.retriever(policy=policy_version(llm)) if spec.memory_at_test else None
        test, tokens_test = self._score(llm, suites.test, retriever, f"{arm} r{round_} s{seed}: test")
        holdout, tokens_holdout = ({}, 0) if spec.memory_at_test else self._score(
            llm, suites.holdout, None, f"{arm} r{round_} s{seed}: holdout")
        result = ArmScores(arm, round_, seed, test, holdout, tokens_test + tokens_holdout,
                           time.perf_counter() - started, examples)
        write_json(cached, result.to_dict())
        return result

    def _alias(self, source: Arm, arm: Arm, seed: int, round_: int, suites: Suites, memory: ProceduralMemory,
               episodes: Sequence[Episode]) -> ArmScores:
        original = self._arm(source, seed, round_, suites, memory, episodes)
        return self._save_copy(original, arm, seed, round_)

    def _alias_of(self, source_seed: int, source_round: int, arm: Arm, seed: int, round_: int) -> ArmScores:
        original = ArmScores.from_dict(read_json(self._stage(source_seed, source_round, arm) / "scores.json"))
        return self._save_copy(original, arm, seed, round_)

    def _save_copy(self, original: ArmScores, arm: Arm, seed: int, round_: int) -> ArmScores:
        result = ArmScores(arm, round_, seed, original.test, original.holdout, original.tokens,
                           original.wall_time_s, original.train_examples)
        write_json(self._stage(seed, round_, arm) / "scores.json", result.to_dict())
        return result

    # -- collection ---------------------------------------------------------------------------------

    def _collect(self, seed: int, round_: int, suites: Suites, memory: ProceduralMemory) -> list[Episode]:
        """The agent with memory solves the train split; round r runs with round r-1's PMD adapter."""
        from langgraph.checkpoint.sqlite import SqliteSaver

        summary = self._stage(seed, round_) / "collect.json"
        tasks = [task for group in suites.train.values() for task in group]
        policy = self._adapter("pmd", seed, round_ - 1)
        if not summary.exists():
            settings = SessionConfig(model=self.config.model, attempts=self.config.attempts,
                                     memory_k=self.config.memory_k, concurrency=self.config.concurrency,
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

            report = memory.reflect(reflector, max_calls=self.config.reflect_max_calls, progress=on_progress)
        write_json(summary, {**report.to_dict(), "stats": dict(memory.stats())})

    def _freeze_memory(self, seed: int) -> None:
        frozen = self._seed_dir(seed) / "memory-frozen"
        if not frozen.exists():
            staging = frozen.with_name("memory-frozen.staging")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self._seed_dir(seed) / "memory", staging)
            staging.rename(frozen)

    # -- training -----------------------------------------------------------------------------------

    def _train(self, spec: ArmSpec, seed: int, round_: int, suites: Suites, memory: ProceduralMemory,
               episodes: Sequence[Episode]) -> tuple[Path | None, int]:
        stage = self._stage(seed, round_, spec.name)
        parent = self._adapter(spec.name, seed, round_ - 1)
        build = self._traces(spec, seed, round_, suites, memory, episodes, parent)
        objective = "sft" if spec.trains_on == "successes" else self.config.distill.objective
        if objective == "sft" and not build.kept:
            self.console.print(f"[yellow]{spec.name} round {round_} seed {seed}: no verified trace to train on; "
                               "the arm keeps its previous adapter[/]")
            return parent, 0
        distill = self.config.distill.model_copy(update={
            "objective": objective,
            "train": self.config.distill.train.model_copy(update={"seed": self.config.distill.train.seed + seed}),
        })
        result = train_adapter(build, distill, model_dir=self._base_dir(), work_dir=stage / "train", parent=parent,
                               console=self.console, quiet=self.quiet)
        return result.adapter_dir, result.examples

    def _traces(self, spec: ArmSpec, seed: int, round_: int, suites: Suites, memory: ProceduralMemory,
                episodes: Sequence[Episode], parent: Path | None) -> TraceBuild:
        directory = self._stage(seed, round_, spec.name) / "traces"
        saved = load_trace_build(directory)
        if saved is not None:
            return saved
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
                                 memory_k=self.config.memory_k, on_progress=advance)
        tokens = sum(item.completion_tokens for items in scored.values() for item in items)
        return {suite: [item.passed for item in items] for suite, items in scored.items()}, tokens

    # -- plumbing -----------------------------------------------------------------------------------

    def _generation(self) -> GenerationConfig:
        return GenerationConfig(max_tokens=self.config.max_tokens, temperature=0.0)

    def _base_dir(self) -> Path:
        if self._model_dir is None:
            self._model_dir = local_model_dir(self.config.model, models_dir=self.out / "models")
        return self._model_dir

    def _llm(self, adapter: Path | None) -> LLM:
        """The base model, with ``adapter`` labelled by where it was trained (``seed0/round1/pmd``), so that
        episodes and memory trust tell the rounds' policies apart."""
        version = "/".join(adapter.relative_to(self.out).parts[:3]) if adapter is not None else None
        return load_llm(self.config.model, models_dir=self.out / "models", adapter=adapter, adapter_version=version,
                        max_batch_size=BATCH)

    def _adapter(self, arm: Arm, seed: int, round_: int) -> Path | None:
        """The adapter ``arm`` ended round ``round_`` with (None before round 1 or for untrained arms)."""
        spec = ARM_SPECS[arm]
        if round_ < 1 or not spec.trains:
            return None
        if spec.round_1_same_as is not None and round_ == 1:
            arm = spec.round_1_same_as
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
        path = self.out / f"seed{seed}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _stage(self, seed: int, round_: int, arm: str | None = None) -> Path:
        path = self._seed_dir(seed) / f"round{round_}"
        return path / arm if arm else path

    def _check_out_dir(self) -> None:
        """An output directory holds one experiment: resuming with a different config would mix results."""
        saved = self.out / _CONFIG_FILE
        current = self.config.model_dump(mode="json")
        if saved.exists() and read_json(saved) != current:
            raise ProcmemError("this output directory holds an experiment with a different config",
                               where=str(self.out), fix="use a new --out directory, or the same config to resume")
        write_json(saved, current)

    def _bar(self, label: str, total: int) -> _Bar:
        return _Bar(self._progress, label, total)


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


def finished_scores(config: EvalConfig, out: Path) -> list[ArmScores]:
    """Every arm score already in ``out``, in seed, round and arm order (a partial run gives fewer seeds)."""
    scores: list[ArmScores] = []
    for seed in config.seeds:
        for round_ in range(1, config.rounds + 1):
            for arm in config.arms:
                path = out / f"seed{seed}" / f"round{round_}" / arm / "scores.json"
                if path.exists():
                    scores.append(ArmScores.from_dict(read_json(path)))
    return scores
