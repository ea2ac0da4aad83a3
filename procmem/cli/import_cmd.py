"""``procmem import``: traces logged elsewhere (OTLP, OpenAI chat JSONL, LiteLLM, Langfuse) into calls and episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from procmem.cli.app import app
from procmem.cli.common import CHROMA_URL_HELP, err_console, home_of, out_console, print_json_line
from procmem.core import ProcmemError

__all__: list[str] = []

_MAX_SHOWN = 20


@app.command("import")
def import_traces(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Trace files to import.")],
    fmt: Annotated[str, typer.Option("--format", help="auto (from the file), otlp (OTLP/JSON or .pb protobuf), "
                                                      "openai (chat JSONL), litellm (StandardLoggingPayload JSONL) "
                                                      "or langfuse (a trace export with its scores).")] = "auto",
    tenant: Annotated[str, typer.Option(help="Whose call log and memory the calls go to.")] = "default",
    chroma_url: Annotated[str | None, typer.Option(help=CHROMA_URL_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON line per file.")] = False,
) -> None:
    """Import logged LLM calls: every call goes to the call log, and the verified ones (a score, feedback or a
    verifier) become memory episodes. Importing a file again adds nothing; a bad record is reported with its
    file:line and skipped."""
    from procmem.serve.ingest import FORMATS, import_file
    from procmem.serve.wiring import check_tenant

    if fmt != "auto" and fmt not in FORMATS:
        raise ProcmemError(f"unknown format {fmt!r}", where="--format", fix=f"use auto, {', '.join(FORMATS)}")
    home = home_of(ctx)
    bad = 0
    for path in files:
        report = import_file(path, home, fmt=fmt, tenant=check_tenant(tenant), chroma_url=chroma_url)  # type: ignore[arg-type]
        for error in report.errors[:_MAX_SHOWN]:
            err_console.print(f"[yellow]skipped[/] {error}", highlight=False, markup=True, soft_wrap=True)
        if len(report.errors) > _MAX_SHOWN:
            err_console.print(f"... and {len(report.errors) - _MAX_SHOWN} more", highlight=False)
        bad += len(report.errors)
        if json_out:
            print_json_line(report.to_dict())
        else:
            out_console.print(f"{path} ({report.format}): {report.read} calls read, {report.new_calls} new, "
                              f"{report.new_feedback} new feedback, {report.episodes} verified episodes written"
                              + (f", {len(report.errors)} skipped" if report.errors else ""), highlight=False)
    if bad:
        raise ProcmemError(f"{bad} record(s) were not imported (listed above); the rest were",
                           where="procmem import", fix="fix those records and import the file again (nothing is "
                           "added twice)")
