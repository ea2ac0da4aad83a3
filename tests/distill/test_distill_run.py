"""The distillation job on the tiny model: register, gate, promote, skip, lock, resume, schedule."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procmem.core import Attempt, Episode, Home, Split, Task
from procmem.core.registry import base_model_hash, list_adapters, promotion_state, read_manifest
from procmem.distill import DistillConfig, DistillDeps, DistillResult, run_distillation, run_every
from procmem.distill._run import DistillBusy, replay_count, replay_tasks
from procmem.distill.config import REPLAY_SUITES
from procmem.llm import LLM, LocalLLM
from procmem.memory import ChromaStore, HashingEmbedder
from procmem.memory._experiences import ExperienceMemory
from procmem.memory._retrieval import ExperienceRetriever
from procmem.tasks import load_suite
from procmem.verifiers import build_verifier


class World:
    """Real parts around a run: recorded episodes in Chroma, the tiny model, JSONL task suites.

    ``fail_gate_loads`` makes the next that many loads of the candidate model fail (a crash in the gate stage:
    the gate's suites are loaded before training, so a failing suite load stops a run before it starts).
    """

    def __init__(self, root: Path, model_dir: Path, suite: Path) -> None:
        self.model_dir = model_dir
        self.suite = suite
        self.memory = ExperienceMemory(ChromaStore.embedded(root / "chroma", HashingEmbedder()))
        self.loads: list[tuple[Path | None, str | None]] = []
        self.fail_gate_loads = 0
        self.solve()

    def solve(self) -> list[Episode]:
        """Record one episode per train task, as the agent would: regex tasks pass, exact ones fail twice."""
        episodes = []
        for task in load_suite(str(self.suite), split="train"):
            answers = ("blue",) if task.verifier.startswith("regex") else ("wrong one", "wrong two")
            verifier = build_verifier(task)
            attempts = tuple(Attempt(answer=a, verdict=verifier.verify(a)) for a in answers)
            episodes.append(Episode(task=task, attempts=attempts, model_id="tiny"))
        self.memory.record_many(episodes)
        return episodes

    def deps(self) -> DistillDeps:
        return DistillDeps(episodes=self.memory.episodes, retriever=ExperienceRetriever(self.memory),
                           llm_factory=self._llm, model_dir=self.model_dir, load_tasks=self._tasks)

    def _llm(self, adapter: Path | None, version: str | None) -> LLM:
        if version == "candidate" and self.fail_gate_loads:
            self.fail_gate_loads -= 1
            raise RuntimeError("the model server is down")
        self.loads.append((adapter, version))
        return LocalLLM(self.model_dir, adapter=adapter, adapter_version=version, model_id="tiny")

    def _tasks(self, suite: str, split: Split, n: int) -> list[Task]:
        return load_suite(suite, split=split, n=n)


@pytest.fixture
def world(tmp_path: Path, tiny_model_dir: Path, suite_file: Path) -> Iterator[World]:
    world = World(tmp_path, tiny_model_dir, suite_file)
    yield world
    world.memory.close()


def test_a_run_builds_traces_trains_gates_registers_and_promotes_v1(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    result = run_distillation(run_config, home, deps=world.deps(), quiet=True)
    assert result.status == "promoted" and result.version == "v1" and result.promoted and not result.forced
    assert result.episodes == result.new_episodes == 6 and result.problems == 6
    assert result.traces >= 3 and result.rejected_traces >= 3  # the exact tasks' candidates are all dropped
    assert result.gate is not None and result.gate.passed and result.gate.baseline == "base"
    assert result.train is not None and result.train["steps"] >= 1

    manifest = read_manifest(home.adapters, "v1")
    episodes = world.memory.episodes()
    assert manifest.run_id == result.run_id and manifest.parent is None and manifest.objective == "sft"
    assert manifest.base_model.hash == base_model_hash(world.model_dir)
    assert manifest.dataset.episode_ids == tuple(sorted(e.id for e in episodes))
    assert manifest.dataset.n_traces == result.traces and manifest.dataset.n_rejected == result.rejected_traces
    assert manifest.memory.entry_ids and set(manifest.memory.entry_ids) <= {e.id for e in episodes if e.passed}
    assert manifest.gate == result.gate and manifest.metrics["steps"] == result.train["steps"]
    assert manifest.objective_config == run_config.model_dump(mode="json")
    assert promotion_state(home.adapters).current == "v1"
    # The teacher was the base model (nothing promoted yet); the gate compared base with the candidate.
    assert world.loads[0] == (None, None) and world.loads[1] == (None, None)

    again = run_distillation(run_config, home, deps=world.deps(), quiet=True)
    assert again.status == "skipped" and again.new_episodes == 0 and "0 new episodes" in again.reason
    assert [m.version for m in list_adapters(home.adapters)] == ["v1"]


def test_the_next_run_learns_from_the_promoted_adapter(home: Home, world: World, run_config: DistillConfig) -> None:
    run_distillation(run_config, home, deps=world.deps(), quiet=True)
    world.solve()
    world.loads.clear()
    second = run_distillation(run_config, home, deps=world.deps(), quiet=True)
    assert second.version == "v2" and second.new_episodes == 6 and second.episodes == 12
    assert read_manifest(home.adapters, "v2").parent == "v1"
    assert world.loads[0] == (home.adapters / "v1", "v1")  # the teacher runs with the current adapter
    assert second.gate is not None and second.gate.baseline == "v1"


def test_the_gate_refuses_a_candidate_that_does_not_improve_and_force_is_recorded(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    strict = run_config.model_copy(update={"gate": run_config.gate.model_copy(update={"min_improvement": 0.5})})
    refused = run_distillation(strict, home, deps=world.deps(), quiet=True)
    assert refused.status == "rejected" and refused.version == "v1" and not refused.promoted
    assert refused.gate is not None and not refused.gate.passed and "needs +50.0%" in refused.reason
    assert promotion_state(home.adapters).current is None
    assert read_manifest(home.adapters, "v1").gate == refused.gate

    world.solve()
    forced = run_distillation(strict, home, deps=world.deps(), force=True, quiet=True)
    assert forced.status == "promoted" and forced.version == "v2" and forced.forced
    assert read_manifest(home.adapters, "v2").forced and promotion_state(home.adapters).current == "v2"


def test_self_distill_and_mixed_runs_train_on_problem_contexts(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    for version, objective in (("v1", "self-distill"), ("v2", "mixed")):
        config = run_config.model_copy(update={"objective": objective})
        result = run_distillation(config, home, deps=world.deps(), quiet=True)
        assert result.version == version and result.train is not None
        # mixed: its SFT part trains the rehearsal examples too; self-distillation has no SFT part
        n_examples = 6 if objective == "self-distill" else 6 + result.traces + result.replay_traces
        assert result.train["examples"] == n_examples and (result.replay_traces > 0) == (objective == "mixed")
        assert read_manifest(home.adapters, version).objective == objective
        world.solve()


def test_the_lock_stops_a_second_job(home: Home, world: World, run_config: DistillConfig) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); "
         "lock.acquire(); print('locked', flush=True); time.sleep(60)", str(home.locks / "distill.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(DistillBusy, match="another distillation job is running"):
            run_distillation(run_config, home, deps=world.deps(), quiet=True)
    finally:
        holder.kill()
        holder.wait()
    assert run_distillation(run_config, home, deps=world.deps(), quiet=True).version == "v1"


def test_an_interrupted_run_resumes_at_the_stage_it_reached(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    world.fail_gate_loads = 1
    with pytest.raises(RuntimeError, match="model server is down"):
        run_distillation(run_config, home, deps=world.deps(), quiet=True)
    (run,) = (home.root / "distill" / "runs").iterdir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["stage"] == "trained" and "model server is down" in meta["error"]
    adapter = run / "train" / "adapter" / "adapter_model.safetensors"
    trained_at = adapter.stat().st_mtime_ns

    resumed = run_distillation(run_config, home, deps=world.deps(), quiet=True)
    assert resumed.resumed and resumed.run_id == run.name and resumed.version == "v1"
    assert adapter.stat().st_mtime_ns == trained_at  # training was not repeated
    assert json.loads((run / "run.json").read_text())["stage"] == "done"


def test_a_run_with_other_settings_abandons_the_unfinished_one(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    world.fail_gate_loads = 1
    with pytest.raises(RuntimeError):
        run_distillation(run_config, home, deps=world.deps(), quiet=True)
    other = run_config.model_copy(update={"train": run_config.train.model_copy(update={"lr": 5e-3})})
    result = run_distillation(other, home, deps=world.deps(), quiet=True)
    assert not result.resumed and result.version == "v1"
    stages = sorted(json.loads(p.read_text())["stage"] for p in (home.root / "distill" / "runs").glob("*/run.json"))
    assert stages == ["abandoned", "done"]


def test_the_scheduler_skips_logs_failures_and_retries(home: Home, world: World, run_config: DistillConfig) -> None:
    world.fail_gate_loads = 1
    sleeps: list[float] = []
    seen: list[DistillResult] = []
    results = run_every(run_config, home, 3600.0, deps_factory=world.deps, max_ticks=3, sleep=sleeps.append,
                        quiet=True, on_result=seen.append)
    assert len(sleeps) == 2 and all(0 < s <= 3600 for s in sleeps)
    assert [r.status for r in results] == ["promoted", "skipped"] and seen == results
    assert results[0].resumed  # the failed tick's run was resumed by the next tick
    log = [json.loads(line) for line in (home.root / "distill" / "log.jsonl").read_text().splitlines()]
    assert [entry["event"] for entry in log] == ["failed", "promoted", "skipped"]
    assert "model server is down" in log[0]["error"] and log[1]["result"]["version"] == "v1"


def test_only_one_scheduler_runs_per_home(home: Home, run_config: DistillConfig) -> None:
    from filelock import FileLock

    with FileLock(str(home.locks / "distill-scheduler.lock")), \
            pytest.raises(DistillBusy, match="scheduler is running"):
        run_every(run_config, home, 1.0, max_ticks=1, quiet=True)


def test_the_gate_skips_test_items_whose_question_was_trained_on(
    home: Home, world: World, run_config: DistillConfig, tmp_path: Path
) -> None:
    train = load_suite(str(world.suite), split="train")
    rows = [{"id": f"leak{i}", "prompt": f"  {t.prompt.upper()} ", "verifier": t.verifier, "split": "test"}
            for i, t in enumerate(train[:2])]
    rows += [{"id": f"new{i}", "prompt": f"Something new {i}.", "verifier": "regex:(?s).*", "split": "test"}
             for i in range(3)]
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text("".join(json.dumps(row) + "\n" for row in rows))
    gate = run_config.gate.model_copy(update={"test_suites": (str(leaky),)})
    result = run_distillation(run_config.model_copy(update={"gate": gate}), home, deps=world.deps(), quiet=True)
    assert result.gate is not None and result.gate.excluded == 2
    assert [row.n for row in result.gate.rows] == [3]


# ------------------------------------------------------------------ a serve-fed home: held-out production episodes

NOTHING_PASSES = "regex:(?!)"


def _serve_episodes(n: int, *, verifier: str = "regex:(?s).*", start: int = 0) -> list[Episode]:
    """Verified calls of ``procmem serve``: suite ``serve`` (no test split), one question each."""
    episodes = []
    for i in range(start, start + n):
        task = Task(id=f"call-{i}", prompt=f"Tell me about item {i}.", verifier=verifier, suite="serve",
                    metadata={"source": "serve"})
        answer = "an answer"
        episodes.append(Episode(task=task, attempts=(Attempt(answer, build_verifier(task).verify(answer)),),
                                model_id="tiny"))
    return episodes


def _serve_config(run_config: DistillConfig, **gate: object) -> DistillConfig:
    return run_config.model_copy(update={"gate": run_config.gate.model_copy(
        update={"heldout_share": 0.5, "min_heldout": 3, **gate})})


def test_a_suite_without_a_test_split_is_gated_on_its_held_out_episodes_which_never_train(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    from procmem.distill.gate import held_out

    serve = _serve_episodes(16)
    judged_wrong = [e for e in _serve_episodes(16, verifier=NOTHING_PASSES, start=100)]
    world.memory.record_many([*serve, *judged_wrong])
    config = _serve_config(run_config)
    result = run_distillation(config, home, deps=world.deps(), quiet=True)

    held = [e for e in serve if held_out(e.task.prompt, 0.5)]
    assert 3 <= len(held) < 16  # the hash holds out about half
    assert result.held_out == len(held) and result.episodes == 6 + 32
    assert result.gate is not None and result.status in ("promoted", "rejected")
    rows = {row.suite: row for row in result.gate.rows}
    assert rows["serve"].kind == "test" and rows["serve"].n == min(len(held), config.gate.n_test)  # the newest
    assert rows[str(world.suite)].kind == "test"  # a suite with a test split still uses it
    # Nothing of a held-out question was trained on; episodes judged wrong without a correction are never held out.
    manifest = read_manifest(home.adapters, result.version or "")
    trained_ids = set(manifest.dataset.episode_ids)
    assert not trained_ids & {e.id for e in held}
    assert {e.id for e in judged_wrong} <= trained_ids
    run = home.root / "distill" / "runs" / (result.run_id or "")
    traced = {json.loads(line)["task_id"] for name in ("traces.jsonl", "rejected.jsonl")
              for line in (run / "traces" / name).read_text().splitlines()}
    assert traced and not traced & {e.task.id for e in held}


def test_too_few_held_out_episodes_refuse_before_any_teacher_or_training(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    world.memory.record_many([*_serve_episodes(4), *_serve_episodes(6, verifier=NOTHING_PASSES, start=50)])
    config = _serve_config(run_config, min_heldout=50)
    result = run_distillation(config, home, deps=world.deps(), quiet=True)
    assert result.status == "skipped" and not result.promoted and result.version is None and result.held_out <= 4
    assert "suite 'serve' has no test split" in result.reason
    assert "gate.min_heldout=50 (capped by gate.n_test=6)" in result.reason
    assert "judged wrong without a correction" in result.reason and "gate.test_suites" in result.reason
    assert world.loads == []  # no teacher, no training, no gate model was loaded
    assert not (home.root / "distill" / "runs").exists() or not list((home.root / "distill" / "runs").iterdir())
    assert promotion_state(home.adapters).current is None

    # Nothing moved the watermark: once the gate can be satisfied, the same episodes are new to the next run.
    again = run_distillation(_serve_config(run_config, min_heldout=1), home, deps=world.deps(), quiet=True)
    assert again.new_episodes == 16 and again.gate is not None


def test_a_configured_test_suite_still_gates_a_serve_fed_home(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    world.memory.record_many(_serve_episodes(4))
    config = _serve_config(run_config, test_suites=(str(world.suite),), min_heldout=50)
    result = run_distillation(config, home, deps=world.deps(), quiet=True)
    assert result.gate is not None and [row.suite for row in result.gate.rows] == [str(world.suite)]
    assert len(read_manifest(home.adapters, result.version or "").dataset.episode_ids) == 10  # nothing held out


def test_sft_trains_the_policys_own_answers_to_other_kinds_of_question_beside_the_verified_traces(
    home: Home, world: World, run_config: DistillConfig
) -> None:
    """Rehearsal against forgetting (``traces.replay``, on by default): the README's loop without it turned every
    syllogism answer into a digit after 44 steps on letter counting."""
    from procmem.distill._storage import distill_dir

    result = run_distillation(run_config, home, deps=world.deps(), quiet=True)
    replay_file = distill_dir(home) / "runs" / str(result.run_id) / "traces" / "replay.jsonl"
    replay = [json.loads(line) for line in replay_file.read_text().splitlines()]
    share = run_config.traces.replay.share
    assert 1 <= result.replay_traces == len(replay) <= math.ceil(result.traces * share / (1 - share))
    suites = {row["suite"] for row in replay}
    assert len(suites) >= 2 and suites <= set(REPLAY_SUITES) - set(run_config.gate.holdout_suites)
    for row in replay:
        assert row["status"] == "replay" and row["teacher"].startswith("replay:") and row["answer"]
        assert row["prompt"] == row["teacher_prompt"] and not row["memory_ids"]  # memory-free, as the student
    assert result.train is not None and result.train["examples"] == result.traces + result.replay_traces


def test_rehearsal_leaves_out_the_trained_suites_and_the_gates_holdout_and_can_be_turned_off(
    run_config: DistillConfig,
) -> None:
    config = run_config.model_copy(update={"gate": run_config.gate.model_copy(
        update={"holdout_suites": ("rg:spell_backward",)})})
    loaded: list[tuple[str, str, int]] = []

    def load(suite: str, split: Split, n: int) -> list[Task]:
        loaded.append((suite, split, n))
        return load_suite(suite, split=split, n=n)

    assert replay_count(config, 9) == 9  # half of 18 examples
    tasks = replay_tasks(config, {"rg:ransom_note"}, 6, load)
    assert len(tasks) == 6
    assert {t.suite for t in tasks} <= set(REPLAY_SUITES) - {"rg:spell_backward", "rg:ransom_note"}
    assert len({t.suite for t in tasks}) == 4 and all(split == "train" for _, split, _ in loaded)
    off = config.model_copy(update={"traces": config.traces.model_copy(
        update={"replay": config.traces.replay.model_copy(update={"share": 0.0})})})
    assert replay_count(off, 9) == 0 and replay_tasks(off, set(), 3, load) == []
