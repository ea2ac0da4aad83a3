"""``procmem memory ...``: inspect and maintain the procedural memory (experiences, insights, patterns).

procmem.memory (numpy, Chroma) is imported inside the commands, and no command that only reads memory
loads the embedding model (it loads on the first text to embed), so ``stats``, ``ls`` and ``show`` start fast.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.table import Table

from procmem.cli.app import app
from procmem.cli.common import (
    ADAPTER_HELP,
    CHROMA_URL_HELP,
    MODEL_HELP,
    err_console,
    home_of,
    out_console,
    print_json_line,
)
from procmem.core import ProcmemError
from procmem.core.keys import policy_version
from procmem.core.progress import progress_bar

if TYPE_CHECKING:
    from procmem.memory import Level, MemoryRecord, ProceduralMemory
    from procmem.memory._entries import EntryLevel, Kind

__all__ = ["LEVEL_NAMES", "memory_app", "parse_since"]

memory_app = typer.Typer(help="Inspect and maintain procedural memory.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")

LEVEL_NAMES = ("experience", "insight", "pattern")
"""procmem.memory's ``LEVELS``, spelled here for the help text so that ``--help`` does not import memory
(a test checks that the two agree)."""
ChromaUrl = Annotated[str | None, typer.Option("--chroma-url", help=CHROMA_URL_HELP)]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as one JSON line (the last line).")]
LevelOpt = Annotated[str | None, typer.Option("--level", help=f"One level: {', '.join(LEVEL_NAMES)}.")]
_TEXT_WIDTH = 80
_SINCE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")


def parse_since(text: str, *, now: datetime | None = None) -> str:
    """``--since``: an ISO date or time (UTC unless it says otherwise), or an age such as ``90m``, ``12h``,
    ``7d``, ``2w``; returns the ISO time that episodes' ``finished_at`` is compared with."""
    now = now or datetime.now(timezone.utc)
    age = _SINCE.match(text)
    if age:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[age.group(2)]
        moment = now - timedelta(**{unit: int(age.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError as err:
            raise ProcmemError(f"not a time: {text!r}", where="--since",
                               fix="pass an ISO date/time (2026-01-31, 2026-01-31T12:00) or an age (90m, 12h, 7d)"
                               ) from err
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _memory(ctx: typer.Context, chroma_url: str | None) -> ProceduralMemory:
    from procmem.memory import open_memory

    return open_memory(home_of(ctx).chroma, url=chroma_url)


def _level(value: str | None) -> Level | None:
    from procmem.memory import LEVELS

    if value is None:
        return None
    if value not in LEVELS:
        raise ProcmemError(f"unknown level {value!r}", where="--level", fix=f"use one of {', '.join(LEVELS)}")
    return cast("Level", value)


def _short(text: str, width: int = _TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _record_dict(record: MemoryRecord) -> dict[str, Any]:
    return {"id": record.id, "level": record.level, "text": record.text, "metadata": dict(record.metadata),
            "payload": dict(record.payload)}


@memory_app.command()
def stats(ctx: typer.Context, chroma_url: ChromaUrl = None, json_out: JsonOut = False) -> None:
    """Count the entries at each level, and active vs retired insights and patterns."""
    from procmem.memory import LEVELS
    from procmem.memory._entries import ENTRY_LEVELS

    counts = _memory(ctx, chroma_url).status_counts()
    if json_out:
        print_json_line(counts)
        return
    table = Table(title="procedural memory")
    for column in ("level", "entries", "active", "retired"):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level in LEVELS:
        active = str(counts["active"][level]) if level in ENTRY_LEVELS else "-"
        retired = str(counts["retired"][level]) if level in ENTRY_LEVELS else "-"
        table.add_row(level, str(counts[level]), active, retired)
    out_console.print(table)


@memory_app.command("ls")
def list_entries(
    ctx: typer.Context,
    level: LevelOpt = None,
    status: Annotated[str | None, typer.Option(help="Only insights/patterns with this status: active or retired.")]
    = None,
    limit: Annotated[int, typer.Option(min=1, help="Most records per level.")] = 50,
    chroma_url: ChromaUrl = None,
    json_out: JsonOut = False,
) -> None:
    """List memory records, newest first (all levels unless --level)."""
    from procmem.memory import LEVELS
    from procmem.memory._entries import ENTRY_LEVELS

    if status is not None and status not in ("active", "retired"):
        raise ProcmemError(f"unknown status {status!r}", where="--status", fix="use active or retired")
    chosen = _level(level)
    memory = _memory(ctx, chroma_url)
    rows: list[MemoryRecord] = []
    for lvl in (chosen,) if chosen else LEVELS:
        where = {"status": status} if status and lvl in ENTRY_LEVELS else {}
        if status and lvl not in ENTRY_LEVELS:
            continue
        found = sorted(memory.store.scan(lvl, where=where),
                       key=lambda r: (str(r.metadata.get("created_at", "")), r.id), reverse=True)
        rows += found[:limit]
    if json_out:
        print_json_line({"records": [_record_dict(r) for r in rows]})
        return
    table = Table(title=f"memory records ({len(rows)})")
    for column in ("id", "level", "kind", "source", "status", "help/harm/uses", "text"):
        table.add_column(column)
    for record in rows:
        meta = record.metadata
        counters = f"{meta.get('helpful', '')}/{meta.get('harmful', '')}/{meta.get('uses', '')}"
        kind = str(meta.get("kind", "passed" if meta.get("passed") else "failed"))
        source = "" if record.level == "experience" else str(meta.get("source", "reflection"))
        table.add_row(record.id, record.level, kind, source, str(meta.get("status", "")),
                      counters if record.level != "experience" else "", _short(record.text))
    out_console.print(table)


@memory_app.command()
def show(
    ctx: typer.Context,
    record_id: Annotated[str, typer.Argument(metavar="ID", help="The id of an episode, insight or pattern.")],
    level: LevelOpt = None,
    chroma_url: ChromaUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Show one record in full: an episode with its attempts, or an entry with its provenance."""
    chosen = _level(level)
    record = _memory(ctx, chroma_url).find(record_id, chosen)
    if record is None:
        raise ProcmemError(f"no memory record with id {record_id!r}", where="ID",
                           fix="list ids with `procmem memory ls`")
    data = _show_dict(record)
    if json_out:
        print_json_line(data)
        return
    out_console.print_json(json.dumps(data, ensure_ascii=False))


def _show_dict(record: MemoryRecord) -> dict[str, Any]:
    from procmem.core import Episode
    from procmem.memory._entries import Entry

    if record.level == "experience":
        episode = Episode.from_dict(record.payload)
        return {"level": record.level, "passed": episode.passed, "policy_version": policy_version(episode),
                "metadata": dict(record.metadata), "episode": episode.to_dict()}
    try:
        return Entry.from_record(record).to_dict()
    except ValueError:
        return _record_dict(record)


@memory_app.command()
def search(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="What to look for (compared by meaning).")],
    level: LevelOpt = None,
    k: Annotated[int, typer.Option(min=1, max=100, help="How many results per level.")] = 5,
    chroma_url: ChromaUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Search memory by similarity (all levels unless --level)."""
    from procmem.memory import LEVELS

    chosen = _level(level)
    memory = _memory(ctx, chroma_url)
    hits = [(lvl, sim, rec) for lvl in ((chosen,) if chosen else LEVELS)
            for sim, rec in memory.search(text, level=lvl, k=k)]
    if json_out:
        print_json_line({"query": text, "results": [{"similarity": sim, **_record_dict(rec)} for _, sim, rec in hits]})
        return
    table = Table(title=f"nearest to {_short(text, 40)!r}")
    for column in ("similarity", "level", "id", "text"):
        table.add_column(column)
    for lvl, sim, rec in hits:
        table.add_row(f"{sim:.3f}", lvl, rec.id, _short(rec.text))
    out_console.print(table)


@memory_app.command()
def reflect(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="Only problems with an episode since then: ISO time or an age "
                                                   "(90m, 12h, 7d).")] = None,
    max_calls: Annotated[int | None, typer.Option(min=0, help="Most LLM calls (reflections + pattern summaries).")]
    = None,
    model: Annotated[str, typer.Option(help=f"The reflecting model, normally the policy. {MODEL_HELP}")]
    = "local:default",
    adapter: Annotated[str, typer.Option(help=ADAPTER_HELP)] = "promoted",
    patterns: Annotated[bool, typer.Option("--patterns/--no-patterns", help="Consolidate patterns afterwards.")]
    = True,
    feedback: Annotated[bool, typer.Option("--feedback/--no-feedback",
                                           help="Also write lessons read from the verifier's feedback on failed "
                                                "attempts (source verifier; no model call).")] = True,
    chroma_url: ChromaUrl = None,
    json_out: JsonOut = False,
) -> None:
    """(Re)build insights by self-reflection on judged problems (decoded under a grammar on llama.cpp) and from
    the verifier's feedback, then consolidate patterns. Idempotent."""
    from procmem.llm import open_policy
    from procmem.memory import open_memory

    cutoff = parse_since(since) if since else None
    home = home_of(ctx)
    memory = open_memory(home.chroma, url=chroma_url)

    err_console.print(f"loading model {model} ...", highlight=False)
    llm = open_policy(home, model=model, adapter=adapter)
    with progress_bar(err_console) as progress:
        bar = progress.add_task("reflecting", total=None)
        report = memory.reflect(llm, since=cutoff, max_calls=max_calls, consolidate=patterns, feedback=feedback,
                                progress=lambda done, total: progress.update(bar, completed=done, total=total))
    counts = memory.status_counts()
    if json_out:
        print_json_line({"reflector": policy_version(llm), "since": cutoff, **report.to_dict(),
                         "total_calls": report.total_calls, "parse_rate": report.parse_rate, "memory": counts})
        return
    table = Table(title=f"reflection by {policy_version(llm)}")
    table.add_column("")
    table.add_column("count", justify="right")
    for key, value in report.to_dict().items():
        table.add_row(key.replace("_", " "), str(value))
    out_console.print(table)
    rate = "-" if report.parse_rate is None else f"{report.parse_rate:.0%}"
    out_console.print(f"reflection calls parsed: {report.parsed_calls}/{report.calls + report.retries} ({rate}); "
                      f"{report.constrained_calls} decoded under the reflection grammar", highlight=False)
    out_console.print(f"memory: {counts['insight']} insights, {counts['pattern']} patterns", highlight=False)


@memory_app.command("add")
def add_entry(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(metavar="TEXT", help="The procedure or rule, one line of advice.")],
    level: Annotated[str, typer.Option("--level", help="insight (a strategy or lesson) or pattern (a rule "
                                                       "across problems).")] = "insight",
    scope: Annotated[str, typer.Option("--scope", help="The tasks it applies to: a suite spec "
                                                       "(rg:<dataset>, rg:<dataset>?key=value&..., builtin:<name> or a "
                                                       "JSONL task file); rg:<dataset> covers all its configs.")] = "",
    kind: Annotated[str, typer.Option("--kind", help="For an insight: strategy (what to do) or lesson (a mistake "
                                                     "to avoid).")] = "strategy",
    chroma_url: ChromaUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Add an operator-written procedure (source operator) that retrieval gives to every task of --scope, and
    that distillation therefore trains in."""
    if level not in ("insight", "pattern"):
        raise ProcmemError(f"unknown level {level!r} for memory add", where="--level", fix="use insight or pattern")
    if kind not in ("strategy", "lesson"):
        raise ProcmemError(f"unknown kind {kind!r}", where="--kind", fix="use strategy or lesson")
    if level == "pattern" and kind != "strategy":
        raise ProcmemError("--kind applies to insights only", where="--kind", fix="drop --kind for a pattern")
    scope = _scope(scope)
    if not " ".join(text.split()):
        raise ProcmemError("empty TEXT", where="TEXT", fix="write the procedure, e.g. 'Multiply digit by digit.'")
    entry, written = _memory(ctx, chroma_url).add_operator_entry(
        cast("EntryLevel", level), text, scope=scope, kind=None if level == "pattern" else cast("Kind", kind),
        by=f"cli: {_user()}")
    if json_out:
        print_json_line({"written": written, **entry.to_dict()})
        return
    out_console.print(f"{written} {entry.level} {entry.id} for {scope} (source operator)", highlight=False)


def _user() -> str:
    """Who runs the command (recorded in an entry's changes)."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _scope(value: str) -> str:
    """A checked --scope: an rg: dataset that exists, a built-in suite, or an existing JSONL task file."""
    from procmem.tasks.rg import check_dataset
    from procmem.tasks.suites import builtin_path

    scope = value.strip()
    if not scope:
        raise ProcmemError("missing --scope", where="--scope",
                           fix="name the suite it applies to, e.g. --scope rg:products")
    if scope.startswith("rg:"):
        check_dataset(scope.removeprefix("rg:").split("?", 1)[0].strip(), where="--scope")
    elif scope.startswith("builtin:"):
        try:
            builtin_path(scope.removeprefix("builtin:").strip())
        except ProcmemError as err:
            raise ProcmemError(err.message, where="--scope", fix=err.fix) from err
    elif not Path(scope).expanduser().is_file():
        raise ProcmemError(f"{scope!r} is neither a suite spec nor an existing task file", where="--scope",
                           fix="use rg:<dataset>, rg:<dataset>?key=value&..., builtin:<name> or a JSONL task file")
    return scope


@memory_app.command()
def prune(
    ctx: typer.Context,
    policy: Annotated[str | None, typer.Option(help="The current policy version (model_id@adapter): entries it "
                                                    "has not validated are evicted first.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would go.")] = False,
    chroma_url: ChromaUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Retire entries whose harm outweighs their help, and evict down to the size caps."""
    from procmem.memory import LEVELS

    report = _memory(ctx, chroma_url).prune(policy=policy, dry_run=dry_run)
    if json_out:
        print_json_line(report.to_dict())
        return
    table = Table(title="prune" + (" (dry run)" if dry_run else ""))
    for column in ("level", "retired", "evicted"):
        table.add_column(column)
    for level in LEVELS:
        table.add_row(level, str(report.retired.get(level, "-")), str(report.evicted.get(level, 0)))
    out_console.print(table)


@memory_app.command("export")
def export_memory(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The JSONL file to write.")],
    level: LevelOpt = None,
    chroma_url: ChromaUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Write memory records to a JSONL file (import reads it back exactly)."""
    from procmem.memory import LEVELS

    chosen = _level(level)
    n = _memory(ctx, chroma_url).export_jsonl(file, levels=(chosen,) if chosen else LEVELS)
    if json_out:
        print_json_line({"file": str(file), "records": n})
        return
    out_console.print(f"exported {n} records to {file}", highlight=False)


@memory_app.command("import")
def import_memory(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A JSONL file written by `procmem memory export`.")],
    chroma_url: ChromaUrl = None,
    json_out: JsonOut = False,
) -> None:
    """Read records from a JSONL export; a malformed line stops the import before anything is written."""
    counts = _memory(ctx, chroma_url).import_jsonl(file)
    if json_out:
        print_json_line({"file": str(file), **counts})
        return
    out_console.print(f"imported {sum(counts.values())} records from {file}: "
                      + ", ".join(f"{n} {lvl}" for lvl, n in counts.items()), highlight=False)
