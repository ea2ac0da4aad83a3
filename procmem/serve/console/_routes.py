"""The console's routes under ``/ui``: Starlette endpoints rendering Jinja2 templates (autoescaped), htmx polling for
the live parts, matplotlib PNGs for the charts. Access rules: :mod:`._auth`; data: :mod:`._data`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from procmem.core import ProcmemError, new_id
from procmem.core.registry import promote, rollback
from procmem.memory import LEVELS, Level
from procmem.memory._entries import ENTRY_LEVELS, EntryLevel, Kind, entry_or_none
from procmem.serve.calllog import CallFilter
from procmem.serve.console import _charts as charts
from procmem.serve.console import _data as data
from procmem.serve.console._auth import COOKIE, Denied, Role, Sessions, Viewer, _Session
from procmem.serve.protocol import ApiError, FeedbackRequest, message_text

if TYPE_CHECKING:
    from procmem.serve.app import Gateway

__all__ = ["Console", "console_routes"]

T = TypeVar("T")
_STATIC = Path(__file__).parent / "static"
_PAGE = 50
_SEARCH = 20
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
_NOTICES = {
    "feedback": "Feedback recorded: it reaches memory through the same path as POST /v1/episodes/{id}/feedback.",
    "retired": "Entry retired: retrieval no longer gives it.",
    "restored": "Entry restored: retrieval may give it again.",
    "edited": "Entry edited and re-embedded.",
    "added": "Operator entry added.",
    "merged": "The text was close to an existing entry, so it was merged into it (deduplication).",
    "promoted": "Adapter promoted: the gateway swaps to it within a second.",
    "rolledback": "Rolled back to the previously promoted version.",
    "signedout": "Signed out.",
}


def console_routes(gateway: Gateway) -> list[BaseRoute]:
    """The routes to add to the gateway's app (``/ui`` and everything under it)."""
    return Console(gateway).routes()


@dataclass
class _Ctx:
    """One request's session, viewer and form fields."""

    request: Request
    session: _Session
    viewer: Viewer | None
    form: dict[str, str] = field(default_factory=dict)
    cookie: str | None = None
    """A session token to set (a new visitor, or a sign-in)."""


Handler = Callable[[_Ctx], Awaitable[Response]]


class Console:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.config = gateway.config.console
        self.sessions = Sessions(gateway, hours=self.config.session_hours)
        env = Environment(loader=PackageLoader("procmem.serve.console", "templates"), autoescape=True,
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        env.filters["pct"] = lambda v, digits=1: "–" if v is None else f"{100.0 * v:.{digits}f}%"
        env.filters["when"] = lambda v: (v or "")[:19].replace("T", " ")
        env.filters["num"] = lambda v: "–" if v is None else f"{v:,}"
        self.templates = Jinja2Templates(env=env)
        self.chart_cache = charts.ChartCache()
        self.figures = data.StaleCache(gateway.pool, ttl_s=max(5.0, 2 * self.config.poll_s))

    def routes(self) -> list[BaseRoute]:
        def r(path: str, handler: Handler, need: Role | None, method: str = "GET") -> Route:
            return Route(path, self._endpoint(handler, need), methods=[method])

        return [Route("/ui", lambda _r: RedirectResponse("/ui/", status_code=307)), Mount("/ui", routes=[
            Mount("/static", StaticFiles(directory=_STATIC), name="static"),
            r("/", self.overview, "admin"),
            r("/live/overview", self.overview_live, "admin"),
            r("/charts/traffic.png", self.traffic_png, "admin"),
            r("/charts/learning.png", self.learning_png, "admin"),
            r("/login", self.login_page, None),
            r("/login", self.login, None, "POST"),
            r("/logout", self.logout, None, "POST"),
            r("/episodes", self.episodes, "feedback"),
            r("/live/episodes", self.episodes_live, "feedback"),
            r("/episodes/{episode_id}", self.episode, "feedback"),
            r("/episodes/{episode_id}/feedback", self.feedback, "feedback", "POST"),
            r("/memory", self.memory, "admin"),
            r("/memory/new", self.memory_new, "admin"),
            r("/memory/new", self.memory_add, "admin", "POST"),
            r("/memory/{entry_id}", self.memory_entry, "admin"),
            r("/memory/{entry_id}/edit", self.memory_edit_page, "admin"),
            r("/memory/{entry_id}/edit", self.memory_edit, "admin", "POST"),
            r("/memory/{entry_id}/retire", self.memory_retire, "admin", "POST"),
            r("/memory/{entry_id}/restore", self.memory_restore, "admin", "POST"),
            r("/adapters", self.adapters, "admin"),
            r("/adapters/rollback", self.rollback_page, "admin"),
            r("/adapters/rollback", self.rollback, "admin", "POST"),
            r("/adapters/{version}", self.adapter, "admin"),
            r("/adapters/{version}/loss.png", self.loss_png, "admin"),
            r("/adapters/{version}/promote", self.promote_page, "admin"),
            r("/adapters/{version}/promote", self.promote, "admin", "POST"),
            r("/runs", self.runs, "admin"),
            r("/runs/distill/{run_id}", self.distill_run, "admin"),
        ])]

    # --- plumbing -------------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.gw.pool, functools.partial(fn, *args, **kwargs))

    def _endpoint(self, handler: Handler, need: Role | None) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session, fresh = self.sessions.session(request)
            ctx = _Ctx(request, session, None, cookie=session.token if fresh else None)
            try:
                if request.method == "POST":
                    ctx.form = await self._form(request)
                    Sessions.check_csrf(session, request, ctx.form)
                if need is not None:
                    ctx.viewer = self.sessions.viewer(session, request, need)
                response = await handler(ctx)
            except Denied as err:
                if err.status == 401 and request.method == "GET" and "hx-request" not in request.headers:
                    response = RedirectResponse("/ui/login?" + urlencode({"next": request.url.path}), status_code=303)
                elif "hx-request" in request.headers:  # a poll after the session ended: leave the page as it is
                    response = Response(status_code=204)
                else:
                    if ctx.viewer is None:  # show the navigation of what the visitor may see
                        with contextlib.suppress(Denied):
                            ctx.viewer = self.sessions.viewer(session, request, "feedback")
                    response = self._error(ctx, err.status, err.message, err.fix)
            except ApiError as err:  # the feedback path's 404 (an episode neither recorded nor in flight)
                response = self._error(ctx, err.status, err.message)
            except ProcmemError as err:  # the home's state (a corrupted file...), not the visitor's doing
                response = self._error(ctx, 500, err.message, err.fix or "")
            if ctx.cookie is not None:
                response.set_cookie(COOKIE, ctx.cookie, max_age=int(self.sessions.ttl_s), path="/ui", httponly=True,
                                    samesite="strict", secure=request.url.scheme == "https")
            response.headers.setdefault("Content-Security-Policy", _CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault("Cache-Control", "no-store")
            self.gw.metrics.request("/ui", response.status_code)
            return response

        return endpoint

    async def _form(self, request: Request) -> dict[str, str]:
        """The url-encoded form of a POST (last value of each field), within the gateway's body limit."""
        limit = self.gw.config.max_body_bytes
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Denied(413, f"the form is over the size limit of {limit} bytes", fix="send less text")
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            return {}
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
        except (UnicodeDecodeError, ValueError) as err:
            raise Denied(400, f"unreadable form: {err}", fix="send a url-encoded UTF-8 form") from err
        return {key: values[-1] for key, values in parsed.items()}

    def _render(self, ctx: _Ctx, name: str, status: int = 200, **context: Any) -> Response:
        notice = _NOTICES.get(ctx.request.query_params.get("done", ""))
        return self.templates.TemplateResponse(ctx.request, name, {
            "viewer": ctx.viewer, "csrf": ctx.session.csrf, "notice": notice, "poll_s": self.config.poll_s,
            "path": ctx.request.url.path, **context}, status_code=status)

    def _error(self, ctx: _Ctx, status: int, message: str, fix: str = "") -> Response:
        return self._render(ctx, "error.html", status, status_code=status, message=message, fix=fix)

    @staticmethod
    def _back(url: str, done: str) -> Response:
        return RedirectResponse(f"{url}?done={done}", status_code=303)

    @staticmethod
    def _viewer(ctx: _Ctx) -> Viewer:
        assert ctx.viewer is not None
        return ctx.viewer

    # --- sign in --------------------------------------------------------------------------------------

    async def login_page(self, ctx: _Ctx, *, status: int = 200, message: str = "", fix: str = "") -> Response:
        if not self.gw.auth_required:
            return RedirectResponse("/ui/", status_code=303)
        return self._render(ctx, "login.html", status, next=_safe_next(ctx.request.query_params.get("next", "")),
                            message=message, fix=fix)

    async def login(self, ctx: _Ctx) -> Response:
        if not self.gw.auth_required:
            return RedirectResponse("/ui/", status_code=303)
        try:
            new = self.sessions.sign_in(ctx.session, ctx.form.get("key", ""))
        except Denied as err:
            return await self.login_page(ctx, status=err.status, message=err.message, fix=err.fix)
        ctx.cookie = new.token
        default = "/ui/" if new.role == "admin" else "/ui/episodes"
        return RedirectResponse(_safe_next(ctx.form.get("next", "")) or default, status_code=303)

    async def logout(self, ctx: _Ctx) -> Response:
        self.sessions.sign_out(ctx.session)
        ctx.cookie = ""
        return RedirectResponse("/ui/login?done=signedout" if self.gw.auth_required else "/ui/", status_code=303)

    # --- overview -------------------------------------------------------------------------------------

    async def _overview_context(self, ctx: _Ctx) -> dict[str, Any]:
        tenant = self._viewer(ctx).tenant
        figures = await self._call(data.overview, self.gw, self.figures, tenant)
        traffic = await self._call(data.traffic_series, self.gw, tenant)
        learning = await self._call(data.learning_series, self.gw, self.figures, tenant)
        curve = []
        for version, points in learning.items():
            judged = sum(n for _, _, n in points)
            curve.append({"version": version, "judged": judged, "first": points[0][0], "last": points[-1][0],
                          "rate": sum(rate * n for _, rate, n in points) / judged if judged else None})
        return {"o": figures, "traffic_key": charts.ChartCache.key("traffic", traffic),
                "learning_key": charts.ChartCache.key("learning", learning), "curve": curve}

    async def overview(self, ctx: _Ctx) -> Response:
        return self._render(ctx, "overview.html", **await self._overview_context(ctx))

    async def overview_live(self, ctx: _Ctx) -> Response:
        return self._render(ctx, "_overview_live.html", **await self._overview_context(ctx))

    async def _png(self, name: str, series: Any, draw: Callable[[], bytes]) -> Response:
        key = charts.ChartCache.key(name, series)
        png = self.chart_cache.get(key)
        if png is None:
            png = await self._call(draw)
            self.chart_cache.put(key, png)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def traffic_png(self, ctx: _Ctx) -> Response:
        series = await self._call(data.traffic_series, self.gw, self._viewer(ctx).tenant)
        return await self._png("traffic", series, lambda: charts.traffic_png(*series))

    async def learning_png(self, ctx: _Ctx) -> Response:
        series = await self._call(data.learning_series, self.gw, self.figures, self._viewer(ctx).tenant)
        return await self._png("learning", series, lambda: charts.learning_png(series))

    # --- episodes -------------------------------------------------------------------------------------

    def _filters(self, ctx: _Ctx) -> tuple[CallFilter, dict[str, str], list[str]]:
        """The list's filters from the query string, the values to show back, and what was not understood."""
        q = ctx.request.query_params
        shown = {k: q.get(k, "").strip()[:200] for k in ("session", "task", "verdict", "feedback", "adapter", "since",
                                                          "until", "q")}
        problems: list[str] = []
        verdict = shown["verdict"] if shown["verdict"] in ("passed", "failed", "unverified") else None
        feedback = shown["feedback"] if shown["feedback"] in ("any", "none", "correction") else None
        for name, value, chosen in (("verdict", shown["verdict"], verdict), ("feedback", shown["feedback"], feedback)):
            if value and chosen is None:
                problems.append(f"{name}: unknown value {value!r}")
        since, until = _day(shown["since"], "since", problems), _day(shown["until"], "until", problems)
        where = CallFilter(session_id=shown["session"] or None, task_id=shown["task"] or None,
                           outcome=cast(Any, verdict), feedback=cast(Any, feedback),
                           adapter_version=shown["adapter"] or None, since=since.isoformat() if since else None,
                           until=(until + timedelta(days=1)).isoformat() if until else None, text=shown["q"] or None)
        return where, shown, problems

    async def _episode_context(self, ctx: _Ctx) -> dict[str, Any]:
        where, shown, problems = self._filters(ctx)
        before = _cursor(ctx.request.query_params.get("before", ""))
        tenant = self._viewer(ctx).tenant
        rows, total = await self._call(data.episode_rows, self.gw, tenant, where, limit=_PAGE, before=before)
        versions = await self._call(self.gw.log.adapter_versions, tenant)
        query = {k: v for k, v in shown.items() if v}
        more = None
        if len(rows) == _PAGE:
            more = urlencode({**query, "before": f"{rows[-1].finished_at}|{rows[-1].id}"})
        return {"rows": rows, "total": total, "f": shown, "problems": problems, "versions": versions,
                "query": urlencode(query), "more": more, "paged": before is not None}

    async def episodes(self, ctx: _Ctx) -> Response:
        context = await self._episode_context(ctx)
        return self._render(ctx, "episodes.html", 400 if context["problems"] else 200, **context)

    async def episodes_live(self, ctx: _Ctx) -> Response:
        return self._render(ctx, "_episode_rows.html", **await self._episode_context(ctx))

    async def episode(self, ctx: _Ctx, *, status: int = 200, errors: list[str] | None = None) -> Response:
        episode_id = ctx.request.path_params["episode_id"]
        view = await self._call(data.episode_view, self.gw, self._viewer(ctx).tenant, episode_id)
        if view is None:
            raise Denied(404, f"no episode {episode_id!r}", fix="pick one from the episode list")
        messages = [(m.get("role", ""), message_text_of(m)) for m in (view.call.messages if view.call else [])]
        return self._render(ctx, "episode.html", status, v=view, messages=messages, errors=errors or [],
                            form=ctx.form)

    async def feedback(self, ctx: _Ctx) -> Response:
        episode_id = ctx.request.path_params["episode_id"]
        form = ctx.form
        verdict = form.get("passed", "")
        body: dict[str, Any] = {"source": "human", "comment": form.get("comment", "").strip()}
        if verdict in ("true", "false"):
            body["passed"] = verdict == "true"
        if form.get("score", "").strip():
            body["score"] = form["score"].strip()
        if form.get("correction", "").strip():
            body["correction"] = form["correction"].strip()
        try:
            request = FeedbackRequest.model_validate({**body, "id": f"console-{new_id()}"})
        except ValidationError as err:
            errors = [f"{'.'.join(str(p) for p in e['loc']) or 'feedback'}: {e['msg']}" for e in err.errors()]
            return await self.episode(ctx, status=400, errors=errors)
        await self.gw.record_feedback(self._viewer(ctx).tenant, episode_id, request)
        return self._back(f"/ui/episodes/{episode_id}", "feedback")

    # --- memory ---------------------------------------------------------------------------------------

    def _memory(self, ctx: _Ctx) -> Any:
        return data.memory_of(self.gw, self._viewer(ctx).tenant)

    async def memory(self, ctx: _Ctx) -> Response:
        q = ctx.request.query_params
        level = q.get("level", "insight")
        if level not in LEVELS:
            raise Denied(400, f"unknown level {level!r}", fix=f"use one of {', '.join(LEVELS)}")
        status = q.get("status", "")
        if status not in ("", "active", "retired"):
            raise Denied(400, f"unknown status {status!r}", fix="use active or retired")
        offset = _int(q.get("offset", "0"), "offset")
        memory = await self._call(data.memory_of, self.gw, self._viewer(ctx).tenant)
        counts = await self._call(data.memory_counts, self.gw, self.figures, self._viewer(ctx).tenant)
        query = q.get("q", "")[:1000]
        page = await self._call(data.memory_page, memory, counts, cast(Level, level), status=status, query=query,
                                offset=offset, limit=_SEARCH if query.strip() else _PAGE)
        question = q.get("question", "")[:2000]
        retrieved = (await self._call(data.preview_retrieval, self.gw, self._viewer(ctx).tenant, question)
                     if question.strip() else None)
        base = {k: v for k, v in (("level", level), ("status", status)) if v}
        return self._render(ctx, "memory.html", page=page, counts=counts, levels=LEVELS, question=question,
                            retrieved=retrieved, base=urlencode(base),
                            prev=urlencode({**base, "offset": max(0, offset - _PAGE)}) if offset > 0 else None,
                            next=urlencode({**base, "offset": offset + _PAGE})
                            if not page.query and offset + _PAGE < page.total else None)

    async def memory_entry(self, ctx: _Ctx) -> Response:
        entry_id = ctx.request.path_params["entry_id"]
        memory = await self._call(data.memory_of, self.gw, self._viewer(ctx).tenant)
        record = await self._call(memory.find, entry_id)
        if record is None:
            raise Denied(404, f"no memory entry {entry_id!r}", fix="search the memory page for it")
        entry = entry_or_none(record) if record.level in ENTRY_LEVELS else None
        trust = await self._call(data.entry_trust, self.gw, memory, entry) if entry is not None else None
        episode = None
        if record.level == "experience":
            from procmem.core import Episode

            episode = Episode.from_dict(record.payload)
        return self._render(ctx, "entry.html", record=record, entry=entry, trust=trust, episode=episode)

    async def memory_edit_page(self, ctx: _Ctx, *, status: int = 200, error: str = "") -> Response:
        entry_id = ctx.request.path_params["entry_id"]
        memory = await self._call(data.memory_of, self.gw, self._viewer(ctx).tenant)
        entry = await self._call(memory.entry, entry_id)
        if entry is None:
            raise Denied(404, f"no insight or pattern {entry_id!r}", fix="only insights and patterns can be edited")
        return self._render(ctx, "entry_edit.html", status, entry=entry, error=error,
                            text=ctx.form.get("text", entry.text))

    async def memory_edit(self, ctx: _Ctx) -> Response:
        entry_id = ctx.request.path_params["entry_id"]
        text = ctx.form.get("text", "")
        if not " ".join(text.split()):
            return await self.memory_edit_page(ctx, status=400, error="text: empty; write the procedure")
        await self._curate(ctx, "edit_entry", entry_id, text)
        return self._back(f"/ui/memory/{entry_id}", "edited")

    async def memory_retire(self, ctx: _Ctx) -> Response:
        entry_id = ctx.request.path_params["entry_id"]
        await self._curate(ctx, "retire_entry", entry_id)
        return self._back(f"/ui/memory/{entry_id}", "retired")

    async def memory_restore(self, ctx: _Ctx) -> Response:
        entry_id = ctx.request.path_params["entry_id"]
        await self._curate(ctx, "restore_entry", entry_id)
        return self._back(f"/ui/memory/{entry_id}", "restored")

    async def _curate(self, ctx: _Ctx, method: str, entry_id: str, *args: Any) -> None:
        viewer = self._viewer(ctx)
        memory = await self._call(data.memory_of, self.gw, viewer.tenant)
        try:
            await self._call(getattr(memory, method), entry_id, *args, by=f"console: {viewer.who}")
            self.figures.invalidate(f"memory:{viewer.tenant}")
        except KeyError:
            raise Denied(404, f"no insight or pattern {entry_id!r}",
                         fix="only insights and patterns can be changed") from None

    async def memory_new(self, ctx: _Ctx, *, status: int = 200, error: str = "") -> Response:
        form = {"level": "insight", "kind": "strategy", "scope": "serve", "text": "", **ctx.form}
        return self._render(ctx, "entry_new.html", status, form=form, error=error)

    async def memory_add(self, ctx: _Ctx) -> Response:
        form = ctx.form
        level, kind = form.get("level", "insight"), form.get("kind", "strategy")
        if level not in ENTRY_LEVELS:
            return await self.memory_new(ctx, status=400, error=f"level: unknown {level!r}; use insight or pattern")
        if kind not in ("strategy", "lesson"):
            return await self.memory_new(ctx, status=400, error=f"kind: unknown {kind!r}; use strategy or lesson")
        if not " ".join(form.get("text", "").split()):
            return await self.memory_new(ctx, status=400, error="text: empty; write the procedure")
        try:
            scope = await self._call(data.check_scope, form.get("scope", ""))
        except ProcmemError as err:
            return await self.memory_new(ctx, status=400, error=f"{err.where}: {err.message}; {err.fix}")
        viewer = self._viewer(ctx)
        memory = await self._call(data.memory_of, self.gw, viewer.tenant)
        entry, written = await self._call(
            memory.add_operator_entry, cast(EntryLevel, level), form["text"], scope=scope,
            kind=None if level == "pattern" else cast(Kind, kind), by=f"console: {viewer.who}")
        self.figures.invalidate(f"memory:{viewer.tenant}")
        if written == "merged":
            return self._back("/ui/memory", "merged")
        return self._back(f"/ui/memory/{entry.id}", "added")

    # --- adapters -------------------------------------------------------------------------------------

    async def adapters(self, ctx: _Ctx) -> Response:
        return self._render(ctx, "adapters.html", a=await self._call(data.adapter_view, self.gw))

    async def _manifest(self, ctx: _Ctx) -> Any:
        version = ctx.request.path_params["version"]
        try:
            return await self._call(data.manifest, self.gw, version)
        except ProcmemError as err:
            raise Denied(404, err.message, fix=err.fix or "") from err

    async def adapter(self, ctx: _Ctx) -> Response:
        manifest = await self._manifest(ctx)
        view = await self._call(data.adapter_view, self.gw)
        return self._render(ctx, "adapter.html", m=manifest, a=view, losses=manifest.metrics.get("losses") or [])

    async def loss_png(self, ctx: _Ctx) -> Response:
        manifest = await self._manifest(ctx)
        losses = [float(x) for x in manifest.metrics.get("losses") or []]
        return await self._png("loss", losses, lambda: charts.loss_png(losses))

    async def promote_page(self, ctx: _Ctx, *, status: int = 200, error: str = "", fix: str = "") -> Response:
        manifest = await self._manifest(ctx)
        view = await self._call(data.adapter_view, self.gw)
        return self._render(ctx, "confirm.html", status, action="promote", m=manifest, a=view, error=error, fix=fix)

    async def promote(self, ctx: _Ctx) -> Response:
        manifest = await self._manifest(ctx)
        if ctx.form.get("confirm") != "yes":
            return await self.promote_page(ctx, status=400, error="not confirmed", fix="tick the confirmation box")
        try:
            await self._call(promote, self.gw.home.adapters, manifest.version, force=ctx.form.get("force") == "yes",
                             reason=f"console: {self._viewer(ctx).who}")
        except ProcmemError as err:
            return await self.promote_page(ctx, status=409, error=err.message, fix=err.fix or "")
        return self._back("/ui/adapters", "promoted")

    async def rollback_page(self, ctx: _Ctx, *, status: int = 200, error: str = "", fix: str = "") -> Response:
        view = await self._call(data.adapter_view, self.gw)
        return self._render(ctx, "confirm.html", status, action="rollback", m=None, a=view, error=error, fix=fix)

    async def rollback(self, ctx: _Ctx) -> Response:
        if ctx.form.get("confirm") != "yes":
            return await self.rollback_page(ctx, status=400, error="not confirmed", fix="tick the confirmation box")
        try:
            await self._call(rollback, self.gw.home.adapters)
        except ProcmemError as err:
            return await self.rollback_page(ctx, status=409, error=err.message, fix=err.fix or "")
        return self._back("/ui/adapters", "rolledback")

    # --- runs -----------------------------------------------------------------------------------------

    async def runs(self, ctx: _Ctx) -> Response:
        return self._render(ctx, "runs.html", runs=await self._call(data.distill_runs, self.gw),
                            ticks=await self._call(data.scheduler_events, self.gw),
                            evals=await self._call(data.eval_runs, self.gw),
                            schedule=await self._call(data.schedule, self.gw))

    async def distill_run(self, ctx: _Ctx) -> Response:
        run = await self._call(data.distill_run, self.gw, ctx.request.path_params["run_id"])
        if run is None:
            raise Denied(404, f"no distillation run {ctx.request.path_params['run_id']!r}", fix="see the runs list")
        return self._render(ctx, "run.html", run=run)


def message_text_of(message: dict[str, Any]) -> str:
    """A logged message's text (text parts joined), for display."""
    from procmem.serve.protocol import ChatMessage

    try:
        return message_text(ChatMessage.model_validate(message))
    except ValidationError:
        return str(message.get("content", ""))


def _safe_next(value: str) -> str:
    """A redirect target after sign-in: a console path only (never another site)."""
    return value if value.startswith("/ui/") and not value.startswith("//") and "\\" not in value else ""


def _day(value: str, name: str, problems: list[str]) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        problems.append(f"{name}: {value!r} is not a date (YYYY-MM-DD)")
        return None


def _cursor(value: str) -> tuple[str, str] | None:
    finished, sep, episode_id = value.partition("|")
    return (finished, episode_id) if sep and finished else None


def _int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise Denied(400, f"{name}: {value!r} is not a number", fix=f"use a whole number for {name}") from None
    if number < 0:
        raise Denied(400, f"{name}: must be 0 or more", fix=f"use a whole number >= 0 for {name}")
    return number
