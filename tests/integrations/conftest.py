"""Fixtures of the integration tests: a real OTLP/HTTP collector the tests run (it decodes what it receives with
opentelemetry-proto), and the serve helpers (a real ``procmem serve`` process)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))

from otlp_collector import Collector


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running
