"""Importing this module registers every command on the root app."""

from procmem.cli import chat, distill_commands, eval_cmd, memory_cmd, solve, verify  # noqa: F401

__all__: list[str] = []
