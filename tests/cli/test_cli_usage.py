"""Command-line usage mistakes and hostile text: exit code 2 with click's or our one-line message, text
printed literally (never as rich markup), and secrets redacted from errors and logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import Home
from procmem.core.redact import REDACTED

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"


def test_an_unknown_option_or_a_missing_one_is_a_usage_error_not_a_crash(runner: CliRunner, home: Home) -> None:
    for args in (["solve", "--atempts", "3"], ["solve", "--n", "abc"], ["verify", "--answer", "x"]):
        result = runner.invoke(app, ["--home", str(home.root), *args])
        assert result.exit_code == 2, (args, result.output)
        assert "unexpected" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("flag", "value"), [("--split", "bogus"), ("--attempts", "0"), ("--concurrency", "0")])
def test_a_bad_flag_value_names_the_flag_and_its_meaning(runner: CliRunner, home: Home, flag: str, value: str) -> None:
    result = runner.invoke(app, ["--home", str(home.root), "solve", "--suite", "builtin:arith", flag, value])
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert f"{flag}:" in line and repr(value if flag == "--split" else int(value)) in line


def test_answers_feedback_and_paths_print_literally(runner: CliRunner, tmp_path: Path) -> None:
    task = tmp_path / "one.jsonl"
    task.write_text(json.dumps({"id": "t", "prompt": "Say [b]hi[/b].", "verifier": "exact:[b]hi[/b]"}) + "\n")
    failed = runner.invoke(app, ["verify", "--task", str(task), "--answer", "[/INST] five"])
    assert failed.exit_code == 0, failed.output
    assert "FAIL" in failed.stdout
    odd = tmp_path / "odd[/x]" / "t.jsonl"
    missing = runner.invoke(app, ["verify", "--task", str(odd), "--answer", "1"])
    assert missing.exit_code == 2 and "odd[/x]" in missing.stderr


def test_a_key_in_an_error_message_is_redacted(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", "--task", str(tmp_path / KEY / "t.jsonl"), "--answer", "1"])
    assert result.exit_code == 2
    assert KEY not in result.stderr and REDACTED in result.stderr


def test_log_records_of_any_library_are_redacted(runner: CliRunner, home: Home,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    assert runner.invoke(app, ["--home", str(home.root), "memory", "--help"]).exit_code == 0  # installs it
    with caplog.at_level(logging.WARNING):
        logging.getLogger("litellm").warning("request failed with api_key=%s", KEY)
        logging.getLogger("httpx").error(f"Authorization: Bearer {KEY}")
    assert KEY not in caplog.text and caplog.text.count(REDACTED) == 2
