"""The ASGI app of ``procmem serve`` (Starlette on uvicorn): an OpenAI-compatible gateway that adds procedural
memory, records every call, and takes delayed feedback. See docs/reference/http-api.md."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from procmem.agent.conversation import conversation_task, memory_allowed
from procmem.core import GenerationConfig, Home, ProcmemError, Task, new_id, redact, redact_obj, utc_now
from procmem.llm import PolicyHost
from procmem.memory import Retrieval
from procmem.serve._telemetry import GatewayTracing
from procmem.serve.backends import ChatBackend, ChatInput, backend_for
from procmem.serve.calllog import CallLog, CallRecord, CallStatus, calls_path
from procmem.serve.config import LOOPBACK_HOSTS, ServeConfig
from procmem.serve.keys import KeyRefused, KeyStore, Scope, authorize, bearer_token, keys_path
from procmem.serve.metrics import Metrics
from procmem.serve.protocol import (
    ApiError,
    ChatRequest,
    FeedbackRequest,
    completion_chunk,
    completion_object,
    conversation,
    parse_chat_request,
    parse_feedback,
)
from procmem.serve.wiring import DEFAULT_TENANT, SERVE_SUITE, MemoryWorker, TenantSessions

__all__ = ["EPISODE_HEADER", "VERSION_HEADER", "Gateway", "calls_path"]

T = TypeVar("T")
EPISODE_HEADER = "X-Procmem-Episode-Id"
VERSION_HEADER = "X-Procmem-Adapter-Version"
_EPISODE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DISCONNECT_POLL_S = 0.25
"""While a stream waits for the model, how often it checks whether the client is still there."""


class Gateway:
    """The server's state and its routes; :meth:`app` is the ASGI application."""

    def __init__(self, config: ServeConfig, home: Home, *, host: PolicyHost | None = None) -> None:
        self.config = config
        self.home = home
        self.metrics = Metrics()
        self.log = CallLog(calls_path(home))
        self.keys = KeyStore(keys_path(home))
        session = config.session
        self.host = host or PolicyHost.open(home, model=session.model, adapter=session.adapter, engine=session.engine,
                                            limits=session.limits, max_wait_s=config.max_wait_ms / 1000,
                                            watch_s=config.watch_s)
        self.sessions = TenantSessions(self.host, session, home)
        self.tracing = GatewayTracing.from_config(config)  # OpenTelemetry: off unless an endpoint is configured
        self.worker = MemoryWorker(self.log, self.sessions, on_written=self.metrics.memory_episode,
                                   on_verdict=self.tracing.verification)
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="procmem-serve")
        self._inflight: set[tuple[str, str]] = set()
        self._inflight_lock = threading.Lock()
        self._exposed = config.host not in LOOPBACK_HOSTS

    @property
    def auth_required(self) -> bool:
        """Keys are required once any key exists (created even while serving), and always beyond loopback."""
        return self._exposed or bool(self.keys.keys())

    # --- the app --------------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes: list[BaseRoute] = [
            Route(path, self._wrap(path, handler), methods=[method]) for path, handler, method in (
                ("/v1/chat/completions", self.chat, "POST"),
                ("/v1/models", self.models, "GET"),
                ("/v1/episodes/{episode_id}", self.episode, "GET"),
                ("/v1/episodes/{episode_id}/feedback", self.feedback, "POST"),
                ("/healthz", self.healthz, "GET"),
                ("/metrics", self.prometheus, "GET"))
        ]
        if self.config.telemetry.receiver:  # OTLP/HTTP traces in (procmem/serve/_otlp_receiver.py)
            from procmem.serve._otlp_receiver import receive_traces

            routes.append(Route("/v1/traces", self._wrap("/v1/traces", lambda r: receive_traces(self, r)),
                                methods=["POST"]))
        if self.config.console.enabled:  # the web console at /ui (procmem/serve/console/)
            from procmem.serve.console import console_routes

            routes += console_routes(self)
        return Starlette(routes=routes, lifespan=self._lifespan)

    @asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.worker.start()
        self.host.start()
        try:
            yield
        finally:
            self.close()

    def close(self) -> None:
        self.host.close()
        self.worker.close()
        self.tracing.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.sessions.close()
        self.log.close()

    def _wrap(self, path: str, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except ApiError as err:
                response = JSONResponse(err.body(), status_code=err.status)
            except ProcmemError as err:  # a prompt over the context is the caller's (400), others the backend's (502)
                error = ApiError.from_backend(err)
                response = JSONResponse(error.body(), status_code=error.status)
            self.metrics.request(path, response.status_code)
            return response

        return endpoint

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # --- auth and input -------------------------------------------------------------------------

    def tenant(self, request: Request, scope: Scope) -> str:
        """The caller's tenant; raises 401/403 for a missing, unknown or revoked key or a missing scope."""
        if not self.auth_required:
            return DEFAULT_TENANT
        try:
            key = authorize(self.keys, bearer_token(request.headers.get("authorization")), scope)
        except KeyRefused as err:
            raise ApiError(err.status, err.message, fix=err.fix or "", code=err.code,
                           kind="permission_error" if err.status == 403 else "authentication_error") from None
        return key.tenant

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = ApiError(413, f"the body is over the size limit of {limit} bytes",
                           fix="send a smaller request, or raise max_body_bytes in serve.toml", code="body_too_large")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        return bytes(body)

    def _episode_id(self, request: Request) -> str:
        given = request.headers.get(EPISODE_HEADER)
        if given is None:
            return new_id()
        if not _EPISODE_ID.match(given):
            raise ApiError(400, f"bad {EPISODE_HEADER} header {given[:40]!r}", param=EPISODE_HEADER,
                           fix="use 1-128 characters from A-Z a-z 0-9 . _ : -", code="invalid_episode_id")
        return given

    def _check_model(self, name: str, backend: ChatBackend) -> None:
        version = backend.adapter_version or "base"
        known = {backend.model_id, self.config.session.model, "procmem", f"{backend.model_id}@{version}"}
        if name not in known:
            raise ApiError(404, f"unknown model {name!r}", param="model", code="model_not_found",
                           fix=f"use {backend.model_id!r} or 'procmem' (see GET /v1/models)")

    # --- chat -----------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        started, started_at = time.perf_counter(), utc_now()
        marks = {"start": time.time_ns()}  # for the spans (procmem/serve/_telemetry.py)
        tenant = self.tenant(request, "chat")
        req = parse_chat_request(await self._body(request))
        session = await self._run(self.sessions.get, tenant)  # a tenant's first call opens its memory
        policy = session.policy  # this request's policy, to its end (hot swap)
        backend = backend_for(policy)
        self._check_model(req.model, backend)
        if req.wants_tools and not backend.supports_tools:
            raise ApiError(400, f"{backend.model_id} does not support tools or tool messages", param="tools",
                           code="tools_unsupported", fix="drop tools/tool messages, or serve a litellm: model "
                           "that supports them")
        verifier = self._verifier(req)
        episode_id = self._episode_id(request)
        headers = {EPISODE_HEADER: episode_id, VERSION_HEADER: backend.adapter_version or "base"}
        stored = await self._run(self.log.get, tenant, episode_id)
        if stored is not None and stored.status != "complete":
            raise ApiError(409, f"episode {episode_id} was cut off ({stored.status}) and stays recorded as such",
                           param=EPISODE_HEADER, code="episode_incomplete", fix="retry with a new episode id")
        if stored is not None:  # a retry of a finished call: the same answer, recorded once
            return self._replay(stored, req, {**headers, VERSION_HEADER: stored.adapter_version or "base",
                                              "X-Procmem-Replayed": "true"})
        key = (tenant, episode_id)
        with self._inflight_lock:
            if key in self._inflight:
                raise ApiError(409, f"episode {episode_id} is being answered right now", param=EPISODE_HEADER,
                               code="episode_in_progress", fix="wait for it, or use another episode id")
            self._inflight.add(key)
        try:
            messages = conversation(req.messages)
            task = conversation_task(messages, id=request.headers.get("x-procmem-task-id") or episode_id,
                                     suite=SERVE_SUITE, verifier=verifier)
            use_memory = request.headers.get("x-procmem-memory", "on").lower() != "off" and memory_allowed(messages)
            marks["retrieval_start"] = time.time_ns()
            found = await self._run(session.retrieve, task, policy) if use_memory else Retrieval()
            marks["retrieval_end"] = time.time_ns()
            chat_input = ChatInput(messages, [m.model_dump(exclude_none=True) for m in req.messages], found.text,
                                   _generation(req, session.config.generation.max_tokens), tools=req.tools,
                                   tool_choice=req.tool_choice)
            base = _CallBase(episode_id=episode_id, tenant=tenant, request=request, req=req, backend=backend,
                             found=found, chat_input=chat_input, verifier=verifier, started=started,
                             started_at=started_at, marks=marks)
            if req.stream:  # a stream's status is sent with its first byte: refuse what cannot fit before it
                await self._run(backend.check, chat_input)
        except BaseException:
            self._release(key)
            raise
        if req.stream:
            return StreamingResponse(self._stream(base), media_type="text/event-stream", headers=headers)
        try:
            answer = await self._run(backend.complete, chat_input)
            usage = _usage(answer.prompt_tokens, answer.completion_tokens)
            await self._run(self._record, base, "complete", answer.text, answer.finish_reason, usage,
                            answer.tool_calls)
        finally:
            self._release(key)
        body = completion_object(completion_id=f"chatcmpl-{episode_id}", created=int(time.time()),
                                 model=backend.model_id, text=answer.text, finish_reason=answer.finish_reason,
                                 usage=usage, tool_calls=answer.tool_calls)
        return JSONResponse(body, headers=headers)

    def _release(self, key: tuple[str, str]) -> None:
        with self._inflight_lock:
            self._inflight.discard(key)

    def _verifier(self, req: ChatRequest) -> str:
        spec = (req.metadata or {}).get("procmem_verifier")
        if spec is None:
            return ""
        if not isinstance(spec, str) or not spec.strip():
            raise ApiError(400, "metadata.procmem_verifier must be a verifier spec string", param="metadata",
                           code="invalid_verifier", fix="e.g. 'numeric:42' or 'exact:Paris'")
        from procmem.verifiers import build_verifier

        try:
            build_verifier(Task(id="check", prompt="", verifier=spec))
        except ProcmemError as err:
            raise ApiError(400, f"metadata.procmem_verifier: {err.message}", param="metadata",
                           code="invalid_verifier", fix=err.fix or "use a spec such as numeric:42") from err
        return spec.strip()

    def _record(self, base: _CallBase, status: CallStatus, text: str, finish_reason: str, usage: dict[str, int],
                tool_calls: list[dict[str, Any]] | None = None, error: str = "") -> None:
        """Commit the call to the log (the durability point) and count it."""
        req, backend = base.req, base.backend
        params = req.model_dump(exclude={"messages", "metadata", "user", "model"}, exclude_none=True)
        if tool_calls:
            params["response_tool_calls"] = tool_calls
        headers = base.request.headers
        call = CallRecord(
            id=base.episode_id, tenant=base.tenant, status=status, model_id=backend.model_id,
            adapter_version=backend.adapter_version,
            messages=redact_obj([m.model_dump(exclude_none=True) for m in req.messages]),
            prompt=redact(backend.sent(base.chat_input)), response=redact(text), finish_reason=finish_reason,
            usage=usage, latency_ms=round((time.perf_counter() - base.started) * 1000, 3),
            started_at=base.started_at, finished_at=utc_now(), session_id=headers.get("x-procmem-session-id"),
            task_id=headers.get("x-procmem-task-id"), user=req.user, metadata=redact_obj(req.metadata or {}),
            params=redact_obj(params), memory_ids=base.found.entry_ids, stream=req.stream, verifier=base.verifier,
            error=redact(error))
        if self.tracing.enabled:  # the call's spans; the call keeps their traceparent
            call = self.tracing.call(call, headers=headers, marks=base.marks, request_model=req.model,
                                     sent=call.prompt)
        write = time.perf_counter()
        self.log.record(call)
        done = time.perf_counter()
        self.metrics.call(done - base.started, usage["prompt_tokens"], usage["completion_tokens"], done - write)
        self.worker.wake()

    async def _stream(self, base: _CallBase) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()
        backend, req = base.backend, base.req

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown)
                cancel.set()

        def produce() -> None:
            pieces = backend.stream(base.chat_input)
            try:
                for piece in pieces:
                    if cancel.is_set():
                        break
                    put(("piece", piece))
                put(("end", None))
            except BaseException as err:
                put(("error", err))
            finally:
                close = getattr(pieces, "close", None)
                if callable(close):
                    close()

        pieces: list[str] = []
        recorded = False
        cid, created, model = f"chatcmpl-{base.episode_id}", int(time.time()), backend.model_id
        try:
            self.pool.submit(produce)
            yield _sse(completion_chunk(completion_id=cid, created=created, model=model,
                                        delta={"role": "assistant", "content": ""}))
            while True:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), _DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await base.request.is_disconnected():
                        break
                    continue
                if kind == "end":
                    break
                if kind == "error":
                    error = value if isinstance(value, ProcmemError) else ProcmemError(str(value))
                    await self._run(self._record, base, "error", "".join(pieces), "error", self._stream_usage(
                        base, pieces), None, str(error))
                    recorded = True
                    yield _sse(ApiError(502, redact(str(error)), fix="", code="backend_error",
                                        kind="server_error").body())
                    return
                pieces.append(value)
                yield _sse(completion_chunk(completion_id=cid, created=created, model=model,
                                            delta={"content": value}))
                if await base.request.is_disconnected():
                    break
            usage = self._stream_usage(base, pieces)
            finish = "length" if usage["completion_tokens"] >= base.chat_input.generation.max_tokens else "stop"
            if await base.request.is_disconnected():
                return  # recorded as incomplete below
            yield _sse(completion_chunk(completion_id=cid, created=created, model=model, delta={},
                                        finish_reason=finish))
            if req.stream_options is not None and req.stream_options.include_usage:
                yield _sse(completion_chunk(completion_id=cid, created=created, model=model, delta=None,
                                            usage=usage))
            await self._run(self._record, base, "complete", "".join(pieces), finish, usage)
            recorded = True
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()
            if not recorded:  # the client went away mid-stream: keep what it got, marked incomplete
                self._record(base, "incomplete", "".join(pieces), "incomplete", self._stream_usage(base, pieces))
            self._release((base.tenant, base.episode_id))

    def _stream_usage(self, base: _CallBase, pieces: list[str]) -> dict[str, int]:
        backend = base.backend
        return _usage(backend.count_tokens(backend.sent(base.chat_input)), backend.count_tokens("".join(pieces)))

    def _replay(self, call: CallRecord, req: ChatRequest, headers: dict[str, str]) -> Response:
        cid, created = f"chatcmpl-{call.id}", int(time.time())
        if not req.stream:
            return JSONResponse(completion_object(completion_id=cid, created=created, model=call.model_id,
                                                  text=call.response, finish_reason=call.finish_reason,
                                                  usage=call.usage), headers=headers)

        async def events() -> AsyncIterator[str]:
            yield _sse(completion_chunk(completion_id=cid, created=created, model=call.model_id,
                                        delta={"role": "assistant", "content": call.response}))
            yield _sse(completion_chunk(completion_id=cid, created=created, model=call.model_id, delta={},
                                        finish_reason=call.finish_reason))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # --- feedback and episodes ------------------------------------------------------------------

    async def feedback(self, request: Request) -> Response:
        tenant = self.tenant(request, "feedback")
        episode_id = request.path_params["episode_id"]
        body = parse_feedback(await self._body(request))
        return JSONResponse(await self.record_feedback(tenant, episode_id, body))

    async def record_feedback(self, tenant: str, episode_id: str, body: FeedbackRequest) -> dict[str, Any]:
        """Attach feedback to an episode: the one path of ``POST /v1/episodes/{id}/feedback`` and the console.
        Raises ApiError 404 for an episode that is neither recorded nor being answered."""
        call = await self._run(self.log.get, tenant, episode_id)
        with self._inflight_lock:
            in_flight = (tenant, episode_id) in self._inflight
        if call is None and not in_flight:
            raise ApiError(404, f"no episode {episode_id!r}", param="episode_id", code="episode_not_found",
                           fix=f"use the {EPISODE_HEADER} header of a response you received (with the same key)")
        feedback_id = body.id or new_id()
        new = await self._run(self.log.add_feedback, tenant, episode_id, feedback_id,
                              redact_obj(body.model_dump(exclude={"id"})))
        if new:
            self.metrics.feedback_received()
            self.worker.wake()
            if call is not None:  # a span in the call's trace (when it was traced)
                self.tracing.feedback(call, feedback_id, body.model_dump(exclude={"id"}))
        return {"id": feedback_id, "object": "procmem.feedback", "episode_id": episode_id, "duplicate": not new,
                "attached": call is not None}

    async def episode(self, request: Request) -> Response:
        tenant = self.tenant(request, "feedback")
        episode_id = request.path_params["episode_id"]
        call = await self._run(self.log.get, tenant, episode_id)
        if call is None:
            raise ApiError(404, f"no episode {episode_id!r}", param="episode_id", code="episode_not_found",
                           fix=f"use the {EPISODE_HEADER} header of a response you received (with the same key)")
        feedback = await self._run(self.log.feedback, tenant, episode_id)
        data = json.loads(call.to_json())
        data.pop("tenant", None)
        data["object"] = "procmem.episode"
        data["feedback"] = [{"id": f.id, "received_at": f.received_at, **f.body} for f in feedback]
        data["verified"] = bool(feedback) or call.verdict is not None
        return JSONResponse(data)

    # --- models, health, metrics ----------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        self.tenant(request, "chat")
        backend = self.host.current
        info = {"object": "model", "created": 0, "owned_by": "procmem",
                "procmem": {"model": self.config.session.model, "adapter_version": backend.adapter_version or "base",
                            "pinned": self.config.session.adapter != "promoted"}}
        return JSONResponse({"object": "list", "data": [{"id": backend.model_id, **info},
                                                        {"id": "procmem", **info}]})

    async def healthz(self, _request: Request) -> Response:
        backend = self.host.current
        return JSONResponse({"status": "ok", "model": backend.model_id,
                             "adapter_version": backend.adapter_version or "base"})

    async def prometheus(self, request: Request) -> Response:
        self.tenant(request, "admin")
        backend = self.host.current
        return PlainTextResponse(self.metrics.render(model=backend.model_id, adapter=backend.adapter_version,
                                                     swaps=self.host.swaps),
                                 media_type="text/plain; version=0.0.4")


class _CallBase:
    """What a call carries from its start to its record."""

    def __init__(self, *, episode_id: str, tenant: str, request: Request, req: ChatRequest, backend: ChatBackend,
                 found: Retrieval, chat_input: ChatInput, verifier: str, started: float, started_at: str,
                 marks: dict[str, int] | None = None) -> None:
        self.episode_id = episode_id
        self.tenant = tenant
        self.request = request
        self.req = req
        self.backend = backend
        self.found = found
        self.chat_input = chat_input
        self.verifier = verifier
        self.started = started
        self.started_at = started_at
        self.marks = marks or {}
        """Wall-clock ns of the request's start and its retrieval, for its spans."""


def _generation(request: ChatRequest, default_max_tokens: int) -> GenerationConfig:
    """The request's decoding parameters."""
    max_tokens = request.max_completion_tokens or request.max_tokens or default_max_tokens
    return GenerationConfig(max_tokens=max_tokens, temperature=request.temperature or 0.0,
                            top_p=request.top_p or 1.0, stop=request.stops, seed=request.seed)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


