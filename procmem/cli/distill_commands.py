"""``procmem distill ...`` (build traces, train, gate, register) and ``procmem adapters ...`` (the registry).

procmem.distill (torch, peft) is imported inside the commands that train, so ``procmem --help`` stays fast;
the ``adapters`` commands read the torch-free registry (:mod:`procmem.core.registry`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.table import Table

from procmem.cli.app import app
from procmem.cli.common import CHROMA_URL_HELP, MODEL_HELP, err_console, home_of, out_console, print_json_line
from procmem.core import ProcmemError

if TYPE_CHECKING:
    from procmem.distill import DistillConfig, DistillResult

__all__ = ["adapters_app", "distill_app"]

distill_app = typer.Typer(
    help="Distill verified, memory-guided corrections into a LoRA adapter that needs no memory.",
    invoke_without_command=True,
)
adapters_app = typer.Typer(help="The LoRA adapter registry: list, inspect, promote, roll back.",
                           no_args_is_help=True)
app.add_typer(distill_app, name="distill")
app.add_typer(adapters_app, name="adapters")

_JSON_HELP = "Print the result as one JSON line, the last line of stdout."


# ------------------------------------------------------------------------------------------- distill


@distill_app.callback()
def distill(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Run once and exit (for cron, systemd timers, CronJobs).")]
    = False,
    every: Annotated[str | None, typer.Option(help="Run forever, every interval: 6h, 30m, 90s, 1d.")] = None,
    min_new_episodes: Annotated[int | None, typer.Option(
        help="Skip a run unless this many episodes arrived since the last one.")] = None,
    config: Annotated[Path | None, typer.Option(help="A TOML file of DistillConfig settings; flags win.")] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP + " (local models only)")] = None,
    objective: Annotated[str | None, typer.Option(help="sft, self-distill or mixed.")] = None,
    parent: Annotated[str | None, typer.Option(help="Teacher / starting adapter: promoted, none or vN.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even if the gate fails (recorded as forced).")]
    = False,
    ticks: Annotated[int | None, typer.Option(help="With --every: stop after this many ticks.", hidden=True)]
    = None,
    chroma_url: Annotated[str | None, typer.Option(help=CHROMA_URL_HELP)] = None,
    processes: Annotated[int | None, typer.Option(
        min=1, help="With --once: train in this many processes on this machine (data-parallel, under `accelerate "
                    "launch`; CPU: gloo, GPU: one process per GPU). The global batch stays train.batch_size.")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Build corrected traces, train an adapter, gate it, register it as vN and promote it if it passes.

    Use --once from a scheduler, or --every INTERVAL to run as a long-lived job. Two jobs never run at
    once (a lock); an interrupted run resumes where it stopped when the command is run again.
    Under `accelerate launch` (or with --processes N), training is data-parallel over the processes.
    """
    if ctx.invoked_subcommand is not None:
        return
    if once == (every is not None):
        raise ProcmemError("pass exactly one of --once and --every INTERVAL", where="procmem distill",
                           fix="e.g. `procmem distill --once` or `procmem distill --every 6h`")
    from procmem.distill._distributed import is_main_process, world_size

    if every is not None and (world_size() > 1 or (processes or 1) > 1):
        raise ProcmemError("--every runs in one process", where="procmem distill --every",
                           fix="schedule `procmem distill --once --processes N` (or its `accelerate launch`) instead")
    if processes is not None and processes > 1 and world_size() == 1:
        _relaunch(processes)
    if processes is not None and world_size() > 1 and processes != world_size():
        raise ProcmemError(f"--processes {processes}, but accelerate started {world_size()} processes",
                           where="--processes", fix="drop --processes under `accelerate launch`")
    cfg = _distill_config(config, {"model": model, "objective": objective, "parent": parent,
                                   "min_new_episodes": min_new_episodes})
    _beside_serve(cfg)
    home = home_of(ctx)
    from procmem.distill import default_deps, run_distillation, run_every
    from procmem.distill._scheduler import parse_interval

    if once:
        result = run_distillation(cfg, home, deps=lambda: default_deps(cfg, home, chroma_url=chroma_url),
                                  force=force, console=err_console)
        if is_main_process():  # the other processes only helped train
            _report(result, json_out)
        return
    interval = parse_interval(every or "")
    err_console.print(f"distilling every {every} (Ctrl-C stops); log: {home.root / 'distill' / 'log.jsonl'}",
                      highlight=False)
    run_every(cfg, home, interval, deps_factory=lambda: default_deps(cfg, home, chroma_url=chroma_url),
              max_ticks=ticks, force=force, console=err_console,
              on_result=lambda result: _report(result, json_out))


def _beside_serve(cfg: DistillConfig) -> None:
    """Run as a good neighbour of a live `procmem serve`: lower this process's priority (``train.nice``) and cap
    its CPU threads (``train.threads``, default half the usable cores), so the gateway keeps answering."""
    import contextlib
    import os

    if cfg.train.nice > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):  # not allowed here: run at the normal priority
            current = os.nice(0)
            if current < cfg.train.nice:  # at least this nice, once (a second run in-process adds nothing)
                os.nice(cfg.train.nice - current)
    from procmem.distill._run import job_threads

    threads = job_threads(cfg.train)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # libraries that read it when they start
        os.environ.setdefault(name, str(threads))
    import torch

    torch.set_num_threads(threads)


def _relaunch(processes: int) -> NoReturn:
    """Replace this process with ``accelerate launch`` running this same command in ``processes`` processes."""
    import os
    import sys

    from procmem.distill._distributed import launch_command

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--processes" or arg.startswith("--processes="):
            skip = arg == "--processes"
            continue
        args.append(arg)
    command = launch_command(processes, ["procmem.cli", *args])
    err_console.print(f"training in {processes} processes: {' '.join(command)}", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # the processes run ``python -m procmem.cli``: from a source checkout, the current directory must not shadow
    # the installed package (its distill, memory, ... live outside procmem/ in the tree)
    os.execve(command[0], command, {**os.environ, "PYTHONSAFEPATH": "1"})


def _distill_config(path: Path | None, flags: dict[str, Any]) -> DistillConfig:
    from procmem.core import config_from_flags, load_config
    from procmem.distill import DistillConfig

    if path is not None:
        return load_config(DistillConfig, path, **flags)
    return config_from_flags(DistillConfig, flags)


def _report(result: DistillResult, json_out: bool) -> None:
    line = f"distill: {result.status}"
    if result.version:
        line += f" {result.version}"
    if result.reason:
        line += f" ({result.reason})"
    (err_console if json_out else out_console).print(line, highlight=False)
    if json_out:
        print_json_line(result.to_dict())


@distill_app.command("export")
def export(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The JSONL file to write.")],
    fmt: Annotated[str, typer.Option("--format", help="openai (chat fine-tuning) or trl (prompt/completion).")]
    = "openai",
    run: Annotated[str | None, typer.Option(help="The distill run to export (default: the latest with traces).")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Write the verified traces of a distill run as fine-tuning JSONL."""
    from procmem.core.fileio import write_jsonl
    from procmem.distill._storage import latest_run_dir
    from procmem.distill.traces import export_traces, load_trace_build

    if fmt not in ("openai", "trl"):
        raise ProcmemError(f"unknown export format {fmt!r}", where="--format", fix="use openai or trl")
    home = home_of(ctx)
    run_dir = home.root / "distill" / "runs" / run if run else latest_run_dir(home, with_traces=True)
    build = load_trace_build(run_dir / "traces") if run_dir is not None else None
    if build is None:
        raise ProcmemError("no traces to export" + (f" in run {run}" if run else ""),
                           where=str(run_dir or home.root / "distill"),
                           fix="run `procmem distill --once` first, or pass an existing --run id")
    rows = export_traces(build.kept, "openai" if fmt == "openai" else "trl")
    write_jsonl(file, rows)
    summary = {"file": str(file), "format": fmt, "rows": len(rows), "run_id": run_dir.name if run_dir else None}
    (err_console if json_out else out_console).print(f"wrote {len(rows)} {fmt} rows to {file}", highlight=False)
    if json_out:
        print_json_line(summary)


# ------------------------------------------------------------------------------------------- adapters


def _adapters_dir(ctx: typer.Context) -> Path:
    return home_of(ctx).adapters


@adapters_app.command("ls")
def adapters_ls(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print every manifest as one JSON line.")] = False,
) -> None:
    """List the registered adapter versions; * marks the promoted one."""
    from procmem.core.registry import list_adapters, promotion_state

    directory = _adapters_dir(ctx)
    manifests = list_adapters(directory)
    current = promotion_state(directory).current
    if json_out:
        print_json_line({"promoted": current,
                         "adapters": [{**m.model_dump(mode="json"), "promoted": m.version == current}
                                      for m in manifests]})
        return
    table = Table(title=f"adapters in {directory}")
    for column in ("", "version", "created", "objective", "parent", "traces", "gate", "test acc", "forced"):
        table.add_column(column)
    for m in manifests:
        gate = "-" if m.gate is None else ("[green]pass[/]" if m.gate.passed else "[red]fail[/]")
        acc = "-" if m.gate is None else f"{m.gate.test_baseline:.1%} -> {m.gate.test_candidate:.1%}"
        table.add_row("*" if m.version == current else "", m.version, m.created_at[:19], m.objective,
                      m.parent or "base", str(m.dataset.n_traces), gate, acc, "yes" if m.forced else "")
    out_console.print(table)
    if not manifests:
        out_console.print("no adapters yet: run `procmem distill --once`", highlight=False)


@adapters_app.command("show")
def adapters_show(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="vN, or 'promoted'.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as one JSON line.")] = False,
) -> None:
    """Show one version's manifest and its gate table."""
    from procmem.core.registry import gate_table, promotion_state, read_manifest

    directory = _adapters_dir(ctx)
    if version == "promoted":
        current = promotion_state(directory).current
        if current is None:
            raise ProcmemError("no adapter is promoted (the base model is in use)", where="adapters show",
                               fix="see `procmem adapters ls`")
        version = current
    manifest = read_manifest(directory, version)
    if json_out:
        print_json_line(manifest.model_dump(mode="json"))
        return
    data = manifest.model_dump(mode="json", exclude={"gate", "objective_config"})
    out_console.print_json(json.dumps(data))
    if manifest.gate is not None:
        out_console.print(gate_table(manifest.gate, manifest.version))


@adapters_app.command("promote")
def adapters_promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version to promote, vN.")],
    force: Annotated[bool, typer.Option("--force", help="Promote although its gate failed (recorded).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the new pointer as one JSON line.")] = False,
) -> None:
    """Make VERSION the adapter the agent uses by default (an atomic pointer switch)."""
    from procmem.core.registry import promote

    state = promote(_adapters_dir(ctx), version, force=force)
    _pointer_report(state.model_dump(mode="json"), json_out)


@adapters_app.command("rollback")
def adapters_rollback(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print the new pointer as one JSON line.")] = False,
) -> None:
    """Point back to the previously promoted version (or to the base model)."""
    from procmem.core.registry import rollback

    state = rollback(_adapters_dir(ctx))
    _pointer_report(state.model_dump(mode="json"), json_out)


def _pointer_report(state: dict[str, Any], json_out: bool) -> None:
    (err_console if json_out else out_console).print(f"promoted: {state['current'] or 'none (base model)'}",
                                                     highlight=False)
    if json_out:
        print_json_line(state)
