"""Reflection: the policy model reads a problem's attempts and writes strategies and lessons; and pattern
summaries. Structured prompts, a tolerant parser, and validation.

Small models write messy text, so the parser accepts the asked-for ``STRATEGY: ...`` / ``LESSON: ...``
lines with bullets, numbering, markdown and synonyms around them, or a JSON object; validation then drops
anything that is not a usable piece of advice (too short or long, mostly symbols, repeated words, an echo
of the prompt's placeholders or of a worked example's words, a bare answer, a strategy for a problem that never
passed, a lesson for one that never failed). A reflection with no valid item is *unparseable*: it is counted
and nothing is stored.

A small model copies the worked example closest to its problem. So each prompt shows a few examples far from
its problem (:func:`reflection_examples`), and on engines that honour grammars every line must speak of its
own problem (:func:`reflection_grammar`): a lesson opens with the answer that failed, a strategy names a word
of the question.

memory/ knows no model: the reflector is any :class:`procmem.core.llm.LLM` (every ``procmem.llm`` backend).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from procmem.core import GenerationConfig
from procmem.core.keys import normalize_question
from procmem.memory._entries import Kind
from procmem.memory._problems import Problem

__all__ = [
    "GRAMMAR_LINES",
    "REFLECTION_FORMAT",
    "ParsedItem",
    "ParsedReflection",
    "parse_reflection",
    "pattern_grammar",
    "pattern_prompt",
    "problem_anchors",
    "reflection_examples",
    "reflection_generation",
    "reflection_grammar",
    "reflection_primer",
    "reflection_prompt",
]

REFLECTION_FORMAT = "7"
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
# pattern far better than an instruction. A small model copies the review closest to its problem, so their
# domains are far from the task suites (no arithmetic, no counting of letters), and each prompt shows only
# ``_SHOWN_EXAMPLES`` of them: those that share no content word or word pair with the problem, rotated by the
# problem's key (:func:`reflection_examples`). An item that repeats a run of words of any review is rejected as
# an echo (``_ECHO_SHINGLES``, ``_DOMAIN_SHINGLES``).
_REFLECTION_EXAMPLES: tuple[str, ...] = (
    """Problem: What is the plural of mouse?
Attempt 1 answer: mouses
Verdict: FAIL. Feedback: 'mouses' is not the correct answer
Attempt 2 answer: mice
Verdict: PASS
Advice:
LESSON: When mouses failed, mouse has an irregular plural -> use mice instead of adding an s.
STRATEGY: When forming the plural of mouse, use the irregular form mice.""",
    """Problem: Which month comes two months after November?
Attempt 1 answer: December
Verdict: FAIL. Feedback: 'December' is not the correct answer
Attempt 2 answer: December
Verdict: FAIL. Feedback: 'December' is not the correct answer
Advice:
LESSON: When December failed, November plus one month had been counted -> count two months on to January.
LESSON: When December failed twice, repeating it cannot pass -> count the months again from November.""",
    """Problem: What is the capital city of Canada?
Attempt 1 answer: Ottawa
Verdict: PASS
Advice:
STRATEGY: When naming the capital of Canada, give Ottawa, the seat of its government.""",
    """Problem: What colour do blue and yellow paint make when mixed?
Attempt 1 answer: it makes green
Verdict: FAIL. Feedback: expected one word, got 'it makes green'
Attempt 2 answer: green
Verdict: PASS
Advice:
LESSON: When it makes green failed for its extra words -> reply with the colour green alone.
STRATEGY: When mixing blue and yellow paint, name the colour they make together.""",
    """Problem: Name the planet closest to the Sun.
Attempt 1 answer: Venus
Verdict: FAIL. Feedback: 'Venus' is not the correct answer
Attempt 2 answer: Earth
Verdict: FAIL. Feedback: 'Earth' is not the correct answer
Advice:
LESSON: When Venus failed, Venus is the second planet from the Sun -> start the list at Mercury.""",
    """Problem: What is the opposite of ancient?
Attempt 1 answer: modern
Verdict: PASS
Advice:
STRATEGY: When asked for the opposite of ancient, choose modern, since ancient means old.""",
    """Problem: Which ocean lies between Africa and Australia?
Attempt 1 answer: Atlantic
Verdict: FAIL. Feedback: 'Atlantic' is not the correct answer
Attempt 2 answer: Indian Ocean
Verdict: PASS
Advice:
LESSON: When Atlantic failed, that ocean lies west of Africa -> look east of Africa, towards Australia.
STRATEGY: When locating the ocean between Africa and Australia, name the Indian Ocean.""",
    """Problem: Sort by length, shortest first: pear, fig, banana
Attempt 1 answer: banana, pear, fig
Verdict: FAIL. Feedback: 'banana, pear, fig' is not the correct answer
Advice:
LESSON: When banana, pear, fig failed, banana came first -> put fig, the shortest fruit, first.""",
    """Problem: Which animal is a mammal: shark, dolphin or trout?
Attempt 1 answer: dolphin
Verdict: PASS
Advice:
STRATEGY: When picking the mammal among shark, dolphin and trout, choose the animal that breathes air.""",
)
_SHOWN_EXAMPLES = 3
"""Worked reviews shown in one reflection prompt."""

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
           "spelling a word backwards", "from the last one to the first",
           "capital city", "name of the city",
           "what made an answer pass", "what went wrong and how to avoid it")
_ANSWER_CLAIM = re.compile(
    r"^(the\s+)?(correct\s+|final\s+|right\s+)?answer\s+(is|was|should be|=)\s*[^,;]{0,24}[.!]?$"
    r"|^[^,;]{1,24}?\s+(is|was)\s+the\s+(correct\s+|final\s+|right\s+)?answer[.!]?$", re.IGNORECASE)
"""An item (or its last clause) that only states an answer ("The answer is 10.", "When counting, 1 is the
correct answer.") is not advice, and is often wrong."""
_CLAUSE = re.compile(r"[,;]|->|→")

_PLACEHOLDER = re.compile(r"<[^<>]{3,}>")
_BULLET = re.compile(r"^\s*(?:[-*•·>]+|\d+[.)]|\(\d+\)|#+)?\s*")
_LABELLED = re.compile(r"^\W*(?P<label>[a-z' ]{2,20}?)\s*\d*\W*?\s*[:=\-–—]\s*(?P<text>.+)$", re.IGNORECASE)
_JSON_BLOCK = re.compile(r"\{.*\}|\[.*\]", re.DOTALL)
_WORD = re.compile(r"[^\W\d_]{2,}")
_ANCHOR = re.compile(r"[a-z]{3,14}|[0-9]{1,3}(?![0-9])")
_SHINGLE = 4
_TOKEN = re.compile(r"[a-z0-9]+")

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
_VERBS = ("add", "avoid", "check", "choose", "compare", "count", "divide", "do not", "find", "give", "keep", "list",
          "look", "multiply", "name", "never", "put", "read", "reply", "spell", "start", "subtract", "take", "try",
          "use", "work out", "write")
"""Imperatives the advice of a strategy or lesson opens with (generic: none names a task)."""
_VOCABULARY_TEXT = """
a about above add added adding after again all alone also always an and another answer answered answers any
are as at away be before begin below between both but by calculate call can carry change character characters
check checked choose clause compare copy correct count counted counting cut decimal did different digit digits
divide divided do does double each either else end equal equals even every exact exactly extra fail failed
false few find first fix follow for form format from full get give given gives go greater half has have higher
how if in include instead integer into is it its itself join just keep last least left less line list long
longer look lower make makes many mark match minus missed missing more most much multiply must name need needs
negative never new next no not note nothing number numbers of off on once one only or order other out over pair
part pass passed place plus position positive product products put question quotient read remainder remove
repeat repeating reply result right same say second see separate short shorter show sign single size skip small
smaller so space spell split start state step steps subtract sum take tens than that the their them then there
these they third this those three through times to together total true try twice two under unit units until up
use used using value values was way well were what when where whether which while whole with without word words
work write wrong zero
"""
_VOCABULARY = tuple(dict.fromkeys((*_VOCABULARY_TEXT.split(), *(w for verb in _VERBS for w in verb.split()))))
"""The words a constrained reflection may write besides its problem's own (:func:`problem_anchors`), numbers and
quoted letters: the language of procedures (steps, digits, order, checks), none of it a worked review's subject
(no mouse, month, ocean or planet), so that a small model cannot copy a review instead of reading its problem."""
_COPULAS = frozenset({"is", "was", "are", "were", "be"})
"""Words a situation may use but advice may not: advice says what to do ("find the least common multiple"),
and a small model that may write "is" after its verb ends with "the answer is 36", which validation rejects."""
_ADVICE_RULES = (
    "letters ::= said \",\"?",
    'word ::= said ","? | number ","? " " said ","? | quoted ","? | "->" | "(" said ")"',
    'situation ::= (","? " " (plain | number)){0,6}',
    "plain ::= known | quoted",
    'number ::= "-"? [0-9]{1,3}',
    "quoted ::= \"'\" ([a-zA-Z] | known) \"'\"",
    'end ::= (" " number)? "."',
)
"""Advice words (``word``) are said without a copula; a number is followed by a word or ends the line (a small
model otherwise loops on "15, 15, 15, ..."). A situation may list numbers and words with commas."""
_FREE_ADVICE = 'advice ::= first (" " letters){2} (" " word){3,11} end'
_PROCEDURE = 'procedure ::= "When " (plain " "){0,3} anchor situation ", " verb (" " word){2,14} end'
"""A procedure: ``When <its situation, naming a word of the question>, <an imperative> ...``: every strategy,
and a lesson that cannot open with its failed answer."""
_VERB = "verb ::= " + " | ".join(f'"{verb}"' for verb in _VERBS)
_MAX_ANCHORS = 40
_ANCHOR_SUFFIX = '("s" | "es" | "ed" | "ing")?'
_ANCHOR_ANSWER_WORDS = 3
_STOPWORD_TEXT = """
a an and any are as at be been but by can do does each for from give given has have how if in into is it its
let many may more most much must not of on one only or other own please put result results same so some such
than that the their them then there these they this those to too was were what when where which while who why
will with without would you your answer answers final following problem question solve state tell write
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
"""Words that name no problem: no anchor, and no content word of a copied phrase."""


def _trie(words: Sequence[str]) -> str:
    """A GBNF expression matching exactly ``words``, as a trie: a shared prefix is written once, so the engine
    tracks one branch per distinct next letter rather than one per word."""
    root: dict[str, dict] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    return _trie_node(root)


def _trie_node(node: dict[str, dict]) -> str:
    branches = []
    for char, child in sorted((c, n) for c, n in node.items() if c):
        run = char
        while len(child) == 1 and "" not in child:
            ((char, child),) = child.items()
            run += char
        rest = _trie_node(child)
        branches.append(f'"{run}" {rest}' if rest else f'"{run}"')
    if not branches:
        return ""
    alternatives = " | ".join(branches)
    if "" in node:
        return f"({alternatives})?"
    return f"({alternatives})" if len(branches) > 1 else alternatives


_VOCABULARY_RULES = (f"vocabulary ::= {_trie(_VOCABULARY)}",
                     f"spoken ::= {_trie([w for w in _VOCABULARY if w not in _COPULAS])}",
                     f"first ::= {_trie([w.capitalize() for w in _VOCABULARY])}")
"""Grammar rules: ``vocabulary``, a word of :data:`_VOCABULARY`; ``spoken``, one that is not a copula;
``first``, one capitalised to open a line."""
_ANCHORLESS_RULES = ("known ::= vocabulary", "said ::= spoken")


def reflection_grammar(problem: Problem, *, max_items: int = 4) -> str:
    """The GBNF grammar a reflection's completion must follow (it continues :func:`reflection_primer`): one
    to ``min(max_items, GRAMMAR_LINES)`` lines, each one sentence of bounded length ended by a full stop; a
    later line starts with a label the problem supports (``LESSON:`` needs a failed attempt, ``STRATEGY:`` a
    passed one).

    Each line must speak of its own problem, so that it cannot reproduce a worked example (whose words are
    another problem's): a lesson opens with ``When <a failed answer> failed`` (the verifier's fact; the model
    may say why, then what to do, after a comma or ``->``, starting with an imperative); a strategy (and a lesson
    whose failed answers are too long to quote) is a procedure, ``When <situation>, <imperative> ...``, whose
    situation names an *anchor* of the problem (a content word or number of its question or short answers,
    :func:`problem_anchors`) within its first four words. Every other word is a procedure word
    (:data:`_VOCABULARY`), one of the problem's anchors, a number followed by a word or ending the line, or a
    quoted letter. Under it every completion has the parser's form; content checks (a run of a worked example's
    words, repeated words, a stated answer) can still reject an item."""
    more = max(0, min(max_items, GRAMMAR_LINES) - 1)
    anchors = problem_anchors(problem)
    opening = "procedure" if anchors else "advice"
    rules = [_PROCEDURE, *_anchor_rules(anchors)] if anchors else [_FREE_ADVICE, *_ANCHORLESS_RULES]
    failed = " | ".join(f'"{answer}"' for answer in _failed_answers(problem))
    lesson = (f'"When " ({failed}) " failed" situation ("," | " ->") " " verb (" " word){{1,12}} end'
              if failed else opening)
    rules += [f"lesson ::= {lesson}", f"strategy ::= {opening}", _VERB]
    lines = [f'"{label}: " {label.lower()}' for label, ok in (("LESSON", problem.has_failure),
                                                              ("STRATEGY", problem.has_pass)) if ok]
    return "\n".join([
        f'root ::= " " {"lesson" if problem.has_failure else "strategy"} ("\\n" line){{0,{more}}}',
        f"line ::= {' | '.join(lines)}",
        *rules,
        *_ADVICE_RULES,
        *_VOCABULARY_RULES,
    ])


def _anchor_rules(anchors: Sequence[str]) -> list[str]:
    """``anchor``: a word (with a plural or verb ending) or number of the problem; ``known`` and ``said``: a word
    a situation or an advice may write, from the vocabulary (``said``: without copulas) or the problem's own
    words (its numbers go through ``number``)."""
    words = [a for a in anchors if not a.isdigit()]
    numbers = [a for a in anchors if a.isdigit()]
    quoted = [f'"{w}"' for w in words]  # anchors are [a-z0-9]: nothing to escape
    own = [f"own ::= ({' | '.join(quoted)}) {_ANCHOR_SUFFIX}"] if words else []
    either = " | ".join([*(["own"] if words else []), *(f'"{n}"' for n in numbers)])
    mine = " | own" if words else ""
    return [*own, f"anchor ::= {either}", f"known ::= vocabulary{mine}", f"said ::= spoken{mine}"]


def _failed_answers(problem: Problem) -> tuple[str, ...]:
    """The failed answers a lesson may open with: short (at most ``_ANCHOR_ANSWER_WORDS`` words, one line) and
    free of the characters a GBNF literal would need escaped."""
    found = (" ".join(a.answer.split()) for a in problem.failed_attempts)
    return tuple(dict.fromkeys(a for a in found if a and len(a.split()) <= _ANCHOR_ANSWER_WORDS and len(a) <= 40
                               and not set(a) & set('"\\')))


def problem_anchors(problem: Problem) -> tuple[str, ...]:
    """The words a constrained reflection may name its problem by: the content words (not stop words) and
    numbers of the question and of its short answers (at most ``_ANCHOR_ANSWER_WORDS`` words), lower case, in
    order of first use (at most ``_MAX_ANCHORS``)."""
    answers = [a.answer for e in problem.episodes for a in e.attempts if len(a.answer.split()) <= _ANCHOR_ANSWER_WORDS]
    texts = [problem.prompt, *answers]
    found = [w for text in texts for w in _ANCHOR.findall(text.lower()) if w not in _STOPWORDS]
    return tuple(dict.fromkeys(found))[:_MAX_ANCHORS]


def pattern_grammar() -> str:
    """The GBNF grammar of a pattern summary's completion (it continues ``PATTERN:``): one sentence of
    :func:`reflection_grammar`'s form, with no anchor (a pattern spans problems)."""
    return "\n".join(['root ::= " " advice', _FREE_ADVICE, *_ANCHORLESS_RULES, *_ADVICE_RULES,
                      *_VOCABULARY_RULES])


def reflection_examples(problem: Problem) -> tuple[str, ...]:
    """The worked reviews one reflection prompt shows: ``_SHOWN_EXAMPLES`` of the pool, leaving out those
    whose question shares a content word or a pair of words in a row (such as "how many") with the problem's
    (while enough remain), in pool order from an offset that the problem's key picks, so that different
    problems see different reviews."""
    own = _cues(problem.prompt) | set(problem_anchors(problem))
    far = [e for e in _REFLECTION_EXAMPLES if not own & _cues(e.split("\n", 1)[0].removeprefix("Problem:"))]
    pool = far if len(far) >= _SHOWN_EXAMPLES else list(_REFLECTION_EXAMPLES)
    offset = int(hashlib.sha1(problem.key.encode()).hexdigest()[:8], 16) % len(pool)
    return tuple((pool + pool)[offset:offset + _SHOWN_EXAMPLES])


def _cues(text: str) -> set[str]:
    """What makes two questions look alike to a small model: their content words and word pairs."""
    words = _TOKEN.findall(text.lower())
    return {w for w in words if w not in _STOPWORDS} | {f"{a} {b}" for a, b in pairwise(words)}


def reflection_prompt(problem: Problem, *, max_items: int = 4, max_attempts: int = 6) -> str:
    """The prompt that asks the model to contrast a problem's passed and failed attempts, after the worked
    reviews of :func:`reflection_examples`. It ends with :func:`reflection_primer`, so the model's completion
    continues the first item."""
    lines = [_REFLECTION_HEADER.format(max_items=max_items), "", "\n\n".join(reflection_examples(problem)), "",
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
    if _shingles(text) & _ECHO_SHINGLES:
        return f"echoes the prompt ({_SHINGLE} words in a row of a worked example)"
    if _shingles(text, 3) & _DOMAIN_SHINGLES:
        return "echoes the prompt (3 words in a row about a worked example's subject)"
    if _ANSWER_CLAIM.match(text) or _ANSWER_CLAIM.match(_CLAUSE.split(text)[-1].strip()):
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


def _shingles(text: str, size: int = _SHINGLE) -> set[tuple[str, ...]]:
    words = _TOKEN.findall(text.lower())
    return {tuple(words[i:i + size]) for i in range(len(words) - size + 1)}


_ECHO_SHINGLES = frozenset(
    shingle
    for text in (_REFLECTION_HEADER, _PATTERN_EXAMPLE, *_REFLECTION_EXAMPLES)
    for line in text.splitlines() if not line.startswith(("Problem:", "Attempt", "Verdict:"))
    for shingle in _shingles(line.partition(":")[2] if _LABELLED.match(line) else line)
    if len(set(shingle) - _STOPWORDS) >= 2
)
"""Every run of ``_SHINGLE`` words of the worked examples' advice (and of the header's instructions) that holds
two content words (not "when asked for the"): an item holding one copies an example instead of reading its own
problem."""
_DOMAIN_SHINGLES = frozenset(
    shingle
    for example in _REFLECTION_EXAMPLES
    for subject in [set(_WORD.findall(example.split("\n", 1)[0].lower())) - _STOPWORDS - {"problem"}]
    for shingle in _shingles(example, 3) if subject & set(shingle)
)
"""Every run of 3 words of a worked example that names its subject (a content word of its question, such as
"capital of canada"): an item holding one is about the example, not its own problem."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"

