"""The web console at /ui, driven by a real headless Chromium (Debian's ``chromium`` through Playwright) against a
real ``procmem serve`` on the tiny model, with API keys: an admin signs in, corrects an episode sent with the
``openai`` client, retires and adds memory entries, promotes and rolls back an adapter; a feedback key stays out of
the memory editor; a POST without the CSRF token is refused; a stored ``<script>`` stays text; the overview and the
episode list update while traffic flows."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from console_helpers import launch_browser, sign_in
from serve_helpers import PROCMEM, Server, register_adapters, wait_for

from procmem.core import Home
from procmem.serve.keys import KeyStore, keys_path

pytestmark = pytest.mark.browser


class Site:
    """The running server, its keys, and helpers for the API side of the checks."""

    def __init__(self, server: Server, keys: dict[str, str]) -> None:
        self.server = server
        self.root = server.root
        self.keys = keys

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.url, api_key=self.keys["chat"], max_retries=0, timeout=300)

    def chat(self, content: str, **headers: str) -> str:
        """Send one chat with the openai client; returns its episode id."""
        raw = self.client().chat.completions.with_raw_response.create(
            model="procmem", messages=[{"role": "user", "content": content}], max_tokens=4,
            extra_headers=headers or None)
        return str(raw.headers["X-Procmem-Episode-Id"])

    def episode(self, episode_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.server.url}/episodes/{episode_id}", timeout=30,
                             headers={"Authorization": f"Bearer {self.keys['admin']}"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.root}/healthz", timeout=10).json())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("console") / "home"
    register_adapters(home, 2)  # v1, v2: real LoRA adapters of the tiny model with passing gates
    store = KeyStore(keys_path(Home(home)))
    keys = {name: store.create(name, scopes, "default")[1]
            for name, scopes in (("admin", ["admin"]), ("feedback", ["feedback"]), ("chat", ["chat"]))}
    config = home.parent / "serve.toml"
    config.write_text("[console]\npoll_s = 1\n")
    with Server(home, "--config", str(config)) as server:
        yield Site(server, keys)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


@pytest.fixture
def admin(site: Site, browser: Any) -> Iterator[Any]:
    """A page signed in with the admin key."""
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, site.root, site.keys["admin"])
    yield page
    context.close()


def test_an_admin_signs_in_with_a_session_cookie_that_scripts_cannot_read(site: Site, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{site.root}/ui/")
    assert page.url.startswith(f"{site.root}/ui/login"), "not signed in: sent to the sign-in page"
    page.fill("input[name=key]", "sk-procmem-not-a-key")
    page.click("button[type=submit]")
    assert "unknown API key" in page.inner_text("main")
    sign_in(page, site.root, site.keys["admin"])
    assert page.url == f"{site.root}/ui/" and page.title().startswith("Overview")
    cookie = next(c for c in context.cookies() if c["name"] == "procmem_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert page.evaluate("document.cookie") == "", "the session cookie is HttpOnly"
    assert "admin (" in page.inner_text("header")
    context.close()


def test_a_chat_key_cannot_sign_in(site: Site, browser: Any) -> None:
    page = browser.new_page()
    sign_in(page, site.root, site.keys["chat"])
    assert "neither the admin nor the feedback scope" in page.inner_text("main")
    page.goto(f"{site.root}/ui/episodes")
    assert "/ui/login" in page.url
    page.close()


def test_a_correction_given_in_the_browser_is_what_the_api_returns(site: Site, admin: Any) -> None:
    episode_id = site.chat("What is 17 + 25?", **{"X-Procmem-Session-Id": "order-1234"})
    admin.goto(f"{site.root}/ui/episodes?session=order-1234")
    admin.click(f"a[href='/ui/episodes/{episode_id}'] >> nth=0")
    assert episode_id in admin.inner_text("h1")
    assert "What is 17 + 25?" in admin.inner_text("main")
    admin.check("input[name=passed][value=false]")
    admin.fill("textarea[name=correction]", "42")
    admin.fill("textarea[name=comment]", "the sum is 42")
    admin.click("#feedback-form button[type=submit]")
    assert "Feedback recorded" in admin.inner_text(".notice")
    assert "42" in admin.inner_text("#feedback-list")
    body = site.episode(episode_id)
    assert [(f["correction"], f["passed"], f["source"]) for f in body["feedback"]] == [("42", False, "human")]
    assert body["verified"]
    # the same path as the API: the memory worker records the corrected episode
    wait_for(lambda: admin.goto(f"{site.root}/ui/episodes/{episode_id}") and "experience" in admin.inner_text("main")
             and "correction" in admin.inner_text("main"), timeout=60, every=1.0)
    # an invalid score is refused with the field named, and nothing is recorded
    admin.fill("input[name=score]", "7")
    admin.click("#feedback-form button[type=submit]")
    assert "score" in admin.inner_text(".error") and len(site.episode(episode_id)["feedback"]) == 1


def _add_entry(page: Any, root: str, text: str, scope: str = "serve") -> str:
    page.goto(f"{root}/ui/memory/new")
    page.fill("textarea[name=text]", text)
    page.select_option("select[name=level]", "insight")
    page.fill("input[name=scope]", scope)
    page.click("button[type=submit].primary")
    match = re.search(r"/ui/memory/(ins-[0-9a-f]+)", page.url)
    assert match, page.inner_text("main")
    return match.group(1)


def test_an_operator_entry_is_added_retired_and_retrieval_stops_returning_it(site: Site, admin: Any) -> None:
    entry_id = _add_entry(admin, site.root, "Add the ones digits first, then carry into the tens.")
    assert "Operator entry added" in admin.inner_text(".notice")
    assert "operator" in admin.inner_text("main") and "active" in admin.inner_text("#entry-status")
    assert "add" in admin.inner_text("#changes") and "admin (" in admin.inner_text("#changes")
    # retrieval gives it to every call to the gateway (scope serve): the episode records it
    used = site.episode(site.chat("What is 38 + 45?"))["memory_ids"]
    assert entry_id in used
    admin.goto(f"{site.root}/ui/memory?question=What+is+12+%2B+9%3F")
    assert entry_id in admin.inner_text("#retrieved")

    admin.goto(f"{site.root}/ui/memory/{entry_id}")
    admin.click("#retire")
    assert "retired" in admin.inner_text("#entry-status")
    assert "retire" in admin.inner_text("#changes")
    assert entry_id not in site.episode(site.chat("What is 27 + 16?"))["memory_ids"]
    admin.goto(f"{site.root}/ui/memory?question=What+is+12+%2B+9%3F")
    assert entry_id not in admin.inner_text("#retrieved")

    # who and when show in `procmem memory show`
    shown = subprocess.run([str(PROCMEM), "memory", "show", entry_id, "--json"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PROCMEM_HOME": str(site.server.home)})
    assert shown.returncode == 0, shown.stderr
    changes = json.loads(shown.stdout.strip().splitlines()[-1])["changes"]
    assert [c["action"] for c in changes] == ["add", "retire"]
    assert all(c["by"].startswith("console: admin (") and c["at"] for c in changes)

    # restore and edit, recorded too
    admin.goto(f"{site.root}/ui/memory/{entry_id}")
    admin.click("#restore")
    assert "active" in admin.inner_text("#entry-status")
    admin.goto(f"{site.root}/ui/memory/{entry_id}/edit")
    admin.fill("textarea[name=text]", "Add the ones digits first; carry a ten when they pass nine.")
    admin.click("button[type=submit].primary")
    assert "carry a ten" in admin.inner_text("#entry-text")
    assert "was: Add the ones digits first, then carry" in admin.inner_text("#changes")


def test_bad_input_gets_a_located_message_not_a_5xx(site: Site, admin: Any) -> None:
    admin.goto(f"{site.root}/ui/memory/new")
    admin.fill("textarea[name=text]", "Something")
    admin.fill("input[name=scope]", "nonsense")
    admin.click("button[type=submit].primary")
    assert "scope" in admin.inner_text(".error")
    response = admin.goto(f"{site.root}/ui/episodes?since=yesterday")
    assert response.status == 400 and "since" in admin.inner_text(".error")
    response = admin.goto(f"{site.root}/ui/memory/ins-none")
    assert response.status == 404 and "no memory entry" in admin.inner_text("main")


def test_an_adapter_is_promoted_and_rolled_back_after_a_confirmation(site: Site, admin: Any) -> None:
    assert site.health()["adapter_version"] == "base"
    admin.goto(f"{site.root}/ui/adapters/v1")
    assert "PASS" in admin.inner_text("main") and "forgetting check" in admin.inner_text("main")
    admin.click("#promote")
    admin.click("#do-promote")  # not confirmed: refused
    assert "not confirmed" in admin.inner_text(".error")
    assert site.health()["adapter_version"] == "base"
    admin.check("#confirm")
    admin.click("#do-promote")
    assert "Adapter promoted" in admin.inner_text(".notice")
    wait_for(lambda: site.health()["adapter_version"] == "v1", timeout=60)
    admin.goto(f"{site.root}/ui/adapters")
    assert "v1" in admin.inner_text("#serving")
    admin.click("#rollback")
    admin.check("#confirm")
    admin.click("#do-rollback")
    assert "Rolled back" in admin.inner_text(".notice")
    wait_for(lambda: site.health()["adapter_version"] == "base", timeout=60)
    events = (site.server.home / "adapters" / "events.jsonl").read_text()
    assert '"reason": "console: admin (' in events


def test_a_feedback_key_reads_episodes_but_cannot_open_the_memory_editor(site: Site, browser: Any) -> None:
    episode_id = site.chat("What is 9 + 4?")
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, site.root, site.keys["feedback"])
    assert page.url == f"{site.root}/ui/episodes"
    assert "Memory" not in page.inner_text("header nav")
    page.goto(f"{site.root}/ui/episodes/{episode_id}")
    page.check("input[name=passed][value=true]")
    page.click("#feedback-form button[type=submit]")
    assert "Feedback recorded" in page.inner_text(".notice")
    entry = "ins-0000000000000000"  # refused before any lookup
    for path in (f"/ui/memory/{entry}/edit", "/ui/memory", "/ui/memory/new", "/ui/", "/ui/adapters", "/ui/runs"):
        response = page.goto(f"{site.root}{path}")
        assert response.status == 403, path
        assert "may only read episodes and send feedback" in page.inner_text("main")
    csrf = page.get_attribute("input[name=csrf]", "value")
    refused = page.request.post(f"{site.root}/ui/memory/{entry}/retire", form={"csrf": csrf}, max_redirects=0)
    assert refused.status == 403
    context.close()


def test_a_state_changing_request_without_the_csrf_token_is_refused(site: Site, admin: Any) -> None:
    entry_id = _add_entry(admin, site.root, "Line up the digits by place value before adding.")
    url = f"{site.root}/ui/memory/{entry_id}/retire"
    for form in ({}, {"csrf": "forged"}):
        refused = admin.request.post(url, form=form, max_redirects=0)  # the session cookie goes along
        assert refused.status == 403 and "CSRF" in refused.text()
    admin.goto(f"{site.root}/ui/memory/{entry_id}")
    assert "active" in admin.inner_text("#entry-status")
    csrf = admin.get_attribute("input[name=csrf]", "value")
    done = admin.request.post(url, form={"csrf": csrf}, max_redirects=0)
    assert done.status == 303
    admin.goto(f"{site.root}/ui/memory/{entry_id}")
    assert "retired" in admin.inner_text("#entry-status")


def test_a_stored_script_stays_text(site: Site, admin: Any) -> None:
    attack = "<script>document.title='pwned'</script>"
    episode_id = site.chat(attack)
    admin.goto(f"{site.root}/ui/episodes/{episode_id}")
    assert admin.title() == f"Episode {episode_id} · procmem console"
    assert attack in admin.inner_text("main"), "shown as the text it is"
    admin.goto(f"{site.root}/ui/episodes")
    assert admin.title().startswith("Episodes") and attack in admin.inner_text("#episode-rows")
    # and as a memory entry's text, written by an operator
    entry_id = _add_entry(admin, site.root, f"Never run {attack}")
    assert admin.title() == f"{entry_id} · procmem console" and attack in admin.inner_text("#entry-text")


def test_the_overview_and_the_episode_list_update_while_traffic_flows(site: Site, admin: Any) -> None:
    admin.goto(f"{site.root}/ui/")
    calls = int(admin.inner_text("#stat-calls").replace(",", ""))
    episodes = admin.context.new_page()
    episodes.goto(f"{site.root}/ui/episodes")
    site.chat("What is 5 + 6? live")
    wait_for(lambda: int(admin.inner_text("#stat-calls").replace(",", "")) == calls + 1, timeout=30)
    wait_for(lambda: "What is 5 + 6? live" in episodes.inner_text("#episode-rows"), timeout=30)
    episodes.close()


def test_pages_render_for_an_admin(site: Site, admin: Any) -> None:
    """Every page answers 200 with the data in it (the runs page with a failed run shows its error)."""
    run = site.server.home / "distill" / "runs" / "20260101-000000-abcdef"
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps({
        "id": run.name, "stage": "collected", "created_at": "2026-01-01T00:00:00.000+00:00", "config": {},
        "new_episodes": 3, "episodes": 3, "error": "RuntimeError: <b>out of memory</b>",
        "failed_at": "2026-01-01T00:01:00.000+00:00"}))
    (run / "episodes.jsonl").write_text("")
    for path, text in (("/ui/", "Learning curve"), ("/ui/episodes", "matching"), ("/ui/memory?level=experience", ""),
                       ("/ui/memory?level=insight&q=carry", "nearest by meaning"), ("/ui/adapters", "v2"),
                       ("/ui/adapters/v2", "Training loss"), ("/ui/runs", run.name),
                       (f"/ui/runs/distill/{run.name}", "<b>out of memory</b>")):
        response = admin.goto(f"{site.root}{path}")
        assert response.status == 200, path
        assert text in admin.inner_text("main"), path
    for chart in ("/ui/charts/traffic.png", "/ui/charts/learning.png", "/ui/adapters/v1/loss.png"):
        response = admin.request.get(f"{site.root}{chart}")
        assert response.status == 200 and response.body()[:4] == b"\x89PNG", chart


def test_screenshots_of_each_page(site: Site, admin: Any, tmp_path: Path) -> None:
    """Each page renders to a screenshot (the docs' screenshots come from tests/serve/console_screenshots.py on
    the bundled model)."""
    from console_screenshots import screenshot_pages

    written = screenshot_pages(admin, site.root, tmp_path)
    assert len(written) >= 8 and all(p.stat().st_size > 10_000 for p in written)
