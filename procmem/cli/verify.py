"""``procmem verify``: judge one answer against one task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from procmem.cli.app import app
from procmem.cli.common import out_console, print_json_line
from procmem.core import ProcmemError

__all__: list[str] = []


@app.command()
def verify(
    task: Annotated[Path, typer.Option(help="A JSONL file holding exactly one task.")],
    answer: Annotated[str, typer.Option(help="The answer to judge.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the verdict as one JSON line.")] = False,
) -> None:
    """Verify ANSWER against the task in TASK and print the verdict."""
    from procmem.tasks import load_suite
    from procmem.verifiers import build_verifier

    tasks = load_suite(str(task), split=None, check=build_verifier)  # the one task, whatever its split
    if len(tasks) != 1:
        raise ProcmemError(f"holds {len(tasks)} tasks, expected exactly one", where=str(task),
                           fix="put the one task to verify on a line of its own file")
    verdict = build_verifier(tasks[0]).verify(answer)
    if json_out:
        print_json_line({"task_id": tasks[0].id, **verdict.to_dict()})
        return
    mark = "[green]PASS[/]" if verdict.passed else "[red]FAIL[/]"
    out_console.print(f"{mark} score={verdict.score:.3f} {escape(verdict.feedback)}", highlight=False)
