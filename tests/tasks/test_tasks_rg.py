"""rg: suites on real reasoning-gym: disjoint splits, no duplicates, stable ids, config parsing, refusals."""

from __future__ import annotations

import json
import logging
import re

import pytest

from procmem.core import ProcmemError, render_prompt
from procmem.tasks import TEST_SEED, TRAIN_SEED, load_suite, parse_rg_spec
from procmem.verifiers import RGVerifier, build_verifier

TINY = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"
"""About 200 distinct questions: small enough to exhaust, so dedup and splitting really get exercised."""


def test_splits_are_disjoint_and_free_of_duplicates_even_when_the_space_runs_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="procmem.tasks.rg"):
        train = load_suite(TINY, split="train", n=300)
        test = load_suite(TINY, split="test", n=300)
    assert 60 < len(train) < 300 and 60 < len(test) < 300  # each split keeps its own share of ~200 questions
    assert "only" in caplog.text and "distinct train questions" in caplog.text
    for tasks in (train, test):
        assert len({t.prompt for t in tasks}) == len(tasks) == len({t.id for t in tasks})
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    assert {t.split for t in train} == {"train"} and {t.split for t in test} == {"test"}
    assert {t.metadata["rg"]["seed"] for t in train} == {TRAIN_SEED}
    assert {t.metadata["rg"]["seed"] for t in test} == {TEST_SEED}


def test_splits_stay_disjoint_whatever_n_each_is_loaded_with() -> None:
    spec = "rg:products?min_terms=2&max_terms=2&min_digits=1&max_digits=2"
    small_train, big_test = load_suite(spec, split="train", n=5), load_suite(spec, split="test", n=120)
    big_train, small_test = load_suite(spec, split="train", n=120), load_suite(spec, split="test", n=5)
    assert not {t.prompt for t in small_train} & {t.prompt for t in big_test}
    assert not {t.prompt for t in big_train} & {t.prompt for t in small_test}


def test_loading_is_deterministic_and_more_items_only_append() -> None:
    spec = "rg:letter_counting?min_words=1&max_words=3"
    first, again, more = (load_suite(spec, split="test", n=k) for k in (8, 8, 20))
    assert [t.to_dict() for t in first] == [t.to_dict() for t in again]
    assert [t.id for t in more[:8]] == [t.id for t in first] and len(more) == 20


def test_tasks_have_stable_ids_hidden_answers_and_rescore_their_gold() -> None:
    tasks = load_suite(TINY, split="train", n=10)
    for task in tasks:
        assert re.fullmatch(r"rg:chain_sum:[0-9a-f]{12}", task.id)
        assert task.verifier == "rg:chain_sum" and task.suite == TINY
        verifier = build_verifier(task)
        assert isinstance(verifier, RGVerifier)
        gold = verifier.entry["answer"]
        assert task.prompt == verifier.entry["question"].strip()
        assert "answer" not in json.dumps(task.metadata)
        assert verifier.verify(gold).passed
        assert "\n" not in gold and render_prompt(task.prompt).endswith("Answer:")


def test_query_values_are_read_by_the_type_of_each_config_field() -> None:
    name, config = parse_rg_spec("rg:basic_arithmetic?min_terms=2&max_terms=3&operators=+,-"
                                 "&allow_parentheses=false&format_style=natural")
    assert name == "basic_arithmetic"
    assert config == {"min_terms": 2, "max_terms": 3, "operators": ["+", "-"], "allow_parentheses": False,
                      "format_style": "natural"}
    assert parse_rg_spec("rg:chain_sum?min_digits=%32")[1] == {"min_digits": 2}  # URL-decoded
    tasks = load_suite("rg:basic_arithmetic?min_terms=2&max_terms=2&operators=+&allow_negation=false", n=5)
    assert all("+" in t.prompt and "*" not in t.prompt for t in tasks)


@pytest.mark.parametrize(("spec", "problem"), [
    ("rg:no_such_dataset", "unknown reasoning-gym dataset 'no_such_dataset'"),
    ("rg:chain_sums", "did you mean chain_sum"),
    ("rg:chain_sum?min_term=2", "chain_sum has no option 'min_term'"),
    ("rg:chain_sum?min_terms", "is not key=value"),
    ("rg:chain_sum?min_terms=two", "min_terms='two' is not a valid int"),
    ("rg:chain_sum?allow_negation=maybe", "is not a valid bool"),
    ("rg:chain_sum?min_terms=2&min_terms=3", "given twice"),
    ("rg:chain_sum?seed=5", "'seed' is set by procmem"),
    ("rg:chain_sum?min_terms=5&max_terms=2", "rejected the config"),
    ("rg:game_of_life_halting", "refused: its scorer gives any non-empty answer a full score"),
    ("rg:family_relationships", "refused: its in-law relationship labels are wrong"),
    ("rg:rotate_matrix", "the gold answer spans several lines"),
])
def test_bad_rg_specs_are_one_line_errors_naming_the_spec(spec: str, problem: str) -> None:
    with pytest.raises(ProcmemError) as err:
        load_suite(spec, split="train", n=3)
    message = str(err.value)
    assert message.startswith(f"{spec}: ") and problem in message and "\n" not in message


def test_rg_needs_a_split() -> None:
    with pytest.raises(ProcmemError, match="need a split"):
        load_suite(TINY, split=None)


def test_cellpylib_and_matplotlib_load_only_for_the_datasets_that_use_them() -> None:
    """reasoning-gym imports cellpylib (and with it matplotlib, a third of its import time) for two game-of-life
    datasets; procmem imports it on their first use, and they still work."""
    import subprocess
    import sys

    code = ("import sys; from procmem.tasks.rg import load_rg, rg_dataset, rg_entry; "
            "load_rg('rg:chain_sum', split='train', n=2); print('matplotlib' in sys.modules); "
            "entry = rg_entry(rg_dataset('game_of_life', {}, 0, 2, where='test'), 0); "
            "print('matplotlib' in sys.modules, 'Game of Life' in entry['question'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr
