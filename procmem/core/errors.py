"""The one error type users see: what is wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = ["ProcmemError"]


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
