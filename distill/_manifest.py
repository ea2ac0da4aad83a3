"""The manifest of a trained adapter: where it came from (base model, data, memory, training, gate)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from procmem.core import Episode, Home, utc_now
from procmem.core.fileio import hash_strings
from procmem.core.registry import (
    AdapterManifest,
    BaseModelInfo,
    DatasetSnapshot,
    GateReport,
    base_model_hash,
    list_adapters,
    register_adapter,
)
from procmem.distill._storage import distill_dir
from procmem.distill.config import DistillConfig
from procmem.distill.traces import TraceBuild
from procmem.distill.train import TrainResult

__all__ = ["build_manifest", "register_candidate", "registered_version"]


def build_manifest(train: TrainResult, build: TraceBuild, episodes: Sequence[Episode], report: GateReport | None,
                   config: DistillConfig, home: Home, model_dir: Path, *, run_id: str, parent: str | None,
                   forced: bool) -> AdapterManifest:
    """The full manifest of the adapter ``train`` produced (its version is set when it is registered)."""
    return AdapterManifest(
        version="v0", run_id=run_id,
        base_model=BaseModelInfo(id=config.model, name=model_dir.name,
                                 hash=base_model_hash(model_dir, distill_dir(home) / "base_hashes.json")),
        objective=config.objective, objective_config=config.model_dump(mode="json"),
        dataset=DatasetSnapshot(episode_ids=tuple(sorted(e.id for e in episodes)), hash=_episodes_hash(episodes),
                                n_traces=len(build.kept), n_rejected=len(build.rejected),
                                traces_hash=hash_strings(sorted(f"{t.prompt}\x00{t.completion}" for t in build.kept))),
        memory=build.memory,
        metrics={k: v for k, v in train.to_dict().items() if k != "adapter_dir"}, gate=report, parent=parent,
        created_at=utc_now(), forced=forced,
    )


def register_candidate(train: TrainResult, build: TraceBuild, episodes: Sequence[Episode], report: GateReport | None,
                       config: DistillConfig, home: Home, model_dir: Path, *, run_id: str, parent: str | None,
                       forced: bool) -> AdapterManifest:
    """Register the trained adapter as the next ``vN`` with its full manifest."""
    manifest = build_manifest(train, build, episodes, report, config, home, model_dir, run_id=run_id, parent=parent,
                              forced=forced)
    from procmem.llm.gguf_io import write_gguf_lora

    return register_adapter(home.adapters, train.adapter_dir, manifest, derive=write_gguf_lora)


def registered_version(home: Home, run_id: str) -> AdapterManifest | None:
    """The version this run already registered (a crash between registering and recording it)."""
    return next((m for m in list_adapters(home.adapters) if m.run_id == run_id), None)


def _episodes_hash(episodes: Sequence[Episode]) -> str:
    return hash_strings(json.dumps(e.to_dict(), sort_keys=True) for e in sorted(episodes, key=lambda e: e.id))
