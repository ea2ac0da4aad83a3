"""``procmem eval``: run (or resume) an evidence experiment and write its report."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from procmem.cli.app import app
from procmem.cli.common import err_console, out_console, print_json_line
from procmem.core import ProcmemError, utc_now

__all__ = ["eval_command"]


@app.command("eval")
def eval_command(
    config: Annotated[Path, typer.Option(help="Experiment config, e.g. eval/configs/smoke.toml.")],
    out: Annotated[Path, typer.Option(help="Output directory; rerunning with it resumes the experiment.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print per-arm results as the last stdout line.")] = False,
    seed: Annotated[list[int] | None, typer.Option(help="Run only this seed (repeatable), e.g. one per process "
                                                        "on one --out; the report covers what is finished.")] = None,
    report_only: Annotated[bool, typer.Option("--report-only", help="Run nothing: report what is finished.")] = False,
) -> None:
    """Compare the memory-free student with base, base+memory, RFT and controls on held-out tasks."""
    from procmem.core import load_config
    from procmem.eval import EvalConfig, finished_scores, run_experiment, write_report

    cfg = load_config(EvalConfig, config)
    out.mkdir(parents=True, exist_ok=True)
    if not report_only:
        run_experiment(cfg, out, seeds=seed, console=err_console)
    scores = finished_scores(cfg, out)
    if not scores:
        raise ProcmemError("nothing has finished in this output directory yet", where=str(out),
                           fix="run without --report-only")
    results = write_report(scores, cfg, out, meta=_meta(config))
    (err_console if json_out else out_console).print(_table(results))
    err_console.print(f"report: {out / 'report.md'}", highlight=False)
    if json_out:
        print_json_line({"out": str(out), "schema": results["schema"], "arms": results["arms"]})


def _meta(config: Path) -> dict[str, Any]:
    return {"command": shlex.join(["procmem", *sys.argv[1:]]), "config_file": str(config), "date": utc_now(),
            "commit": _commit()}


def _commit() -> str:
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                               check=False)
    except OSError:
        return "unknown"
    return found.stdout.strip() or "unknown"


def _table(results: dict[str, Any]) -> Table:
    table = Table(title=f"held-out pass@1, round {results['final_round']} (95% CI)")
    for column in ("arm", "test", "95% CI", "holdout"):
        table.add_column(column, justify="right" if column != "arm" else "left")
    for arm, row in results["arms"].items():
        low, high = row["test_ci95"]
        holdout = "n/a" if row["holdout_accuracy"] is None else f"{row['holdout_accuracy']:.1%}"
        table.add_row(arm, f"{row['test_accuracy']:.1%}", f"[{low:.1%}, {high:.1%}]", holdout)
    return table
