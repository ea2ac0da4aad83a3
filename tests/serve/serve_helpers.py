"""A real ``procmem serve`` process on loopback, as a user starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROCMEM = Path(sys.executable).parent / "procmem"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``procmem --home HOME serve --model local:tiny ...`` in a subprocess; ``url`` ends in /v1."""

    def __init__(self, home: Path, *args: str, port: int | None = None) -> None:
        self.home = home
        self.args = args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.root = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log = home.parent / f"serve-{self.port}.log"

    def start(self, timeout: float = 240.0) -> Server:
        env = {**os.environ, "PROCMEM_HOME": str(self.home)}
        handle = self.log.open("a")
        self.proc = subprocess.Popen(
            [str(PROCMEM), "serve", "--model", "local:tiny", "--port", str(self.port), *self.args],
            env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.root}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"serve did not start in {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy (returned) or the time runs out (AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout}s")


def register_adapters(home: Path, versions: int) -> None:
    """Register ``versions`` real LoRA adapters (v1, v2, ...) for the tiny model, with passing gates."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from procmem.core import Home
    from procmem.distill import GateReport, register_adapter
    from procmem.distill.registry import AdapterManifest, BaseModelInfo, DatasetSnapshot, MemorySnapshotInfo
    from procmem.llm import ensure_tiny_model

    root = Home(home).ensure()
    source = home.parent / "adapter-src"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(ensure_tiny_model(root.models)),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(str(source))
    for number in range(1, versions + 1):
        gate = GateReport(baseline="base" if number == 1 else f"v{number - 1}", rows=(), test_baseline=0.1,
                          test_candidate=0.5, holdout_baseline=None, holdout_candidate=None, min_improvement=0.0,
                          max_holdout_drop=0.05, improved=True, holdout_ok=True, passed=True)
        manifest = AdapterManifest(
            version="v0", run_id=f"r{number}", base_model=BaseModelInfo(id="local:tiny", name="tiny", hash="sha256:0"),
            objective="sft", objective_config={}, dataset=DatasetSnapshot(episode_ids=(), hash="sha256:0",
                                                                         n_traces=0, n_rejected=0, traces_hash="x"),
            memory=MemorySnapshotInfo(entry_ids=(), hash="sha256:0"), metrics={}, gate=gate,
            parent=None, created_at="2026-01-01T00:00:00+00:00")
        register_adapter(root.adapters, source, manifest)
