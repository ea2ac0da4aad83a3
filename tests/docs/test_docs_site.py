"""The shape of the docs: a short README front page, and every page within two clicks of the docs home."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def _links(page: str) -> set[str]:
    """The docs pages ``page`` (a path relative to docs/) links to, as paths relative to docs/."""
    text = (DOCS / page).read_text()
    return {posixpath.normpath(posixpath.join(posixpath.dirname(page), target)) for target in _LINK.findall(text)}


def test_every_page_is_within_two_clicks_of_the_home_page() -> None:
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "_gen" not in p.parts}
    one_click = _links("index.md")
    two_clicks = one_click.union(*(_links(p) for p in one_click if p in pages))
    far = pages - {"index.md"} - two_clicks
    assert not far, f"more than two clicks from docs/index.md: {sorted(far)}"


def test_readme_is_a_short_front_page_that_keeps_the_ci_test_command() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move details into docs/"
    marker = lines.index("<!-- ci:test-command -->")
    assert lines[marker + 1] == "```bash" and lines[marker + 3] == "```", "ci/run reads the line after the fence"


def test_readme_links_point_at_existing_pages() -> None:
    targets = re.findall(r"\]\((docs/[^)#\s]+)", (ROOT / "README.md").read_text())
    assert targets, "README.md links into the docs"
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert not missing, missing
