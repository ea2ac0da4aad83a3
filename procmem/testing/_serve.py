"""A real ``procmem serve`` in a subprocess on loopback, started as a user starts it: for integration tests and
benchmarks that talk to the gateway over HTTP (the ``openai`` client, a browser, curl)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["PROCMEM", "ServeProcess", "free_port"]

PROCMEM = Path(sys.executable).parent / "procmem"
"""The ``procmem`` console script of the running interpreter's environment."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """``PROCMEM_HOME=home procmem serve --model MODEL --port PORT *args``; ``url`` ends in ``/v1``, ``root`` does
    not. ``start`` waits until ``/healthz`` answers; ``stop`` sends Ctrl-C (a graceful shutdown), ``kill9`` does
    not. Its output goes to ``log`` (``serve-PORT.log`` beside the home by default)."""

    def __init__(self, home: Path, *args: str, model: str = "local:tiny", port: int | None = None,
                 log: Path | None = None) -> None:
        self.home = home
        self.args = args
        self.model = model
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.root = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log = log or home.parent / f"serve-{self.port}.log"

    def start(self, timeout: float = 240.0) -> ServeProcess:
        import httpx

        env = {**os.environ, "PROCMEM_HOME": str(self.home)}
        with self.log.open("a") as handle:
            self.proc = subprocess.Popen(
                [str(PROCMEM), "serve", "--model", self.model, "--port", str(self.port), *self.args],
                env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.root}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"serve did not start in {timeout}s: {self.tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None, "kill9 before start"
        self.proc.kill()
        self.proc.wait()

    def tail(self, chars: int = 3000) -> str:
        """The end of the server's output."""
        return self.log.read_text()[-chars:] if self.log.exists() else ""

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
