"""``procmem export``: verified episodes as datasets (Hugging Face Parquet, OpenAI fine-tuning, TRL SFT, DPO)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from procmem.cli.app import app
from procmem.cli.common import CHROMA_URL_HELP, err_console, home_of, out_console, print_json_line
from procmem.core import ProcmemError

__all__: list[str] = []


@app.command("export")
def export_dataset(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(metavar="OUT", help="A directory (hf) or a JSONL file (the others).")],
    fmt: Annotated[str, typer.Option("--format", help="hf (Parquet + dataset card), openai (chat fine-tuning "
                                                      "JSONL), trl (prompt/completion JSONL) or dpo (preference "
                                                      "pairs JSONL).")] = "hf",
    include_unverified: Annotated[bool, typer.Option(
        "--all", help="Also export answers nobody judged (calls without feedback or verifier) as SFT rows, marked "
        "verified=false (default: verified only).")] = False,
    adapter: Annotated[str | None, typer.Option(help="Only episodes answered by this adapter version (vN, or "
                                                     "base).")] = None,
    since: Annotated[str | None, typer.Option(help="Only episodes finished since then: ISO time or an age (7d, "
                                                   "12h).")] = None,
    until: Annotated[str | None, typer.Option(help="Only episodes finished before then: ISO time or an age.")]
    = None,
    session: Annotated[str | None, typer.Option(help="Only episodes of this session id (X-Procmem-Session-Id).")]
    = None,
    tenant: Annotated[str, typer.Option(help="Whose episodes.")] = "default",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    chroma_url: Annotated[str | None, typer.Option(help=CHROMA_URL_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON line.")] = False,
) -> None:
    """Export verified episodes as a training dataset: SFT rows from passing answers (corrections included) and DPO
    pairs from answers to the same question judged both ways, filtered by adapter version, date and session."""
    from procmem.cli.memory_cmd import parse_since
    from procmem.distill.datasets import DATASET_FORMATS, EpisodeFilter, Unverified, write_dataset
    from procmem.memory import open_memory
    from procmem.serve.calllog import CallLog, calls_path
    from procmem.serve.wiring import DEFAULT_TENANT, call_task, check_tenant, tenant_memory_path

    if fmt not in DATASET_FORMATS:
        raise ProcmemError(f"unknown format {fmt!r}", where="--format", fix=f"use one of {', '.join(DATASET_FORMATS)}")
    home = home_of(ctx)
    tenant = check_tenant(tenant)
    where = EpisodeFilter(adapter=adapter, since=parse_since(since) if since else None,
                          until=parse_since(until) if until else None, session=session)
    memory = open_memory(tenant_memory_path(home, tenant), url=chroma_url if tenant == DEFAULT_TENANT else None)
    try:
        episodes = where.episodes(memory.episodes())
    finally:
        memory.close()
    unverified: list[Unverified] = []
    if include_unverified and fmt != "dpo":
        log = CallLog(calls_path(home))
        try:
            for episode_id in log.ids(tenant):
                call = log.get(tenant, episode_id)
                if call is None or call.status != "complete" or call.verdict is not None or call.verifier or \
                        log.feedback(tenant, episode_id) or not call.response.strip():
                    continue
                unverified.append(Unverified(call_task(call), call.response, call.id, call.model_id,
                                             call.adapter_version, call.finished_at, call.session_id))
        finally:
            log.close()
        unverified = where.unverified(unverified)
    description = {"tenant": tenant, "format": fmt, "episodes": len(episodes), "unverified answers": len(unverified),
                   "filters": {k: v for k, v in (("adapter", adapter), ("since", where.since), ("until", where.until),
                                                 ("session", session)) if v}}
    counts = write_dataset(out, fmt, episodes, unverified=unverified, description=description,
                           overwrite=overwrite)
    summary = {"out": str(out), "format": fmt, "episodes": len(episodes), "unverified": len(unverified), **counts}
    parts = ", ".join(f"{n} {name} rows" for name, n in counts.items())
    (err_console if json_out else out_console).print(f"wrote {parts} to {out} (from {len(episodes)} verified "
                                                     f"episodes)", highlight=False)
    if json_out:
        print_json_line(summary)
