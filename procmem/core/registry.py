"""The adapter registry under ``PROCMEM_HOME/adapters``.

::

    adapters/
      v1/  adapter_config.json  adapter_model.safetensors  manifest.json
      v2/  ...
      promoted.json      {"current": "v2", "history": ["v1"]}  -- the one pointer, replaced atomically
      events.jsonl       append-only log of registrations, promotions and rollbacks

Each ``vN`` is a standard PEFT adapter directory (loadable by ``PeftModel.from_pretrained`` and by
vLLM's ``--enable-lora``) plus its :class:`AdapterManifest`. A version appears atomically (built in a
staging directory, then renamed) under a registry lock. Promotion and rollback rewrite
``promoted.json`` with ``os.replace``, so readers see the old or the new pointer, never a mix;
``history`` is the stack of earlier promoted versions that :func:`rollback` pops.

The registry serves ``solve``, ``chat`` and ``adapters`` as much as ``distill``, so it lives in the core and
imports neither torch nor anything above the core: the records of a manifest (including the promotion
gate's :class:`GateReport`, which distill's gate fills in) are defined here, once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from procmem.core.errors import ProcmemError
from procmem.core.fileio import read_json, write_json
from procmem.core.home import Home
from procmem.core.types import utc_now

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "ADAPTER_FILES",
    "AdapterManifest",
    "BaseModelInfo",
    "DatasetSnapshot",
    "GateReport",
    "MemorySnapshot",
    "PairedTest",
    "PromotionState",
    "SuiteResult",
    "base_model_hash",
    "gate_table",
    "list_adapters",
    "promote",
    "promotion_state",
    "read_manifest",
    "register_adapter",
    "resolve_adapter",
    "rollback",
]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_MANIFEST, _POINTER, _EVENTS, _LOCK = "manifest.json", "promoted.json", "events.jsonl", ".registry.lock"
_VERSION = re.compile(r"^v([1-9][0-9]*)$")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BaseModelInfo(_Record):
    """The base model an adapter was trained on."""

    id: str = Field(description="Model spec, e.g. 'local:default'.")
    name: str = Field(description="Model directory name, e.g. 'gemma3-270m'.")
    hash: str = Field(description="sha256 over the base model's weight files, in name order.")


class DatasetSnapshot(_Record):
    """The episodes and verified traces an adapter was trained on."""

    episode_ids: tuple[str, ...] = Field(description="Episodes the run collected, sorted.")
    hash: str = Field(description="Hash of the episodes' JSON.")
    n_traces: int = Field(description="Verified traces kept.")
    n_rejected: int = Field(description="Teacher candidates dropped (failed the verifier or duplicates).")
    traces_hash: str = Field(description="Hash of the kept traces' (prompt, completion) pairs.")


class MemorySnapshot(_Record):
    """The memory entries that conditioned the teacher of a run's traces, and a hash of what it read."""

    entry_ids: tuple[str, ...] = Field(description="Memory entry ids the retriever returned, sorted.")
    hash: str = Field(description="Hash of the entry ids and the teacher prompts they rendered into.")


class SuiteResult(BaseModel):
    """One row of the gate table."""

    model_config = ConfigDict(frozen=True)

    suite: str = Field(description="Suite spec.")
    kind: Literal["test", "holdout"] = Field(description="Held-out test split, or general-ability holdout.")
    n: int = Field(description="Items evaluated.")
    baseline: float = Field(description="Baseline accuracy.")
    candidate: float = Field(description="Candidate accuracy.")

    @property
    def delta(self) -> float:
        return self.candidate - self.baseline


class PairedTest(BaseModel):
    """McNemar's exact one-sided test of "the candidate is better" on paired pass/fail items
    (computed by :func:`procmem.distill.gate.mcnemar`)."""

    model_config = ConfigDict(frozen=True)

    test: Literal["mcnemar-exact-one-sided"] = Field(default="mcnemar-exact-one-sided", description="The test.")
    n: int = Field(description="Paired items (both models answered each).")
    wins: int = Field(description="Items only the candidate passes (the statistic).")
    losses: int = Field(description="Items only the baseline passes.")
    p_better: float = Field(description="P(X >= wins), X ~ Binomial(wins + losses, 1/2): p-value of a gain.")
    p_worse: float = Field(description="P(X >= losses), same X: p-value of a drop.")


class GateReport(BaseModel):
    """The promotion gate's comparison and decision (recorded in the adapter manifest)."""

    model_config = ConfigDict(frozen=True)

    baseline: str = Field(description="What the candidate was compared with: a version, or 'base'.")
    rows: tuple[SuiteResult, ...] = Field(description="Per-suite accuracies.")
    test_baseline: float = Field(description="Baseline accuracy pooled over the test items.")
    test_candidate: float = Field(description="Candidate accuracy pooled over the test items.")
    holdout_baseline: float | None = Field(description="Baseline accuracy pooled over the holdout (None: none).")
    holdout_candidate: float | None = Field(description="Candidate accuracy pooled over the holdout.")
    min_improvement: float = Field(description="Required test accuracy gain.")
    max_holdout_drop: float = Field(description="Largest allowed holdout accuracy loss.")
    improved: bool = Field(description="Test accuracy rose by at least min_improvement.")
    holdout_ok: bool = Field(description="Holdout accuracy fell by no more than max_holdout_drop.")
    passed: bool = Field(description="improved and holdout_ok.")
    excluded: int = Field(default=0, description="Held-out items skipped because their question was trained on.")
    level: float = Field(default=1.0, description="Significance level of the paired tests (1.0: none; reports "
                                                  "written before the tests existed).")
    test_stats: PairedTest | None = Field(default=None, description="Paired test on the pooled test items.")
    holdout_stats: PairedTest | None = Field(default=None, description="Paired test on the pooled holdout items.")


class AdapterManifest(_Record):
    """``adapters/vN/manifest.json``: where an adapter came from and how it was judged."""

    version: str = Field(description="'vN'.")
    run_id: str = Field(description="The distill run that produced it.")
    base_model: BaseModelInfo = Field(description="Base model id and weights hash.")
    objective: str = Field(description="Training objective: sft, self-distill or mixed.")
    objective_config: dict[str, Any] = Field(description="The full DistillConfig the run used.")
    dataset: DatasetSnapshot = Field(description="Training data snapshot.")
    memory: MemorySnapshot = Field(description="Memory snapshot.")
    metrics: dict[str, Any] = Field(description="Training figures (steps, losses, tokens, time).")
    gate: GateReport | None = Field(description="Promotion gate comparison (None: not evaluated).")
    parent: str | None = Field(description="The adapter version training started from / the teacher used.")
    created_at: str = Field(description="ISO-8601 UTC creation time.")
    forced: bool = Field(default=False, description="Promoted with --force although its gate failed.")


class PromotionState(_Record):
    """``adapters/promoted.json``."""

    current: str | None = Field(default=None, description="The promoted version, or None (base model).")
    history: tuple[str | None, ...] = Field(default=(), description="Earlier promoted versions, oldest first.")
    updated_at: str | None = Field(default=None, description="When the pointer last changed.")


# ------------------------------------------------------------------------------------------------ read


def list_adapters(adapters_dir: Path) -> list[AdapterManifest]:
    """Every registered version, oldest first."""
    if not adapters_dir.is_dir():
        return []
    versions = sorted((p for p in adapters_dir.iterdir() if _VERSION.match(p.name) and (p / _MANIFEST).exists()),
                      key=lambda p: _number(p.name))
    return [read_manifest(adapters_dir, p.name) for p in versions]


def read_manifest(adapters_dir: Path, version: str) -> AdapterManifest:
    path = _version_dir(adapters_dir, version) / _MANIFEST
    try:
        return AdapterManifest.model_validate(read_json(path))
    except ValidationError as err:
        raise ProcmemError(f"invalid manifest: {err.errors()[0]['msg']}", where=str(path),
                           fix="restore the manifest or delete the version directory") from err


def promotion_state(adapters_dir: Path) -> PromotionState:
    path = adapters_dir / _POINTER
    if not path.exists():
        return PromotionState()
    try:
        return PromotionState.model_validate(read_json(path))
    except ValidationError as err:
        raise ProcmemError("promotion pointer is corrupted", where=str(path),
                           fix='rewrite it, e.g. {"current": "v1", "history": []}') from err


def resolve_adapter(home: Home, name: str) -> Path | None:
    """``--adapter none|promoted|vN`` -> the adapter directory to load, or None for the base model.

    ``promoted`` with nothing promoted is the base model. A path to a PEFT adapter directory is also
    accepted (returned as is). Unknown versions are a ProcmemError naming the registered ones.
    """
    name = name.strip()
    if name == "none":
        return None
    if name == "promoted":
        current = promotion_state(home.adapters).current
        return None if current is None else _version_dir(home.adapters, current)
    if not _VERSION.match(name) and ("/" in name or name.startswith(".")):
        path = Path(name).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise ProcmemError(f"{path} is not a PEFT adapter directory (no adapter_config.json)",
                               where="--adapter", fix="use none, promoted, vN or an adapter directory")
        return path
    return _version_dir(home.adapters, name)


def _version_dir(adapters_dir: Path, version: str) -> Path:
    if not _VERSION.match(version):
        raise ProcmemError(f"not an adapter version: {version!r}", where="--adapter",
                           fix="use none, promoted or vN (see `procmem adapters ls`)")
    path = adapters_dir / version
    if not (path / _MANIFEST).exists():
        known = ", ".join(m.version for m in list_adapters(adapters_dir)) or "none registered yet"
        raise ProcmemError(f"adapter {version} does not exist", where=str(path), fix=f"known versions: {known}")
    return path


def _number(version: str) -> int:
    match = _VERSION.match(version)
    return int(match.group(1)) if match else 0


# ----------------------------------------------------------------------------------------------- write


@contextmanager
def _locked(adapters_dir: Path) -> Iterator[None]:
    adapters_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(adapters_dir / _LOCK)):
        yield


def register_adapter(adapters_dir: Path, source: Path, manifest: AdapterManifest, *,
                     derive: Callable[[Path], object] | None = None) -> AdapterManifest:
    """Copy the PEFT adapter in ``source`` to the next ``vN`` with ``manifest`` (its version is assigned).

    ``derive(staging_dir)`` writes files derived from the adapter beside it before the version appears, so a
    version is never seen without them: distill passes the GGUF LoRA writer, and every version it registers
    also serves on the llama.cpp engine (``adapter-lora.gguf``)."""
    missing = [name for name in ADAPTER_FILES if not (source / name).exists()]
    if missing:
        raise ProcmemError(f"not a PEFT adapter directory (missing {', '.join(missing)})", where=str(source),
                           fix="train an adapter first (procmem distill)")
    with _locked(adapters_dir):
        existing = [_number(p.name) for p in adapters_dir.iterdir() if _VERSION.match(p.name)]
        version = f"v{max(existing, default=0) + 1}"
        manifest = manifest.model_copy(update={"version": version})
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=adapters_dir))
        try:
            for name in ADAPTER_FILES:
                shutil.copy2(source / name, staging / name)
            if derive is not None:
                derive(staging)
            write_json(staging / _MANIFEST, manifest.model_dump(mode="json"))
            os.replace(staging, adapters_dir / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _log(adapters_dir, "register", version)
    return manifest


def promote(adapters_dir: Path, version: str, *, force: bool = False, reason: str = "manual") -> PromotionState:
    """Make ``version`` the promoted adapter; the previous one goes onto the rollback history.

    A version whose promotion gate failed is refused unless ``force``, and so is one whose gate compared
    it with another model than the one promoted now (a stale gate: it beat v1, but v3 is current), unless
    it was promoted before (going back to it is a rollback). A forced promotion is recorded in its
    manifest (``forced: true``) and in ``events.jsonl``.
    """
    with _locked(adapters_dir):
        manifest = read_manifest(adapters_dir, version)
        state = promotion_state(adapters_dir)
        if state.current == version:
            return state
        refusal = _gate_refusal(manifest, state)
        if refusal and not force:
            raise ProcmemError(f"{version} {refusal}", where=str(adapters_dir / version / _MANIFEST),
                               fix="pass --force to promote it anyway (recorded as forced in its manifest)")
        if refusal and not manifest.forced:
            write_json(adapters_dir / version / _MANIFEST, manifest.model_copy(update={"forced": True})
                       .model_dump(mode="json"))
        history = (*state.history, state.current) if state.current is not None or state.history else ()
        new = PromotionState(current=version, history=history, updated_at=utc_now())
        write_json(adapters_dir / _POINTER, new.model_dump(mode="json"))
        _log(adapters_dir, "promote", version, previous=state.current, reason=reason, forced=bool(refusal))
    return new


def _gate_refusal(manifest: AdapterManifest, state: PromotionState) -> str | None:
    """Why the gate does not allow promoting ``manifest`` now, or None if it does."""
    gate = manifest.gate
    if gate is None:
        return None
    if not gate.passed:
        return f"failed its promotion gate ({_gate_summary(manifest)})"
    current = state.current or "base"
    if gate.baseline != current and manifest.version not in state.history:
        return f"passed its gate against {gate.baseline}, but {current} is promoted now (the gate is stale)"
    return None


def _gate_summary(manifest: AdapterManifest) -> str:
    gate = manifest.gate
    if gate is None:
        return "not evaluated"
    return f"test {gate.test_baseline:.1%} -> {gate.test_candidate:.1%} vs {gate.baseline}"


def gate_table(report: GateReport, candidate_name: str = "candidate") -> Table:
    """The gate's comparison as a rich table."""
    from rich.table import Table

    verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
    table = Table(title=f"promotion gate: {candidate_name} vs {report.baseline}: {verdict}")
    for column, justify in (("suite", "left"), ("kind", "left"), ("n", "right"), (report.baseline, "right"),
                            (candidate_name, "right"), ("delta", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        table.add_row(row.suite, row.kind, str(row.n), f"{row.baseline:.1%}", f"{row.candidate:.1%}",
                      f"{row.delta:+.1%}")
    table.add_row("all test", "test", str(report.test_stats.n) if report.test_stats else "",
                  f"{report.test_baseline:.1%}", f"{report.test_candidate:.1%}",
                  f"{report.test_candidate - report.test_baseline:+.1%} (need >= {report.min_improvement:+.1%})"
                  + _significance(report.test_stats, "better", report.level), end_section=True)
    if report.excluded:
        table.caption = f"{report.excluded} held-out items skipped: their question was trained on"
    if report.holdout_baseline is not None and report.holdout_candidate is not None:
        drop = report.holdout_candidate - report.holdout_baseline
        table.add_row("all holdout", "holdout", str(report.holdout_stats.n) if report.holdout_stats else "",
                      f"{report.holdout_baseline:.1%}", f"{report.holdout_candidate:.1%}",
                      f"{drop:+.1%} (allow >= {-report.max_holdout_drop:+.1%})"
                      + _significance(report.holdout_stats, "worse", report.level))
    return table


def _significance(stats: PairedTest | None, side: Literal["better", "worse"], level: float) -> str:
    """The paired test in words, for the table: discordant items and the one-sided p-value."""
    if stats is None or level >= 1.0:
        return ""
    p = stats.p_better if side == "better" else stats.p_worse
    need = "need p <= " if side == "better" else "refuse at p <= "
    return f"; McNemar {stats.wins} won/{stats.losses} lost, p_{side}={p:.3f} ({need}{level:g})"


def rollback(adapters_dir: Path) -> PromotionState:
    """Point back to the version promoted before the current one (or to the base model)."""
    with _locked(adapters_dir):
        state = promotion_state(adapters_dir)
        if state.current is None and not state.history:
            raise ProcmemError("nothing to roll back: no adapter has been promoted", where=str(adapters_dir),
                               fix="promote one first (procmem adapters promote vN)")
        previous = state.history[-1] if state.history else None
        new = PromotionState(current=previous, history=state.history[:-1], updated_at=utc_now())
        write_json(adapters_dir / _POINTER, new.model_dump(mode="json"))
        _log(adapters_dir, "rollback", previous, previous=state.current)
    return new


def _log(adapters_dir: Path, action: str, version: str | None, **extra: Any) -> None:
    line = json.dumps({"at": utc_now(), "action": action, "version": version, **extra}, sort_keys=True)
    with open(adapters_dir / _EVENTS, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# -------------------------------------------------------------------------------------------- hashing


def base_model_hash(model_dir: Path, cache_file: Path | None = None) -> str:
    """sha256 over the model's weight files (``*.safetensors``, else ``*.bin``/``*.gguf``), in name order.

    Hashing 1 GB takes seconds, so results are cached in ``cache_file`` keyed by path, size and mtime.
    """
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin")) \
        or sorted(model_dir.glob("*.gguf"))
    if not files:
        raise ProcmemError("no weight files (*.safetensors, *.bin, *.gguf)", where=str(model_dir),
                           fix="point the model at a Hugging Face model directory")
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except ValueError:
            cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    value = "sha256:" + digest.hexdigest()
    if cache_file is not None:
        write_json(cache_file, {**cache, key: value})
    return value
