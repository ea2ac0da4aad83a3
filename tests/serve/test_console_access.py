"""The console without API keys (loopback only, as the API): a visitor is the local admin with no sign-in, every
page answers, and a POST still needs the session's CSRF token. A real server on the tiny model; plain HTTP."""

from __future__ import annotations

import re

import httpx
from serve_helpers import Server


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "every page with a form carries the CSRF token"
    return found.group(1)


def test_without_keys_loopback_is_the_local_admin_and_posts_need_the_csrf_token(server: Server) -> None:
    with httpx.Client(base_url=server.root, timeout=120, follow_redirects=False) as web:
        assert web.get("/ui").status_code == 307
        page = web.get("/ui/")
        assert page.status_code == 200 and "local" in page.text and "Sign out" not in page.text
        cookie = page.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert web.get("/ui/login").headers["location"] == "/ui/"  # nothing to sign in to
        new = web.get("/ui/memory/new")
        form = {"text": "Check the units digit last.", "level": "insight", "kind": "strategy", "scope": "serve"}
        refused = web.post("/ui/memory/new", data=form)
        assert refused.status_code == 403 and "CSRF" in refused.text
        added = web.post("/ui/memory/new", data={**form, "csrf": _csrf(new.text)})
        assert added.status_code == 303 and added.headers["location"].startswith("/ui/memory/ins-")
        entry = web.get(added.headers["location"].split("?")[0])
        assert "Check the units digit last." in entry.text and "local" in entry.text
        other = httpx.get(f"{server.root}/ui/memory/new", timeout=60)  # another visitor: another session and token
        assert _csrf(other.text) != _csrf(new.text)
        bad = web.post("/ui/memory/new", data={**form, "csrf": _csrf(other.text)})
        assert bad.status_code == 403
        for path in ("/ui/episodes?verdict=maybe", "/ui/memory?level=nope", "/ui/memory?offset=-3"):
            assert web.get(path).status_code == 400, path
        assert web.get("/ui/episodes/nope").status_code == 404
        assert web.get("/ui/static/htmx.min.js").status_code == 200
