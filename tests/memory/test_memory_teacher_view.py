"""The distillation teacher's view of memory (real Chroma, MiniLM): worked examples as the agent gets them, and only
the advice the verifier validated in use; a person's playbook always."""

from __future__ import annotations

import pytest
from memory_helpers import entry, episode

from procmem.core import Task
from procmem.core.keys import problem_key
from procmem.memory import MemoryConfig, ProceduralMemory
from procmem.memory._hygiene import teacher_validated, wilson_lower
from procmem.memory.config import TeacherConfig

SUM = "What is 23 + 45?"
CARRY = "Add the ones digits first, then carry into the tens."
DIGITS = "Answer with the final number only, written in digits."
PLAYBOOK = "Write the sum alone, in digits, after Answer:."
WORKED = f"Question: {SUM}\nAnswer: 68"


def _task() -> Task:
    return Task(id="new", prompt="What is 52 + 36?", verifier="exact:88", suite="rg:chain_sum")


@pytest.fixture
def advised(pmem: ProceduralMemory) -> ProceduralMemory:
    """A solved sum and three failed ones (the suite passes 1 in 4), a fresh reflected strategy and pattern on the
    sum, and an operator playbook scoped to the suite."""
    pmem.record(episode("sum", SUM, ["sixty-eight", "68"]))
    for i in range(3):
        pmem.record(episode(f"miss{i}", f"Name a colour that starts with letter {i}.", ["blue"], passed=False))
    pmem.write_entry(entry(CARRY, problem=problem_key(SUM)))
    pmem.write_entry(entry(DIGITS, kind="pattern", problem=problem_key(SUM)))
    pmem.write_entry(entry(PLAYBOOK, problem="operator", source="operator", scope="rg:chain_sum"))
    return pmem


def _use(memory: ProceduralMemory, advice: str, *, passes: int, failures: int, kind: str = "strategy") -> None:
    """Episodes of the suite that had ``advice`` in their prompt and passed or failed (as the agent records them);
    their questions are far from the sums, so they do not crowd the sum out of the nearest problems."""
    used = entry(advice, kind=kind, problem=problem_key(SUM)).id
    for i in range(passes + failures):
        done = memory.after_episode(episode(f"{used}-{i}", f"Spell word {i} backwards.", ["drow"], passed=i < passes,
                                            memory_ids=(used,)))
        assert done.counted == (used,)


def test_new_reflected_advice_reaches_the_agent_but_not_the_teacher(advised: ProceduralMemory) -> None:
    agent = advised.retriever().retrieve(_task(), 2).text
    teacher = advised.teacher_retriever().retrieve(_task(), 2).text
    assert CARRY in agent and DIGITS in agent and PLAYBOOK in agent
    assert CARRY not in teacher and DIGITS not in teacher, teacher
    assert PLAYBOOK in teacher, "a person's playbook is not a guess: the teacher reads it at once"
    assert WORKED in teacher and WORKED in agent, "worked examples are verified: both read them"


def test_advice_the_verifier_validated_in_use_reaches_the_teacher(advised: ProceduralMemory) -> None:
    _use(advised, CARRY, passes=8, failures=0)  # suite: 9 passes in 12 episodes (0.75); in use 8/8 (Wilson 0.89)
    _use(advised, DIGITS, passes=0, failures=5, kind="pattern")  # used as often, always failed: still not read
    teacher = advised.teacher_retriever().retrieve(_task(), 2).text
    assert CARRY in teacher and DIGITS not in teacher, teacher
    assert DIGITS in advised.retriever().retrieve(_task(), 2).text, "the agent keeps trying it (it is not retired)"


def test_advice_that_passes_no_more_often_than_its_suite_is_not_validated(advised: ProceduralMemory) -> None:
    _use(advised, CARRY, passes=2, failures=4)  # 2/6 in use; the suite: 3 passes in 10 episodes
    stored = advised.entry(entry(CARRY, problem=problem_key(SUM)).id)
    assert stored is not None and (stored.helpful, stored.uses, stored.status) == (2, 6, "active")
    assert CARRY not in advised.teacher_retriever().retrieve(_task(), 2).text


def test_the_teacher_reads_all_advice_when_validation_is_off(advised: ProceduralMemory) -> None:
    advised.config = MemoryConfig(teacher=TeacherConfig(validated_advice_only=False))
    assert advised.teacher_retriever().retrieve(_task(), 2) == advised.retriever().retrieve(_task(), 2)


def test_the_validation_rule() -> None:
    config = TeacherConfig()
    assert wilson_lower(0, 0, 1.0) == 0.0 and wilson_lower(5, 5, 0.0) == 1.0
    assert wilson_lower(8, 8, 1.0) == pytest.approx(0.8889, abs=1e-4)
    assert wilson_lower(15, 74, 1.0) == pytest.approx(0.1606, abs=1e-3)
    fresh = entry(CARRY)
    assert not teacher_validated(fresh, 0.0, config), "no uses: no evidence, even against a suite that never passes"
    four_of_four = entry(CARRY, helpful=4, uses=4)
    assert not teacher_validated(four_of_four, 0.1, config), "fewer than min_uses"
    assert teacher_validated(entry(CARRY, helpful=5, uses=5), 0.1, config)
    assert not teacher_validated(entry(CARRY, helpful=16, harmful=59, uses=75), 0.187, config), \
        "21% in use against a suite at 18.7%: within the noise (a pattern from the paper run)"
    assert teacher_validated(entry(CARRY, source="operator"), 1.0, config)
    assert teacher_validated(fresh, 1.0, TeacherConfig(validated_advice_only=False))
