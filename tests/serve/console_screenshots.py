"""Screenshots of every console page, on a home with real traffic from the bundled model.

``python tests/serve/console_screenshots.py --out docs/guides/console`` (or the bundled test
``test_console_screenshots.py`` with ``PROCMEM_SCREENSHOTS_DIR``) starts ``procmem serve`` on ``local:default``
(transformers engine) with an admin key, sends real traffic through the ``openai`` client (sums with a numeric
verifier, questions without one, corrections and judgements as feedback, several sessions), adds operator entries,
registers two adapters and promotes one, and photographs each page with headless Chromium.

The adapters are zero-initialised LoRA adapters of the bundled model (PEFT's default: the B matrices start at zero,
so v1 answers exactly as the base model), registered with a manifest that says so: the adapters page shows the
registry's layout, not a trained model. Everything else on the screenshots is what the bundled model answered.
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
)


def screenshot_pages(page: Any, root: str, out: Path) -> list[Path]:
    """Photograph each console page (signed-in ``page``) into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1360, "height": 860})
    page.goto(f"{root}/ui/episodes")
    first = page.get_attribute("#episode-rows a >> nth=0", "href")
    page.goto(f"{root}/ui/memory?level=insight")
    entry = page.get_attribute("#memory-list tbody a >> nth=0", "href")
    written = []
    for name, path, ready in PAGES:
        target = {"episode": first, "entry": entry}.get(path, path)
        if target is None:
            continue
        page.goto(f"{root}{target}")
        page.wait_for_selector(ready)
        page.wait_for_load_state("networkidle")
        file = out / f"{name}.png"
        page.screenshot(path=str(file), full_page=True)
        written.append(file)
    return written


def _register_zero_adapters(home: Path, models: Path) -> None:
    """Two zero-initialised LoRA adapters of the bundled model (they answer as the base model), with manifests
    that say what they are."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from procmem.core import Home
    from procmem.core.registry import (
        AdapterManifest,
        BaseModelInfo,
        DatasetSnapshot,
        GateReport,
        MemorySnapshot,
        PairedTest,
        SuiteResult,
        register_adapter,
    )
    from procmem.llm.bundled import ensure_bundled_model

    root = Home(home).ensure()
    source = home.parent / "zero-adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(ensure_bundled_model(models)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(str(source))
    for number in (1, 2):
        baseline = "base" if number == 1 else "v1"
        rows = (SuiteResult(suite="serve", kind="test", n=40, baseline=0.30, candidate=0.30),
                SuiteResult(suite="builtin:arith", kind="holdout", n=40, baseline=0.45, candidate=0.45))
        # placeholder figures, not measured: a zero adapter answers as its baseline, so its gate cannot pass
        gate = GateReport(baseline=baseline, rows=rows, test_baseline=0.30, test_candidate=0.30, holdout_baseline=0.45,
                          holdout_candidate=0.45, min_improvement=0.02, max_holdout_drop=0.05, improved=False,
                          holdout_ok=True, passed=False, level=0.05,
                          test_stats=PairedTest(n=40, wins=0, losses=0, p_better=1.0, p_worse=1.0),
                          holdout_stats=PairedTest(n=40, wins=0, losses=0, p_better=1.0, p_worse=1.0))
        manifest = AdapterManifest(
            version="v0", run_id="zero-initialised (screenshot script)",
            base_model=BaseModelInfo(id="local:default", name="gemma3-270m", hash="sha256:not-hashed"),
            objective="sft", objective_config={"note": "not trained: a zero-initialised LoRA for the screenshots"},
            dataset=DatasetSnapshot(episode_ids=(), hash="sha256:0", n_traces=0, n_rejected=0, traces_hash="-"),
            memory=MemorySnapshot(entry_ids=(), hash="sha256:0"),
            metrics={"steps": 0, "note": "not trained", "losses": []}, gate=gate,
            parent=None if number == 1 else "v1", created_at=f"2026-12-0{number}T06:00:00+00:00")
        register_adapter(root.adapters, source, manifest)


def build_home_and_screenshot(home: Path, out: Path, *, calls: int = 48) -> list[Path]:
    """The whole job: a home with real traffic from the bundled model, then the screenshots."""
    import httpx
    import openai
    from console_helpers import launch_browser, sign_in
    from serve_helpers import Server, wait_for

    from procmem.core import Home
    from procmem.llm.bundled import MODELS_CACHE_ENV
    from procmem.serve.keys import KeyStore, keys_path

    models = Path(os.environ.get(MODELS_CACHE_ENV) or home / "models")
    _register_zero_adapters(home, models)
    store = KeyStore(keys_path(Home(home)))
    admin = store.create("ops-admin", ["admin"], "default")[1]
    chat = store.create("app", ["chat", "feedback"], "default")[1]
    config = home.parent / "serve.toml"
    config.write_text('[session]\nmodel = "local:default"\nengine = "transformers"\n\n[session.generation]\n'
                      'max_tokens = 24\n\n[console]\ndistill_every = "6h"\n')
    with Server(home, "--config", str(config), "--model", "local:default") as server:
        client = openai.OpenAI(base_url=server.url, api_key=chat, max_retries=0, timeout=600)
        auth = {"Authorization": f"Bearer {chat}"}
        rng = random.Random(7)

        def one(i: int) -> None:
            a, b = rng.randint(2, 60), rng.randint(2, 60)
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

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(calls // 2)))
        for text, scope in (("Add the ones digits first, then the tens, and carry when the ones pass nine.", "serve"),
                            ("Answer with the number alone on the last line.", "serve")):
            _add_entry_api(server.root, admin, text, scope)
        from procmem.core.registry import promote

        promote(Home(home).adapters, "v1", force=True, reason="screenshot script (a zero adapter: its gate fails)")
        wait_for(lambda: httpx.get(f"{server.root}/healthz", timeout=10).json()["adapter_version"] == "v1", 120)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(calls // 2, calls)))
        wait_for(lambda: _memory_count(server.root, admin) > 0, 120, every=1.0)
        browsers = launch_browser()
        browser = next(browsers)
        try:
            page = browser.new_context(device_scale_factor=1).new_page()
            sign_in(page, server.root, admin)
            return screenshot_pages(page, server.root, out)
        finally:
            browsers.close()


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
