"""How chat messages meet procedural memory and, for a model without a chat template, become one prompt.

**Memory.** Retrieval is the agent's own (``ProceduralMemory.retriever``). Its text goes into ONE block in the
system message, only when the last message is the user's (never inside a tool-call sequence), delimited by
:data:`MEMORY_OPEN` / :data:`MEMORY_CLOSE` for chat backends.

**Base models** (the bundled Gemma 3 270M has no chat template). The conversation becomes the task's question::

    <system text>\\n\\n<user 1>\\nAnswer: <assistant 1>\\nQuestion: <user 2>

and the prompt is ``render_prompt(question, memory=<memory text>)``, i.e. exactly the agent's format::

    <memory text>\\n\\nQuestion: <system text>\\n\\n<user 1>\\nAnswer: <assistant 1>\\nQuestion: <user 2>\\nAnswer:

A single user message gives ``Question: <text>\\nAnswer:``, the format the agent, the distill teacher and the
student use, so what serve records trains the adapter on the very prompts serve sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from procmem.core import render_prompt
from procmem.serve.protocol import ChatMessage, message_text

__all__ = ["MEMORY_CLOSE", "MEMORY_OPEN", "chat_question", "memory_allowed", "query_text", "render_chat",
           "with_memory"]

MEMORY_OPEN = "<procmem-memory>"
MEMORY_CLOSE = "</procmem-memory>"


def memory_allowed(messages: Sequence[ChatMessage]) -> bool:
    """Memory goes in only when the last message is the user's with some text: a request that continues a
    tool-call sequence (last message from a tool, or an assistant's tool call) gets none."""
    return bool(messages) and messages[-1].role == "user" and bool(message_text(messages[-1]).strip())


def query_text(messages: Sequence[ChatMessage]) -> str:
    """What retrieval searches with: the last user message."""
    for message in reversed(messages):
        if message.role == "user":
            return message_text(message)
    return ""


def chat_question(messages: Sequence[ChatMessage]) -> str:
    """The conversation as one question for :func:`~procmem.core.render_prompt` (see the module docstring)."""
    system = "\n\n".join(message_text(m).strip() for m in messages if m.role in ("system", "developer")
                         and message_text(m).strip())
    turns: list[str] = []
    for message in messages:
        text = message_text(message).strip()
        if message.role == "user":
            turns.append(text if not turns else f"Question: {text}")
        elif message.role == "assistant":
            turns.append(f"Answer: {text}")
    body = "\n".join(turns)
    return f"{system}\n\n{body}" if system else body


def render_chat(messages: Sequence[ChatMessage], memory: str) -> str:
    """The prompt a base model completes: the agent's format with the conversation as its question."""
    return render_prompt(chat_question(messages), memory=memory)


def with_memory(messages: Sequence[ChatMessage], memory: str) -> list[dict[str, Any]]:
    """The messages for a chat backend, with ``memory`` as one delimited block at the end of the first
    system message (a system message is added first when there is none)."""
    plain = [m.model_dump(exclude_none=True) for m in messages]
    if not memory.strip():
        return plain
    block = f"{MEMORY_OPEN}\n{memory.strip()}\n{MEMORY_CLOSE}"
    for message in plain:
        if message["role"] in ("system", "developer") and isinstance(message.get("content"), str):
            message["content"] = f"{message['content'].rstrip()}\n\n{block}" if message["content"].strip() else block
            return plain
    return [{"role": "system", "content": block}, *plain]
