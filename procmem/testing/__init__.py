"""Conformance suites for the four seams you can plug into: a memory store, an LLM backend, a verifier and a
training objective. Run the matching suite against your own implementation, as procmem's own tests do.

Each suite is a pytest class with the checks as test methods, parametrised by a fixture that builds the
thing under test (the factory). Subclass it in a ``test_*.py`` file and provide that fixture:

- :class:`MemoryStoreConformance` checks a :class:`~procmem.memory.MemoryStore`; you provide ``store``
  (the suite provides ``embedder``, which your store should use);
- :class:`LLMConformance` checks an :class:`~procmem.llm.LLM` backend; you provide ``llm``;
- :class:`VerifierConformance` checks a verifier kind; you provide ``verifier_case``, a :class:`VerifierCase`;
- :class:`ObjectiveConformance` checks a training :class:`~procmem.distill.Objective`; you provide
  ``objective``, ``model`` and ``batch``.

For example::

    import pytest
    from procmem.testing import MemoryStoreConformance

    class TestMyStore(MemoryStoreConformance):
        @pytest.fixture
        def store(self, embedder):  # the suite provides ``embedder``
            return MyStore(embedder)

:class:`ServeProcess` starts a real ``procmem serve`` in a subprocess (for tests that talk to the gateway over
HTTP). The suites import pytest, a test dependency: ``pip install procmem[test]``. Each module's docstring says
what its suite checks; the guide *Extend procmem* shows one implementation of each.
"""

from __future__ import annotations

import pytest

# Plain asserts in the suites report their operands, as in a test file (before the modules are imported).
pytest.register_assert_rewrite("procmem.testing._llm", "procmem.testing._memory", "procmem.testing._objectives",
                               "procmem.testing._verifiers")

from procmem.testing._llm import LLMConformance  # noqa: E402
from procmem.testing._memory import MemoryStoreConformance  # noqa: E402
from procmem.testing._objectives import ObjectiveConformance  # noqa: E402
from procmem.testing._serve import ServeProcess, free_port  # noqa: E402
from procmem.testing._verifiers import VerifierCase, VerifierConformance  # noqa: E402

__all__ = ["LLMConformance", "MemoryStoreConformance", "ObjectiveConformance", "ServeProcess", "VerifierCase",
           "VerifierConformance", "free_port"]
