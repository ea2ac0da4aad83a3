"""The console's screenshots on the bundled model (PROCMEM_RUN_BUNDLED=1): real traffic through the openai client,
two real `procmem distill --once` runs on that home, then each page photographed by headless Chromium. With
PROCMEM_SCREENSHOTS_DIR=docs/guides/console they replace the docs' screenshots; otherwise they go to a temporary
directory and are only checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from console_screenshots import PAGES, build_home_and_screenshot

pytestmark = [pytest.mark.bundled, pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("PROCMEM_RUN_BUNDLED") != "1",
                                 reason="loads the bundled model: set PROCMEM_RUN_BUNDLED=1")]


def test_every_page_is_photographed_on_real_traffic(tmp_path: Path) -> None:
    out = Path(os.environ.get("PROCMEM_SCREENSHOTS_DIR") or tmp_path / "shots")
    written = build_home_and_screenshot(tmp_path / "home", out.resolve(), calls=int(os.environ.get(
        "PROCMEM_SCREENSHOT_CALLS", "24")))
    assert [p.stem for p in written] == [name for name, _, _ in PAGES]
    assert all(p.stat().st_size > 20_000 for p in written)
