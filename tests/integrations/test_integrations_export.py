"""``procmem export``: verified episodes as a Hugging Face dataset (read back with ``datasets.load_dataset``), OpenAI
fine-tuning JSONL, TRL SFT and DPO pairs, with filters by adapter version, date and session."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import datasets
import pytest
from serve_helpers import PROCMEM

from procmem.core import Home
from procmem.serve._formats import make_call
from procmem.serve.ingest import Ingest


def _procmem(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROCMEM), "--home", str(home), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four calls through the one feedback rule: 2 + 2 judged right (v1, s1) and wrong (v2, s2), 3 + 3 corrected
    (v2, s1), and one nobody judged."""
    root = Home(tmp_path_factory.mktemp("export") / "home").ensure()
    calls: list[tuple[str, str, str, str, str, dict[str, Any] | None]] = [
        ("a", "What is 2 + 2?", "4", "v1", "s1", {"passed": True}),
        ("b", "What is 2 + 2?", "5", "v2", "s2", {"passed": False, "comment": "no"}),
        ("c", "What is 3 + 3?", "7", "v2", "s1", {"passed": False, "correction": "6"}),
        ("d", "Who are you?", "A model.", "v2", "s3", None),
    ]
    with Ingest(root) as ingest:
        for day, (cid, question, answer, adapter, session, feedback) in enumerate(calls, 1):
            call = make_call(cid, [{"role": "user", "content": question}], answer, model="m", source="test",
                             started_at=f"2026-11-0{day}T10:00:00.000+00:00", adapter_version=adapter,
                             session_id=session)
            ingest.add(call, [(f"{cid}-fb", {"comment": "", "source": "user", **feedback})] if feedback else [])
        assert ingest.drain() == 3
    return root.root


def _export(home: Path, out: Path, *args: str) -> dict[str, Any]:
    done = _procmem(home, "export", str(out), "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_hf_export_reads_back_with_load_dataset(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert _export(home, out)["sft"] == 2
    cache = str(tmp_path / "hf-cache")  # not the user's cache: a dataset of the same name may be in it
    sft = datasets.load_dataset("parquet", data_files=str(out / "sft" / "*.parquet"), cache_dir=cache)["train"]
    assert sft.num_rows == 2
    rows = {r["episode_id"]: r for r in sft}
    assert rows["a"]["completion"] == " 4\n" and rows["a"]["prompt"] == "Question: What is 2 + 2?\nAnswer:"
    assert rows["c"]["messages"][-1] == {"role": "assistant", "content": "6"}  # the correction is the answer
    assert rows["a"]["adapter_version"] == "v1" and rows["a"]["verified"] is True
    dpo = datasets.load_dataset(str(out), "dpo", cache_dir=cache)["train"]  # the dataset card names both configs
    assert sorted((r["chosen"], r["rejected"]) for r in dpo) == [(" 4\n", " 5\n"), (" 6\n", " 7\n")]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: sft") and "tags:\n- procmem" in card
    again = _procmem(home, "export", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    assert _export(home, out, "--overwrite", "--adapter", "v2") == {**_export(home, tmp_path / "v2",
                                                                              "--adapter", "v2"),
                                                                    "out": str(out)}


def test_a_dpo_pair_comes_from_good_and_bad_feedback(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    assert _export(home, out, "--format", "dpo")["dpo"] == 2
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    good_bad = next(p for p in pairs if "2 + 2" in p["prompt"])
    assert good_bad == {"prompt": "Question: What is 2 + 2?\nAnswer:", "chosen": " 4\n", "rejected": " 5\n"}


def test_filters_by_adapter_date_and_session(home: Path, tmp_path: Path) -> None:
    def sft(*args: str) -> list[str]:
        out = tmp_path / f"sft{len(list(tmp_path.iterdir()))}.jsonl"
        _export(home, out, "--format", "trl", *args)
        return sorted(json.loads(line)["completion"].strip() for line in out.read_text().splitlines())

    assert sft() == ["4", "6"]
    assert sft("--adapter", "v2") == ["6"]
    assert sft("--session", "s1") == ["4", "6"]
    assert sft("--since", "2026-11-03") == ["6"]
    assert sft("--until", "2026-11-02") == ["4"]
    assert sft("--all") == ["4", "6", "A model."]
    openai = tmp_path / "ft.jsonl"
    _export(home, openai, "--format", "openai", "--adapter", "v1")
    assert [json.loads(line) for line in openai.read_text().splitlines()] == [{"messages": [
        {"role": "user", "content": "Question: What is 2 + 2?\nAnswer:"}, {"role": "assistant", "content": "4"}]}]
    none = _procmem(home, "export", str(tmp_path / "none.jsonl"), "--format", "dpo", "--adapter", "v9")
    assert none.returncode == 2 and "nothing to export" in none.stderr
