"""``procmem chat``: an interactive REPL over the agent, with threads persisted in SQLite.

Earlier turns of the thread are in the prompt (the agent's conversation format, the one ``procmem serve`` uses:
:mod:`procmem.agent.conversation`). ``/good``, ``/bad`` and ``/correct TEXT`` judge the last answer through the
same feedback-to-episode rule as feedback to ``procmem serve`` (:mod:`procmem.core.feedback`): the turn becomes a
verified episode in memory (a correction is a verified passing answer that distillation trains on). ``/memory``
shows the memory entries the last answer used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from procmem.cli.app import app
from procmem.cli.common import (
    ADAPTER_HELP,
    ENGINE_HELP,
    MODEL_HELP,
    home_of,
    open_checkpointer,
    out_console,
)
from procmem.core import Episode, GenerationConfig, ProcmemError, Task, new_id, utc_now
from procmem.core.feedback import Feedback, feedback_episode

if TYPE_CHECKING:
    from procmem.agent import AgentSession

__all__: list[str] = []

_HELP = """Type a task and press Enter. Commands:
  /verify SPEC    judge the next task with SPEC (e.g. /verify exact:42, /verify numeric:3.5)
  /good, /bad     the last answer was right / wrong (recorded in memory as a verified episode)
  /correct TEXT   the right answer to the last task (a verified answer that distillation trains on)
  /memory         the memory entries the last answer used
  /help           this text
  /quit           leave (Ctrl-D and Ctrl-C work too)"""


def _quiet_progress_bars() -> None:
    """Library progress bars (model loading, embedding) must not draw over the chat."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@dataclass
class _Turn:
    """The last answered turn: what ``/good``, ``/bad``, ``/correct`` and ``/memory`` act on."""

    line: str
    task: Task
    answer: str
    memory_ids: tuple[str, ...]
    episode_id: str
    started_at: str
    recorded: Episode | None
    """The agent's own episode when a verifier judged the turn."""
    judged: bool = False


@app.command()
def chat(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "local:default",
    engine: Annotated[str, typer.Option(help=ENGINE_HELP)] = "auto",
    adapter: Annotated[str, typer.Option(help=ADAPTER_HELP)] = "promoted",
    thread: Annotated[str, typer.Option(help="Conversation thread to start or resume.")] = "default",
    attempts: Annotated[int, typer.Option(help="Most attempts when a verifier is attached.")] = 2,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per answer.")] = 64,
    history: Annotated[int, typer.Option(help="Earlier turns of the thread put in the prompt.")] = 4,
) -> None:
    """Chat with the agent; attach a verifier with /verify SPEC, judge answers with /good, /bad, /correct."""
    _quiet_progress_bars()
    from procmem.agent import AgentSession, SessionConfig

    home = home_of(ctx)
    from procmem.core import config_from_flags

    settings = config_from_flags(SessionConfig, {"model": model, "engine": engine, "adapter": adapter,
                                                 "attempts": attempts,
                                                 "generation": GenerationConfig(max_tokens=max_tokens)})
    with AgentSession.open(settings, home) as session, \
            open_checkpointer(home) as saver:
        agent = session.graph(checkpointer=saver, stream=True)
        config: Any = {"configurable": {"thread_id": f"chat:{thread}"}}
        state = agent.get_state(config).values
        out_console.print(f"procmem chat on {model}, thread '{thread}' ({len(state.get('turns', []))} verified turns "
                          "so far). /help for help.", highlight=False, soft_wrap=True)
        _Repl(agent, config, session, _seed(state), history).run()


def _seed(state: dict[str, Any]) -> list[tuple[str, str]]:
    """Earlier (question, answer) turns of a resumed thread: its verified episodes."""
    turns = []
    for data in state.get("turns", []):
        episode = Episode.from_dict(data)
        if episode.attempts:
            turns.append((str(episode.task.metadata.get("chat_line") or episode.task.prompt),
                          episode.attempts[-1].answer))
    return turns


class _Repl:
    def __init__(self, agent: Any, config: Any, session: AgentSession, earlier: list[tuple[str, str]],
                 history: int) -> None:
        self.agent = agent
        self.config = config
        self.session = session
        self.turns = list(earlier)
        self.history = history
        self.last: _Turn | None = None
        self.spec = ""

    def run(self) -> None:
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
            try:
                self._handle(line)
            except KeyboardInterrupt:
                out_console.print("\n[yellow]interrupted[/]")
            except ProcmemError as err:
                out_console.print(f"[red]{escape(str(err))}[/]", highlight=False)

    def _handle(self, line: str) -> None:
        if line == "/help":
            out_console.print(_HELP, highlight=False, markup=False)
        elif line.startswith("/verify"):
            self.spec = _attach_verifier(line.removeprefix("/verify").strip())
        elif line in ("/good", "/bad"):
            self._judge(passed=line == "/good", correction=None)
        elif line.startswith("/correct"):
            text = line.removeprefix("/correct").strip()
            if not text:
                out_console.print("usage: /correct THE RIGHT ANSWER", highlight=False, markup=False)
                return
            self._judge(passed=False, correction=text)
        elif line == "/memory":
            self._show_memory()
        elif line.startswith("/"):
            out_console.print(f"unknown command {line.split()[0]} (/help lists them)", highlight=False, markup=False)
        else:
            self._ask(line)

    def _ask(self, line: str) -> None:
        from procmem.agent import initial_state
        from procmem.agent.conversation import Message, conversation_task

        messages = []
        for question, answer in self.turns[-self.history:] if self.history > 0 else []:
            messages += [Message("user", question), Message("assistant", answer)]
        messages.append(Message("user", line))
        task = conversation_task(messages, id=f"chat-{new_id()[:8]}", suite="chat", verifier=self.spec,
                                 metadata={"chat_line": line})
        self.spec = ""
        start = initial_state(task)
        _run_turn(self.agent, self.config, task, start)
        values = self.agent.get_state(self.config).values
        answer = str(values.get("answer", ""))
        episode = values.get("episode")
        recorded = Episode.from_dict(episode) if episode and episode.get("id") == start["episode_id"] else None
        self.last = _Turn(line, values["task"], answer, tuple(values.get("memory_ids", [])),
                          start["episode_id"], start["started_at"], recorded)
        self.turns.append((line, answer))

    def _judge(self, *, passed: bool, correction: str | None) -> None:
        turn = self.last
        if turn is None:
            out_console.print("nothing to judge yet: ask something first", highlight=False, markup=False)
            return
        feedback = Feedback(passed=None if correction is not None else passed, correction=correction,
                            comment="" if passed or correction is not None else "the user said it is wrong")
        recorded = turn.recorded
        episode = feedback_episode(
            recorded.task if recorded is not None else turn.task, turn.answer, [feedback],
            attempts=recorded.attempts if recorded is not None else (), model_id=self.session.policy.model_id,
            adapter_version=self.session.policy.adapter_version, memory_ids=turn.memory_ids, id=turn.episode_id,
            started_at=turn.started_at, finished_at=utc_now())
        assert episode is not None  # feedback always verifies
        self.session.record(episode)
        turn.judged = True
        if correction is not None:
            self.turns[-1] = (turn.line, correction)  # the next prompt sees the right answer
        what = "corrected" if correction is not None else ("good" if passed else "bad")
        out_console.print(f"recorded: the last answer is {what} (episode {episode.id[:8]})", highlight=False,
                          markup=False)

    def _show_memory(self) -> None:
        if self.last is None:
            out_console.print("no answer yet", highlight=False, markup=False)
            return
        if not self.last.memory_ids:
            out_console.print("the last answer used no memory", highlight=False, markup=False)
            return
        for entry_id in self.last.memory_ids:
            record = self.session.memory.find(entry_id) if self.session.memory is not None else None
            text = " ".join(record.text.split())[:100] if record is not None else "(no longer in memory)"
            level = record.level if record is not None else "?"
            out_console.print(f"  {entry_id[:12]}  {level:10s} {text}", highlight=False, markup=False)


def _attach_verifier(spec: str) -> str:
    from procmem.verifiers import build_verifier

    try:
        build_verifier(Task(id="check", prompt="", verifier=spec))
    except ProcmemError as err:
        out_console.print(f"[red]{escape(str(err))}[/]", highlight=False)
        return ""
    out_console.print(f"the next task is judged by {spec}", highlight=False, markup=False)
    return spec


def _run_turn(agent: Any, config: Any, task: Task, start: Any) -> None:
    for mode, chunk in agent.stream(start, config, stream_mode=["custom", "updates"]):
        if mode == "custom":
            out_console.print(chunk["token"], end="", highlight=False, markup=False)
        elif "verify" in chunk:
            verdict = chunk["verify"]["attempts"][-1].verdict
            mark = "[green]PASS[/]" if verdict.passed else f"[red]FAIL[/] {escape(verdict.feedback)}"
            out_console.print(f"\n  {mark}", highlight=False)
        elif "generate" in chunk and not task.verifier:
            out_console.print()
