"""The one error type users see: what is wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = ["ProcmemError", "one_line"]


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


def one_line(err: BaseException, limit: int = 200) -> str:
    """``err``'s message on one line (whitespace collapsed, at most ``limit`` characters), or its type name
    when it has none: for quoting a library's exception inside a ProcmemError."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:limit]
