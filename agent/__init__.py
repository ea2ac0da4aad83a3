"""The agent: a LangGraph loop that retrieves memory, answers, verifies, retries and records.

agent/ orchestrates; it never trains (that is distill/).
"""

from procmem.agent.config import SolveConfig
from procmem.agent.graph import AgentDeps, AgentState, build_agent, episode_from_state, initial_state
from procmem.agent.runner import SolveReport, solve_tasks, thread_id

__all__ = [
    "AgentDeps",
    "AgentState",
    "SolveConfig",
    "SolveReport",
    "build_agent",
    "episode_from_state",
    "initial_state",
    "solve_tasks",
    "thread_id",
]
