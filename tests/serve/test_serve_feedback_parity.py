"""One feedback-to-episode rule (procmem.core.feedback): the same correction sent to `procmem serve` over HTTP and
typed into `procmem chat` becomes the same memory episode shape and the same training trace."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
from serve_helpers import Server, wait_for
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import Home
from procmem.core.feedback import is_correction
from procmem.memory import open_memory

QUESTION = "What is 20 + 22?"


def _correction_traces(home: Path, tiny_model_dir: Path) -> list[tuple[str, str]]:
    from procmem.distill import TraceConfig
    from procmem.distill.traces import build_traces, training_items
    from procmem.llm import LocalLLM
    from procmem.memory import NoMemory

    memory = open_memory(Home(home).chroma)
    try:
        episodes = memory.episodes()
    finally:
        memory.close()
    assert len(episodes) == 1 and episodes[0].passed and is_correction(episodes[0].attempts[-1])
    assert episodes[0].task.verifier == "exact:42" and episodes[0].task.prompt == QUESTION
    build = build_traces(training_items(episodes), LocalLLM(tiny_model_dir), NoMemory(),
                         TraceConfig(k=1, max_tokens=2))
    return [(t.prompt, t.completion) for t in build.kept if t.teacher == "correction"]


def test_a_correction_through_serve_and_through_chat_gives_the_same_training_trace(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    served, chatted = tmp_path / "served" / "home", tmp_path / "chatted" / "home"
    served.parent.mkdir()
    with Server(served) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="procmem", messages=[{"role": "user", "content": QUESTION}], max_tokens=4)
        episode_id = raw.headers["x-procmem-episode-id"]
        httpx.post(f"{server.url}/episodes/{episode_id}/feedback", json={"correction": "42"},
                   timeout=10).raise_for_status()
        wait_for(lambda: "procmem_memory_episodes_total 1" in httpx.get(f"{server.root}/metrics", timeout=5).text,
                 timeout=120)

    result = CliRunner().invoke(app, ["--home", str(chatted), "chat", "--model", "local:tiny", "--max-tokens", "4"],
                                input=f"{QUESTION}\n/correct 42\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "recorded: the last answer is corrected" in result.stdout

    expected = [(f"Question: {QUESTION}\nAnswer:", " 42\n")]
    assert _correction_traces(served, tiny_model_dir) == expected
    assert _correction_traces(chatted, tiny_model_dir) == expected
