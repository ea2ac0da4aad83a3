"""A running agent: the policy, its memory and a recorder, wired once. Every request path runs through it.

``procmem solve``/``demo`` (:meth:`AgentSession.solve`), ``procmem chat`` (:meth:`AgentSession.graph` with
streaming and a checkpointer), the evidence experiment, and ``procmem serve`` (one session per tenant over one
shared :class:`~procmem.llm.PolicyHost`: per request it reads the :attr:`~AgentSession.policy`, asks the session to
:meth:`~AgentSession.retrieve`, renders the conversation (:mod:`procmem.agent.conversation`), and later to
:meth:`~AgentSession.verify` and :meth:`~AgentSession.record`). Chat and serve turn feedback into episodes by the
one rule, :func:`procmem.core.feedback.feedback_episode`::

    with AgentSession.open(SessionConfig(model="local:tiny"), home) as session:
        report = session.solve(tasks)

The policy is loaded once by :meth:`open` (:func:`~procmem.llm.open_policy`'s rules) and batched behind a
:class:`~procmem.llm.MicroBatcher`, so concurrent requests (solve's worker threads, a server's handlers) share
batches; a session that follows promotions reads :attr:`policy` once per request. Every method is safe to call
from several threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from langgraph.types import Checkpointer

from procmem.agent.config import SessionConfig
from procmem.agent.graph import AgentDeps, build_agent, episode_from_state, initial_state
from procmem.agent.runner import SolveReport, solve_tasks
from procmem.core import Episode, Home, ProcmemError, Task, Verdict, extract_answer
from procmem.core.keys import policy_version
from procmem.core.telemetry import StepTracer
from procmem.llm import LLM, PolicyHost
from procmem.memory import NoMemory, ProceduralMemory, ReflectionReport, Retrieval

__all__ = ["AgentSession", "Reply", "SessionConfig"]


@dataclass(frozen=True)
class Reply:
    """The agent's answer to one request."""

    answer: str
    memory_ids: tuple[str, ...]
    episode: Episode | None
    """The judged, recorded episode; None when the task has no verifier (answered, not judged)."""


class AgentSession:
    """A policy, memory and recorder wired into a running agent (see the module docstring).

    ``policy`` is an :class:`~procmem.llm.LLM` (batched and closed with the session) or a shared
    :class:`~procmem.llm.PolicyHost` (left open: its owner closes it). ``memory`` None runs memory-free and records
    nothing; a memory passed in stays open, one opened by :meth:`open` is closed with the session.
    """

    def __init__(self, policy: LLM | PolicyHost, config: SessionConfig | None = None, *,
                 memory: ProceduralMemory | None = None, tracer: StepTracer | None = None) -> None:
        self.config = config or SessionConfig()
        self.memory = memory
        self.tracer = tracer
        """Emits each recorded episode as OpenTelemetry spans (:mod:`procmem.core.telemetry`); None: no tracing."""
        self.reflection = ReflectionReport() if self.config.reflect else None
        """What inline reflection did and cost (with ``config.reflect``)."""
        self._closing = contextlib.ExitStack()
        if isinstance(policy, PolicyHost):
            self.host = policy
        else:
            self.host = self._closing.enter_context(PolicyHost(policy, max_batch=self.config.concurrency))
        self._deps: tuple[LLM, AgentDeps] | None = None

    @classmethod
    def open(cls, config: SessionConfig, home: Home, *, chroma_url: str | None = None,
             memory: bool = True, tracer: StepTracer | None = None, host: PolicyHost | None = None) -> AgentSession:
        """Load ``config``'s policy (``model``, ``engine``, ``adapter``) and open the home's memory (the Chroma
        server at ``chroma_url`` when given; none with ``memory=False``); ``tracer`` emits spans. ``host``: that
        policy already opened with :meth:`PolicyHost.open` (e.g. loaded in the background while the tasks were
        built); the session closes it."""
        from procmem.memory import open_memory

        if host is None:
            host = PolicyHost.open(home, model=config.model, adapter=config.adapter, engine=config.engine,
                                   limits=config.limits)
        try:
            opened = open_memory(home.chroma, url=chroma_url) if memory else None
        except BaseException:
            host.close()
            raise
        session = cls(host, config, memory=opened, tracer=tracer)
        session._closing.callback(host.close)
        if opened is not None:
            session._closing.callback(opened.close)
        return session

    # -- the policy ---------------------------------------------------------------------------------

    @property
    def policy(self) -> LLM:
        """The policy answering now: read it once per request and keep it (a promotion may swap it)."""
        return self.host.current

    @property
    def llm(self) -> LLM:
        """Same as :attr:`policy`."""
        return self.host.current

    @property
    def deps(self) -> AgentDeps:
        """The graph's dependencies over the current policy."""
        return self._deps_for(self.host.current)

    def _deps_for(self, llm: LLM) -> AgentDeps:
        cached = self._deps
        if cached is not None and cached[0] is llm:
            return cached[1]
        memory, config = self.memory, self.config
        deps = AgentDeps(
            llm=llm, generation=config.generation,
            retriever=memory.retriever(policy=policy_version(llm)) if memory is not None and config.use_memory
            else NoMemory(),
            recorder=memory.recorder(reflector=llm if config.reflect else None, cost=self.reflection)
            if memory is not None and config.record else None,
            attempts=config.attempts, memory_k=config.memory_k, tracer=self.tracer,
        )
        self._deps = (llm, deps)
        return deps

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
        state = build_agent(self.deps).invoke(initial_state(task))
        episode = episode_from_state(state) if state.get("episode") else None
        return Reply(state.get("answer", ""), tuple(state.get("memory_ids", ())), episode)

    def retrieve(self, task: Task, policy: LLM | None = None) -> Retrieval:
        """The memory the agent puts in ``task``'s prompt, trusted for ``policy`` (default: the current one);
        nothing when memory-free."""
        deps = self._deps_for(policy) if policy is not None else self.deps
        return deps.retrieve(task)

    @staticmethod
    def verify(task: Task, answer: str) -> Verdict:
        """``task``'s verifier on ``answer`` (its final answer extracted as the task's format asks)."""
        from procmem.verifiers import build_verifier

        return build_verifier(task).verify(extract_answer(answer, task.answer_format))

    def record(self, episode: Episode) -> None:
        """Record a finished episode to memory (and reflect on it, with ``config.reflect``)."""
        recorder = self.deps.recorder
        if recorder is not None:
            recorder(episode)

    def reflect(self, *, max_calls: int | None = None) -> ReflectionReport:
        """The batch reflection job with this session's model: insights for the problems recorded since their last
        reflection, then patterns across them (at most ``max_calls`` model calls)."""
        if self.memory is None:
            raise ProcmemError("this session has no memory to reflect on", where="AgentSession",
                               fix="open it with a memory (AgentSession.open(..., memory=True))")
        return self.memory.reflect(self.policy, max_calls=max_calls)

    # -- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the batcher and close what this session opened."""
        self._closing.close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
