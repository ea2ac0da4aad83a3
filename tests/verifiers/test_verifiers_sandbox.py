"""The sandbox's minimal root: how it is planned, the fallback when it cannot be built, path scrubbing.

Runs go through the real sandbox; the hostile programs that probe the root are in
test_verifiers_hostile.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from procmem.core import Task
from procmem.verifiers import sandbox
from procmem.verifiers._sandbox_child import HIDDEN_PATH, scrub_paths
from procmem.verifiers.code import CodeSpec, CodeVerifier
from procmem.verifiers.sandbox import RootPlan, isolation_support

STRONG = isolation_support().level == "strong"
needs_strong = pytest.mark.skipif(not STRONG, reason=f"needs strong isolation, have: {isolation_support().describe()}")
ADD = "def add(a, b):\n    return a + b\n"


def _verifier(**kwargs: object) -> CodeVerifier:
    task = Task(id="t", prompt="Write add(a, b).", verifier="code:add", metadata={"io": [[[1, 2], 3]], "timeout_s": 5})
    return CodeVerifier(CodeSpec.from_task(task), **kwargs)  # type: ignore[arg-type]


# --- planning the root ------------------------------------------------------------------------------------


def test_trace_follows_relative_and_absolute_symlinks_and_records_them(tmp_path: Path) -> None:
    real = tmp_path / "usr" / "lib"
    real.mkdir(parents=True)
    (real / "libx.so.1.2").write_text("elf")
    (real / "libx.so.1").symlink_to("libx.so.1.2")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "lib64").symlink_to(str(tmp_path / "lib"))
    links: dict[str, str] = {}
    found = sandbox._trace(str(tmp_path / "lib64" / "." / "libx.so.1"), links)
    assert found == str(real / "libx.so.1.2")
    assert links == {str(tmp_path / "lib64"): str(tmp_path / "lib"), str(tmp_path / "lib"): "usr/lib",
                     str(real / "libx.so.1"): "libx.so.1.2"}
    assert sandbox._trace(str(real / ".." / "lib" / "libx.so.1.2"), {}) == str(real / "libx.so.1.2")


def test_root_plan_binds_each_real_path_once_and_keeps_links_outside_bound_folders(tmp_path: Path) -> None:
    stdlib = tmp_path / "py" / "lib"
    (stdlib / "lib-dynload").mkdir(parents=True)
    (stdlib / "lib-dynload" / "_x.so").write_text("elf")
    (stdlib / "alias").symlink_to("lib-dynload")
    (tmp_path / "libc.so.6").write_text("elf")
    (tmp_path / "libc.so").symlink_to("libc.so.6")
    found = {"path": [str(stdlib), str(stdlib / "lib-dynload")], "loaded": [str(tmp_path / "libc.so")],
             "mapped": [str(stdlib / "alias" / "_x.so"), "/proc/self/maps", "/nonexistent/lib.so"]}
    plan = sandbox._root_plan(str(tmp_path / "libc.so.6"), found)
    assert plan["binds"] == sorted([str(stdlib), str(tmp_path / "libc.so.6")])
    assert plan["links"] == [[str(tmp_path / "libc.so"), "libc.so.6"]]  # the one inside py/lib is seen through it
    assert plan["top"] == sorted({"dev", "proc", "tmp", tmp_path.parts[1]})


def test_scrub_paths_keeps_the_tree_and_replaces_the_rest() -> None:
    tree = ["/usr/lib/python3.11", "/usr/bin/python3.11", "/lib", "/tmp", "/proc", "/dev/null"]
    assert scrub_paths("No such file: '/etc/passwd'", tree) == f"No such file: '{HIDDEN_PATH}'"
    assert scrub_paths("see /usr/lib/python3.11/os.py, /usr and /tmp/x", tree) == (
        "see /usr/lib/python3.11/os.py, /usr and /tmp/x")
    hidden = HIDDEN_PATH
    assert scrub_paths("/usr/share/secret /home/a/b x=/root/.ssh", tree) == f"{hidden} {hidden} x={hidden}"
    assert scrub_paths("/tmp/../etc/shadow", tree) == HIDDEN_PATH
    assert scrub_paths("1/0, a / b, 7 // 2, n/a", tree) == "1/0, a / b, 7 // 2, n/a"


# --- with and without the root, in real runs --------------------------------------------------------------


@needs_strong
def test_the_default_sandbox_runs_in_a_minimal_root() -> None:
    support = isolation_support()
    assert support.root is not None and "minimal root" in support.describe()
    verdict = _verifier().verify(ADD)
    assert verdict.passed and verdict.details["isolation"] == "strong" and verdict.details["root"] == "minimal"
    assert verdict.feedback == "all 1 tests passed"


@needs_strong
def test_without_the_root_the_verdict_says_the_isolation_is_partial() -> None:
    weaker = isolation_support().without_root()
    assert weaker.root is None and weaker.level == "partial"
    verdict = _verifier(support=weaker).verify(ADD)
    assert verdict.passed and verdict.details["root"] == "host"
    assert verdict.details["filesystem"] == "host, read-only, private /tmp"
    assert verdict.feedback.endswith("[sandbox isolation: partial]")


@needs_strong
def test_a_root_that_cannot_be_built_falls_back_to_the_weaker_level_and_says_why() -> None:
    support = isolation_support().without_root()
    broken = RootPlan(binds=["/nonexistent-procmem-lib/libc.so.6"], links=[], top=["dev", "nonexistent-procmem-lib",
                                                                                    "proc", "tmp"])
    fallback = sandbox._with_root(dataclasses.replace(support, level="strong"), broken, [])
    assert fallback.root is None and fallback.level == "partial"
    note = fallback.notes[-1]
    assert note.startswith("no minimal root (the sandbox could not start the program: FileNotFoundError: ")
    assert "mount /nonexistent-procmem-lib/libc.so.6 on " in note
    verdict = _verifier(support=fallback).verify(ADD)
    assert verdict.passed and verdict.feedback.endswith("[sandbox isolation: partial]")
    assert "no minimal root" in verdict.details["notes"]


@needs_strong
def test_a_worker_that_does_not_see_the_planned_root_fails_closed() -> None:
    support = isolation_support()
    assert support.root is not None
    wrong = dataclasses.replace(support, root=RootPlan(binds=support.root["binds"], links=support.root["links"],
                                                       top=[*support.root["top"], "zzz"]))
    verdict = _verifier(support=wrong).verify(ADD)
    assert not verdict.passed and verdict.score == 0.0
    assert "the program's root is not the one built for it" in verdict.feedback
    assert verdict.details["root"] == "host" and verdict.details["isolation"] == "partial"


def test_weak_mode_scrubs_paths_outside_its_working_directory(tmp_path: Path) -> None:
    verifier = _verifier(mode="weak", tmp_root=str(tmp_path))
    program = "import os\n\ndef add(a, b):\n    raise ValueError('/home/alice/x, /tmp/y and ' + os.getcwd())\n"
    verdict = verifier.verify(program)
    assert not verdict.passed
    assert f"raised ValueError: {HIDDEN_PATH}, {HIDDEN_PATH} and {tmp_path}/procmem-sbx-" in verdict.feedback
