"""The agent loop as a LangGraph StateGraph.

    retrieve ──> generate ──> verify ──(failed, attempts left)──> generate
                                 └────(passed or out of attempts)──> record

The state holds typed values (the :class:`Task`, its :class:`Attempt` s with their verdicts), which
LangGraph checkpoints as dataclasses, so a thread can be resumed mid-task from its last checkpoint. A
task enters once, redacted (:func:`initial_state`); the finished episode leaves once, as JSON
(:func:`episode_from_state`).
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Checkpointer

from procmem.core import (
    Attempt,
    Episode,
    GenerationConfig,
    PriorAttempt,
    Task,
    Verdict,
    extract_answer,
    generation_for,
    new_id,
    redact_obj,
    render_prompt,
    utc_now,
)
from procmem.core.telemetry import StepTracer
from procmem.llm import LLM
from procmem.memory import NoMemory, Retrieval, Retriever
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
    tracer: StepTracer | None = None
    """Times each step and emits a recorded episode as OpenTelemetry spans (``procmem solve`` with tracing on)."""

    def retrieve(self, task: Task) -> Retrieval:
        """The memory that goes in ``task``'s prompt (``memory_k`` entries; none when it is 0)."""
        return self.retriever.retrieve(task, self.memory_k) if self.memory_k else NoMemory().retrieve(task, 0)


class AgentState(TypedDict, total=False):
    task: Task
    """Redacted on the way in (:func:`initial_state`)."""
    episode_id: str
    memory_ids: list[str]
    memory_text: str
    answer: str
    tokens: tuple[int, int]
    attempts: list[Attempt]
    started_at: str
    episode: dict[str, Any]
    """The finished episode, as JSON (what :func:`episode_from_state` reads)."""
    turns: Annotated[list[dict[str, Any]], operator.add]
    """Finished episodes of this thread, one per task (chat threads accumulate them)."""


class _Node(Protocol):
    """A graph node (LangGraph matches nodes by a ``state`` parameter, which a bare Callable lacks)."""

    def __call__(self, state: AgentState) -> AgentState: ...


def initial_state(task: Task) -> AgentState:
    """The state a thread starts from. The task is redacted on the way in: checkpoints, episodes and the
    prompts sent to a (possibly remote) model never carry an API key or token that was pasted into it."""
    # The episode id is fixed up front so that a resumed thread re-records the same episode (an upsert).
    return {"task": Task.from_dict(redact_obj(task.to_dict())), "episode_id": new_id(), "attempts": [],
            "started_at": utc_now()}


def episode_from_state(state: AgentState) -> Episode:
    return Episode.from_dict(state["episode"])


def build_agent(deps: AgentDeps, *, checkpointer: Checkpointer = None) -> Any:
    """Compile the agent graph around ``deps``."""
    graph = StateGraph(AgentState)
    graph.add_node("retrieve", _retrieve(deps))
    graph.add_node("generate", _generate(deps))
    graph.add_node("verify", _verify(deps))
    graph.add_node("record", _record(deps))
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "generate")
    graph.add_conditional_edges("generate", _has_verifier, {True: "verify", False: END})
    graph.add_conditional_edges("verify", _route(deps), {"retry": "generate", "done": "record"})
    graph.add_edge("record", END)
    return graph.compile(checkpointer=_accepting_state_types(checkpointer))


_STATE_TYPES = (Task, Attempt, Verdict)
"""The dataclasses a checkpoint of :class:`AgentState` holds."""


def _accepting_state_types(checkpointer: Checkpointer) -> Checkpointer:
    """``checkpointer`` allowed to read back the state's dataclasses (and only those beside LangGraph's own safe
    types), instead of loading any class a checkpoint names with a warning per type."""
    if not isinstance(checkpointer, BaseCheckpointSaver) or not isinstance(checkpointer.serde, JsonPlusSerializer):
        return checkpointer
    clone = copy.copy(checkpointer)
    clone.serde = JsonPlusSerializer(allowed_msgpack_modules=[(t.__module__, t.__name__) for t in _STATE_TYPES])
    return clone


def _timed(deps: AgentDeps, state: AgentState, kind: str) -> contextlib.AbstractContextManager[None]:
    """The step timed by the tracer (a no-op without one)."""
    tracer = deps.tracer
    return tracer.step(state["episode_id"], kind) if tracer is not None else contextlib.nullcontext()


def _retrieve(deps: AgentDeps) -> _Node:
    def retrieve(state: AgentState) -> AgentState:
        with _timed(deps, state, "retrieval"):
            found = deps.retrieve(state["task"])
        return {"memory_ids": list(found.entry_ids), "memory_text": found.text}

    return retrieve


def _generate(deps: AgentDeps) -> _Node:
    def generate(state: AgentState) -> AgentState:
        task = state["task"]
        prior = [PriorAttempt(feedback=a.verdict.feedback, answer=a.answer) for a in state["attempts"]]
        prompt = render_prompt(task.prompt, memory=state.get("memory_text", ""), prior=prior,
                               answer_format=task.answer_format)
        generation = generation_for(task, deps.generation)
        if deps.stream:
            return _generate_streaming(deps, prompt, generation, task)
        with _timed(deps, state, "generation"):
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
    return bool(state["task"].verifier)


def _verify(deps: AgentDeps) -> _Node:
    def verify(state: AgentState) -> AgentState:
        with _timed(deps, state, "verification"):
            verdict = build_verifier(state["task"]).verify(state["answer"])
        prompt_tokens, completion_tokens = state.get("tokens", (0, 0))
        # Answers and feedback are reused as prompts and stored: API keys and tokens must never get in.
        attempt = Attempt(state["answer"], verdict, prompt_tokens, completion_tokens)
        attempt = Attempt.from_dict(redact_obj(attempt.to_dict()))
        return {"attempts": [*state["attempts"], attempt]}

    return verify


def _route(deps: AgentDeps) -> Callable[[AgentState], str]:
    def route(state: AgentState) -> str:
        last = state["attempts"][-1]
        return "done" if last.verdict.passed or len(state["attempts"]) >= deps.attempts else "retry"

    return route


def _record(deps: AgentDeps) -> _Node:
    def record(state: AgentState) -> AgentState:
        episode = Episode(  # its task and attempts were redacted on their way into the state
            task=state["task"],
            attempts=tuple(state["attempts"]),
            model_id=deps.llm.model_id,
            adapter_version=deps.llm.adapter_version,
            memory_ids=tuple(state.get("memory_ids", [])),
            id=state["episode_id"],
            started_at=state["started_at"],
        )
        if deps.recorder is not None:
            deps.recorder(episode)
        if deps.tracer is not None:
            deps.tracer.finish(episode)
        return {"episode": episode.to_dict(), "turns": [episode.to_dict()]}

    return record

