"""The whole production loop on the tiny model: serve -> a correction -> `distill --once` trains on it ->
the promoted adapter answers the next call (a fresh server picks it up)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import PROCMEM, Server, wait_for

pytestmark = pytest.mark.slow

DISTILL = """
model = "local:tiny"
min_traces = 1
[traces]
k = 1
max_tokens = 4
[lora]
rank = 2
alpha = 4.0
dropout = 0.0
[train]
epochs = 1
batch_size = 2
[gate]
test_suites = ["{suite}"]
n_test = 4
n_holdout = 0
min_improvement = 0.0
max_tokens = 4
"""


def test_a_correction_sent_to_serve_is_trained_on_by_distill_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    suite = tmp_path / "heldout.jsonl"
    suite.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Say {i}.", "split": "test",
                                         "verifier": "regex:(?s).*"}) + "\n" for i in range(4)))
    config = tmp_path / "distill.toml"
    config.write_text(DISTILL.format(suite=suite))
    with Server(home) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="procmem", messages=[{"role": "user", "content": "What is 20 + 22?"}], max_tokens=4)
        episode_id = raw.headers["x-procmem-episode-id"]
        httpx.post(f"{server.url}/episodes/{episode_id}/feedback", json={"correction": "42", "source": "human"},
                   timeout=10).raise_for_status()
        wait_for(lambda: "procmem_memory_episodes_total 1" in httpx.get(f"{server.root}/metrics", timeout=5).text,
                 timeout=120)
    out = subprocess.run([str(PROCMEM), "--home", str(home), "distill", "--once", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 1 and result["traces"] >= 1 and result["train"] is not None
    traces = [json.loads(line) for line in
              (home / "distill" / "runs" / result["run_id"] / "traces" / "traces.jsonl").read_text().splitlines()]
    fixed = [t for t in traces if t["teacher"] == "correction"]
    assert [(t["prompt"], t["completion"]) for t in fixed] == [("Question: What is 20 + 22?\nAnswer:", " 42\n")]
    if result["promoted"]:
        with Server(home) as again:
            assert httpx.get(f"{again.url}/models", timeout=10).json()["data"][0]["procmem"]["adapter_version"] \
                == result["version"]
