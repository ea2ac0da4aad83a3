"""Stop-string handling shared by the backends: cutting finished text and filtering a text stream."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from procmem.core.config import GenerationConfig
from procmem.core.errors import ProcmemError


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the first stop string, and whether one was found."""
    index = find_stop(text, stops)
    return (text, False) if index is None else (text[:index], True)


def filter_stream(pieces: Iterable[str], stops: Sequence[str]) -> Iterator[str]:
    """Re-yield streamed ``pieces`` so that their concatenation is the text cut before the first stop.

    A tail that could still grow into a stop string is held back until the next piece decides it.
    Iteration ends at the stop, which lets the producer be cancelled early.
    """
    stops = [s for s in stops if s]
    pending = ""
    for piece in pieces:
        pending += piece
        index = find_stop(pending, stops)
        if index is not None:
            if index:
                yield pending[:index]
            return
        keep = _partial_stop_length(pending, stops)
        if len(pending) > keep:
            yield pending[: len(pending) - keep]
            pending = pending[len(pending) - keep:]
    if pending:
        yield pending


def _partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:size]):
                best = size
                break
    return best


def refuse_grammar(config: GenerationConfig, engine: str) -> None:
    """Raise when ``config`` asks for a grammar that ``engine`` cannot enforce (only llama.cpp can): a caller
    checks ``supports_grammar`` first and falls back to its own parse-or-retry."""
    if config.grammar is not None:
        raise ProcmemError(f"the {engine} backend cannot constrain decoding to a grammar",
                           where="GenerationConfig.grammar",
                           fix="use the llama.cpp engine (--engine llamacpp), or leave grammar unset")
