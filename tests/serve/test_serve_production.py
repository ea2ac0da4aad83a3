"""Production properties with a real server process on loopback: load, crash durability, hot swap, keys."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import PROCMEM, Server, register_adapters, wait_for

from procmem.core import Home
from procmem.serve import CallLog
from procmem.serve.app import calls_path

pytestmark = pytest.mark.slow

_ASK = [{"role": "user", "content": "Say hi."}]


def _call(client: openai.OpenAI, episode_id: str | None = None) -> tuple[str, str]:
    headers = {"X-Procmem-Episode-Id": episode_id} if episode_id else {}
    raw = client.chat.completions.with_raw_response.create(model="procmem", messages=_ASK, max_tokens=2,
                                                           extra_headers=headers)
    raw.parse()
    return raw.headers["x-procmem-episode-id"], raw.headers["x-procmem-adapter-version"]


def _client(server: Server, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300,
                         default_headers={"X-Procmem-Memory": "off", **headers})


def test_64_concurrent_clients_times_8_calls_give_exactly_512_episodes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Server(home) as server:
        def client_run(n: int) -> list[str]:
            client = _client(server)
            return [_call(client)[0] for _ in range(8)]

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=64) as pool:
            ids = [i for batch in pool.map(client_run, range(64)) for i in batch]
        elapsed = time.monotonic() - started
    log = CallLog(calls_path(Home(home)))
    assert len(ids) == 512 and len(set(ids)) == 512
    assert log.count() == 512 and set(log.ids("default")) == set(ids)
    print(f"512 calls by 64 clients in {elapsed:.1f}s")


def test_kill_9_during_a_burst_keeps_every_finished_episode(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = Server(home).start()
    finished: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_run(n: int) -> None:
        client = _client(server)
        for i in range(1000):
            if stop.is_set():
                return
            try:
                episode_id, _ = _call(client, f"c{n}-{i}")
            except (openai.APIError, httpx.HTTPError):
                return  # the server died under this call: its response never finished
            with lock:
                finished.append(episode_id)

    threads = [threading.Thread(target=client_run, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(finished) >= 40, timeout=120)
    server.kill9()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    with lock:
        done = list(finished)
    with Server(home, port=server.port) as again:
        missing = [e for e in done if httpx.get(f"{again.url}/episodes/{e}", timeout=10).status_code != 200]
    assert done and not missing


def test_promoting_v2_while_clients_call_swaps_without_a_failure(tmp_path: Path) -> None:
    from procmem.core.registry import promote

    home = tmp_path / "home"
    register_adapters(home, 2)
    promote(Home(home).adapters, "v1")
    config = tmp_path / "serve.toml"
    config.write_text("watch_s = 0.2\n")
    seen: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    with Server(home, "--config", str(config)) as server:
        def client_run(n: int) -> None:
            client = _client(server)
            while not stop.is_set():
                try:
                    seen.setdefault(n, []).append(_call(client)[1])
                except BaseException as err:
                    errors.append(err)
                    return

        threads = [threading.Thread(target=client_run, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: sum(map(len, seen.values())) >= 8, timeout=120)
        promote(Home(home).adapters, "v2")
        wait_for(lambda: any("v2" in v[-3:] for v in seen.values() if v), timeout=120)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        models = httpx.get(f"{server.url}/models", timeout=10).json()
    assert not errors
    for versions in seen.values():  # each client: v1 calls, then v2 calls, never back
        assert versions[0] == "v1" and versions == sorted(versions)
    assert any("v2" in v for v in seen.values())
    assert models["data"][0]["procmem"]["adapter_version"] == "v2"
    log = CallLog(calls_path(Home(home)))
    recorded = {log.get("default", i).adapter_version for i in log.ids("default")}  # type: ignore[union-attr]
    assert recorded == {"v1", "v2"}


def _key(home: Path, name: str, scopes: str, tenant: str) -> str:
    out = subprocess.run([str(PROCMEM), "--home", str(home), "keys", "create", "--name", name, "--scopes", scopes,
                          "--tenant", tenant, "--json"], capture_output=True, text=True, check=True)
    return str(json.loads(out.stdout.strip().splitlines()[-1])["key"])


def test_keys_scopes_revocation_and_tenants(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Home(home).ensure()
    with Server(home) as server:
        def post(key: str | None, path: str = "/chat/completions", body: dict | None = None) -> httpx.Response:  # type: ignore[type-arg]
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.post(f"{server.url}{path}", headers={**headers, "X-Procmem-Memory": "off"}, timeout=60,
                              json=body or {"model": "procmem", "messages": _ASK, "max_tokens": 2})

        assert post(None).status_code == 200  # no key exists yet: loopback is open
        alice = _key(home, "alice", "chat,feedback", "a")  # created while serving: enforced from the next request
        bob = _key(home, "bob", "chat,feedback", "b")
        chat_only = _key(home, "bot", "chat", "a")
        stored = (home / "serve" / "keys.json").read_text()
        assert alice not in stored and bob not in stored  # only hashes
        assert post(None).json()["error"]["code"] == "missing_api_key"
        assert post("sk-procmem-not-a-key").status_code == 401
        ok = post(alice)
        assert ok.status_code == 200
        episode_id = ok.headers["x-procmem-episode-id"]
        feedback = f"/episodes/{episode_id}/feedback"
        denied = post(chat_only, feedback, {"passed": True})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_scope"
        assert post(bob, feedback, {"passed": True}).status_code == 404  # another tenant's episode
        assert httpx.get(f"{server.url}/episodes/{episode_id}", headers={"Authorization": f"Bearer {bob}"},
                         timeout=10).status_code == 404
        assert post(alice, feedback, {"passed": True}).status_code == 200
        subprocess.run([str(PROCMEM), "--home", str(home), "keys", "revoke", "alice"], check=True,
                       capture_output=True)
        revoked = post(alice)
        assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "revoked_api_key"
        wait_for(lambda: (home / "tenants" / "a" / "chroma").exists(), timeout=60)
    assert not (home / "tenants" / "b").exists()


def test_binding_beyond_loopback_without_keys_is_refused(tmp_path: Path) -> None:
    out = subprocess.run([str(PROCMEM), "--home", str(tmp_path / "home"), "serve", "--model", "local:tiny",
                          "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "refusing to bind 0.0.0.0 without API keys" in out.stderr and "procmem keys create" in out.stderr
