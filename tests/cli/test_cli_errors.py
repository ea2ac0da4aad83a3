"""Bad input and a hostile environment across the CLI: one located error line, exit code 2, and nothing
already recorded lost or altered (checked by hashing `procmem memory export` before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import PROCMEM
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import Home


def _invoke(runner: CliRunner, home: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--home", str(home), *args])


def _export_hash(runner: CliRunner, home: Path, tmp_path: Path) -> str:
    target = tmp_path / f"export-{len(list(tmp_path.glob('export-*')))}.jsonl"
    result = _invoke(runner, home, "memory", "export", str(target))
    assert result.exit_code == 0, result.output
    return hashlib.sha256(target.read_bytes()).hexdigest()


def _one_error_line(stderr: str, *expected: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert all(text in errors[0] for text in expected), errors[0]
    assert "Traceback" not in stderr
    return errors[0]


@pytest.fixture
def recorded_home(runner: CliRunner, home: Home, tiny_model_dir: Path, task_file: Path) -> Path:
    """A home with six recorded episodes."""
    result = _invoke(runner, home.root, "solve", "--suite", str(task_file), "--model", f"local:{tiny_model_dir}",
                     "--n", "6", "--json")
    assert result.exit_code == 0, result.output
    return home.root


def test_bad_configs_specs_and_models_leave_memory_exactly_as_it_was(
    runner: CliRunner, recorded_home: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    before = _export_hash(runner, recorded_home, tmp_path)
    bad_toml = tmp_path / "solve.toml"
    bad_toml.write_text('suite = "builtin:arith"\nn = "many"\n')
    broken_toml = tmp_path / "broken.toml"
    broken_toml.write_text('suite = "builtin:arith"\nn = \n')
    unknown_verifier = tmp_path / "tasks.jsonl"
    unknown_verifier.write_text('{"id": "a", "prompt": "p", "verifier": "telepathy:42"}\n')
    cases = {
        (f"{bad_toml}:2", "n"): ["solve", "--config", str(bad_toml), "--model", f"local:{tiny_model_dir}"],
        (f"{broken_toml}:2",): ["solve", "--config", str(broken_toml)],
        ("telepathy", f"{unknown_verifier}:1"): ["solve", "--suite", str(unknown_verifier)],
        ("unknown model",): ["solve", "--suite", "builtin:arith", "--model", "gpt-9"],
    }
    for expected, args in cases.items():
        result = _invoke(runner, recorded_home, *args)
        assert result.exit_code == 2, (args, result.output)
        _one_error_line(result.stderr, *expected)
    assert _export_hash(runner, recorded_home, tmp_path) == before


def test_a_corrupted_or_foreign_home_is_refused_untouched(runner: CliRunner, recorded_home: Path,
                                                          tmp_path: Path) -> None:
    marker = recorded_home / "procmem-home.json"
    marker.write_text("{not json")
    result = _invoke(runner, recorded_home, "memory", "stats")
    assert result.exit_code == 2
    _one_error_line(result.stderr, "procmem-home.json", "corrupted")
    assert marker.read_text() == "{not json"

    foreign = tmp_path / "someone-elses-dir"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    result = _invoke(runner, foreign, "memory", "stats")
    assert result.exit_code == 2
    _one_error_line(result.stderr, "not a procmem home")
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_secrets_in_tasks_never_reach_memory_or_exports(
    runner: CliRunner, home: Home, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_API_KEY", "acme-secret-value-123456")
    tasks = tmp_path / "leaky.jsonl"
    rows = [{"id": "leak", "prompt": "Use Authorization: Bearer abcdefghijklmnop123 and acme-secret-value-123456 "
             "and sk-proj-ABCDEFGHIJKLMNOPQRSTUV to answer.", "verifier": "exact:never"}]
    tasks.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = _invoke(runner, home.root, "solve", "--suite", str(tasks), "--model", f"local:{tiny_model_dir}",
                     "--attempts", "1", "--json")
    assert result.exit_code == 0, result.output
    export = tmp_path / "memory.jsonl"
    assert _invoke(runner, home.root, "memory", "export", str(export)).exit_code == 0
    text = export.read_text()
    assert "[REDACTED]" in text
    for secret in ("abcdefghijklmnop123", "acme-secret-value-123456", "sk-proj-ABCDEFGHIJKLMNOPQRSTUV"):
        assert secret not in text
    for path in home.root.rglob("*"):
        if path.is_file() and path.suffix in (".sqlite", ".sqlite3", ".json", ".jsonl"):
            assert b"acme-secret-value-123456" not in path.read_bytes(), path


def _namespaces_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_available(),
                                      reason="needs `unshare -rm` (user + mount namespaces) to mount a test fs")


def _in_mount_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (bash) in a private user + mount namespace: its mounts vanish when it ends."""
    path = tmp_path / "scenario.sh"
    path.write_text("set -u\n" + script)
    return subprocess.run(["unshare", "-rm", "bash", str(path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PROCMEM": str(PROCMEM)}, check=False)


@needs_namespaces
def test_a_read_only_home_is_one_line_and_nothing_changes(recorded_home: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in recorded_home.rglob("*") if p.is_file()}
    result = _in_mount_namespace(
        f'mount --bind "{recorded_home}" "{recorded_home}" && mount -o remount,ro,bind "{recorded_home}"\n'
        f'"$PROCMEM" --home "{recorded_home}" solve --suite builtin:arith --model local:tiny --n 1\n'
        'echo "rc=$?"\n', tmp_path)
    assert "rc=2" in result.stdout, result.stdout + result.stderr
    _one_error_line(result.stderr, str(recorded_home), "Read-only file system")
    assert {p: p.stat().st_mtime_ns for p in recorded_home.rglob("*") if p.is_file()} == before


@needs_namespaces
def test_a_full_disk_while_recording_is_one_line_and_keeps_what_was_recorded(tmp_path: Path,
                                                                             tiny_model_dir: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Say {i}.", "verifier": "regex:(?s).*"}) + "\n"
                             for i in range(3)))
    mount, out = tmp_path / "small-disk", tmp_path / "out"
    mount.mkdir()
    out.mkdir()
    solve = f'"$PROCMEM" --home "{mount}/home" solve --suite "{tasks}" --model "local:{tiny_model_dir}" --json'
    result = _in_mount_namespace(
        f'mount -t tmpfs -o size=48m tmpfs "{mount}"\n'
        f'{solve} > "{out}/first.out" 2> "{out}/first.err"; echo "first=$?"\n'
        f'"$PROCMEM" --home "{mount}/home" memory export "{out}/before.jsonl"\n'
        f'dd if=/dev/zero of="{mount}/filler" bs=1M 2>/dev/null\n'
        f'{solve} > "{out}/second.out" 2> "{out}/second.err"; echo "second=$?"\n'
        f'rm "{mount}/filler"\n'
        f'"$PROCMEM" --home "{mount}/home" memory export "{out}/after.jsonl"\n', tmp_path)
    assert "first=0" in result.stdout and "second=2" in result.stdout, result.stdout + result.stderr
    _one_error_line((out / "second.err").read_text(), "no space left on device")
    before, after = (out / "before.jsonl").read_bytes(), (out / "after.jsonl").read_bytes()
    assert before == after and len(before.splitlines()) == 3
