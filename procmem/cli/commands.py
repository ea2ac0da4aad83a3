"""Importing this module registers every command on the root app."""

from procmem.cli import chat, distill_commands, eval_cmd, keys_cmd, memory_cmd, serve_cmd, solve, verify  # noqa: F401  # noqa: F401

__all__: list[str] = []
