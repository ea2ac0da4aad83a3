"""The production loop end to end, with the default distill configuration, on the tiny model.

A real ``procmem serve`` takes traffic from the official ``openai`` client: some calls carry a verifier
(``metadata.procmem_verifier``), others get feedback later (a correction, a thumbs-up, a thumbs-down). Then
``procmem distill --once`` runs as a user of the production guide runs it (no gate suite named):

1. with too few verified calls it refuses at once (the held-out count and the minimum in its reason), before any
   teacher trace or training;
2. with enough, it trains on the calls it did not hold out (corrections in their canonical form), gates the
   candidate on the held-out ones, and promotes it or refuses with a reason. A promotion is served by the same
   server (``X-Procmem-Adapter-Version``); a refusal leaves the current version serving, until a person promotes
   the refused version by hand, which the same server then serves too.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import PROCMEM, Server, wait_for

from procmem.distill import GateConfig
from procmem.distill.gate import held_out

pytestmark = pytest.mark.slow

SHARE, MINIMUM = GateConfig().heldout_share, GateConfig().min_heldout


def _questions(held: int, trained: int) -> tuple[list[str], list[str]]:
    """Sums whose question the default gate holds out (``held`` of them) and sums it trains on."""
    out: list[str] = []
    into: list[str] = []
    a = 0
    while len(out) < held or len(into) < trained:
        a += 1
        question = f"What is {a} + {a + 7}?"
        (out if held_out(question, SHARE) else into).append(question)
    return out[:held], into[:trained]


def _answer(question: str) -> int:
    words = question.rstrip("?").split()
    return int(words[2]) + int(words[4])


class Traffic:
    """An application calling the server with the ``openai`` client, and sending feedback later."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = openai.OpenAI(base_url=server.url, api_key="unused-on-loopback", max_retries=2)
        self.verified = 0

    def ask(self, question: str, verifier: str | None = None) -> tuple[str, str]:
        """One call; returns its episode id and the adapter version that answered."""
        scored: dict[str, Any] = {"metadata": {"procmem_verifier": verifier}} if verifier else {}
        raw = self.client.chat.completions.with_raw_response.create(
            model="procmem", messages=[{"role": "user", "content": question}], max_tokens=4, **scored)
        raw.parse()
        return raw.headers["x-procmem-episode-id"], raw.headers["x-procmem-adapter-version"]

    def feedback(self, episode_id: str, body: dict[str, Any]) -> None:
        httpx.post(f"{self.server.url}/episodes/{episode_id}/feedback", json=body, timeout=30).raise_for_status()

    def send(self, held: list[str], trained: list[str]) -> None:
        """Every other question carries a verifier; the rest get delayed feedback: corrections written with a
        sentence's period (``57.``: trained as ``57``), thumbs-up, and, on trained questions only, thumbs-down
        (judged wrong without a correction: never held out, so they would not count)."""
        questions = [*held, *trained]
        checked = set(questions[::2])

        def call(question: str) -> tuple[str, str]:
            return question, self.ask(question, f"numeric:{_answer(question)}" if question in checked else None)[0]

        with ThreadPoolExecutor(8) as pool:  # concurrent clients, batched by the server
            asked = list(pool.map(call, questions))
        for number, (question, episode_id) in enumerate(asked):
            if question in checked:
                continue
            if question in trained and number % 4 == 1:
                self.feedback(episode_id, {"passed": False, "comment": "wrong sum", "source": "user"})
            elif number % 3 == 0:
                self.feedback(episode_id, {"passed": True, "source": "user"})
            else:
                self.feedback(episode_id, {"correction": f"{_answer(question)}.", "source": "human"})
        self.verified += len(questions)

    def recorded(self, timeout: float = 180.0) -> None:
        """Wait until every verified call is an episode in procedural memory."""
        line = f"procmem_memory_episodes_total {self.verified}"
        try:
            wait_for(lambda: line in httpx.get(f"{self.server.root}/metrics", timeout=10).text, timeout=timeout)
        except AssertionError as err:
            metrics = httpx.get(f"{self.server.root}/metrics", timeout=10).text
            counted = [m for m in metrics.splitlines() if m.startswith("procmem_memory_episodes_total")]
            raise AssertionError(f"{err}: wanted {line!r}, /metrics has {counted}; serve's log ends:\n"
                                 f"{self.server.tail()}") from None

    def version(self) -> str:
        return self.ask("What is 1 + 1?")[1]


def _distill(home: Path) -> dict[str, Any]:
    """``procmem distill --once --json`` as the production guide schedules it: the default configuration (the
    tiny model is the only setting named)."""
    out = subprocess.run([str(PROCMEM), "--home", str(home), "distill", "--once", "--json", "--model", "local:tiny"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(tmp_path / "home") as running:
        yield running


def test_serve_feedback_distill_gate_and_hot_swap_with_the_default_configuration(server: Server) -> None:
    traffic = Traffic(server)
    assert traffic.version() == "base"

    # 1. A few verified calls: the gate could not judge a candidate, so distill refuses before doing any work.
    held, trained = _questions(held=MINIMUM, trained=MINIMUM)
    traffic.send(held[:4], trained[:4])
    traffic.recorded()
    started = time.monotonic()
    refused = _distill(server.home)
    assert refused["status"] == "skipped" and refused["version"] is None and refused["train"] is None
    assert f"4 held-out verified episodes, fewer than gate.min_heldout={MINIMUM}" in refused["reason"]
    assert "suite 'serve' has no test split" in refused["reason"] and "gate.test_suites" in refused["reason"]
    assert not (server.home / "distill" / "runs").exists()  # no traces, no training
    assert time.monotonic() - started < 120

    # 2. Enough verified traffic: train on what is not held out, gate on what is.
    traffic.send(held[4:], trained[4:])
    traffic.recorded()
    result = _distill(server.home)
    assert result["status"] in ("promoted", "rejected"), result["reason"]
    assert result["version"] == "v1" and result["train"] is not None and result["traces"] >= 1
    rows = {row["suite"]: row for row in result["gate"]["rows"]}
    assert rows["serve"]["kind"] == "test" and rows["serve"]["n"] == MINIMUM  # re-asked, memory-free
    assert {row["kind"] for row in result["gate"]["rows"]} == {"test", "holdout"}  # the forgetting check ran

    run = server.home / "distill" / "runs" / result["run_id"]
    traces = [json.loads(line) for name in ("traces.jsonl", "rejected.jsonl")
              for line in (run / "traces" / name).read_text().splitlines()]
    asked = {t["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:") for t in traces}
    assert asked and not asked & set(held)  # nothing held out was traced or trained on
    corrections = [t for t in traces if t["teacher"] == "correction"]
    assert corrections and all(t["completion"] == f" {_answer(t['prompt'][10:-8])}\n" for t in corrections)
    assert all(t["raw_answer"] == t["answer"] + "." for t in corrections)  # trained without the period

    if result["promoted"]:
        wait_for(lambda: traffic.version() == "v1", timeout=120)  # the same server, hot-swapped
    else:
        assert "test accuracy" in result["reason"] or "holdout accuracy" in result["reason"]
        time.sleep(3)  # several watch intervals: nothing changes
        assert traffic.version() == "base"
        promoted = subprocess.run([str(PROCMEM), "--home", str(server.home), "adapters", "promote", "v1", "--force"],
                                  capture_output=True, text=True, timeout=120)
        assert promoted.returncode == 0, promoted.stderr
        wait_for(lambda: traffic.version() == "v1", timeout=120)
