"""A real ``procmem serve`` process on loopback, as a user starts it."""

from __future__ import annotations

import time
from pathlib import Path

from procmem.testing import ServeProcess, free_port
from procmem.testing._serve import PROCMEM

__all__ = ["PROCMEM", "Server", "free_port", "register_adapters", "wait_for"]

Server = ServeProcess
"""``procmem serve --model local:tiny`` on loopback (see :class:`procmem.testing.ServeProcess`)."""


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
    from procmem.core.registry import (
        AdapterManifest,
        BaseModelInfo,
        DatasetSnapshot,
        GateReport,
        MemorySnapshot,
        register_adapter,
    )
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
            memory=MemorySnapshot(entry_ids=(), hash="sha256:0"), metrics={}, gate=gate,
            parent=None, created_at="2026-01-01T00:00:00+00:00")
        register_adapter(root.adapters, source, manifest)
