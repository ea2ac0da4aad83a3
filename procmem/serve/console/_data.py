"""What the console shows, read from the same places the CLI reads: the call log (episodes, feedback), the tenant's
procedural memory (through its agent session: the memory the agent retrieves from), the adapter registry, and the
run directories of ``procmem distill`` and ``procmem eval``. Blocking functions: the routes run them on the
gateway's worker pool."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from procmem.agent.conversation import conversation_task
from procmem.core import Episode, ProcmemError
from procmem.core.fileio import read_json
from procmem.core.keys import policy_version
from procmem.core.registry import AdapterManifest, list_adapters, promotion_state, read_manifest
from procmem.memory import LEVELS, Level, MemoryRecord, ProceduralMemory
from procmem.memory._entries import ENTRY_LEVELS, Entry, entry_or_none
from procmem.memory._hygiene import trust
from procmem.serve.calllog import CallFilter, CallRecord, CallRow, FeedbackRecord
from procmem.serve.protocol import conversation
from procmem.serve.wiring import SERVE_SUITE

if TYPE_CHECKING:
    from procmem.serve.app import Gateway

__all__ = [
    "EpisodeView",
    "MemoryPage",
    "RunView",
    "StaleCache",
    "adapter_view",
    "check_scope",
    "distill_runs",
    "episode_view",
    "eval_runs",
    "learning_series",
    "memory_counts",
    "memory_page",
    "overview",
    "preview_retrieval",
    "schedule",
    "traffic_series",
]

T = TypeVar("T")
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRAFFIC_HOURS = 48
_CURVE_DAYS = 60


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class StaleCache:
    """Figures that cost a scan on a big home (memory counts per level: Chroma counts by scanning; the learning
    curve: every judged call): served from memory, and recomputed in the background once older than ``ttl_s``, so
    a page never waits for them after the first time. :meth:`invalidate` (after the console's own writes) makes
    the next read compute them at once."""

    def __init__(self, pool: Executor, ttl_s: float) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._values: dict[str, tuple[float, Any]] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def get(self, key: str, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            found = self._values.get(key)
            stale = found is not None and now - found[0] > self.ttl_s and key not in self._refreshing
            if stale:
                self._refreshing.add(key)
        if found is None:
            value = compute()
            with self._lock:
                self._values[key] = (time.monotonic(), value)
            return value
        if stale:
            self.pool.submit(self._refresh, key, compute)
        return cast(T, found[1])

    def _refresh(self, key: str, compute: Callable[[], Any]) -> None:
        try:
            value = compute()
            with self._lock:
                self._values[key] = (time.monotonic(), value)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)


def memory_counts(gateway: Gateway, cache: StaleCache, tenant: str) -> dict[str, Any]:
    """``status_counts`` of the tenant's memory (entries per level, active and retired), through ``cache``."""
    return cache.get(f"memory:{tenant}", lambda: memory_of(gateway, tenant).status_counts())


def memory_of(gateway: Gateway, tenant: str) -> ProceduralMemory:
    """The tenant's memory, as its agent session holds it (the one retrieval reads)."""
    memory = gateway.sessions.get(tenant).memory
    if memory is None:
        raise ProcmemError("this gateway runs without memory", where="[session] use_memory")
    return memory


# --- overview -------------------------------------------------------------------------------------------


def overview(gateway: Gateway, cache: StaleCache, tenant: str) -> dict[str, Any]:
    """The figures of the overview page (the charts are drawn from :func:`traffic_series` and
    :func:`learning_series`); the memory counts come through ``cache``."""
    log = gateway.log
    now = _now()
    totals = log.totals(tenant)
    hourly = log.hourly(tenant, _iso(now - timedelta(hours=24)))
    backend = gateway.host.current
    adapters = gateway.home.adapters
    counts = memory_counts(gateway, cache, tenant)
    return {
        "totals": totals,
        "verified_share": totals["verified"] / totals["calls"] if totals["calls"] else None,
        "pass_share": totals["passed"] / totals["verified"] if totals["verified"] else None,
        "calls_24h": sum(h[1] for h in hourly),
        "verified_24h": sum(h[2] for h in hourly),
        "feedback_24h": log.feedback_count(tenant, _iso(now - timedelta(hours=24))),
        "feedback_total": log.feedback_count(tenant),
        "memory": {level: counts[level] for level in LEVELS},
        "memory_active": counts["active"],
        "memory_retired": counts["retired"],
        "model": backend.model_id,
        "adapter": backend.adapter_version or "base",
        "promoted": promotion_state(adapters).current,
        "versions": len(list_adapters(adapters)),
        "swaps": gateway.host.swaps,
        "schedule": schedule(gateway),
        "updated": _iso(now)[:19].replace("T", " ") + " UTC",
    }


def traffic_series(gateway: Gateway, tenant: str) -> tuple[list[str], list[int], list[int], list[int]]:
    """Calls, verified calls and calls with feedback per hour, over the last 48 hours (empty hours as 0)."""
    now = _now().replace(minute=0, second=0, microsecond=0)
    first = now - timedelta(hours=_TRAFFIC_HOURS - 1)
    found = {h: (c, v, f) for h, c, v, f in gateway.log.hourly(tenant, _iso(first))}
    hours = [(first + timedelta(hours=i)).strftime("%Y-%m-%dT%H") for i in range(_TRAFFIC_HOURS)]
    return (hours, [found.get(h, (0, 0, 0))[0] for h in hours], [found.get(h, (0, 0, 0))[1] for h in hours],
            [found.get(h, (0, 0, 0))[2] for h in hours])


def learning_series(gateway: Gateway, cache: StaleCache, tenant: str) -> dict[str, list[tuple[str, float, int]]]:
    """Per adapter version: (day, pass rate of the judged calls it answered, judged calls), over 60 days (through
    ``cache``: it reads every judged call)."""
    since = _iso(_now() - timedelta(days=_CURVE_DAYS))[:10]
    rates = cache.get(f"curve:{tenant}:{since}", lambda: gateway.log.pass_rates(tenant, since))
    series: dict[str, list[tuple[str, float, int]]] = {}
    for day, version, judged, passed in rates:
        series.setdefault(version, []).append((day, passed / judged if judged else 0.0, judged))
    return dict(sorted(series.items(), key=lambda kv: (kv[0] != "base", _version_number(kv[0]))))


def _version_number(version: str) -> int:
    return int(version[1:]) if version[1:].isdigit() else 0


def _seconds(text: str) -> float | None:
    match = _INTERVAL.match(text or "")
    return float(match.group(1)) * _UNITS[match.group(2)] if match and float(match.group(1)) > 0 else None


def schedule(gateway: Gateway) -> dict[str, Any]:
    """The last distillation and, when a schedule is known (``[console] distill_every``, or the interval of a
    ``procmem distill --every`` scheduler read from its log), when the next is due."""
    root = gateway.home.root / "distill"
    last_tick: dict[str, Any] | None = None
    log = root / "log.jsonl"
    if log.exists():
        for line in reversed(log.read_text(encoding="utf-8", errors="replace").splitlines()[-200:]):
            try:
                last_tick = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    runs = distill_runs(gateway, limit=1)
    moments = [t for t in (_parse_time(last_tick.get("at")) if last_tick else None,
                           _parse_time(runs[0].created_at) if runs else None) if t is not None]
    last = max(moments) if moments else None
    every = _seconds(gateway.config.console.distill_every)
    source = "[console] distill_every" if every else ""
    if every is None and last_tick and isinstance(last_tick.get("every_s"), int | float):
        every, source = float(last_tick["every_s"]), "procmem distill --every"
    due = last + timedelta(seconds=every) if last is not None and every else None
    return {"last": _iso(last)[:19].replace("T", " ") + " UTC" if last else None,
            "last_status": (runs[0].stage if runs else None), "every_s": every, "source": source,
            "due": _iso(due)[:19].replace("T", " ") + " UTC" if due else None,
            "overdue": bool(due and due < _now())}


# --- episodes -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeView:
    """One episode's page: the call (None when only memory has it), its feedback, and the memory entries it used."""

    id: str
    call: CallRecord | None
    feedback: list[FeedbackRecord]
    episode: Episode | None
    """The memory episode (recorded once the call was verified)."""
    used: list[tuple[str, str, str]]
    """(id, level, text) of the memory entries the answer was given; text "" when no longer in memory."""
    outcome: str | None


def episode_view(gateway: Gateway, tenant: str, episode_id: str) -> EpisodeView | None:
    log = gateway.log
    call = log.get(tenant, episode_id)
    memory = memory_of(gateway, tenant)
    record = memory.find(episode_id, "experience")
    episode = Episode.from_dict(record.payload) if record is not None else None
    if call is None and episode is None:
        return None
    ids = call.memory_ids if call is not None else episode.memory_ids if episode is not None else ()
    used = []
    for entry_id in ids:
        found = memory.find(entry_id)
        used.append((entry_id, str(found.level) if found else "", found.text if found else ""))
    outcome = None
    if call is not None:
        row = log.row(tenant, episode_id)
        outcome = row.outcome if row is not None else None
    elif episode is not None:
        outcome = "passed" if episode.passed else "failed"
    return EpisodeView(episode_id, call, log.feedback(tenant, episode_id) if call is not None else [], episode,
                       used, outcome)


def episode_rows(gateway: Gateway, tenant: str, where: CallFilter, *, limit: int,
                 before: tuple[str, str] | None) -> tuple[list[CallRow], int]:
    """A page of the episode list, and how many calls match in all."""
    return gateway.log.list_calls(tenant, where, limit=limit, before=before), gateway.log.count_matching(tenant, where)


# --- memory ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryPage:
    level: Level
    records: list[MemoryRecord]
    entries: dict[str, Entry]
    """The records that are valid insights or patterns, by id."""
    similarity: dict[str, float]
    """Search hits: their similarity to the query."""
    total: int
    offset: int
    limit: int
    query: str
    status: str


def memory_page(memory: ProceduralMemory, counts: dict[str, Any], level: Level, *, status: str = "",
                query: str = "", offset: int = 0, limit: int = 50) -> MemoryPage:
    """A page of one level: in store order, or the ``limit`` nearest to ``query`` by meaning (the store's own
    similarity search, as retrieval ranks them). ``counts`` (:func:`memory_counts`) gives the totals."""
    where = {"status": status} if status and level in ENTRY_LEVELS else {}
    similarity: dict[str, float] = {}
    if query.strip():
        hits = memory.store.query(level, query, k=limit, where=where or None)
        records = [h.record for h in hits]
        similarity = {h.record.id: h.similarity for h in hits}
        total = len(records)
    else:
        page = getattr(memory.store, "page", None)  # ChromaStore: one fetch of the page
        records = page(level, offset=offset, limit=limit, where=where or None) if callable(page) else list(
            itertools.islice(memory.store.scan(level, where=where or None), offset, offset + limit))
        total = int(counts[status][level] if where else counts[level])
    entries = {r.id: e for r in records if level in ENTRY_LEVELS and (e := entry_or_none(r)) is not None}
    return MemoryPage(level, records, entries, similarity, total, offset, limit, query, status)


def preview_retrieval(gateway: Gateway, tenant: str, question: str) -> list[tuple[str, str, str]]:
    """What the agent retrieves for ``question`` sent to this gateway now (the same session, policy and
    retriever as a chat call): (id, level, text) in prompt order."""
    session = gateway.sessions.get(tenant)
    task = conversation_task(conversation([{"role": "user", "content": question}]), id="console-preview",
                             suite=SERVE_SUITE)
    found = session.retrieve(task, session.policy)
    memory = memory_of(gateway, tenant)
    rows: list[tuple[str, str, str]] = []
    for entry_id in found.entry_ids:
        record = memory.find(entry_id)
        rows.append((entry_id, str(record.level) if record else "", record.text if record else ""))
    return rows


def entry_trust(gateway: Gateway, memory: ProceduralMemory, entry: Entry) -> float:
    """How much retrieval trusts ``entry`` for the policy serving now (co-evolution)."""
    return trust(entry, policy_version(gateway.host.current), memory.config.hygiene)


def check_scope(value: str) -> str:
    """An operator entry's scope: ``serve`` (every call to this gateway), an rg: dataset that exists, or a
    built-in suite. Raises ProcmemError naming the field."""
    from procmem.tasks.rg import check_dataset
    from procmem.tasks.suites import builtin_path

    scope = value.strip()
    if not scope:
        raise ProcmemError("missing scope", where="scope", fix=f"'{SERVE_SUITE}' for every call to this gateway, "
                           "or a suite such as rg:products")
    if scope == SERVE_SUITE:
        return scope
    if scope.startswith("rg:"):
        check_dataset(scope.removeprefix("rg:").split("?", 1)[0].strip(), where="scope")
        return scope
    if scope.startswith("builtin:"):
        try:
            builtin_path(scope.removeprefix("builtin:").strip())
        except ProcmemError as err:
            raise ProcmemError(err.message, where="scope", fix=err.fix) from err
        return scope
    raise ProcmemError(f"{scope!r} is not a scope", where="scope",
                       fix=f"use '{SERVE_SUITE}', rg:<dataset>[?key=value&...] or builtin:<name>")


# --- adapters -------------------------------------------------------------------------------------------


def adapter_view(gateway: Gateway) -> dict[str, Any]:
    adapters = gateway.home.adapters
    state = promotion_state(adapters)
    manifests = list_adapters(adapters)
    events: list[dict[str, Any]] = []
    path = adapters / "events.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[-50:]:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return {"state": state, "manifests": list(reversed(manifests)), "events": list(reversed(events)),
            "serving": gateway.host.current.adapter_version or "base"}


def manifest(gateway: Gateway, version: str) -> AdapterManifest:
    return read_manifest(gateway.home.adapters, version)


# --- runs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """One distillation run: its ``run.json`` and when each stage's output appeared."""

    id: str
    stage: str
    created_at: str
    updated_at: str
    version: str | None
    episodes: int
    new_episodes: int
    error: str | None
    failed_at: str | None
    stages: list[tuple[str, str, float | None]] = field(default_factory=list)
    """(stage, finished at, seconds since the stage before), in order."""
    train: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None
    traces: int | None = None


_STAGE_FILES = (("collected", "episodes.jsonl"), ("traced", "traces"), ("trained", "train/train_result.json"),
                ("gated", "gate.json"))


def distill_runs(gateway: Gateway, *, limit: int = 100) -> list[RunView]:
    """The newest distillation runs of this home, newest first."""
    root = gateway.home.root / "distill" / "runs"
    if not root.is_dir():
        return []
    states = []
    for path in root.glob("*/run.json"):
        try:
            states.append((path.parent, read_json(path)))
        except (OSError, ValueError, ProcmemError):
            continue
    states.sort(key=lambda item: (str(item[1].get("created_at", "")), item[0].name), reverse=True)
    return [_run_view(run, state) for run, state in states[:limit]]


def distill_run(gateway: Gateway, run_id: str) -> RunView | None:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", run_id):
        return None
    run = gateway.home.root / "distill" / "runs" / run_id
    try:
        return _run_view(run, read_json(run / "run.json"))
    except (OSError, ValueError, ProcmemError):
        return None


def _run_view(run: Path, state: dict[str, Any]) -> RunView:
    stages: list[tuple[str, str, float | None]] = []
    previous = _parse_time(str(state.get("created_at", "")))
    for stage, name in _STAGE_FILES:
        path = run / name
        if not path.exists():
            continue
        done = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
        stages.append((stage, _iso(done)[:19].replace("T", " "),
                       # a stage's file can predate run.json's created_at by milliseconds: never "-0 s"
                       max(0.0, (done - previous).total_seconds()) if previous is not None else None))
        previous = done
    train: dict[str, Any] = {}
    if (run / "train" / "train_result.json").exists():
        train = {k: v for k, v in read_json(run / "train" / "train_result.json").items() if k != "losses"}
    gate = read_json(run / "gate.json") if (run / "gate.json").exists() else None
    traces = None
    if (run / "traces" / "traces.jsonl").exists():
        with open(run / "traces" / "traces.jsonl", encoding="utf-8") as handle:
            traces = sum(1 for line in handle if line.strip())
    return RunView(id=run.name, stage=str(state.get("stage", "?")), created_at=str(state.get("created_at", "")),
                   updated_at=str(state.get("updated_at") or ""), version=state.get("version"),
                   episodes=int(state.get("episodes", 0)), new_episodes=int(state.get("new_episodes", 0)),
                   error=state.get("error"), failed_at=state.get("failed_at"), stages=stages, train=train, gate=gate,
                   traces=traces)


def scheduler_events(gateway: Gateway, limit: int = 30) -> list[dict[str, Any]]:
    """The last ticks of ``procmem distill --every`` (newest first), failures with their error."""
    path = gateway.home.root / "distill" / "log.jsonl"
    if not path.exists():
        return []
    events = []
    for line in reversed(path.read_text(encoding="utf-8", errors="replace").splitlines()[-limit:]):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def eval_runs(gateway: Gateway) -> list[dict[str, Any]]:
    """The ``procmem eval`` runs named in ``[console] eval_runs``: their arms' scores and stage times, or what is
    missing."""
    runs = []
    for index, name in enumerate(gateway.config.console.eval_runs):
        out = Path(name).expanduser()
        row: dict[str, Any] = {"index": index, "path": str(out), "arms": {}, "stages": [], "error": None,
                               "schema": None}
        results = out / "results.json"
        if not out.is_dir():
            row["error"] = "the directory does not exist"
        elif not results.exists():
            row["error"] = "no results.json yet: the run is going on, or stopped before its report"
        else:
            try:
                data = read_json(results)
            except (OSError, ValueError, ProcmemError) as err:
                row["error"] = f"results.json is unreadable: {err}"
            else:
                row["arms"] = {arm: {"test": v.get("test_accuracy"), "ci": v.get("test_ci95"),
                                     "holdout": v.get("holdout_accuracy")} for arm, v in data.get("arms", {}).items()}
                row["stages"] = data.get("stage_timings_s", [])
                row["schema"] = data.get("schema")
                row["final_round"] = data.get("final_round")
        runs.append(row)
    return runs
