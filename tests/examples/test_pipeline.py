"""examples/pipeline.py, the canonical use of the Python API, runs end to end on the tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from procmem.core import Home
from procmem.core.registry import read_manifest
from procmem.memory import open_memory

PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.py"


def test_the_pipeline_solves_reflects_distills_and_gates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": f"{split}{i}", "prompt": f"Say something about {i} ({split}).", "split": split,
             "verifier": "regex:(?s).+" if i % 2 else "exact:an answer nobody gives"}
            for split in ("train", "test") for i in range(6)]
    suite = tmp_path / "tasks.jsonl"
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setenv("PROCMEM_HOME", str(tmp_path / "home"))
    spec = importlib.util.spec_from_file_location("pipeline", PIPELINE)
    assert spec is not None and spec.loader is not None
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)

    result = pipeline.main("local:tiny", str(suite), 6)

    out = capsys.readouterr().out
    assert "solved" in out and "train tasks" in out and "distill:" in out
    home = Home.resolve()
    memory = open_memory(home.chroma)
    assert memory.stats()["experience"] == 6
    memory.close()
    assert result.status in ("promoted", "rejected") and result.version == "v1" and result.traces > 0
    assert result.gate is not None and read_manifest(home.adapters, "v1").gate == result.gate
