"""A running agent: one model, its memory and a recorder, wired once.

Every front end starts here: ``procmem solve``/``demo`` (:meth:`AgentSession.solve`), ``procmem chat``
(:meth:`AgentSession.graph` with streaming and a checkpointer), the evidence experiment, and a server that
answers one request at a time (:meth:`AgentSession.answer`, or its steps :meth:`retrieve`, :meth:`complete`
and :meth:`record`)::

    with AgentSession.open(SessionConfig(model="local:tiny"), home) as session:
        report = session.solve(tasks)

The model is loaded once and shared behind a :class:`~procmem.llm.MicroBatcher`, so concurrent requests
(solve's worker threads, a server's handlers) are batched; every method is safe to call from several
threads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from langgraph.types import Checkpointer
from pydantic import Field

from procmem.agent.graph import AgentDeps, build_agent, episode_from_state, initial_state
from procmem.agent.runner import SolveReport, solve_tasks
from procmem.core import Episode, GenerationConfig, Home, ProcmemError, Task, generation_for
from procmem.core.config import Config
from procmem.core.keys import policy_version
from procmem.core.llm import Engine
from procmem.llm import LLM, Generation, MicroBatcher
from procmem.memory import NoMemory, ProceduralMemory, ReflectionReport, Retrieval

__all__ = ["AgentSession", "Reply", "SessionConfig"]


class SessionConfig(Config):
    """How a session runs the agent (the model and its adapter are chosen when it is opened)."""

    model: str = Field(default="local:default", description="'local:default', 'local:tiny', "
                       "'local:/path/to/hf_dir' or 'litellm:<model>' (used by AgentSession.open).")
    engine: Engine = Field(default="auto", description="How a local model runs: llamacpp, transformers, or auto "
                           "(llama.cpp for local:default when llama-cpp-python is installed).")
    attempts: int = Field(default=2, ge=1, le=20, description="Most attempts per task; retries see verifier feedback.")
    use_memory: bool = Field(default=True, description="Retrieve procedural memory before answering.")
    memory_k: int = Field(default=3, ge=0, le=32, description="How many memory entries to put in the prompt.")
    record: bool = Field(default=True, description="Record every judged episode to memory.")
    reflect: bool = Field(default=False, description="Reflect on each problem right after its episode "
                          "(one more model call per task); the cost is summed in AgentSession.reflection.")
    concurrency: int = Field(default=8, ge=1, le=256,
                             description="Requests at once; the local model batches up to this many prompts.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding settings.")


@dataclass(frozen=True)
class Reply:
    """The agent's answer to one request."""

    answer: str
    memory_ids: tuple[str, ...]
    episode: Episode | None
    """The judged, recorded episode; None when the task has no verifier (answered, not judged)."""


class AgentSession:
    """A model, memory and recorder wired into a running agent (see the module docstring).

    ``memory`` None runs memory-free and records nothing. The session closes what it opened
    (:meth:`open`: the model's batcher and the memory); a memory passed in stays open.
    """

    def __init__(self, llm: LLM, config: SessionConfig | None = None, *,
                 memory: ProceduralMemory | None = None) -> None:
        self.config = config or SessionConfig()
        self.memory = memory
        self.policy = policy_version(llm)
        """The version of the policy answering (``model_id@adapter``), which memory trusts fully."""
        self.reflection = ReflectionReport() if self.config.reflect else None
        """What inline reflection did and cost (with ``config.reflect``)."""
        self._closing = contextlib.ExitStack()
        self.llm: LLM = self._closing.enter_context(MicroBatcher(llm, max_batch=self.config.concurrency))
        self.deps = AgentDeps(
            llm=self.llm, generation=self.config.generation,
            retriever=memory.retriever(policy=self.policy) if memory is not None and self.config.use_memory
            else NoMemory(),
            recorder=memory.recorder(reflector=self.llm if self.config.reflect else None, cost=self.reflection)
            if memory is not None and self.config.record else None,
            attempts=self.config.attempts, memory_k=self.config.memory_k,
        )
        self._graph = build_agent(self.deps)

    @classmethod
    def open(cls, config: SessionConfig, home: Home, *, adapter: str | os.PathLike[str] | None = None,
             chroma_url: str | None = None, memory: bool = True) -> AgentSession:
        """Load ``config.model`` (with the LoRA ``adapter`` directory, if any) and open the home's memory (the
        Chroma server at ``chroma_url`` when given; none with ``memory=False``)."""
        from procmem.llm import load_llm
        from procmem.memory import open_memory

        llm = load_llm(config.model, models_dir=home.models, adapter=adapter, engine=config.engine,
                       max_batch_size=config.concurrency)
        opened = open_memory(home.chroma, url=chroma_url) if memory else None
        session = cls(llm, config, memory=opened)
        if opened is not None:
            session._closing.callback(opened.close)
        return session

    # -- many tasks ---------------------------------------------------------------------------------

    def solve(self, tasks: Sequence[Task], *, checkpointer: Checkpointer = None, run_id: str = "",
              on_done: Callable[[Episode], None] | None = None) -> SolveReport:
        """Every task through the agent, ``config.concurrency`` at a time (resumable with a checkpointer,
        see :func:`~procmem.agent.solve_tasks`)."""
        return solve_tasks(tasks, self.deps, concurrency=self.config.concurrency, checkpointer=checkpointer,
                           run_id=run_id, on_done=on_done)

    def graph(self, *, checkpointer: Checkpointer = None, stream: bool = False) -> Any:
        """The compiled agent graph over this session; ``stream`` emits answer text as it is generated
        (``stream_mode="custom"``), for ``procmem chat``."""
        return build_agent(replace(self.deps, stream=stream), checkpointer=checkpointer)

    # -- one request --------------------------------------------------------------------------------

    def answer(self, task: Task) -> Reply:
        """One task through the whole loop: retrieve, answer, and (with a verifier) verify, retry and record."""
        state = self._graph.invoke(initial_state(task))
        episode = episode_from_state(state) if state.get("episode") else None
        return Reply(state.get("answer", ""), tuple(state.get("memory_ids", ())), episode)

    def retrieve(self, task: Task) -> Retrieval:
        """The memory the agent would put in ``task``'s prompt (nothing when memory-free)."""
        return self.deps.retrieve(task)

    def complete(self, prompt: str, task: Task | None = None) -> Generation:
        """One completion of a rendered ``prompt``, decoded with the session's settings (and ``task``'s own)."""
        generation = generation_for(task, self.config.generation) if task is not None else self.config.generation
        return self.llm.generate([prompt], generation)[0]

    def record(self, episode: Episode) -> None:
        """Record a finished episode to memory (and reflect on it, with ``config.reflect``)."""
        if self.deps.recorder is not None:
            self.deps.recorder(episode)

    def reflect(self, *, max_calls: int | None = None) -> ReflectionReport:
        """The batch reflection job with this session's model: insights for the problems recorded since their last
        reflection, then patterns across them (at most ``max_calls`` model calls)."""
        if self.memory is None:
            raise ProcmemError("this session has no memory to reflect on", where="AgentSession",
                               fix="open it with a memory (AgentSession.open(..., memory=True))")
        return self.memory.reflect(self.llm, max_calls=max_calls)

    # -- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the batcher and close the memory this session opened."""
        self._closing.close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
