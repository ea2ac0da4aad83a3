"""Calls made elsewhere, into a home's call log and memory: ``procmem import``, the OTLP receiver
(``POST /v1/traces``), the LiteLLM callback and MCP feedback all write through :class:`Ingest`.

The rule is serve's: every call is kept in the call log (``PROCMEM_HOME/serve/calls.sqlite``, per tenant), and
only a *verified* call (a score, feedback, a correction or a verifier) becomes a memory episode, by the one rule
:func:`procmem.core.feedback.feedback_episode` (through :class:`~procmem.serve.wiring.MemoryWorker`). Feedback
that arrives later (``procmem import`` again with scores, ``ProcmemLogger.feedback``, MCP's ``send_feedback``, or
``POST /v1/episodes/{id}/feedback`` on a server of the same home) attaches by episode id.

**Idempotent.** Every imported call has a deterministic episode id (the source's own id where it has one), and
every piece of feedback a deterministic feedback id, so importing the same file twice adds nothing.

Formats (``--format``, detected when ``auto``): ``otlp`` (OTLP/JSON, one ExportTraceServiceRequest per file or per
line, or OTLP protobuf ``.pb``), ``openai`` (chat JSONL), ``litellm`` (StandardLoggingPayload JSONL) and
``langfuse`` (a trace export, with its scores). A bad line is reported with its ``file:line`` and skipped; the rest
of the file is imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from procmem.core import Home, ProcmemError, new_id, redact, redact_obj
from procmem.serve.calllog import CallLog, CallRecord, calls_path
from procmem.serve.wiring import DEFAULT_TENANT, MemorySessions, MemoryWorker

__all__ = ["FORMATS", "ImportFormat", "ImportItem", "ImportReport", "Ingest", "LineError", "checked_feedback",
           "detect_format", "import_file", "read_records", "record_item"]

ImportFormat = Literal["otlp", "openai", "litellm", "langfuse"]
FORMATS: tuple[ImportFormat, ...] = ("otlp", "openai", "litellm", "langfuse")
_PROTOBUF_SUFFIXES = {".pb", ".bin", ".protobuf", ".binpb"}


@dataclass(frozen=True)
class ImportItem:
    """One call read from a source, with the feedback that judges it (``(feedback id, body)``, oldest first)."""

    call: CallRecord
    feedback: tuple[tuple[str, dict[str, Any]], ...] = ()
    where: str = ""


@dataclass(frozen=True)
class LineError:
    """A record that could not be imported: where, what, and how to fix it."""

    where: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" + (f" ({self.fix})" if self.fix else "")


@dataclass
class ImportReport:
    """What one import did."""

    file: str
    format: str
    tenant: str
    read: int = 0
    """Calls read from the file."""
    new_calls: int = 0
    new_feedback: int = 0
    episodes: int = 0
    """Verified episodes written to memory (new, or changed by new feedback)."""
    errors: list[LineError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "tenant": self.tenant, "read": self.read,
                "new_calls": self.new_calls, "new_feedback": self.new_feedback, "episodes": self.episodes,
                "errors": [str(e) for e in self.errors]}


class Ingest:
    """A home's call log and its tenants' memories, written by something other than the gateway."""

    def __init__(self, home: Home, *, tenant: str = DEFAULT_TENANT, chroma_url: str | None = None) -> None:
        self.home = home
        self.tenant = tenant
        self.log = CallLog(calls_path(home))
        self.sessions = MemorySessions(home, chroma_url=chroma_url)
        self.written = 0
        """Episodes written to memory so far."""
        self.worker = MemoryWorker(self.log, self.sessions, on_written=self._count)

    def _count(self) -> None:
        self.written += 1

    def add(self, call: CallRecord, feedback: Iterable[tuple[str, dict[str, Any]]] = ()) -> tuple[bool, int]:
        """Record ``call`` (under this tenant, redacted) and its feedback: (whether the call was new, how many
        pieces of feedback were new). Nothing changes for a call or feedback id recorded before."""
        new, added = record_item(self.log, self.tenant, ImportItem(call, tuple(feedback)))
        if new or added:
            self.worker.wake()
        return new, added

    def feedback(self, episode_id: str, body: dict[str, Any], *, feedback_id: str | None = None
                 ) -> tuple[str, bool, CallRecord | None]:
        """Attach feedback to an episode (kept even before its call is recorded): (its id, whether it was new,
        the call it judges or None)."""
        fid = feedback_id or new_id()
        new = self.log.add_feedback(self.tenant, episode_id, fid, redact_obj(body))
        if new:
            self.worker.wake()
        return fid, new, self.log.get(self.tenant, episode_id)

    def drain(self) -> int:
        """Write every pending verified call to memory now; returns the episodes written by this call."""
        before = self.written
        while self.worker.drain(limit=100):
            pass
        return self.written - before

    def start(self) -> None:
        """Drain in a background thread from now on (the LiteLLM callback)."""
        self.worker.start()

    def close(self) -> None:
        self.worker.close()
        self.sessions.close()
        self.log.close()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record_item(log: CallLog, tenant: str, item: ImportItem) -> tuple[bool, int]:
    """Write an imported call (redacted, under ``tenant``) and its feedback to ``log``: (whether the call was new,
    how many pieces of feedback were new)."""
    call = item.call
    call = replace(call, tenant=tenant, messages=redact_obj(call.messages), prompt=redact(call.prompt),
                   response=redact(call.response), metadata=redact_obj(call.metadata), params=redact_obj(call.params))
    new = log.record(call)
    added = sum(log.add_feedback(tenant, call.id, fid, redact_obj(body)) for fid, body in item.feedback)
    return new, added


# --- files ----------------------------------------------------------------------------------------

def read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` per JSON record of ``path``: the items of a JSON array (``file:item N``), one JSON
    document, or one per line of JSONL (``file:line``; blank lines skipped). A line that is not JSON yields a
    :class:`LineError` as its value."""
    text = path.read_text(encoding="utf-8", errors="replace")
    name = path.name
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    else:
        if isinstance(whole, list):
            for index, item in enumerate(whole, 1):
                yield f"{name}:item {index}", item
            return
        if isinstance(whole, dict) and isinstance(whole.get("data"), list) and "resourceSpans" not in whole:
            for index, item in enumerate(whole["data"], 1):  # a page of an API listing
                yield f"{name}:data[{index}]", item
            return
        yield f"{name}:1", whole
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{name}:{number}", json.loads(line)
        except json.JSONDecodeError as err:
            yield f"{name}:{number}", LineError(f"{name}:{number}", f"not JSON ({err.msg} at column {err.colno})",
                                                "each line must be one JSON object")


def detect_format(path: Path) -> ImportFormat:
    """The format of ``path`` from its suffix and its first record."""
    if path.suffix.lower() in _PROTOBUF_SUFFIXES:
        return "otlp"
    for _, value in read_records(path):
        if not isinstance(value, dict):
            continue
        if "resourceSpans" in value or "resource_spans" in value:
            return "otlp"
        if "standard_logging_object" in value or "litellm_call_id" in value or "call_type" in value:
            return "litellm"
        if "observations" in value or "scores" in value or "traceId" in value or "trace_id" in value or (
                "input" in value and "timestamp" in value):
            return "langfuse"
        if "messages" in value:
            return "openai"
        break
    raise ProcmemError(f"cannot tell the format of {path.name}", where=str(path),
                       fix="pass --format otlp|openai|litellm|langfuse")


def import_file(path: Path, home: Home, *, fmt: ImportFormat | Literal["auto"] = "auto",
                tenant: str = DEFAULT_TENANT, chroma_url: str | None = None,
                progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import every call of ``path`` into ``home`` (see the module docstring); bad records are reported in
    :attr:`ImportReport.errors` and skipped."""
    if not path.is_file():
        raise ProcmemError(f"no such file {path}", where=str(path), fix="give the path of an exported trace file")
    chosen: ImportFormat = detect_format(path) if fmt == "auto" else fmt
    report = ImportReport(file=str(path), format=chosen, tenant=tenant)
    with Ingest(home, tenant=tenant, chroma_url=chroma_url) as ingest:
        for item in _items(path, chosen):
            if isinstance(item, LineError):
                report.errors.append(item)
                continue
            report.read += 1
            new, added = ingest.add(item.call, item.feedback)
            report.new_calls += new
            report.new_feedback += added
            if progress is not None:
                progress(report.read)
        report.episodes = ingest.drain()
    return report


def _items(path: Path, fmt: ImportFormat) -> Iterator[ImportItem | LineError]:
    from procmem.serve import _formats, _otlp

    if fmt == "otlp":
        yield from _otlp.items_from_file(path)
        return
    records = read_records(path)
    if fmt == "langfuse":
        yield from _formats.langfuse_items(records)
        return
    read: Callable[[Any, str], ImportItem] = _formats.openai_item if fmt == "openai" else _formats.litellm_item
    for where, value in records:
        if isinstance(value, LineError):
            yield value
            continue
        try:
            yield read(value, where)
        except ProcmemError as err:
            yield LineError(where, err.message, err.fix or "")


def checked_feedback(body: dict[str, Any], where: str) -> dict[str, Any]:
    """A feedback body checked as ``POST /v1/episodes/{id}/feedback`` checks it (without ``id``); raises a
    located ProcmemError."""
    from pydantic import ValidationError

    from procmem.serve.protocol import FeedbackRequest

    try:
        checked = FeedbackRequest.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or "feedback"
        raise ProcmemError(f"feedback {param}: {first['msg']}", where=where,
                           fix="give passed (true/false), score (0..1) or correction") from err
    data: dict[str, Any] = checked.model_dump(exclude={"id"})
    return data

