"""The agent: a LangGraph loop that retrieves memory, answers, verifies, retries and records.

agent/ orchestrates; it never trains (that is distill/).
"""

from procmem.agent.config import SessionConfig, SessionJob, SolveConfig
from procmem.agent.conversation import Message
from procmem.agent.graph import AgentDeps, AgentState, build_agent, episode_from_state, initial_state
from procmem.agent.runner import SolveReport, solve_tasks, thread_id
from procmem.agent.scoring import BATCH, ItemScore, score_tasks
from procmem.agent.session import AgentSession, Reply

__all__ = [
    "BATCH",
    "AgentDeps",
    "AgentSession",
    "AgentState",
    "ItemScore",
    "Message",
    "Reply",
    "SessionConfig",
    "SessionJob",
    "SolveConfig",
    "SolveReport",
    "build_agent",
    "episode_from_state",
    "initial_state",
    "score_tasks",
    "solve_tasks",
    "thread_id",
]
