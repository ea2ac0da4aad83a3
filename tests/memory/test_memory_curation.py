"""An operator's changes to memory entries (add, edit, retire, restore) are recorded with who and when, retired
entries leave retrieval, and `procmem memory show` prints the record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from procmem.core import Home, Task
from procmem.memory import HashingEmbedder, InMemoryStore, ProceduralMemory, open_memory


def test_changes_are_recorded_and_retirement_leaves_retrieval() -> None:
    memory = ProceduralMemory(InMemoryStore(HashingEmbedder()))
    entry, written = memory.add_operator_entry("insight", "Carry the tens.", scope="builtin:arith", by="ops (k1)")
    assert written == "added" and [c["by"] for c in entry.changes] == ["ops (k1)"]
    task = Task(id="t", prompt="What is 18 + 5?", verifier="numeric:23", suite="builtin:arith")
    assert entry.id in memory.context_for(task, 3).entry_ids
    retired = memory.retire_entry(entry.id, by="ops (k1)")
    assert retired.status == "retired" and entry.id not in memory.context_for(task, 3).entry_ids
    restored = memory.restore_entry(entry.id, by="lead (k2)")
    assert restored.active and entry.id in memory.context_for(task, 3).entry_ids
    edited = memory.edit_entry(entry.id, "  Carry a ten\nwhen the ones pass nine. ", by="lead (k2)")
    assert edited.text == "Carry a ten when the ones pass nine." and edited.id == entry.id
    stored = memory.entry(entry.id)
    assert stored is not None and [(c["action"], c["by"]) for c in stored.changes] == [
        ("add", "ops (k1)"), ("retire", "ops (k1)"), ("restore", "lead (k2)"), ("edit", "lead (k2)")]
    assert stored.changes[-1]["before"] == "Carry the tens." and all(c["at"] for c in stored.changes)
    with pytest.raises(KeyError):
        memory.retire_entry("ins-missing", by="x")
    with pytest.raises(ValueError):
        memory.edit_entry(entry.id, "   ", by="x")


def test_memory_show_prints_who_changed_an_entry(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    memory = open_memory(home.chroma)
    entry, _ = memory.add_operator_entry("insight", "Carry the tens.", scope="builtin:arith", by="cli: ops")
    memory.retire_entry(entry.id, by="console: admin (abc12345)")
    memory.close()
    # -P: the checkout's procmem/ must not shadow the installed package (which alone holds procmem.memory)
    shown = subprocess.run([sys.executable, "-P", "-m", "procmem.cli", "--home", str(home.root), "memory", "show",
                            entry.id, "--json"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout.strip().splitlines()[-1])
    assert data["status"] == "retired"
    assert [(c["action"], c["by"]) for c in data["changes"]] == [("add", "cli: ops"),
                                                                ("retire", "console: admin (abc12345)")]
