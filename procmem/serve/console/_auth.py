"""Who is looking at the console, and may they do this: sign-in sessions, roles and CSRF tokens.

- **With API keys** (any key exists, or serve is bound beyond loopback), a person signs in at ``/ui/login`` with a
  key: an ``admin`` key sees and changes everything of its tenant (and the shared adapters); a ``feedback`` key may
  only read episodes and send feedback; a ``chat``-only key is refused. The session is a random token in a cookie
  (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over https), kept server-side in memory: a restart signs everyone
  out, and a key revoked meanwhile ends its sessions at the next request.
- **Without keys** (loopback only, as the API): every visitor from a loopback address is the local admin.
- **CSRF.** Every session (a visitor's too, before sign-in) has a random token; every state-changing request
  (a POST) must carry it as the form field ``csrf`` or the header ``X-CSRF-Token``, or it is refused (403).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from starlette.requests import Request

from procmem.serve.config import LOOPBACK_HOSTS
from procmem.serve.wiring import DEFAULT_TENANT

if TYPE_CHECKING:
    from procmem.serve.app import Gateway
    from procmem.serve.keys import ApiKey

__all__ = ["COOKIE", "Denied", "Role", "Sessions", "Viewer"]

COOKIE = "procmem_console"
Role = Literal["admin", "feedback"]
_MAX_SESSIONS = 10_000
_LOOPBACK_CLIENTS = LOOPBACK_HOSTS | {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


class Denied(Exception):
    """The request may not go on: ``status`` 401 (sign in first), 403 (not allowed) or 400."""

    def __init__(self, status: int, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fix = fix


@dataclass
class _Session:
    token: str
    csrf: str
    expires: float
    key_id: str | None = None
    """The signed-in key (None: not signed in, or no keys)."""
    who: str = ""
    tenant: str = DEFAULT_TENANT
    role: Role | None = None


@dataclass(frozen=True)
class Viewer:
    """The person behind a request, once allowed."""

    role: Role
    tenant: str
    who: str
    """What change records say: the key's name and id, or ``local`` without keys."""
    csrf: str
    keyed: bool
    """Whether keys are in force (a sign-out button makes sense)."""

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Sessions:
    """The console's sessions, in memory (LRU-capped)."""

    def __init__(self, gateway: Gateway, *, hours: float) -> None:
        self.gateway = gateway
        self.ttl_s = hours * 3600.0
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._lock = threading.Lock()

    # --- the session of a request ---------------------------------------------------------------------

    def session(self, request: Request) -> tuple[_Session, bool]:
        """The request's session, or a new anonymous one (True: set its cookie on the response)."""
        token = request.cookies.get(COOKIE, "")
        now = time.monotonic()
        with self._lock:
            found = self._sessions.get(token) if token else None
            if found is not None and found.expires > now:
                self._sessions.move_to_end(token)
                return found, False
            if found is not None:
                del self._sessions[token]
            new = _Session(token=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), expires=now + self.ttl_s)
            self._sessions[new.token] = new
            while len(self._sessions) > _MAX_SESSIONS:
                self._sessions.popitem(last=False)
            return new, True

    def viewer(self, session: _Session, request: Request, need: Role) -> Viewer:
        """The viewer if ``session`` may see a page that needs ``need``; raises :class:`Denied` otherwise."""
        gateway = self.gateway
        if not gateway.auth_required:
            client = request.client.host if request.client else ""
            if client not in _LOOPBACK_CLIENTS:
                raise Denied(403, "without API keys the console answers loopback only",
                             fix="create a key with `procmem keys create` and sign in with it")
            return Viewer("admin", DEFAULT_TENANT, "local", session.csrf, keyed=False)
        key = self._key(session)
        if key is None or session.role is None:
            raise Denied(401, "sign in with an API key", fix="an admin or feedback key")
        if need == "admin" and session.role != "admin":
            raise Denied(403, f"the key {session.who} may only read episodes and send feedback",
                         fix="sign in with an admin key for this page")
        return Viewer(session.role, session.tenant, session.who, session.csrf, keyed=True)

    def _key(self, session: _Session) -> ApiKey | None:
        """The session's key, while it is still active (a revoked key ends its sessions)."""
        if session.key_id is None:
            return None
        active = [k for k in self.gateway.keys.keys() if k.active]  # noqa: SIM118 (KeyStore.keys(): the key file)
        return next((k for k in active if k.id == session.key_id), None)

    # --- sign in and out -----------------------------------------------------------------------------

    def sign_in(self, session: _Session, secret: str) -> _Session:
        """Sign ``session`` in with the key ``secret``: a new session (a new token and CSRF token: the old
        anonymous token is dropped, so it cannot be fixed in advance). Raises :class:`Denied`."""
        key = self.gateway.keys.lookup(secret.strip()) if secret.strip() else None
        if key is None:
            raise Denied(401, "unknown API key", fix="paste a key printed by `procmem keys create`")
        if not key.active:
            raise Denied(401, f"API key {key.id} was revoked", fix="use another key")
        role: Role | None = "admin" if key.allows("admin") else "feedback" if key.allows("feedback") else None
        if role is None:
            raise Denied(403, f"API key {key.id} has neither the admin nor the feedback scope",
                         fix="sign in with a key created with --scopes admin or --scopes feedback")
        with self._lock:
            self._sessions.pop(session.token, None)
            new = _Session(token=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32),
                           expires=time.monotonic() + self.ttl_s, key_id=key.id, who=f"{key.name} ({key.id})",
                           tenant=key.tenant, role=role)
            self._sessions[new.token] = new
        return new

    def sign_out(self, session: _Session) -> None:
        with self._lock:
            self._sessions.pop(session.token, None)

    # --- CSRF ----------------------------------------------------------------------------------------

    @staticmethod
    def check_csrf(session: _Session, request: Request, form: dict[str, str]) -> None:
        """Refuse a state-changing request whose CSRF token is missing or wrong."""
        sent = form.get("csrf") or request.headers.get("x-csrf-token") or ""
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise Denied(403, "missing or stale CSRF token", fix="reload the page and submit the form again")
