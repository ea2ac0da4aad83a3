"""Reflection: the policy model reads a problem's attempts and writes strategies and lessons; and pattern
summaries. Structured prompts, a tolerant parser, and validation.

Small models write messy text, so the parser accepts the asked-for ``STRATEGY: ...`` / ``LESSON: ...``
lines with bullets, numbering, markdown and synonyms around them, or a JSON object; validation then drops
anything that is not a usable piece of advice (too short or long, mostly symbols, repeated words, an echo
of the prompt's placeholders, a strategy for a problem that never passed, a lesson for one that never
failed). A reflection with no valid item is *unparseable*: it is counted and nothing is stored.

memory/ knows no model: the reflector is any :class:`procmem.core.llm.LLM` (every ``procmem.llm`` backend).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from procmem.core import GenerationConfig
from procmem.core.keys import normalize_question
from procmem.memory.entries import Kind
from procmem.memory.problems import Problem

__all__ = [
    "GRAMMAR_LINES",
    "REFLECTION_FORMAT",
    "ParsedItem",
    "ParsedReflection",
    "parse_reflection",
    "pattern_grammar",
    "pattern_prompt",
    "reflection_generation",
    "reflection_grammar",
    "reflection_primer",
    "reflection_prompt",
]

REFLECTION_FORMAT = "4"
"""Version of the prompts and parser; part of every problem's reflection signature, so that a new format
reflects again."""
MIN_CHARS = 15
MAX_CHARS = 300
_ANSWER_CHARS = 160
_FEEDBACK_CHARS = 200

_REFLECTION_HEADER = (
    "Each review below reads the attempts at one problem and the verifier's verdicts, then gives short advice "
    "for similar problems, at most {max_items} lines: STRATEGY lines say what made an answer pass, LESSON lines "
    "say what went wrong and how to avoid it."
)

# Worked reviews (few-shot): the policy is usually a base model without a chat template, which follows a
# pattern far better than an instruction. Their domains differ from the task suites, and an item that
# copies them is rejected as an echo.
_REFLECTION_EXAMPLES = """Problem: How many days are there in 3 weeks?
Attempt 1 answer: 21 days
Verdict: FAIL. Feedback: expected an integer, got '21 days'
Attempt 2 answer: 21
Verdict: PASS
Advice:
LESSON: When asked how many days, the answer 21 days failed for its unit -> write the integer alone.
STRATEGY: When converting weeks to days, multiply the weeks by seven.

Problem: Which month comes two months after November?
Attempt 1 answer: December
Verdict: FAIL. Feedback: 'December' is not the correct answer
Attempt 2 answer: December
Verdict: FAIL. Feedback: 'December' is not the correct answer
Advice:
LESSON: When counting months forward, December was only one step -> count each step and wrap after December.
LESSON: When the same answer failed twice, repeating it again cannot pass -> redo the steps from the start.

Problem: What is the capital city of Canada?
Attempt 1 answer: Ottawa
Verdict: PASS
Advice:
STRATEGY: When naming a capital city, give the name of the city alone, spelled in full."""

_PATTERN_EXAMPLE = """Advice learned on different problems:
- The answer 21 days failed because it had a unit -> write the bare integer only.
- Wrote 5 hours instead of 5 -> give the number without its unit.
PATTERN: Give the bare number as the answer, with no unit or words around it.

Advice learned on different problems:
- Counted only one month forward -> step forward one month at a time.
- Skipped a weekday when counting days -> count each day one by one.
PATTERN: Count forward one step at a time and check every step.

Advice learned on different problems:
{items}
PATTERN:"""

_ECHOES = ("21 days", "weeks by seven", "wrap after december", "november", "how many days", "counting months",
           "weekday", "5 hours", "instead of 1000", "conversion factor", "kilometre", "which side each",
           "spelling a word backwards", "from the last one to the first", "failed twice",
           "capital city", "name of the city",
           "what made an answer pass", "what went wrong and how to avoid it")
_ANSWER_CLAIM = re.compile(
    r"^(the\s+)?(correct\s+|final\s+|right\s+)?answer\s+(is|was|should be|=)\s*[^,;]{0,24}[.!]?$"
    r"|^[^,;]{1,24}?\s+(is|was)\s+the\s+(correct\s+|final\s+|right\s+)?answer[.!]?$", re.IGNORECASE)
"""An item that only states an answer ("The answer is 10.") is not advice, and is often wrong."""

_PLACEHOLDER = re.compile(r"<[^<>]{3,}>")
_BULLET = re.compile(r"^\s*(?:[-*•·>]+|\d+[.)]|\(\d+\)|#+)?\s*")
_LABELLED = re.compile(r"^\W*(?P<label>[a-z' ]{2,20}?)\s*\d*\W*?\s*[:=\-–—]\s*(?P<text>.+)$", re.IGNORECASE)
_JSON_BLOCK = re.compile(r"\{.*\}|\[.*\]", re.DOTALL)
_WORD = re.compile(r"[^\W\d_]{2,}")

_LABELS: dict[str, Kind] = {
    "strategy": "strategy", "strategies": "strategy", "do": "strategy", "tip": "strategy", "rule": "strategy",
    "keep": "strategy", "works": "strategy", "what worked": "strategy", "success": "strategy",
    "lesson": "lesson", "lessons": "lesson", "avoid": "lesson", "mistake": "lesson", "don't": "lesson",
    "dont": "lesson", "do not": "lesson", "pitfall": "lesson", "error": "lesson", "fix": "lesson",
    "pattern": "pattern", "patterns": "pattern", "general rule": "pattern",
}


@dataclass(frozen=True)
class ParsedItem:
    kind: Kind
    text: str


@dataclass(frozen=True)
class ParsedReflection:
    """The valid items of one model output, and what was dropped and why."""

    items: tuple[ParsedItem, ...]
    rejected: tuple[tuple[str, str], ...] = ()
    """(text, reason) of every candidate that failed validation."""

    @property
    def unparseable(self) -> bool:
        return not self.items


def reflection_generation(max_tokens: int) -> GenerationConfig:
    """Greedy decoding that stops at a blank line or when the model starts a new problem."""
    return GenerationConfig(max_tokens=max_tokens, temperature=0.0, top_p=1.0,
                            stop=("\n\n", "\nProblem:", "\nQuestion:"), seed=None)


GRAMMAR_LINES = 2
"""Most lines a constrained reflection may write (a small model repeats itself after two)."""
_ADVICE_RULES = (
    'advice ::= first " " letters " " letters (" " word){3,11} "."',
    "first ::= [A-Z] [a-z]{1,13}",
    "letters ::= [a-zA-Z] [a-z]{1,13}",
    'word ::= [a-zA-Z] [a-z]{0,13} ","? | [0-9]{1,2} | "->" | "(" [a-z]{1,12} ")"',
)


def reflection_grammar(problem: Problem, *, max_items: int = 4) -> str:
    """The GBNF grammar a reflection's completion must follow (it continues :func:`reflection_primer`): one
    to ``min(max_items, GRAMMAR_LINES)`` lines, each a sentence of 6 to 14 words, the first three of them
    words of 2 letters or more, numbers of at most 2 digits (so letters dominate, as validation wants), ended by
    a full stop; a later line starts with a label the problem supports
    (``LESSON:`` needs a failed attempt, ``STRATEGY:`` a passed one). Under it every completion has the
    parser's form; only content checks (an echo of the examples, repeated words, a bare answer) can still
    reject an item."""
    labels = [f'"{label}"' for label, ok in (("LESSON:", problem.has_failure), ("STRATEGY:", problem.has_pass))
              if ok]
    more = max(0, min(max_items, GRAMMAR_LINES) - 1)
    return "\n".join([
        f'root ::= " " advice ("\\n" label " " advice){{0,{more}}}',
        f"label ::= {' | '.join(labels)}",
        *_ADVICE_RULES,
    ])


def pattern_grammar() -> str:
    """The GBNF grammar of a pattern summary's completion (it continues ``PATTERN:``): one sentence of
    :func:`reflection_grammar`'s form."""
    return "\n".join(['root ::= " " advice', *_ADVICE_RULES])


def reflection_prompt(problem: Problem, *, max_items: int = 4, max_attempts: int = 6) -> str:
    """The prompt that asks the model to contrast a problem's passed and failed attempts. It ends with
    :func:`reflection_primer`, so the model's completion continues the first item."""
    lines = [_REFLECTION_HEADER.format(max_items=max_items), "", _REFLECTION_EXAMPLES, "",
             f"Problem: {_one_line(problem.prompt)}"]
    attempts = [a for e in problem.episodes for a in e.attempts][-max_attempts:]
    for number, attempt in enumerate(attempts, start=1):
        lines.append(f"Attempt {number} answer: {_clip(attempt.answer, _ANSWER_CHARS) or '(empty)'}")
        verdict = "PASS" if attempt.verdict.passed else "FAIL"
        feedback = _clip(attempt.verdict.feedback, _FEEDBACK_CHARS)
        lines.append(f"Verdict: {verdict}" + (f". Feedback: {feedback}" if feedback and not attempt.verdict.passed
                                              else ""))
    lines += ["Advice:", reflection_primer(problem)]
    return "\n".join(lines)


def reflection_primer(problem: Problem) -> str:
    """How the reflection prompt ends: the label of the first item the problem can support (a lesson
    when anything failed, else a strategy). Parse ``primer + completion``."""
    return "LESSON:" if problem.has_failure else "STRATEGY:"


def pattern_prompt(texts: Sequence[str]) -> str:
    """The prompt that asks the model for the one rule a cluster of insights shares. The model's
    completion continues after ``PATTERN:``."""
    items = "\n".join(f"- {_one_line(t)}" for t in texts)
    return _PATTERN_EXAMPLE.format(items=items)


def parse_reflection(text: str, *, allowed: Sequence[Kind] = ("strategy", "lesson"), max_items: int = 4,
                     has_pass: bool = True, has_failure: bool = True, default_kind: Kind | None = None
                     ) -> ParsedReflection:
    """Parse a model's reflection into valid items (tolerant of format, strict on content).

    ``has_pass``/``has_failure`` say what the problem holds: a strategy needs a pass, a lesson a failure.
    ``default_kind`` labels a lone unlabelled line (a pattern completion that follows ``PATTERN:``).
    """
    candidates = _from_json(text) or _from_lines(text, default_kind)
    items: list[ParsedItem] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    for kind, raw in candidates:
        clean = _clean(raw)
        reason = _invalid(kind, clean, allowed=allowed, has_pass=has_pass, has_failure=has_failure)
        key = normalize_question(clean)
        if reason is None and key in seen:
            reason = "repeated"
        if reason is None and len(items) >= max_items:
            reason = "over the item limit"
        if reason is not None:
            rejected.append((clean, reason))
            continue
        seen.add(key)
        items.append(ParsedItem(kind, clean))
    return ParsedReflection(tuple(items), tuple(rejected))


def _from_lines(text: str, default_kind: Kind | None) -> list[tuple[Kind, str]]:
    found: list[tuple[Kind, str]] = []
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        body = _BULLET.sub("", line.replace("**", "").replace("__", "")).strip()
        match = _LABELLED.match(body)
        label = " ".join(match.group("label").lower().split()) if match else ""
        if match and label in _LABELS:
            found.append((_LABELS[label], match.group("text")))
        elif default_kind is not None and len(lines) == 1:
            found.append((default_kind, body))
    return found


def _from_json(text: str) -> list[tuple[Kind, str]]:
    block = _JSON_BLOCK.search(text)
    if block is None:
        return []
    try:
        data = json.loads(block.group(0))
    except ValueError:
        return []
    found: list[tuple[Kind, str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            kind = _LABELS.get(str(key).lower().strip())
            values = value if isinstance(value, list) else [value]
            found += [(kind, str(v)) for v in values if kind is not None and isinstance(v, str | int | float)]
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict):
                kind = _LABELS.get(str(item.get("kind") or item.get("type") or "").lower().strip())
                body = item.get("text") or item.get("advice")
                if kind is not None and isinstance(body, str):
                    found.append((kind, body))
    return found


def _clean(text: str) -> str:
    text = _one_line(text).strip(" \"'`*_")
    repeated = _LABELLED.match(text)  # "STRATEGY: STRATEGY: ..." (a model repeating the primer)
    if repeated and " ".join(repeated.group("label").lower().split()) in _LABELS:
        text = repeated.group("text").strip(" \"'`*_")
    return text.replace(" -> ", " → ").replace("->", " → ").replace("  ", " ")


def _invalid(kind: Kind, text: str, *, allowed: Sequence[Kind], has_pass: bool, has_failure: bool
             ) -> str | None:
    """Why ``text`` is not usable advice of ``kind``, or None when it is."""
    if kind not in allowed:
        return f"{kind} not asked for here"
    if kind == "strategy" and not has_pass:
        return "a strategy needs a passed attempt"
    if kind == "lesson" and not has_failure:
        return "a lesson needs a failed attempt"
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        return f"length {len(text)} outside {MIN_CHARS}..{MAX_CHARS}"
    if _PLACEHOLDER.search(text):
        return "echoes a placeholder"
    if any(normalize_question(echo) in normalize_question(text) for echo in _ECHOES):
        return "echoes the prompt"
    if _ANSWER_CLAIM.match(text):
        return "states an answer, not advice"
    words = _WORD.findall(text)
    if len(words) < 3:
        return "fewer than 3 words"
    visible = [c for c in text if not c.isspace()]
    if sum(c.isalpha() for c in visible) < 0.6 * len(visible):
        return "mostly symbols"
    lowered = [w.lower() for w in words]
    if len(lowered) >= 6 and len(set(lowered)) < 0.4 * len(lowered):
        return "repeated words"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"

