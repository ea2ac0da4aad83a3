"""API keys: ``procmem keys create|ls|revoke``. Only a SHA-256 of each key is stored
(``PROCMEM_HOME/serve/keys.json``, written atomically); the key itself is printed once, at creation.

Each key belongs to a tenant and has scopes: ``chat`` (chat completions, models), ``feedback`` (feedback and
reading episodes), ``admin`` (everything, and ``/metrics``). A running server rereads the file when it changes,
so a revoked key stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from procmem.core import Home, ProcmemError, utc_now
from procmem.core.fileio import read_json, write_json

__all__ = ["SCOPES", "ApiKey", "KeyRefused", "KeyStore", "Scope", "authorize", "bearer_token", "keys_path"]

Scope = Literal["chat", "feedback", "admin"]
SCOPES: tuple[Scope, ...] = ("chat", "feedback", "admin")
_PREFIX = "sk-procmem-"


class ApiKey(BaseModel):
    """One key as stored (never the key itself)."""

    id: str = Field(description="Short public id (the key's first characters after the prefix).")
    name: str = Field(description="A label for people.")
    tenant: str = Field(description="The tenant whose memory and episodes this key reads and writes.")
    scopes: tuple[Scope, ...] = Field(description="What the key may do: chat, feedback, admin.")
    hash: str = Field(description="sha256 of the key, hex.")
    created_at: str = Field(description="ISO-8601 UTC.")
    revoked_at: str | None = Field(default=None, description="When it was revoked (None: active).")

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def keys_path(home: Home) -> Path:
    return home.root / "serve" / "keys.json"


FIX_KEY = "send 'Authorization: Bearer <key>'; create a key with `procmem keys create`"


class KeyRefused(ProcmemError):
    """A key that may not do what was asked: ``status`` 401 (missing, unknown, revoked) or 403 (scope)."""

    def __init__(self, status: int, message: str, *, code: str, fix: str = FIX_KEY) -> None:
        super().__init__(message, fix=fix)
        self.status = status
        self.code = code


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or of another scheme)."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authorize(store: KeyStore, token: str | None, scope: Scope) -> ApiKey:
    """The active key ``token`` names, if it has ``scope``; raises :class:`KeyRefused`. The one rule of the
    gateway, the console and ``procmem mcp``."""
    if not token:
        raise KeyRefused(401, "missing API key", code="missing_api_key")
    key = store.lookup(token)
    if key is None:
        raise KeyRefused(401, "unknown API key", code="invalid_api_key")
    if not key.active:
        raise KeyRefused(401, f"API key {key.id} was revoked", code="revoked_api_key",
                         fix="use another key, or create one with `procmem keys create`")
    if not key.allows(scope):
        raise KeyRefused(403, f"API key {key.id} lacks the '{scope}' scope", code="insufficient_scope",
                         fix=f"use a key created with --scopes including {scope}")
    return key


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The key file; reloaded when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: list[ApiKey] = []

    def keys(self) -> list[ApiKey]:
        with self._lock:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                self._stamp, self._keys = None, []
                return []
            if stamp != self._stamp:
                data = read_json(self.path)
                self._keys = [ApiKey.model_validate(k) for k in data.get("keys", [])]
                self._stamp = stamp
            return list(self._keys)

    def any_active(self) -> bool:
        return any(k.active for k in self.keys())

    def lookup(self, key: str) -> ApiKey | None:
        """The stored key matching ``key`` (active or revoked), or None."""
        digest = _digest(key)
        return next((k for k in self.keys() if hmac.compare_digest(k.hash, digest)), None)

    def create(self, name: str, scopes: Sequence[str], tenant: str) -> tuple[ApiKey, str]:
        """A new key: returns its record and the key (shown once)."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise ProcmemError(f"unknown scope {bad[0]!r}" if bad else "no scopes", where="--scopes",
                               fix=f"use a comma-separated subset of {','.join(SCOPES)}")
        if not name.strip():
            raise ProcmemError("empty key name", where="--name", fix="give the key a name")
        keys = self.keys()
        if any(k.name == name and k.active for k in keys):
            raise ProcmemError(f"an active key is already named {name!r}", where="--name",
                               fix="choose another name, or revoke that key first")
        secret = _PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(id=secret[len(_PREFIX):len(_PREFIX) + 8], name=name, tenant=tenant,
                        scopes=tuple(dict.fromkeys(scopes)),  # type: ignore[arg-type]
                        hash=_digest(secret), created_at=utc_now())
        self._write([*keys, record])
        return record, secret

    def revoke(self, name_or_id: str) -> ApiKey:
        keys = self.keys()
        found = [k for k in keys if k.active and name_or_id in (k.name, k.id)]
        if not found:
            raise ProcmemError(f"no active key named {name_or_id!r}", where="procmem keys revoke",
                               fix="see `procmem keys ls` for names and ids")
        now = utc_now()
        updated = [k.model_copy(update={"revoked_at": now}) if k in found else k for k in keys]
        self._write(updated)
        return found[0].model_copy(update={"revoked_at": now})

    def _write(self, keys: list[ApiKey]) -> None:
        write_json(self.path, {"keys": [k.model_dump(mode="json") for k in keys]})
        self.path.chmod(0o600)
