"""One real server on the tiny model, shared by the tests of a module (starting one takes seconds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_helpers import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve") / "home"
    with Server(home) as running:
        yield running
