"""A conversation as the agent's task: the one place chat messages meet procedural memory and the prompt format.

``procmem serve`` and ``procmem chat`` both hand the agent session a list of :class:`Message` s.

**Memory.** Retrieval is the agent's own, searched with the last user message (:func:`query_text`). It goes in
only when the last message is the user's (never inside a tool-call sequence: :func:`memory_allowed`). A chat
backend (a ``litellm:`` model) gets it as ONE block in the system message, delimited by :data:`MEMORY_OPEN` /
:data:`MEMORY_CLOSE` (:func:`with_memory`).

**Base models** (the bundled Gemma 3 270M has no chat template). The conversation becomes the task's question::

    <system text>\\n\\n<user 1>\\nAnswer: <assistant 1>\\nQuestion: <user 2>

and the prompt is ``render_prompt(question, memory=<memory text>)``, exactly the agent's format::

    <memory text>\\n\\nQuestion: <system text>\\n\\n<user 1>\\nAnswer: <assistant 1>\\nQuestion: <user 2>\\nAnswer:

A single user message gives ``Question: <text>\\nAnswer:``, the format the agent, the distill teacher and the
student use, so what a conversation records trains the adapter on the very prompts it sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from procmem.core import Task, render_prompt

__all__ = ["MEMORY_CLOSE", "MEMORY_OPEN", "TURN_STOP", "Message", "chat_question", "conversation_task",
           "memory_allowed", "query_text", "render_chat", "with_memory"]

MEMORY_OPEN = "<procmem-memory>"
MEMORY_CLOSE = "</procmem-memory>"
TURN_STOP = "\nQuestion:"
"""A base model's answer always ends where it would start the next question."""


@dataclass(frozen=True)
class Message:
    """One message of a conversation, as text (``role``: system, developer, user, assistant, tool, function)."""

    role: str
    text: str


def memory_allowed(messages: Sequence[Message]) -> bool:
    """Memory goes in only when the last message is the user's with some text: a request that continues a
    tool-call sequence (last message from a tool, or an assistant's tool call) gets none."""
    return bool(messages) and messages[-1].role == "user" and bool(messages[-1].text.strip())


def query_text(messages: Sequence[Message]) -> str:
    """What retrieval searches with: the last user message."""
    for message in reversed(messages):
        if message.role == "user":
            return message.text
    return ""


def chat_question(messages: Sequence[Message]) -> str:
    """The conversation as one question for :func:`~procmem.core.render_prompt` (see the module docstring)."""
    system = "\n\n".join(m.text.strip() for m in messages if m.role in ("system", "developer") and m.text.strip())
    turns: list[str] = []
    for message in messages:
        text = message.text.strip()
        if message.role == "user":
            turns.append(text if not turns else f"Question: {text}")
        elif message.role == "assistant":
            turns.append(f"Answer: {text}")
    body = "\n".join(turns)
    return f"{system}\n\n{body}" if system else body


def conversation_task(messages: Sequence[Message], *, id: str, suite: str, verifier: str = "",
                      metadata: dict[str, Any] | None = None) -> Task:
    """The task a conversation poses (its :func:`chat_question`), in the train split: what memory is searched with,
    what the model is prompted with, and what the episode records."""
    return Task(id=id, prompt=chat_question(messages), verifier=verifier, suite=suite, split="train",
                metadata={k: v for k, v in (metadata or {}).items() if v is not None})


def render_chat(messages: Sequence[Message], memory: str) -> str:
    """The prompt a base model completes: the agent's format with the conversation as its question."""
    return render_prompt(chat_question(messages), memory=memory)


def with_memory(messages: Sequence[dict[str, Any]], memory: str) -> list[dict[str, Any]]:
    """Chat-API messages (dicts) with ``memory`` as one delimited block at the end of the first system message
    (a system message is added first when there is none)."""
    plain = [dict(m) for m in messages]
    if not memory.strip():
        return plain
    block = f"{MEMORY_OPEN}\n{memory.strip()}\n{MEMORY_CLOSE}"
    for message in plain:
        if message["role"] in ("system", "developer") and isinstance(message.get("content"), str):
            message["content"] = f"{message['content'].rstrip()}\n\n{block}" if message["content"].strip() else block
            return plain
    return [{"role": "system", "content": block}, *plain]
