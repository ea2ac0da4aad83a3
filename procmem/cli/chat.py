"""``procmem chat``: an interactive REPL over the agent, with threads persisted in SQLite."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from procmem.agent import AgentDeps, build_agent, initial_state
from procmem.cli.app import app
from procmem.cli.common import (
    ADAPTER_HELP,
    ENGINE_HELP,
    MODEL_HELP,
    adapter_for,
    home_of,
    open_checkpointer,
    out_console,
)
from procmem.core import GenerationConfig, ProcmemError, Task, new_id
from procmem.llm import load_llm
from procmem.memory import open_memory, policy_version
from procmem.verifiers import build_verifier

__all__: list[str] = []

_HELP = """Type a task and press Enter. Commands:
  /verify SPEC   judge the next task with SPEC (e.g. /verify exact:42, /verify numeric:3.5)
  /help          this text
  /quit          leave (Ctrl-D and Ctrl-C work too)"""


@app.command()
def chat(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "local:default",
    engine: Annotated[str, typer.Option(help=ENGINE_HELP)] = "auto",
    adapter: Annotated[str, typer.Option(help=ADAPTER_HELP)] = "promoted",
    thread: Annotated[str, typer.Option(help="Conversation thread to start or resume.")] = "default",
    attempts: Annotated[int, typer.Option(help="Most attempts when a verifier is attached.")] = 2,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per answer.")] = 64,
) -> None:
    """Chat with the agent; attach a verifier to a task with /verify SPEC."""
    home = home_of(ctx)
    llm = load_llm(model, models_dir=home.models, adapter=adapter_for(home, model, adapter), engine=engine)
    memory = open_memory(home.chroma)
    deps = AgentDeps(llm=llm, generation=GenerationConfig(max_tokens=max_tokens),
                     retriever=memory.retriever(policy=policy_version(llm)), recorder=memory.recorder(),
                     attempts=attempts, stream=True)
    with open_checkpointer(home) as saver:
        agent = build_agent(deps, checkpointer=saver)
        config: Any = {"configurable": {"thread_id": f"chat:{thread}"}}
        earlier = len(agent.get_state(config).values.get("turns", []))
        out_console.print(f"procmem chat on {model}, thread '{thread}' ({earlier} verified turns so far). "
                          "/help for help.", highlight=False, soft_wrap=True)
        _repl(agent, config)


def _repl(agent: Any, config: Any) -> None:
    spec = ""
    while True:
        try:
            line = out_console.input("[bold cyan]> [/]").strip()
        except (EOFError, KeyboardInterrupt):
            out_console.print()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/help":
            out_console.print(_HELP, highlight=False)
        elif line.startswith("/verify"):
            spec = _attach_verifier(line.removeprefix("/verify").strip())
        else:
            try:
                _run_turn(agent, config, Task(id=f"chat-{new_id()[:8]}", prompt=line, verifier=spec, suite="chat"))
            except KeyboardInterrupt:
                out_console.print("\n[yellow]interrupted[/]")
            spec = ""


def _attach_verifier(spec: str) -> str:
    try:
        build_verifier(Task(id="check", prompt="", verifier=spec))
    except ProcmemError as err:
        out_console.print(f"[red]{escape(str(err))}[/]", highlight=False)
        return ""
    out_console.print(f"the next task is judged by {spec}", highlight=False, markup=False)
    return spec


def _run_turn(agent: Any, config: Any, task: Task) -> None:
    for mode, chunk in agent.stream(initial_state(task), config, stream_mode=["custom", "updates"]):
        if mode == "custom":
            out_console.print(chunk["token"], end="", highlight=False, markup=False)
        elif "verify" in chunk:
            verdict = chunk["verify"]["attempts"][-1]["verdict"]
            mark = "[green]PASS[/]" if verdict["passed"] else f"[red]FAIL[/] {escape(verdict['feedback'])}"
            out_console.print(f"\n  {mark}", highlight=False)
        elif "generate" in chunk and not task.verifier:
            out_console.print()
