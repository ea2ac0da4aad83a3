"""The one error type users see: what is wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = ["ContextLengthError", "ProcmemError", "one_line"]


class ProcmemError(Exception):
    """A user-facing error. The CLI prints ``str(err)`` as one line and exits with code 2.

    ``where`` is a location such as ``tasks.jsonl:3`` or ``--model``; ``fix`` says what to do.
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text} ({self.fix})" if self.fix else text


class ContextLengthError(ProcmemError):
    """A prompt that, with the tokens asked for (``max_tokens``), does not fit the model's context.

    Raised before anything is allocated for it. ``prompt_tokens`` counts the prompt as the model reads it
    (with a BOS token, memory and the prompt format); ``limit`` is the most prompt + new tokens one sequence
    may hold (the model's context, or a smaller memory budget). A gateway answers it with 400
    ``context_length_exceeded``: the caller's input is at fault, not the backend.
    """

    def __init__(self, prompt_tokens: int, limit: int, *, max_tokens: int = 0, model: str = "the model",
                 at_least: bool = False, fix: str | None = None) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.limit = limit
        self.model = model
        self.at_least = at_least
        """``prompt_tokens`` is a lower bound: the text was too long to be worth tokenizing."""
        tokens = f"at least {prompt_tokens}" if at_least else str(prompt_tokens)
        asked = (f"the prompt has {tokens} tokens and max_tokens asks for {max_tokens} more "
                 f"({'at least ' if at_least else ''}{prompt_tokens + max_tokens} in all)" if max_tokens
                 else f"the prompt has {tokens} tokens")
        super().__init__(f"{asked}; {model} holds {limit} tokens per sequence", where="prompt",
                         fix=fix or "shorten the prompt or lower max_tokens")


def one_line(err: BaseException, limit: int = 200) -> str:
    """``err``'s message on one line (whitespace collapsed, at most ``limit`` characters), or its type name
    when it has none: for quoting a library's exception inside a ProcmemError."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:limit]
