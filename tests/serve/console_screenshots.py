"""Screenshots of every console page, on a home with real traffic from the bundled model and real distillation.

``python tests/serve/console_screenshots.py --out docs/guides/console`` (or the bundled test
``test_console_screenshots.py`` with ``PROCMEM_SCREENSHOTS_DIR``) starts ``procmem serve`` on ``local:default``
(transformers engine) with an admin key and plays the whole loop as an operator would:

1. half the traffic through the ``openai`` client (sums with a numeric verifier, questions without one that are
   judged or corrected afterwards, several sessions) and two operator entries from the console's own form;
2. ``procmem distill --once`` on that home (a small ``distill.toml``, below: up to 32 problems, a few dozen
   optimizer steps, a small gate), which trains ``v1`` and gates it on the held-out served calls; when the gate
   refuses it, ``procmem adapters promote v1 --force`` (a recorded forced promotion) so the gateway serves it;
3. the other half of the traffic, answered by ``v1``, then ``procmem distill --once`` again (``v2``, from ``v1``);
4. each page photographed with headless Chromium.

Every figure on the screenshots is what the product computed: the answers, the verdicts, the training losses, the
gate's report and the runs' stage times. The distillation is sized to take minutes, not to teach the model much.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

PAGES = (  # (file name, path or a function of the page's data, what to wait for)
    ("overview", "/ui/", "#overview-live"),
    ("episodes", "/ui/episodes", "#episode-rows"),
    ("episode", "episode", "#answer"),
    ("memory", "/ui/memory?level=insight&question=What+is+14+%2B+27%3F", "#memory-list"),
    ("memory-search", "/ui/memory?level=experience&q=sum+of+two+numbers", "#memory-list"),
    ("entry", "entry", "#entry-text"),
    ("entry-new", "/ui/memory/new", "form"),
    ("adapters", "/ui/adapters", "main"),
    ("adapter", "/ui/adapters/v1", "main"),
    ("promote", "/ui/adapters/v2/promote", "main"),
    ("runs", "/ui/runs", "main"),
    ("run", "run", "main"),
)


def screenshot_pages(page: Any, root: str, out: Path) -> list[Path]:
    """Photograph each console page (signed-in ``page``) into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1360, "height": 860})
    page.goto(f"{root}/ui/episodes")
    first = page.get_attribute("#episode-rows a >> nth=0", "href")
    page.goto(f"{root}/ui/memory?level=insight")
    entry = page.get_attribute("#memory-list tbody a >> nth=0", "href")
    page.goto(f"{root}/ui/runs")
    newest = page.query_selector('a[href^="/ui/runs/distill/"]')  # none on a home that never distilled
    run = newest.get_attribute("href") if newest is not None else None
    written = []
    for name, path, ready in PAGES:
        target = {"episode": first, "entry": entry, "run": run}.get(path, path)
        if target is None:
            continue
        page.goto(f"{root}{target}")
        page.wait_for_selector(ready)
        page.wait_for_load_state("networkidle")
        file = out / f"{name}.png"
        page.screenshot(path=str(file), full_page=True)
        written.append(file)
    return written


# The product's own distillation, sized for a few minutes on two loaded cores (production sizes: the distill.toml in
# docs/guides/production.md). A serve-fed home has no test split: the gate re-asks the held-out share of the verified
# calls (a hash of the question decides which), so min_heldout is lowered to what a few dozen calls hold out.
DISTILL_TOML = """\
model = "local:default"
min_new_episodes = 1

[traces]
k = 2                # teacher candidates per problem
max_problems = 32    # every problem of a few dozen calls (failed ones first)
max_tokens = 16

[lora]
rank = 8
alpha = 16

[train]
epochs = 4
batch_size = 2
lr = 3e-4

[gate]
heldout_share = 0.3  # of the verified questions, re-asked by the gate and never trained on
min_heldout = 2
n_test = 20
holdout_suites = ["rg:letter_counting?min_words=1&max_words=3"]
n_holdout = 10
max_tokens = 16
"""


def build_home_and_screenshot(home: Path, out: Path, *, calls: int = 48) -> list[Path]:
    """The whole job: a home with real traffic from the bundled model and two real distillation runs, then the
    screenshots."""
    import httpx
    import openai
    from console_helpers import launch_browser, sign_in
    from serve_helpers import Server, wait_for

    from procmem.core import Home
    from procmem.serve.keys import KeyStore, keys_path

    Home(home).ensure()
    store = KeyStore(keys_path(Home(home)))
    admin = store.create("ops-admin", ["admin"], "default")[1]
    chat = store.create("app", ["chat", "feedback"], "default")[1]
    config = home.parent / "serve.toml"
    config.write_text('[session]\nmodel = "local:default"\nengine = "transformers"\n\n[session.generation]\n'
                      'max_tokens = 24\n\n[console]\ndistill_every = "6h"\n')
    distill_toml = home.parent / "distill.toml"
    distill_toml.write_text(DISTILL_TOML)
    rng = random.Random(7)
    sums = [(rng.randint(2, 60), rng.randint(2, 60)) for _ in range(calls)]  # drawn up front: threads race for rng
    with Server(home, "--config", str(config), model="local:default") as server:
        client = openai.OpenAI(base_url=server.url, api_key=chat, max_retries=0, timeout=600)
        auth = {"Authorization": f"Bearer {chat}"}

        def one(i: int) -> None:
            a, b = sums[i]
            verifier = i % 3 != 2
            raw = client.chat.completions.with_raw_response.create(
                model="procmem", messages=[{"role": "user", "content": f"What is {a} + {b}?"}],
                metadata={"procmem_verifier": f"numeric:{a + b}"} if verifier else None,
                extra_headers={"X-Procmem-Session-Id": f"user-{i % 5}", "X-Procmem-Task-Id": f"sum-{a}-{b}"})
            episode = raw.headers["X-Procmem-Episode-Id"]
            if not verifier:  # judged later, as a person would: a thumbs-up when right, else a correction
                numbers = re.findall(r"-?\d+", raw.parse().choices[0].message.content or "")
                right = bool(numbers) and int(numbers[-1]) == a + b
                body = {"passed": True} if right else {"correction": str(a + b), "comment": "checked by hand"}
                httpx.post(f"{server.url}/episodes/{episode}/feedback", json=body, headers=auth, timeout=60)

        def serving() -> str:
            return str(httpx.get(f"{server.root}/healthz", timeout=10).json()["adapter_version"])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(calls // 2)))
        for text, scope in (("Add the ones digits first, then the tens, and carry when the ones pass nine.", "serve"),
                            ("Answer with the number alone on the last line.", "serve")):
            _add_entry_api(server.root, admin, text, scope)
        wait_for(lambda: _memorized(home), 300, every=1.0)  # distillation reads the verified calls from memory
        first = _procmem(home, "distill", "--once", "--config", str(distill_toml), "--json")
        if not first["promoted"]:  # the gate refused v1: promote it anyway, recorded as forced
            _procmem(home, "adapters", "promote", first["version"], "--force", "--json")
        wait_for(lambda: serving() == first["version"], 300, every=1.0)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(calls // 2, calls)))
        wait_for(lambda: _memorized(home), 300, every=1.0)
        _procmem(home, "distill", "--once", "--config", str(distill_toml), "--json")
        wait_for(lambda: _memory_count(server.root, admin) > 0, 120, every=1.0)
        browsers = launch_browser()
        browser = next(browsers)
        try:
            page = browser.new_context(device_scale_factor=1).new_page()
            sign_in(page, server.root, admin)
            return screenshot_pages(page, server.root, out)
        finally:
            browsers.close()


def _procmem(home: Path, *args: str) -> dict[str, Any]:
    """Run ``procmem ARGS --json`` on ``home`` as an operator would; its last stdout line, parsed. Its stderr (the
    distillation's progress and gate table) is appended to ``procmem.log`` beside the home and echoed."""
    import json
    import subprocess

    from serve_helpers import PROCMEM

    log = home.parent / "procmem.log"
    with log.open("a") as handle:
        handle.write(f"$ procmem {' '.join(args)}\n")
        handle.flush()
        done = subprocess.run([str(PROCMEM), *args], env={**os.environ, "PROCMEM_HOME": str(home)}, text=True,
                              stdout=subprocess.PIPE, stderr=handle, timeout=1800)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"procmem {' '.join(args)} exited with {done.returncode}: {log.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if args[0] == "distill":
        print(f"procmem {' '.join(args)}: {result['status']} {result.get('version') or ''} "
              f"{result.get('reason') or ''}".rstrip(), file=sys.stderr)
        if result["status"] == "skipped":
            raise RuntimeError(f"distillation was skipped: {result.get('reason')} (log: {log})")
    return result


def _memorized(home: Path) -> bool:
    """Whether serve's memory worker has recorded every verified call (nothing pending in the call log)."""
    from procmem.core import Home
    from procmem.serve.calllog import CallLog, calls_path

    log = CallLog(calls_path(Home(home)))
    try:
        return not log.pending(1)
    finally:
        log.close()


def _add_entry_api(root: str, admin: str, text: str, scope: str) -> None:
    """Add an operator entry through the console's own form (a signed-in session with its CSRF token)."""

    import httpx

    with httpx.Client(base_url=root, timeout=120, follow_redirects=False) as web:
        page = web.get("/ui/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        web.post("/ui/login", data={"csrf": csrf.group(1), "key": admin, "next": ""})
        form = web.get("/ui/memory/new").text
        token = re.search(r'name="csrf" value="([^"]+)"', form)
        assert token is not None
        done = web.post("/ui/memory/new", data={"csrf": token.group(1), "text": text, "level": "insight",
                                                "kind": "strategy", "scope": scope})
        assert done.status_code == 303, done.text[:500]


def _memory_count(root: str, admin: str) -> int:

    import httpx

    with httpx.Client(base_url=root, timeout=60) as web:
        csrf = re.search(r'name="csrf" value="([^"]+)"', web.get("/ui/login").text)
        assert csrf is not None
        web.post("/ui/login", data={"csrf": csrf.group(1), "key": admin})
        found = re.search(r'id="mem-experience">([\d,]+)<', web.get("/ui/").text)
        return int(found.group(1).replace(",", "")) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/guides/console"), help="Where the PNGs go.")
    parser.add_argument("--home", type=Path, default=None, help="A fresh directory for the home (default: a temp dir).")
    parser.add_argument("--calls", type=int, default=48, help="Chat calls to send.")
    args = parser.parse_args()
    import tempfile

    home = args.home or Path(tempfile.mkdtemp(prefix="procmem-console-")) / "home"
    for path in build_home_and_screenshot(home, args.out.resolve(), calls=args.calls):
        print(path)


if __name__ == "__main__":
    main()
