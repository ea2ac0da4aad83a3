"""The agent loop as a LangGraph StateGraph.

    retrieve ──> generate ──> verify ──(failed, attempts left)──> generate
                                 └────(passed or out of attempts)──> record

State holds plain JSON (task, memory, attempts) so LangGraph checkpoints it as is; a thread can be
resumed mid-task from its last checkpoint.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Checkpointer

from procmem.core import (
    Attempt,
    Episode,
    GenerationConfig,
    PriorAttempt,
    Task,
    extract_answer,
    generation_for,
    new_id,
    redact_obj,
    render_prompt,
    utc_now,
)
from procmem.llm import LLM
from procmem.memory import NoMemory, Retriever
from procmem.verifiers import build_verifier

__all__ = ["AgentDeps", "AgentState", "build_agent", "episode_from_state", "initial_state"]

Recorder = Callable[[Episode], None]


@dataclass(frozen=True)
class AgentDeps:
    """Everything the graph's nodes call out to."""

    llm: LLM
    generation: GenerationConfig
    retriever: Retriever = field(default_factory=NoMemory)
    recorder: Recorder | None = None
    attempts: int = 2
    memory_k: int = 3
    stream: bool = False
    """Emit answer text as it is generated (``stream_mode="custom"``), for ``procmem chat``."""


class AgentState(TypedDict, total=False):
    task: dict[str, Any]
    episode_id: str
    memory_ids: list[str]
    memory_text: str
    answer: str
    tokens: tuple[int, int]
    attempts: list[dict[str, Any]]
    started_at: str
    episode: dict[str, Any]
    turns: Annotated[list[dict[str, Any]], operator.add]
    """Finished episodes of this thread, one per task (chat threads accumulate them)."""


class _Node(Protocol):
    """A graph node (LangGraph matches nodes by a ``state`` parameter, which a bare Callable lacks)."""

    def __call__(self, state: AgentState) -> AgentState: ...


def initial_state(task: Task) -> AgentState:
    """The state a thread starts from. The task is redacted on the way in: checkpoints, episodes and the
    prompts sent to a (possibly remote) model never carry an API key or token that was pasted into it."""
    # The episode id is fixed up front so that a resumed thread re-records the same episode (an upsert).
    return {"task": redact_obj(task.to_dict()), "episode_id": new_id(), "attempts": [], "started_at": utc_now()}


def episode_from_state(state: AgentState) -> Episode:
    return Episode.from_dict(state["episode"])


def build_agent(deps: AgentDeps, *, checkpointer: Checkpointer = None) -> Any:
    """Compile the agent graph around ``deps``."""
    graph = StateGraph(AgentState)
    graph.add_node("retrieve", _retrieve(deps))
    graph.add_node("generate", _generate(deps))
    graph.add_node("verify", _verify)
    graph.add_node("record", _record(deps))
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "generate")
    graph.add_conditional_edges("generate", _has_verifier, {True: "verify", False: END})
    graph.add_conditional_edges("verify", _route(deps), {"retry": "generate", "done": "record"})
    graph.add_edge("record", END)
    return graph.compile(checkpointer=checkpointer)


def _retrieve(deps: AgentDeps) -> _Node:
    def retrieve(state: AgentState) -> AgentState:
        task = Task.from_dict(state["task"])
        found = deps.retriever.retrieve(task, deps.memory_k) if deps.memory_k else NoMemory().retrieve(task, 0)
        return {"memory_ids": list(found.entry_ids), "memory_text": found.text}

    return retrieve


def _generate(deps: AgentDeps) -> _Node:
    def generate(state: AgentState) -> AgentState:
        task = Task.from_dict(state["task"])
        prior = [PriorAttempt(feedback=a["verdict"]["feedback"], answer=a["answer"]) for a in state["attempts"]]
        prompt = render_prompt(task.prompt, memory=state.get("memory_text", ""), prior=prior)
        generation = generation_for(task, deps.generation)
        if deps.stream:
            return _generate_streaming(deps, prompt, generation, task)
        out = deps.llm.generate([prompt], generation)[0]
        answer = extract_answer(out.text, task.answer_format)
        return {"answer": answer, "tokens": (out.prompt_tokens, out.completion_tokens)}

    return generate


def _generate_streaming(deps: AgentDeps, prompt: str, generation: GenerationConfig, task: Task) -> AgentState:
    write = get_stream_writer()
    pieces: list[str] = []
    for piece in deps.llm.stream(prompt, generation):
        pieces.append(piece)
        write({"token": piece})
    text = "".join(pieces)
    return {"answer": extract_answer(text, task.answer_format), "tokens": (0, len(pieces))}


def _has_verifier(state: AgentState) -> bool:
    """A task without a verifier spec (a chat question) is answered, not judged or recorded."""
    return bool(state["task"]["verifier"])


def _verify(state: AgentState) -> AgentState:
    task = Task.from_dict(state["task"])
    verdict = build_verifier(task).verify(state["answer"])
    prompt_tokens, completion_tokens = state.get("tokens", (0, 0))
    attempt = Attempt(state["answer"], verdict, prompt_tokens, completion_tokens)
    return {"attempts": [*state["attempts"], attempt.to_dict()]}


def _route(deps: AgentDeps) -> Callable[[AgentState], str]:
    def route(state: AgentState) -> str:
        last = state["attempts"][-1]
        return "done" if last["verdict"]["passed"] or len(state["attempts"]) >= deps.attempts else "retry"

    return route


def _record(deps: AgentDeps) -> _Node:
    def record(state: AgentState) -> AgentState:
        episode = _redacted(Episode(
            task=Task.from_dict(state["task"]),
            attempts=tuple(Attempt.from_dict(a) for a in state["attempts"]),
            model_id=deps.llm.model_id,
            adapter_version=deps.llm.adapter_version,
            memory_ids=tuple(state.get("memory_ids", [])),
            id=state["episode_id"],
            started_at=state["started_at"],
        ))
        if deps.recorder is not None:
            deps.recorder(episode)
        return {"episode": episode.to_dict(), "turns": [episode.to_dict()]}

    return record


def _redacted(episode: Episode) -> Episode:
    """Episodes are stored and reused as prompts: API keys and tokens must never get in."""
    return Episode.from_dict(redact_obj(episode.to_dict()))
