"""The evidence experiment: the paper's comparison, R rounds per arm and seed.

Every trained arm collects its own episodes each round with its own current policy (on-policy, as RL and SDPO
do), on the same train items, with the same attempts and generation tokens, then learns from them:

- ``rft`` (episode-local): its policy without memory, K attempts with retries on its own verifier feedback;
  SFT on its own verified successes;
- ``sdpo`` (episode-local): collects like ``rft``; token-level self-distillation on its own rollouts, the teacher
  being the same model given only the episode's own failed attempt and verifier feedback
  (:func:`~procmem.distill.traces.feedback_contexts`);
- ``pmd``: its policy collects **with memory**; memory records the episodes and is reflected each round (policy
  and memory co-evolve); the memory-free student learns from the memory-conditioned teacher
  (:func:`~procmem.distill.traces.teacher_contexts`) with ``pmd_recipe``;
- ``pmd-frozen-memory``: as ``pmd``, with the memory as it stood after round 1, never written again;
- ``pmd-frozen-policy``: as ``pmd``, with the memory the base policy collects and reflects each round (the
  trained policy never writes it);
- ``pmd-no-reflection``: as ``pmd``, with its own memory that is never reflected (experiences and verifier
  lessons only);
- ``pmd-sft`` / ``pmd-mixed`` / ``pmd-self-distill``: PMD with a fixed recipe (the dev run that picks
  ``pmd_recipe``).

``base`` and ``base+memory`` (the base model with PMD's memory at test time) train nothing. Each trained arm
continues from its own previous-round adapter. All arms are scored pass@1, greedily, memory-free (except
``base+memory``), on the same items: each seed's test block, or the dev items with ``score_on = "dev"``.

**Shared round 1.** Until they train, arms with the same policy and memory do the same thing, so round 1 runs
two collections: the base policy without memory (``rft``, ``sdpo``) and with an empty memory that it fills
(every PMD arm). The PMD arms' memory tracks start from that round-1 memory: reflected (``memory-r1``), or as
collected, before reflection (``memory-r1-unreflected``, for ``pmd-no-reflection``). From round 2 on each
track is its own directory.

**Splits.** Train items come from each suite's train split (a per-seed draw of ``n_train`` from a pool; with
``new_items_each_round`` each round collects its own block of them); dev and test items from its held-out split:
the first ``n_dev`` held-out items are dev, then seed number i gets the i-th block of ``n_test``. Train, dev and
every seed's test items are disjoint (:func:`load_splits`).

**Matched budgets.** With ``train_examples`` set, each trained arm trains on exactly that many examples per round
(:func:`match_budget`: SFT traces, or problems a rollout is sampled for), so every arm takes the same optimizer
steps and rollouts.

**Memory uplift.** Each round, the PMD policy answers ``n_uplift`` of the round's items per suite with its memory
in the prompt (what the teacher sees) and without (what the student sees).

Every stage writes its result atomically under the output directory and is skipped when rerun, so an
interrupted experiment continues where it stopped (a collection resumes mid-way from its LangGraph checkpoints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from procmem.agent import BATCH, AgentSession, SessionConfig, score_tasks
from procmem.core import Episode, GenerationConfig, Home, ProcmemError, Task
from procmem.core.fileio import read_json, read_jsonl, write_json, write_jsonl
from procmem.core.keys import policy_version
from procmem.core.progress import progress_bar
from procmem.core.prompts import REASONED_STOP
from procmem.distill.config import ObjectiveName
from procmem.distill.traces import (
    TraceBuild,
    build_traces,
    feedback_contexts,
    load_trace_build,
    save_trace_build,
    success_traces,
    teacher_contexts,
    training_items,
)
from procmem.distill.train import train_adapter
from procmem.eval.config import ARM_SPECS, Arm, ArmSpec, EvalConfig
from procmem.llm import LLM, Limits, local_model_dir, opened_policy
from procmem.memory import ProceduralMemory, Retriever, open_memory
from procmem.tasks import load_suite
from procmem.verifiers import build_verifier

__all__ = ["ArmScores", "Experiment", "Splits", "Suites", "arm_objective", "budget_rows", "finished_scores",
           "load_splits", "load_suites", "match_budget", "round_items", "run_experiment", "seed_dir", "stage_dir",
           "stage_timings", "trace_counts"]

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
    """Time of this arm's own stages this round: collection, traces, training and evaluation."""
    train_examples: int = 0
    """Examples trained on this round (after budget matching)."""
    train_steps: int = 0
    """Optimizer steps of this round's training."""
    distinct_traces: int = 0
    """Distinct problems this round's training examples were drawn from."""
    item_ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Per test suite, the scored items' ids (the pairing key across arms)."""
    stage_s: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds per stage of this arm (collect, reflect, traces, train, eval), as measured when each ran."""
    well_formed: dict[str, list[bool | None]] = dataclasses.field(default_factory=dict)
    """Per test suite and item, whether the answer had the expected form (None where the verifier does not say)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmScores:
        return cls(**data)


@dataclass(frozen=True)
class Suites:
    """One seed's items: what it trains on, what it is scored on and its general-holdout items."""

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
    order), its own test block (the dev items with ``score_on = "dev"``) and its holdout block."""
    splits = splits or load_splits(config)
    train: dict[str, list[Task]] = {}
    for suite, pool in splits.train_pool.items():
        chosen = sorted(random.Random(f"train:{seed}:{suite}").sample(range(len(pool)), min(config.n_train,
                                                                                             len(pool))))
        train[suite] = [pool[i] for i in chosen]
    scored = splits.dev if config.score_on == "dev" else splits.test[seed]
    return Suites(train=train, test=scored, holdout=splits.holdout[seed])


def round_items(config: EvalConfig, suites: Suites, round_: int) -> dict[str, list[Task]]:
    """The train items round ``round_`` collects: all of them, or with ``new_items_each_round`` its own block
    (the items split as evenly as possible into ``rounds`` blocks, in order)."""
    if not config.new_items_each_round:
        return suites.train
    blocks: dict[str, list[Task]] = {}
    for suite, tasks in suites.train.items():
        size, extra = divmod(len(tasks), config.rounds)
        start = (round_ - 1) * size + min(round_ - 1, extra)
        blocks[suite] = tasks[start:start + size + (1 if round_ - 1 < extra else 0)]
    return blocks


def arm_objective(spec: ArmSpec, config: EvalConfig) -> ObjectiveName:
    """The objective an arm trains with: SFT for RFT, self-distillation for SDPO, the recipe for PMD."""
    if spec.learns == "own-successes":
        return "sft"
    if spec.learns == "own-feedback":
        return "self-distill"
    return spec.recipe or config.pmd_recipe


def match_budget(build: TraceBuild, n: int, seed: int, objective: ObjectiveName = "sft") -> TraceBuild:
    """``build`` trimmed or repeated to exactly ``n`` training examples for ``objective``: kept traces (sft),
    problem contexts (self-distill: one rollout each), or half each (mixed). A seeded subsample without
    replacement when there are more, every unit repeated in turn (then a seeded subsample of the remainder) when
    fewer. ``n=0``, or nothing of a kind to draw from: that kind unchanged."""
    if n <= 0:
        return build
    rng = random.Random(seed)
    kept = [t for t in build.kept if t.status == "kept"]
    if objective == "sft":
        return dataclasses.replace(build, kept=tuple(_exactly(kept, n, rng)))
    if objective == "self-distill":
        return dataclasses.replace(build, contexts=tuple(_exactly(list(build.contexts), n, rng)))
    half = n // 2
    return dataclasses.replace(build, kept=tuple(_exactly(kept, half, rng)),
                               contexts=tuple(_exactly(list(build.contexts), n - half, rng)))


def _exactly(units: list[Any], n: int, rng: random.Random) -> list[Any]:
    if not units:
        return units
    whole, rest = divmod(n, len(units))
    return units * whole + rng.sample(units, rest)


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
        splits = load_splits(self.config, dev_only=self.config.score_on == "dev")
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
        items = round_items(self.config, suites, round_)
        if round_ == 1:
            self._round_one(seed, items)
        elif any(ARM_SPECS[a].memory == "base" for a in self.config.arms):
            self._base_track(seed, round_, items)
        running = [arm for arm in self.config.arms if ARM_SPECS[arm].starts_in_round <= round_]
        # base+memory reads PMD's memory as it stands at the end of the round: after PMD has collected
        done = {arm: self._arm(arm, seed, round_, suites, items)
                for arm in sorted(running, key=lambda a: ARM_SPECS[a].memory_at_test)}
        return [row for arm in running if (row := done[arm]) is not None]

    def _scored(self, round_: int) -> bool:
        return self.config.evaluate_every_round or round_ == self.config.rounds

    # -- round 1: the two shared collections -------------------------------------------------------

    def _round_one(self, seed: int, items: dict[str, list[Task]]) -> None:
        """The base policy collects without memory (the episode-local arms' round 1) and with an empty memory that
        it fills and then reflects on (every PMD arm's round 1); the memory is kept as collected and reflected."""
        specs = [ARM_SPECS[a] for a in self.config.arms]
        if any(s.trains and s.memory == "none" for s in specs):
            self._collect(self._stage(seed, 1, "collect-none"), None, None, items, record=False,
                          label=f"collect r1 s{seed}: no memory")
        if any(s.memory != "none" or s.memory_at_test for s in specs):
            memory_dir = self._seed_dir(seed) / "memory-r1"
            stage = self._stage(seed, 1, "collect-memory")
            if not (stage / "collect.json").exists():
                with self._open_memory(memory_dir) as memory:
                    self._collect(stage, None, memory, items, record=True, label=f"collect r1 s{seed}: memory")
            _snapshot(memory_dir, self._seed_dir(seed) / "memory-r1-unreflected")
            with self._open_memory(memory_dir) as memory:
                self._reflect(stage, None, memory, f"reflect r1 s{seed}")

    def _base_track(self, seed: int, round_: int, items: dict[str, list[Task]]) -> None:
        """The base policy's own memory (what ``pmd-frozen-policy``'s teacher reads): collected into and reflected
        by the base policy each round, never by a trained one."""
        track = self._track(seed, "base", round_)
        stage = self._stage(seed, round_, "base-track")
        with self._open_memory(track) as memory:
            if not (stage / "collect.json").exists():
                self._collect(stage, None, memory, items, record=True, label=f"base track r{round_} s{seed}")
            self._reflect(stage, None, memory, f"base track reflect r{round_} s{seed}")

    # -- one arm ------------------------------------------------------------------------------------

    def _arm(self, arm: Arm, seed: int, round_: int, suites: Suites, items: dict[str, list[Task]]) -> ArmScores | None:
        """Collect, train (a trained arm) and score (in a scored round) one arm; None in a round that is not
        scored."""
        cached = self._stage(seed, round_, arm) / "scores.json"
        if cached.exists():
            return ArmScores.from_dict(read_json(cached))
        spec = ARM_SPECS[arm]
        started = time.perf_counter()
        stage_s: dict[str, float] = {}
        adapter, trained = self._adapter(arm, seed, round_), _Trained()
        if spec.trains:
            with self._arm_memory(spec, seed, round_) as memory:
                episodes, collect_s = self._episodes(spec, seed, round_, items, memory)
                stage_s.update(collect_s)
                if spec.memory != "none" and spec.name == "pmd" and memory is not None:
                    self._uplift(seed, round_, items, memory)
                trained = self._train(spec, seed, round_, memory, episodes)
            stage_s.update(trained.stage_s)
            adapter = self._adapter(arm, seed, round_)
        if not self._scored(round_):
            return None
        clock = time.perf_counter()
        with self._policy(adapter) as llm:
            with self._test_memory(spec, seed, round_) as memory:
                retriever = memory.retriever(policy=policy_version(llm)) if memory is not None else None
                test = self._score(llm, suites.test, retriever, f"{arm} r{round_} s{seed}: test")
            holdout = _Scored() if spec.memory_at_test else self._score(llm, suites.holdout, None,
                                                                         f"{arm} r{round_} s{seed}: holdout")
        stage_s["eval"] = time.perf_counter() - clock
        result = ArmScores(arm, round_, seed, test.passed, holdout.passed, test.tokens + holdout.tokens,
                           time.perf_counter() - started, trained.examples, trained.steps, trained.distinct,
                           {suite: [t.id for t in tasks] for suite, tasks in suites.test.items()}, stage_s,
                           test.well_formed)
        write_json(cached, result.to_dict())
        return result

    # -- collection ---------------------------------------------------------------------------------

    def _episodes(self, spec: ArmSpec, seed: int, round_: int, items: dict[str, list[Task]],
                  memory: ProceduralMemory | None) -> tuple[list[Episode], dict[str, float]]:
        """This round's episodes of the arm, collected with its own policy (round 1: the shared collection)."""
        if round_ == 1:
            stage = self._stage(seed, 1, "collect-none" if spec.memory == "none" else "collect-memory")
            return _load_episodes(stage), {}
        stage = self._stage(seed, round_, spec.name)
        clock = time.perf_counter()
        policy = self._adapter(spec.name, seed, round_ - 1)
        writes = spec.memory in ("own", "own-unreflected")
        episodes = self._collect(stage, policy, memory, items, record=writes,
                                 label=f"{spec.name} collect r{round_} s{seed}")
        timings = {"collect": read_json(stage / "collect.json").get("wall_time_s", time.perf_counter() - clock)}
        if spec.memory == "own" and memory is not None:
            timings["reflect"] = self._reflect(stage, policy, memory, f"{spec.name} reflect r{round_} s{seed}")
        return episodes, timings

    def _collect(self, stage: Path, policy: Path | None, memory: ProceduralMemory | None,
                 items: dict[str, list[Task]], *, record: bool, label: str) -> list[Episode]:
        """The agent (``policy``; memory in its prompts when ``memory`` is given, recorded into it with
        ``record``) solves ``items``: K attempts, retrying on its verifier's feedback. Cached in ``stage``."""
        from langgraph.checkpoint.sqlite import SqliteSaver

        summary = stage / "collect.json"
        if summary.exists():
            return _load_episodes(stage)
        tasks = [task for group in items.values() for task in group]
        session = self.config.session
        settings = SessionConfig(model=session.model, attempts=session.attempts, memory_k=session.memory_k,
                                 concurrency=session.concurrency, generation=self._generation(),
                                 use_memory=memory is not None, record=record, reflect=False)
        stage.mkdir(parents=True, exist_ok=True)
        with self._policy(policy) as llm, AgentSession(llm, settings, memory=memory) as agent, \
                SqliteSaver.from_conn_string(str(stage / "threads.sqlite")) as saver, \
                self._bar(label, len(tasks)) as advance:
            report = agent.solve(tasks, checkpointer=saver, run_id=label, on_done=lambda _: advance(1))
        write_jsonl(stage / "episodes.jsonl", (e.to_dict() for e in report.episodes))
        write_json(summary, {"n": report.n, "passed": report.passed, "accuracy": report.accuracy,
                             "mean_attempts": report.mean_attempts, "tokens": report.completion_tokens,
                             "wall_time_s": report.wall_time_s, "policy": str(policy) if policy else "base",
                             "memory": memory is not None, "recorded": record})
        (stage / "threads.sqlite").unlink(missing_ok=True)
        return list(report.episodes)

    def _reflect(self, stage: Path, policy: Path | None, memory: ProceduralMemory, label: str) -> float:
        """The policy reflects on the problems recorded since the last reflection (insights), then patterns are
        consolidated. Returns its seconds (as measured when it ran)."""
        summary = stage / "reflect.json"
        if summary.exists():
            return float(read_json(summary).get("wall_time_s", 0.0))
        if not self.config.reflect_max_calls:
            return 0.0
        with self._policy(policy) as reflector, self._bar(label, self.config.reflect_max_calls) as advance:
            shown = [0]

            def on_progress(done: int, _total: int) -> None:
                advance(done - shown[0])
                shown[0] = done

            clock = time.perf_counter()
            report = memory.reflect(reflector, max_calls=self.config.reflect_max_calls, progress=on_progress)
        seconds = time.perf_counter() - clock
        write_json(summary, {**report.to_dict(), "stats": dict(memory.stats()), "wall_time_s": seconds})
        return seconds

    def _uplift(self, seed: int, round_: int, items: dict[str, list[Task]], memory: ProceduralMemory) -> None:
        """The memory uplift on this round's items: PMD's policy this round (the teacher's model) with memory in
        its prompt against the same model memory-free (the student), on the first ``n_uplift`` items per suite."""
        summary = self._stage(seed, round_) / "uplift.json"
        if summary.exists() or not self.config.n_uplift:
            return
        clock = time.perf_counter()
        chosen = {suite: tasks[:self.config.n_uplift] for suite, tasks in items.items()}
        with self._policy(self._adapter("pmd", seed, round_ - 1)) as llm:
            with_memory = self._score(llm, chosen, memory.teacher_retriever(policy=policy_version(llm)),
                                      f"uplift r{round_} s{seed}: with memory").passed
            without = self._score(llm, chosen, None, f"uplift r{round_} s{seed}: memory-free").passed
        write_json(summary, {
            "suites": {suite: {"n": len(chosen[suite]), "with_memory": _rate(with_memory[suite]),
                               "memory_free": _rate(without[suite]),
                               "uplift": _rate(with_memory[suite]) - _rate(without[suite])} for suite in chosen},
            "wall_time_s": time.perf_counter() - clock})

    # -- memory tracks ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _arm_memory(self, spec: ArmSpec, seed: int, round_: int) -> Iterator[ProceduralMemory | None]:
        """The memory an arm collects with and its teacher reads this round (None: episode-local)."""
        if spec.memory == "none":
            yield None
            return
        with self._open_memory(self._track(seed, spec.memory, round_, spec.name)) as memory:
            yield memory

    @contextlib.contextmanager
    def _test_memory(self, spec: ArmSpec, seed: int, round_: int) -> Iterator[ProceduralMemory | None]:
        """``base+memory``'s test memory: PMD's, as it stands this round."""
        if not spec.memory_at_test:
            yield None
            return
        with self._open_memory(self._track(seed, "own", round_, "pmd")) as memory:
            yield memory

    def _track(self, seed: int, kind: str, round_: int, arm: str = "") -> Path:
        """The directory of a memory track this round; a track that starts in round 2 is copied from the round-1
        memory it grows from."""
        root = self._seed_dir(seed)
        if kind == "frozen":
            return root / "memory-r1"
        source = root / ("memory-r1-unreflected" if kind == "own-unreflected" else "memory-r1")
        if round_ == 1:
            return source
        track = root / (f"memory-{arm}" if kind != "base" else "memory-base")
        _snapshot(source, track)
        return track

    @contextlib.contextmanager
    def _open_memory(self, path: Path) -> Iterator[ProceduralMemory]:
        memory = open_memory(path, embedder=self._embedder_instance(), config=self.config.memory)
        try:
            yield memory
        finally:
            memory.close()

    # -- training -----------------------------------------------------------------------------------

    def _train(self, spec: ArmSpec, seed: int, round_: int, memory: ProceduralMemory | None,
               episodes: Sequence[Episode]) -> _Trained:
        stage = self._stage(seed, round_, spec.name)
        parent = self._adapter(spec.name, seed, round_ - 1)
        objective = arm_objective(spec, self.config)
        clock = time.perf_counter()
        build = self._traces(spec, seed, round_, memory, episodes, parent, objective)
        timings = {"traces": read_json(stage / "traces.time.json")["s"]} if (stage / "traces.time.json").exists() \
            else {"traces": time.perf_counter() - clock}
        distinct = len({t.task_id for t in build.kept if t.status == "kept"} | {c.task_id for c in build.contexts
                                                                              if objective != "sft"})
        build = match_budget(build, self.config.train_examples, seed * 1000 + round_, objective)
        if (objective == "sft" and not build.kept) or (objective == "self-distill" and not build.contexts):
            self.console.print(f"[yellow]{spec.name} round {round_} seed {seed}: nothing to train on; the arm keeps "
                               "its previous adapter[/]")
            return _Trained(distinct=0, stage_s=timings)
        distill = self.config.distill.model_copy(update={
            "objective": objective,
            "train": self.config.distill.train.model_copy(update={"seed": self.config.distill.train.seed + seed}),
        })
        result = train_adapter(build, distill, model_dir=self._base_dir(), work_dir=stage / "train", parent=parent,
                               console=self.console, quiet=self.quiet)
        timings["train"] = result.seconds
        rollouts = len(build.contexts) * distill.train.epochs if objective != "sft" else 0
        write_json(stage / "budget.json", {
            "objective": objective, "examples": result.examples, "steps": result.steps, "distinct_problems": distinct,
            "rollouts": rollouts, "trained_tokens": result.tokens, "processed_tokens": result.processed_tokens})
        return _Trained(result.examples, result.steps, distinct, timings)

    def _traces(self, spec: ArmSpec, seed: int, round_: int, memory: ProceduralMemory | None,
                episodes: Sequence[Episode], parent: Path | None, objective: ObjectiveName) -> TraceBuild:
        """What the arm learns from this round: its own successes (RFT); its problems seen by the episode-local
        teacher (SDPO); or, for PMD, its problems seen by the memory-conditioned teacher, with the teacher's
        verified corrections and its own successes as traces for the sft and mixed recipes."""
        directory = self._stage(seed, round_, spec.name) / "traces"
        saved = load_trace_build(directory)
        if saved is not None:
            return saved
        clock = time.perf_counter()
        traces = self.config.distill.traces.model_copy(update={"seed": self.config.distill.traces.seed + seed})
        problems = training_items(episodes, traces)
        if spec.learns == "own-successes":
            build = success_traces(episodes, traces.keep_per_problem)
        elif spec.learns == "own-feedback":
            build = TraceBuild((), (), tuple(feedback_contexts(problems)))
        else:
            assert memory is not None, f"{spec.name} learns from memory but has none"
            with self._policy(parent) as teacher:
                retriever = memory.teacher_retriever(policy=policy_version(teacher))
                contexts = tuple(teacher_contexts(problems, retriever, traces.memory_k))
                build = TraceBuild((), (), contexts)
                if objective != "self-distill":
                    unsolved = [p for p in problems if p.rank == 0]
                    with self._bar(f"{spec.name} teacher r{round_} s{seed}", len(unsolved)) as advance:
                        corrections = build_traces(unsolved, teacher, retriever, traces, on_progress=advance)
                    own = success_traces(episodes, traces.keep_per_problem)
                    build = TraceBuild(own.kept + corrections.kept, corrections.rejected, contexts)
        save_trace_build(build, directory)
        write_json(directory.parent / "traces.time.json", {"s": time.perf_counter() - clock})
        return build

    # -- scoring ------------------------------------------------------------------------------------

    def _score(self, llm: LLM, suites: dict[str, list[Task]], retriever: Retriever | None, label: str) -> _Scored:
        """pass@1, greedy; memory in the prompt only with a retriever."""
        total = sum(len(tasks) for tasks in suites.values())
        with self._bar(label, total) as advance:
            scored = score_tasks(llm, suites, self._generation(), retriever=retriever,
                                 memory_k=self.config.session.memory_k, on_progress=advance)
        return _Scored({suite: [item.passed for item in items] for suite, items in scored.items()},
                       {suite: [item.well_formed for item in items] for suite, items in scored.items()},
                       sum(item.completion_tokens for items in scored.values() for item in items))

    # -- plumbing -----------------------------------------------------------------------------------

    def _generation(self) -> GenerationConfig:
        return GenerationConfig(max_tokens=self.config.session.generation.max_tokens, temperature=0.0)

    def _base_dir(self) -> Path:
        if self._model_dir is None:
            self._model_dir = local_model_dir(self.config.session.model, models_dir=self.out / "models")
        return self._model_dir

    def _policy(self, adapter: Path | None) -> contextlib.AbstractContextManager[LLM]:
        """The base model on the session's engine, with ``adapter`` labelled by where it was trained
        (``seed0/round1/pmd``), so that episodes and memory trust tell the rounds' policies apart; closed after
        the ``with`` block (a run loads dozens of policies: left open, each llama.cpp engine keeps ~0.8 GB)."""
        version = "/".join(adapter.relative_to(self.out).parts[:3]) if adapter is not None else None
        session = self.config.session
        return opened_policy(Home(self.out), model=session.model, adapter=adapter or "none", engine=session.engine,
                             version=version, limits=Limits(max_batch_size=BATCH))

    def _adapter(self, arm: Arm, seed: int, round_: int) -> Path | None:
        """The adapter ``arm`` ended round ``round_`` with (None before round 1 or for untrained arms); an arm
        that kept its parent (nothing to train on) ends the round with its parent's."""
        spec = ARM_SPECS[arm]
        if round_ < 1 or not spec.trains:
            return None
        if round_ < spec.starts_in_round:  # before it starts, the arm is PMD (see ArmSpec.starts_in_round)
            arm = "pmd"
        adapter = self._stage(seed, round_, arm) / "train" / "adapter"
        if (adapter / "adapter_config.json").exists():
            return adapter
        return self._adapter(arm, seed, round_ - 1)

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


def _snapshot(source: Path, target: Path) -> None:
    """Copy a closed memory directory once (atomically: a staging copy renamed into place)."""
    if target.exists():
        return
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    staging.rename(target)


def _load_episodes(stage: Path) -> list[Episode]:
    return [Episode.from_dict(row) for row in read_jsonl(stage / "episodes.jsonl")]


@dataclass(frozen=True)
class _Scored:
    passed: dict[str, list[bool]] = dataclasses.field(default_factory=dict)
    well_formed: dict[str, list[bool | None]] = dataclasses.field(default_factory=dict)
    tokens: int = 0


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
    """Seconds per stage as measured, one row per seed and round: the shared round-1 collections and reflection,
    the base policy's memory track, the uplift, and per arm collect / reflect / traces / train / eval (what is
    finished so far)."""
    rows: list[dict[str, Any]] = []
    for seed in config.seeds:
        for round_ in range(1, config.rounds + 1):
            stage = stage_dir(out, seed, round_)
            row: dict[str, Any] = {"seed": seed, "round": round_}
            for shared in ("collect-none", "collect-memory", "base-track"):
                for name in ("collect", "reflect"):
                    path = stage / shared / f"{name}.json"
                    if path.exists():
                        row[f"{shared}:{name}"] = read_json(path).get("wall_time_s")
            if (stage / "uplift.json").exists():
                row["uplift"] = read_json(stage / "uplift.json").get("wall_time_s")
            for arm in config.arms:
                if (stage / arm / "scores.json").exists():
                    row.update({f"{arm}:{k}": v for k, v in read_json(stage / arm / "scores.json")["stage_s"].items()})
                    continue
                for name in ("collect", "reflect"):
                    if (stage / arm / f"{name}.json").exists():
                        row[f"{arm}:{name}"] = read_json(stage / arm / f"{name}.json").get("wall_time_s")
                if (stage / arm / "traces.time.json").exists():
                    row[f"{arm}:traces"] = read_json(stage / arm / "traces.time.json")["s"]
                done = stage / arm / "train" / "train_result.json"
                if done.exists():
                    row[f"{arm}:train"] = read_json(done).get("seconds")
            if len(row) > 2:
                rows.append(row)
    return rows


def budget_rows(config: EvalConfig, out: Path) -> list[dict[str, Any]]:
    """Each trained arm's budget per seed and round (what is finished so far): its collection (problems,
    episodes' attempts, generated tokens, whether with memory) and its training (objective, examples, optimizer
    steps, distinct problems, rollouts, tokens)."""
    rows: list[dict[str, Any]] = []
    for seed in config.seeds:
        for round_ in range(1, config.rounds + 1):
            for arm in config.arms:
                spec = ARM_SPECS[arm]
                if not spec.trains or round_ < spec.starts_in_round:
                    continue
                shared = "collect-none" if spec.memory == "none" else "collect-memory"
                collect = stage_dir(out, seed, round_, shared if round_ == 1 else arm) / "collect.json"
                budget = stage_dir(out, seed, round_, arm) / "budget.json"
                if not collect.exists():
                    continue
                c = read_json(collect)
                row: dict[str, Any] = {"seed": seed, "round": round_, "arm": arm, "problems": c["n"],
                                       "attempts": round(c["mean_attempts"] * c["n"]), "collect_tokens": c["tokens"],
                                       "collect_accuracy": c["accuracy"], "with_memory": c.get("memory", False)}
                if budget.exists():
                    row.update(read_json(budget))
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
