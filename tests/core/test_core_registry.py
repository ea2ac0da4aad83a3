"""The adapter registry: vN directories with manifests, atomic promote pointer, rollback, resolve."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from procmem.core import Home, ProcmemError
from procmem.core.registry import (
    AdapterManifest,
    BaseModelInfo,
    DatasetSnapshot,
    GateReport,
    MemorySnapshot,
    base_model_hash,
    list_adapters,
    promote,
    promotion_state,
    read_manifest,
    register_adapter,
    resolve_adapter,
    rollback,
)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter for the tiny model, as ``save_pretrained`` writes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(str(out))
    return out


def _gate(passed: bool, baseline: str = "base") -> GateReport:
    return GateReport(baseline=baseline, rows=(), test_baseline=0.2, test_candidate=0.5 if passed else 0.1,
                      holdout_baseline=None, holdout_candidate=None, min_improvement=0.01, max_holdout_drop=0.05,
                      improved=passed, holdout_ok=True, passed=passed)


def _manifest(run_id: str = "r1", *, gate: GateReport | None = None, parent: str | None = None) -> AdapterManifest:
    return AdapterManifest(
        version="v0", run_id=run_id, base_model=BaseModelInfo(id="local:tiny", name="tiny", hash="sha256:ab"),
        objective="sft", objective_config={"objective": "sft", "train": {"lr": 0.01}},
        dataset=DatasetSnapshot(episode_ids=("e1", "e2"), hash="sha256:cd", n_traces=3, n_rejected=5,
                                traces_hash="sha256:ef"),
        memory=MemorySnapshot(entry_ids=("m1",), hash="sha256:01"), metrics={"steps": 4, "final_loss": 1.5},
        gate=gate if gate is not None else _gate(True), parent=parent, created_at="2026-01-01T00:00:00+00:00",
    )


def test_register_assigns_versions_and_writes_a_loadable_adapter_with_its_manifest(
    home: Home, adapter_dir: Path, tiny_model_dir: Path
) -> None:
    first = register_adapter(home.adapters, adapter_dir, _manifest("r1"))
    second = register_adapter(home.adapters, adapter_dir, _manifest("r2", parent="v1"))
    assert (first.version, second.version) == ("v1", "v2")
    assert [m.version for m in list_adapters(home.adapters)] == ["v1", "v2"]
    on_disk = json.loads((home.adapters / "v2" / "manifest.json").read_text())
    assert on_disk["version"] == "v2" and on_disk["parent"] == "v1" and on_disk["run_id"] == "r2"
    assert on_disk["base_model"] == {"id": "local:tiny", "name": "tiny", "hash": "sha256:ab"}
    assert on_disk["dataset"]["episode_ids"] == ["e1", "e2"] and on_disk["memory"]["entry_ids"] == ["m1"]
    assert on_disk["gate"]["passed"] is True and on_disk["forced"] is False
    assert read_manifest(home.adapters, "v2") == second

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), home.adapters / "v1")
    assert any("lora_" in name for name, _ in loaded.named_parameters())
    events = [json.loads(line) for line in (home.adapters / "events.jsonl").read_text().splitlines()]
    assert [(e["action"], e["version"]) for e in events] == [("register", "v1"), ("register", "v2")]


def test_register_refuses_a_directory_without_an_adapter(home: Home, tmp_path: Path) -> None:
    with pytest.raises(ProcmemError, match="not a PEFT adapter directory"):
        register_adapter(home.adapters, tmp_path, _manifest())
    assert list_adapters(home.adapters) == []


def test_promote_and_rollback_move_one_pointer(home: Home, adapter_dir: Path) -> None:
    for run, baseline in (("r1", "base"), ("r2", "base"), ("r3", "v1")):
        register_adapter(home.adapters, adapter_dir, _manifest(run, gate=_gate(True, baseline)))
    assert promotion_state(home.adapters).current is None
    assert resolve_adapter(home, "promoted") is None

    promote(home.adapters, "v1")
    promote(home.adapters, "v3")
    state = promotion_state(home.adapters)
    assert state.current == "v3" and state.history == ("v1",)
    assert resolve_adapter(home, "promoted") == home.adapters / "v3"
    assert json.loads((home.adapters / "promoted.json").read_text())["current"] == "v3"

    assert rollback(home.adapters).current == "v1"
    assert resolve_adapter(home, "promoted") == home.adapters / "v1"
    assert rollback(home.adapters).current is None  # back to the base model
    assert resolve_adapter(home, "promoted") is None
    with pytest.raises(ProcmemError, match="nothing to roll back"):
        rollback(home.adapters)
    actions = [json.loads(line)["action"] for line in (home.adapters / "events.jsonl").read_text().splitlines()]
    assert actions[-4:] == ["promote", "promote", "rollback", "rollback"]


def test_promote_refuses_a_failed_gate_unless_forced_and_records_it(home: Home, adapter_dir: Path) -> None:
    register_adapter(home.adapters, adapter_dir, _manifest(gate=_gate(False)))
    with pytest.raises(ProcmemError, match="failed its promotion gate"):
        promote(home.adapters, "v1")
    assert promotion_state(home.adapters).current is None
    promote(home.adapters, "v1", force=True)
    assert promotion_state(home.adapters).current == "v1"
    assert read_manifest(home.adapters, "v1").forced is True
    last = json.loads((home.adapters / "events.jsonl").read_text().splitlines()[-1])
    assert last["action"] == "promote" and last["forced"] is True


def test_promote_refuses_a_stale_gate_unless_forced_but_allows_going_back(home: Home, adapter_dir: Path) -> None:
    register_adapter(home.adapters, adapter_dir, _manifest("r1"))                      # v1: gated vs base
    register_adapter(home.adapters, adapter_dir, _manifest("r2", gate=_gate(True, "v1")))  # v2: gated vs v1
    with pytest.raises(ProcmemError, match="stale"):
        promote(home.adapters, "v2")  # v1 was never promoted: v2's gate compared it with the wrong model
    promote(home.adapters, "v1")
    promote(home.adapters, "v2")
    promote(home.adapters, "v1")  # v1 was promoted before: going back is allowed
    assert promotion_state(home.adapters).current == "v1" and not read_manifest(home.adapters, "v1").forced


def test_readers_never_see_a_half_written_pointer(home: Home, adapter_dir: Path) -> None:
    register_adapter(home.adapters, adapter_dir, _manifest("r1"))
    register_adapter(home.adapters, adapter_dir, _manifest("r2", gate=_gate(True, "v1")))
    promote(home.adapters, "v1")
    seen: list[Any] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads((home.adapters / "promoted.json").read_text())["current"])
            except BaseException as err:  # a torn or missing file
                errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(60):
            promote(home.adapters, "v2")
            rollback(home.adapters)
    finally:
        stop.set()
        reader.join()
    assert not errors and seen and set(seen) <= {"v1", "v2"}


def test_resolve_adapter_names(home: Home, adapter_dir: Path) -> None:
    assert resolve_adapter(home, "none") is None
    register_adapter(home.adapters, adapter_dir, _manifest())
    assert resolve_adapter(home, "v1") == home.adapters / "v1"
    assert resolve_adapter(home, str(adapter_dir)) == adapter_dir
    with pytest.raises(ProcmemError, match=r"adapter v7 does not exist.*known versions: v1"):
        resolve_adapter(home, "v7")
    with pytest.raises(ProcmemError, match="not an adapter version"):
        resolve_adapter(home, "latest")
    with pytest.raises(ProcmemError, match="not a PEFT adapter directory"):
        resolve_adapter(home, str(home.root))


def test_base_model_hash_is_stable_and_cached(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hashes.json"
    first = base_model_hash(tiny_model_dir, cache)
    assert first.startswith("sha256:") and len(first) == 7 + 64
    assert base_model_hash(tiny_model_dir, cache) == first == base_model_hash(tiny_model_dir)
    assert first in json.loads(cache.read_text()).values()
    with pytest.raises(ProcmemError, match="no weight files"):
        base_model_hash(tmp_path)


def test_the_registry_imports_no_model_library() -> None:
    """solve, chat and the adapters commands resolve adapters without paying for torch."""
    code = ("import sys, procmem.core.registry; "
            "print([m for m in ('torch', 'transformers', 'peft', 'procmem.distill') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
