"""`procmem chat` driven through its real REPL, and the installed console script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cli_helpers import PROCMEM
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import Home
from procmem.memory import open_memory


def _chat(runner: CliRunner, home: Home, tiny: Path, script: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--home", str(home.root), "chat", "--model", f"local:{tiny}", "--thread", "t1",
                               "--max-tokens", "4"], input=script)


def test_chat_verifies_attached_tasks_records_them_and_keeps_the_thread(
    runner: CliRunner, home: Home, tiny_model_dir: Path
) -> None:
    script = "/verify regex:(?s).*\nWhat is 1 + 1?\njust talk\n/verify nosuch:1\n/quit\n"
    result = _chat(runner, home, tiny_model_dir, script)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout
    assert "unknown verifier spec" in result.stdout
    episodes = open_memory(home.chroma).episodes()
    assert [e.task.prompt for e in episodes] == ["What is 1 + 1?"], "only the verified task is recorded"
    again = _chat(runner, home, tiny_model_dir, "")  # EOF right away: exits cleanly
    assert again.exit_code == 0 and "(1 verified turns so far)" in again.stdout


def test_the_console_script_reports_bad_input_with_exit_code_2(tmp_path: Path) -> None:
    assert PROCMEM.exists(), "the procmem console script is not installed beside this python"
    env = {**os.environ, "PROCMEM_HOME": str(tmp_path / "home")}
    result = subprocess.run([PROCMEM, "solve", "--suite", "rg:not_a_dataset", "--model", "local:tiny"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "not_a_dataset" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_at_the_prompt_leaves_chat_cleanly(tmp_path: Path, tiny_model_dir: Path) -> None:
    import signal
    import time

    env = {**os.environ, "PROCMEM_HOME": str(tmp_path / "home")}
    chat = subprocess.Popen([PROCMEM, "chat", "--model", f"local:{tiny_model_dir}"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert chat.stdout is not None
        banner = chat.stdout.readline()  # printed once the model and memory are open, just before the prompt
        assert "procmem chat on" in banner, banner
        time.sleep(0.5)
        chat.send_signal(signal.SIGINT)
        _, stderr = chat.communicate(timeout=60)
    finally:
        chat.kill()
    assert chat.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_chat_feedback_commands_record_verified_turns_and_earlier_turns_reach_the_prompt(
    runner: CliRunner, home: Home, tiny_model_dir: Path
) -> None:
    script = "What is 2 + 2?\n/correct 4\nAnd 3 + 3?\n/good\n/memory\nWhat about 5 + 5?\n/bad\n/quit\n"
    result = _chat(runner, home, tiny_model_dir, script)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("recorded: the last answer is") == 3
    episodes = {e.task.metadata["chat_line"]: e for e in open_memory(home.chroma).episodes()}
    corrected, good, bad = episodes["What is 2 + 2?"], episodes["And 3 + 3?"], episodes["What about 5 + 5?"]
    assert corrected.passed and corrected.attempts[-1].answer == "4"
    assert corrected.attempts[-1].verdict.details["correction"] is True and corrected.task.verifier == "exact:4"
    assert good.passed and not bad.passed
    # the earlier turns are in the prompt: the corrected answer, not the model's
    assert good.task.prompt.startswith("What is 2 + 2?\nAnswer: 4\nQuestion: And 3 + 3?")
    assert "Question: And 3 + 3?" in bad.task.prompt


def test_chat_memory_command_and_feedback_before_any_answer(runner: CliRunner, home: Home,
                                                            tiny_model_dir: Path) -> None:
    result = _chat(runner, home, tiny_model_dir, "/good\n/memory\nhello\n/memory\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "nothing to judge yet" in result.stdout and "no answer yet" in result.stdout
    assert "the last answer used no memory" in result.stdout


def test_no_progress_bar_reaches_the_chat_screen(tmp_path: Path) -> None:
    env = {**os.environ, "PROCMEM_HOME": str(tmp_path / "home")}
    env.pop("TQDM_DISABLE", None)
    result = subprocess.run([PROCMEM, "chat", "--model", "local:tiny", "--max-tokens", "2"], input="hi\n/quit\n",
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    for bar in ("it/s]", "%|"):
        assert bar not in result.stdout and bar not in result.stderr
