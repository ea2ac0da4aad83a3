"""A real headless Chromium for the console tests: Debian's ``chromium`` driven by Playwright (``executable_path``;
Playwright's own browser download is never used).

Without chromium (or Playwright) the browser tests skip, with the reason; with ``PROCMEM_REQUIRE_BROWSER=1`` (set by
``.ci/run``) they fail instead, so CI cannot pass without having driven the browser.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    given = os.environ.get("PROCMEM_CHROMIUM")
    if given:
        return given
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def _unavailable(reason: str) -> None:
    if os.environ.get("PROCMEM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (PROCMEM_REQUIRE_BROWSER=1: the browser tests must run here)")
    pytest.skip(reason)


def launch_browser() -> Generator[Any, None, None]:
    """A headless Chromium (yielded), closed afterwards."""
    path = chromium_path()
    if path is None:
        _unavailable("no chromium on PATH: `apt-get install chromium` (or set PROCMEM_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Any, root: str, key: str) -> None:
    """Sign in at /ui/login with ``key``."""
    page.goto(f"{root}/ui/login")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_load_state()
