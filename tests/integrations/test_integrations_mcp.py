"""``procmem mcp``: the official MCP SDK's client calls every tool of a real ``procmem mcp`` process over stdio, and
the server honours keys and tenants as the gateway does."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from serve_helpers import PROCMEM

from procmem.core import Home
from procmem.integrations.mcp_server import TOOLS
from procmem.serve.ingest import import_file
from procmem.serve.keys import KeyStore, keys_path


def _chats(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _seed(tmp_path: Path, tenant: str = "default") -> Home:
    home = Home(tmp_path / "home").ensure()
    rows = [{"id": f"{tenant}-call", "messages": [{"role": "user", "content": "What is 6 * 7?"}], "response": "41"},
            {"id": f"{tenant}-known", "messages": [{"role": "user", "content": "What is 6 * 8?"}], "response": "48",
             "passed": True}]
    report = import_file(_chats(tmp_path / f"{tenant}.jsonl", rows), home, tenant=tenant)
    assert report.episodes == 1
    return home


async def _session_calls(home: Home, calls: list[tuple[str, dict[str, Any]]], env: dict[str, str] | None = None
                         ) -> tuple[list[str], list[tuple[bool, Any]]]:
    params = StdioServerParameters(command=str(PROCMEM), args=["--home", str(home.root), "mcp"],
                                   env={**{k: v for k, v in os.environ.items() if k != "PROCMEM_API_KEY"},
                                        **(env or {})})
    results: list[tuple[bool, Any]] = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = [tool.name for tool in (await session.list_tools()).tools]
        for name, arguments in calls:
            result = await session.call_tool(name, arguments)
            text = result.content[0].text if result.content else ""
            results.append((bool(result.is_error), text if result.is_error else json.loads(text)))
    return tools, results


def test_every_tool_over_stdio(tmp_path: Path) -> None:
    home = _seed(tmp_path)
    tools, results = anyio.run(_session_calls, home, [
        ("search_memory", {"query": "What is 6 * 8?", "k": 3}),
        ("add_operator_entry", {"text": "Multiply the tens first, then the units.", "scope": "serve"}),
        ("get_episode", {"episode_id": "default-call"}),
        ("send_feedback", {"episode_id": "default-call", "passed": False, "correction": "42", "id": "fb-1"}),
        ("send_feedback", {"episode_id": "default-call", "passed": True, "id": "fb-1"}),
        ("get_episode", {"episode_id": "default-call"}),
        ("search_memory", {"query": "multiply tens units", "level": "insight"}),
        ("send_feedback", {"episode_id": "nope", "passed": True}),
        ("send_feedback", {"episode_id": "default-call", "score": 7}),
        ("search_memory", {"query": "x", "level": "nonsense"}),
    ])
    assert sorted(tools) == sorted(TOOLS)
    (ok1, found), (ok2, added), (ok3, before), (ok4, sent), (ok5, repeat), (ok6, after), (ok7, entries), \
        (err1, missing), (err2, bad_score), (err3, bad_level) = results
    assert not any((ok1, ok2, ok3, ok4, ok5, ok6, ok7))
    assert found["results"][0]["id"] == "default-known" and found["results"][0]["level"] == "experience"
    assert added["written"] == "added" and added["source"] == "operator" and added["scope"] == "serve"
    assert before["verified"] is False and before["response"] == "41"
    assert sent["episodes_written"] == 1 and sent["duplicate"] is False and repeat["duplicate"] is True
    assert after["verified"] is True and after["feedback"][0]["correction"] == "42"
    assert entries["results"][0]["id"] == added["id"]
    assert err1 and "no recorded call 'nope'" in missing
    assert err2 and "score" in bad_score and err3 and "unknown level" in bad_level
    from procmem.memory import open_memory

    memory = open_memory(home.chroma)
    try:
        episode = next(e for e in memory.episodes() if e.id == "default-call")
        assert [(a.answer, a.verdict.passed) for a in episode.attempts] == [("41", False), ("42", True)]
    finally:
        memory.close()


@pytest.mark.parametrize("key_env", ["tenant key", "no key"])
def test_keys_and_tenants_are_honoured(tmp_path: Path, key_env: str) -> None:
    home = _seed(tmp_path)
    _seed(tmp_path, tenant="acme")
    _, secret = KeyStore(keys_path(home)).create("agent", ["chat", "feedback"], "acme")
    env = {"PROCMEM_API_KEY": secret} if key_env == "tenant key" else {}
    _, results = anyio.run(_session_calls, home, [
        ("get_episode", {"episode_id": "acme-call"}),
        ("get_episode", {"episode_id": "default-call"}),
        ("add_operator_entry", {"text": "Be brief.", "scope": "serve"}),
        ("search_memory", {"query": "6 * 8"}),
    ], env)
    if key_env == "no key":
        assert all(error and "missing API key" in text and "PROCMEM_API_KEY" in text for error, text in results)
        return
    (e1, acme), (e2, other), (e3, admin), (e4, search) = results
    assert not e1 and acme["response"] == "41"
    assert e2 and "no episode 'default-call'" in other  # another tenant's episode is not there
    assert e3 and "lacks the 'admin' scope" in admin
    assert not e4 and [r["id"] for r in search["results"]] == ["acme-known"]


def test_streamable_http_takes_the_key_from_the_authorization_header(tmp_path: Path) -> None:
    import subprocess
    import time

    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from serve_helpers import free_port

    home = _seed(tmp_path, tenant="acme")
    _, secret = KeyStore(keys_path(home)).create("ide", ["chat", "feedback"], "acme")
    port = free_port()
    log = (tmp_path / "mcp.log").open("w")
    proc = subprocess.Popen([str(PROCMEM), "--home", str(home.root), "mcp", "--http", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/mcp"

    async def call(headers: dict[str, str]) -> tuple[bool, str]:
        async with httpx2.AsyncClient(headers=headers, timeout=30) as client, \
                streamable_http_client(url, http_client=client) as (read, write, *_), \
                ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("get_episode", {"episode_id": "acme-call"})
            return bool(result.is_error), result.content[0].text

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx2.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "mcp.log").read_text()
                time.sleep(0.2)
        error, text = anyio.run(call, {"Authorization": f"Bearer {secret}"})
        assert not error and json.loads(text)["response"] == "41"
        error, text = anyio.run(call, {})
        assert error and "missing API key" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
