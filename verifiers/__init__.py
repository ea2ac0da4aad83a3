"""Verifiers: judge an answer to a task and say why it failed, without revealing the gold answer.

A task's ``verifier`` field is a spec ``kind:argument``; :func:`build_verifier` turns it into a
:class:`Verifier`. Built-in kinds:

- ``exact:<answer>``: normalized string equality (case, spacing, one trailing period ignored);
- ``numeric:<number>[?tol=<abs>][&rel=<rel>]``: a number within a tolerance;
- ``regex:<pattern>``: the whole answer matches a Python regular expression;
- ``math:<LaTeX>``: mathematical equality, judged by math-verify;
- ``rg:<dataset>``: reasoning-gym's scorer, for tasks from an ``rg:`` suite;
- ``ledger:<number>``: an amount in a house format (sign, two decimals) that only the feedback states;
- ``code:...``: run against tests in a sandbox (``procmem.verifiers.code``, when installed).

Each module's docstring documents its spec. A new kind registers itself with
:func:`register_verifier` and is imported here. A verifier may give the canonical form of a passing
answer (an optional ``canonical`` method, asked through :func:`canonical_answer`): ``numeric:`` and ``exact:``
do, and ``rg:`` where the entry stores its answer.
"""

from importlib import import_module
from importlib.util import find_spec

from procmem.verifiers.base import (
    Verifier,
    VerifierFactory,
    build_verifier,
    canonical_answer,
    reference_answer,
    register_verifier,
    verifier_kinds,
)
from procmem.verifiers.exact import ExactVerifier
from procmem.verifiers.ledger import LedgerVerifier
from procmem.verifiers.math import MathVerifier
from procmem.verifiers.numeric import NumericVerifier
from procmem.verifiers.regex import RegexVerifier
from procmem.verifiers.rg import RGVerifier

# The code verifier lives in its own module, written separately; register it when it is there.
if find_spec("procmem.verifiers.code") is not None:
    import_module("procmem.verifiers.code")

__all__ = [
    "ExactVerifier",
    "LedgerVerifier",
    "MathVerifier",
    "NumericVerifier",
    "RGVerifier",
    "RegexVerifier",
    "Verifier",
    "VerifierFactory",
    "build_verifier",
    "canonical_answer",
    "reference_answer",
    "register_verifier",
    "verifier_kinds",
]
