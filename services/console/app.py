"""The web console: runs with a live timeline, each pattern shown as what it is, a human inbox, dead
letters; submit, cancel, respond, replay. Server-rendered pages (jinja2, escaped) and a little JS.

A checked door like the MCP server and the A2A gateway: it reads run states and events from Redis and
files by exact version, and writes only what the CLI writes (run inputs, response files, `baton:runs`,
a dead letter's replay), as its own least-privilege users `baton-console` (shared/acl.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import posixpath
import re
import secrets
from pathlib import Path
from urllib.parse import quote

import uvicorn
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from baton import client
from services.mcp.app import _guess_type, _Server, is_loopback
from shared import metrics, streams, telemetry
from shared.errors import BatonError, KeyValidationError, ObjectMissingError, ObjectTooLargeError
from shared.events import ID_PATTERN, ObjectRef, utcnow
from shared.logging import configure_logging
from shared.service import loop_name, mark_ready, redis_client, run, tune_gc
from shared.settings import Settings
from shared.storage import Storage
from shared.workflow import load_workflows
from shared.workspace import run_prefix

from . import live, render, runs
from .auth import COOKIE, LOGIN_COOKIE, ConsoleAuth, SecurityHeaders, csrf_ok, new_session

SERVICE = "console"
HERE = Path(__file__).parent
UPLOADS = 3  # input files one submit form takes (name{i}, file{i})
# Files of one waiting run the inbox reads and shows; the rest are listed as links (a review of a document
# split in 600 parts would otherwise have the page read 600 files for each run on it).
INBOX_FILES = 10
_RUN_ID = re.compile(ID_PATTERN)


class Console:
    """The console's resources and pages; `open()` connects for the server's lifetime."""

    def __init__(self, settings: Settings, log) -> None:
        self.settings, self.log = settings, log
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
        )
        self.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
        self.redis = None
        self.hub: live.Hub | None = None
        self.storage: Storage | None = None
        self.workflows = load_workflows(settings.workflows).workflows

    @contextlib.asynccontextmanager
    async def open(self):
        async with Storage.connect(self.settings) as storage:
            self.storage = storage
            self.redis = redis_client(self.settings)
            self.hub = live.Hub(self.settings.redis_url, self.redis, self.log)
            self.hub.start()
            try:
                yield self
            finally:
                await self.hub.close()
                await self.redis.aclose()

    # --- helpers -------------------------------------------------------------------------------------

    def page(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        csrf = getattr(request.state, "csrf", None)
        authed = getattr(request.state, "via", None) is not None
        html = self.env.get_template(template).render(request=request, csrf=csrf, authed=authed, **context)
        return HTMLResponse(html, status, headers={"cache-control": "no-store"})

    def run_id(self, request: Request) -> str:
        run_id = request.path_params["run_id"]
        if not _RUN_ID.match(run_id):
            raise BatonError(f"run id {run_id!r} is not valid")
        return run_id

    async def form(self, request: Request):
        form = await request.form()
        if not csrf_ok(request, form):
            self.log.warning("console_csrf_refused", path=request.url.path)
            raise PermissionError("missing or wrong CSRF token")
        return form

    # --- login ---------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        next_url = _local(request.query_params.get("next") or "/runs")
        if request.method == "GET":
            login_csrf = secrets.token_urlsafe(18)
            response = self.page(request, "login.html", login_csrf=login_csrf, next_url=next_url)
            response.set_cookie(LOGIN_COOKIE, login_csrf, httponly=True, samesite="strict", path="/login")
            return response
        form = await request.form()
        expected = request.cookies.get(LOGIN_COOKIE, "")
        given_csrf = str(form.get("csrf", ""))
        token = str(form.get("token", ""))
        next_url = _local(str(form.get("next") or "/runs"))
        if not expected or not hmac.compare_digest(given_csrf, expected):
            return PlainTextResponse("the login form expired: reload it", 403)
        if not hmac.compare_digest(token.encode(), self.settings.console_token.encode()):
            self.log.warning("console_login_refused", client=str(request.client))
            login_csrf = secrets.token_urlsafe(18)
            response = self.page(
                request, "login.html", 401, login_csrf=login_csrf, next_url=next_url, error="Wrong token."
            )
            response.set_cookie(LOGIN_COOKIE, login_csrf, httponly=True, samesite="strict", path="/login")
            return response
        response = RedirectResponse(next_url, 303)
        response.set_cookie(
            COOKIE, new_session(self.settings.console_token), httponly=True, samesite="strict"
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        self.log.info("console_login", client=str(request.client))
        return response

    async def logout(self, request: Request) -> Response:
        await self.form(request)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE)
        return response

    # --- runs ----------------------------------------------------------------------------------------

    async def runs_list(self, request: Request) -> Response:
        q = request.query_params
        status = q.get("status", "") if q.get("status", "") in runs.STATUSES else ""
        workflow = q.get("workflow", "")
        waiting = q.get("waiting") == "1"
        cursor = int(q.get("cursor", "0") or 0) if q.get("cursor", "0").isdigit() else 0
        page = await runs.page_runs(
            self.redis,
            cursor=cursor,
            size=self.settings.console_page_size,
            status=status,
            workflow=workflow,
            waiting=waiting,
        )
        if _wants_json(request):
            return JSONResponse({"runs": page.rows, "next_cursor": page.next_cursor, "total": page.total})
        filters = {"status": status, "workflow": workflow, "waiting": "1" if waiting else ""}
        next_url = None
        if page.next_cursor is not None:
            params = "&".join(f"{k}={quote(v)}" for k, v in filters.items() if v)
            next_url = (
                f"/runs?{params}&cursor={page.next_cursor}" if params else f"/runs?cursor={page.next_cursor}"
            )
        return self.page(
            request,
            "runs.html",
            page=page,
            filters=filters,
            statuses=runs.STATUSES,
            workflows=sorted(self.workflows),
            next_url=next_url,
            cursor=cursor,
        )

    async def run_page(self, request: Request) -> Response:
        run_id = self.run_id(request)
        state = await runs.load(self.redis, run_id)
        if _wants_json(request):
            try:
                status = await client.run_status(self.settings, run_id, last=50, redis=self.redis)
            except BatonError as exc:
                return JSONResponse({"error": str(exc)}, 404)
            return JSONResponse(json.loads(json.dumps(status, default=lambda o: o.model_dump(mode="json"))))
        # A run just submitted (the form redirects here at once) is unknown until the supervisor takes it:
        # its page is served all the same (404, "not known yet") and follows the run once it appears.
        unknown = state is None and not await self.redis.xrevrange(streams.run_events(run_id), count=1)
        return self.page(request, "run.html", 404 if unknown else 200, run_id=run_id, state=state)

    async def panel(self, request: Request) -> Response:
        """A part of the run page, re-rendered when the run's stream says something changed."""
        run_id = self.run_id(request)
        name = request.path_params["name"]
        state = await runs.load(self.redis, run_id)
        context: dict = {"run_id": run_id, "state": state}
        if name == "summary":
            if state is not None and state.status == "waiting_for_human":
                context["ask"] = await runs.human_request(self.redis, state)
            context["outputs"] = _outputs(state)
        elif name == "pattern":
            if state is not None and state.pattern == "hierarchical":
                context["graph"] = render.plan_graph(state.subtasks)
                context["box"] = (render.BOX_W, render.BOX_H)
            elif state is not None and state.pattern == "router":
                evs = await runs.events(self.redis, run_id, count=2000)
                context["routes"] = [e for e in evs if e.get("type") == "route.decided"]
            elif state is not None and state.pattern == "bidirectional":
                # the versions as refs, and only the newest diff: two reads whatever the run's length
                versions = self.document_versions(state)
                context["versions"] = versions
                if len(versions) > 1:
                    context["diff"] = await runs.version_diff(self.storage, versions[-2], versions[-1])
        else:
            return PlainTextResponse("no such panel", 404)
        return self.page(request, f"_{name}.html", **context)

    def document_versions(self, state) -> list[dict]:
        wf = self.workflows.get(state.workflow)
        if wf is None:
            return []
        key = run_prefix(state.run_id) + getattr(wf, "document", "")
        return runs.document_versions(self.settings.bucket, state, key)

    async def diff(self, request: Request) -> Response:
        """A bidirectional run's diff from version n-1 to version n, on a page of its own."""
        run_id = self.run_id(request)
        state = await runs.load(self.redis, run_id)
        versions = self.document_versions(state) if state is not None else []
        n = request.path_params["n"]
        if not 2 <= n <= len(versions):
            return self.page(request, "error.html", 404, message=f"run {run_id} has no version {n} to diff")
        old, new = versions[n - 2], versions[n - 1]
        diff = await runs.version_diff(self.storage, old, new)
        last = len(versions)
        return self.page(request, "diff.html", run_id=run_id, old=old, new=new, diff=diff, last=last)

    async def stream(self, request: Request) -> Response:
        """Server-sent events: the run's stream from the start (or after `Last-Event-ID`), its history by
        XRANGE, then live from the console's one shared blocking XREAD (live.Hub); each event once, its
        entry id as the SSE id. Ends after the run's terminal event."""
        run_id = self.run_id(request)
        after = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        if not streams.is_entry_id(after):
            after = "0"
        return StreamingResponse(
            self.hub.sse(run_id, after),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def file(self, request: Request) -> Response:
        """One of a run's files at its exact version: viewed (rendered) or downloaded."""
        run_id = self.run_id(request)
        key, version = request.query_params.get("key", ""), request.query_params.get("version") or None
        if not runs.readable(run_id, key):
            return self.page(request, "error.html", 403, message=f"{key} is not a file of run {run_id}.")
        ref = ObjectRef(bucket=self.settings.bucket, key=key, version_id=version)
        if request.query_params.get("download"):
            return await self.download(request, ref)
        try:
            data = await self.storage.get(ref, max_bytes=render.MAX_VIEW_BYTES)
        except (ObjectMissingError, KeyValidationError) as exc:
            return self.page(request, "error.html", 404, message=str(exc))
        except ObjectTooLargeError as exc:  # offered for download, not read
            shown, size = render.Shown("too-big"), exc.size
        else:
            shown, size = render.show(data, key, _guess_type(key)), len(data)
        return self.page(request, "file.html", run_id=run_id, ref=ref, shown=shown, size=size)

    async def download(self, request: Request, ref: ObjectRef) -> Response:
        """The exact version as an attachment, streamed a chunk at a time (any size, in bounded memory)."""
        stack = contextlib.AsyncExitStack()
        try:
            reader = await stack.enter_async_context(self.storage.open(ref))
        except (ObjectMissingError, KeyValidationError) as exc:
            await stack.aclose()
            return self.page(request, "error.html", 404, message=str(exc))

        async def body():
            async with stack:
                async for chunk in reader.chunks():
                    yield chunk

        name = posixpath.basename(ref.key).replace('"', "")
        # never the stored type: a file must not become a page of the console's origin
        return StreamingResponse(
            body(),
            media_type="application/octet-stream",
            headers={
                "content-disposition": f'attachment; filename="{name}"',
                "content-length": str(reader.size),
            },
            background=BackgroundTask(stack.aclose),  # (also when the body was never sent)
        )

    # --- acting --------------------------------------------------------------------------------------

    async def respond(self, request: Request) -> Response:
        run_id = self.run_id(request)
        form = await self.form(request)
        decision = "approve" if form.get("decision") == "approve" else "reject"
        try:
            await client.ensure_waiting(self.settings, run_id, redis=self.redis)
        except BatonError as exc:
            return self.page(request, "error.html", 409, message=str(exc))
        body = {
            "decision": decision,
            "text": str(form.get("text") or ""),
            "sender": SERVICE,
            "responded_at": utcnow().isoformat(),
        }
        ref = await client.write_response(
            self.storage, self.settings, run_id, body, sender=SERVICE, redis=self.redis
        )
        self.log.info("console_responded", responded_run=run_id, decision=decision, key=ref.key)
        return RedirectResponse(f"/runs/{run_id}", 303)

    async def cancel(self, request: Request) -> Response:
        run_id = self.run_id(request)
        form = await self.form(request)
        reason = str(form.get("reason") or "") or "cancelled from the console"
        await client.cancel(self.settings, run_id, reason, sender=SERVICE, redis=self.redis)
        self.log.info("console_cancelled", cancelled_run=run_id)
        return RedirectResponse(f"/runs/{run_id}", 303)

    async def submit(self, request: Request) -> Response:
        if request.method == "GET":
            return self.submit_page(request, 200, request.query_params.get("workflow"))
        form = await self.form(request)
        workflow = str(form.get("workflow") or "")
        error = None
        params: dict = {}
        if workflow not in self.workflows:
            error = f"unknown workflow {workflow!r}"
        else:
            try:
                params = json.loads(str(form.get("params") or "").strip() or "{}")
                if not isinstance(params, dict):
                    raise ValueError("params must be a JSON object")
            except ValueError as exc:
                error = f"params: {exc}"
        if error:
            return self.submit_page(request, 400, workflow, error)
        run_id = client.new_run_id()
        refs: dict[str, ObjectRef] = {}
        for i in range(1, UPLOADS + 1):
            upload = form.get(f"file{i}")
            if upload is None or not getattr(upload, "filename", ""):
                continue
            filename = posixpath.basename(upload.filename.replace("\\", "/"))
            name = str(form.get(f"name{i}") or "").strip() or posixpath.splitext(filename)[0]
            try:
                if name in refs:
                    raise BatonError("two inputs have this name")
                await upload.seek(0)  # (spooled to disk when large: sent from there, not read whole)
                refs[name] = await client.put_input(self.storage, run_id, filename, upload.file)
            except BatonError as exc:  # a bad file name, or the same file twice
                return self.submit_page(request, 400, workflow, f"input {name!r}: {exc}")
        await client.publish_run(
            self.settings,
            run_id,
            workflow,
            refs,
            params,
            sender=SERVICE,
            redis=self.redis,
            storage=self.storage,
        )
        self.log.info("console_run_submitted", submitted_run=run_id, workflow=workflow)
        if request.state.via == "bearer":
            return JSONResponse({"run_id": run_id, "workflow": workflow}, 201)
        return RedirectResponse(f"/runs/{run_id}", 303)

    def submit_page(self, request: Request, status: int, chosen: str | None, error: str | None = None):
        context = {"workflows": self.workflows, "chosen": chosen, "error": error, "uploads": UPLOADS}
        return self.page(request, "submit.html", status, **context)

    async def inbox(self, request: Request) -> Response:
        """The runs waiting for a person, newest first, a page at a time (`cursor`, as the runs list): each
        with what it asks and its files to review, rendered."""
        q = request.query_params
        cursor = int(q["cursor"]) if q.get("cursor", "").isdigit() else 0
        size = self.settings.console_page_size
        page = await runs.page_runs(self.redis, cursor=cursor, size=size, waiting=True)
        items = [i for i in await asyncio.gather(*(self.asks(row) for row in page.rows)) if i is not None]
        if _wants_json(request):
            rows = [i["row"] for i in items]
            return JSONResponse({"waiting": rows, "next_cursor": page.next_cursor, "total": page.total})
        next_url = f"/inbox?cursor={page.next_cursor}" if page.next_cursor is not None else None
        return self.page(request, "inbox.html", items=items, next_url=next_url, total=page.total)

    async def asks(self, row: dict) -> dict | None:
        """One waiting run for the inbox: what it asks and its files, rendered (None: no longer waiting)."""
        state = await runs.load(self.redis, row["run_id"])
        if state is None or state.status != "waiting_for_human":
            return None
        ask = await runs.human_request(self.redis, state)
        listed = list((ask or {}).get("inputs", {}).items())
        files = []
        for name, ref in listed[:INBOX_FILES]:
            try:
                data = await self.storage.get(ref, max_bytes=render.MAX_VIEW_BYTES)
                shown = render.show(data, ref.key, _guess_type(ref.key))
            except ObjectTooLargeError:  # (offered for download, not read)
                shown = render.Shown("too-big")
            except Exception as exc:  # noqa: BLE001 - one unreadable file must not hide the inbox
                shown = render.Shown("text", f"(unreadable: {exc})")
            files.append({"name": name, "ref": ref, "shown": shown})
        more = [{"name": name, "ref": ref} for name, ref in listed[INBOX_FILES:]]
        return {"row": row, "ask": ask, "files": files, "more": more}

    async def dlq(self, request: Request) -> Response:
        """Dead letters newest first, a page at a time: XREVRANGE from before the last one shown."""
        before = request.query_params.get("before") or None
        if before is not None and not streams.is_entry_id(before):
            return PlainTextResponse(f"before={before!r} is not a stream entry id", 400)
        size = self.settings.console_page_size
        letters = await client.dlq_list(self.settings, size, before, redis=self.redis)
        total = await client.dlq_length(self.settings, redis=self.redis)
        next_before = letters[-1][0] if len(letters) == size else None
        if _wants_json(request):
            return JSONResponse(
                {
                    "dead_letters": [{"entry": i, **d.model_dump(mode="json")} for i, d in letters],
                    "next_before": next_before,
                    "total": total,
                }
            )
        return self.page(
            request, "dlq.html", letters=letters, before=before, next_before=next_before, total=total
        )

    async def dlq_show(self, request: Request) -> Response:
        entry = request.path_params["entry"]
        if not streams.is_entry_id(entry):
            return self.page(request, "error.html", 404, message="no such dead letter")
        try:
            letter = await client.dlq_show(self.settings, entry, redis=self.redis)
        except BatonError as exc:
            return self.page(request, "error.html", 404, message=str(exc))
        return self.page(
            request,
            "dlq_show.html",
            entry=entry,
            letter=letter,
            raw=render.show(letter.raw.encode(), "raw.json"),
        )

    async def dlq_replay(self, request: Request) -> Response:
        entry = request.path_params["entry"]
        await self.form(request)
        if not streams.is_entry_id(entry):
            return self.page(request, "error.html", 404, message="no such dead letter")
        outcome = await client.dlq_replay(self.settings, [entry])
        self.log.info("console_dlq_replayed", entry=entry, outcome=outcome.get(entry))
        return self.page(request, "dlq_replayed.html", entry=entry, outcome=outcome.get(entry, ""))

    async def search(self, request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        hits, error = [], None
        if query:
            try:
                hits = await client.search(self.settings, query, prefix="runs/", limit=20, sender=SERVICE)
            except BatonError as exc:
                error = str(exc)
        return self.page(request, "search.html", query=query, hits=hits, error=error)


def _outputs(state) -> dict[str, ObjectRef]:
    if state is None:
        return {}
    return dict(state.final or state.outputs)


def _wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json" or "application/json" in request.headers.get(
        "accept", ""
    )


def _local(url: str) -> str:
    """A redirect target on this site only (no `//host` or scheme)."""
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url else "/runs"


def create_app(settings: Settings, log) -> tuple[Console, Starlette]:
    console = Console(settings, log)

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except PermissionError as exc:
                return PlainTextResponse(str(exc), 403)
            except BatonError as exc:
                return PlainTextResponse(str(exc), 400)

        return endpoint

    async def home(request: Request) -> Response:
        return RedirectResponse("/runs", 303)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/", home),
        Route("/health", health),
        Route("/login", guarded(console.login), methods=["GET", "POST"]),
        Route("/logout", guarded(console.logout), methods=["POST"]),
        Route("/runs", guarded(console.runs_list)),
        Route("/runs/{run_id}", guarded(console.run_page)),
        Route("/runs/{run_id}/stream", guarded(console.stream)),
        Route("/runs/{run_id}/panel/{name}", guarded(console.panel)),
        Route("/runs/{run_id}/file", guarded(console.file)),
        Route("/runs/{run_id}/diff/{n:int}", guarded(console.diff)),
        Route("/runs/{run_id}/respond", guarded(console.respond), methods=["POST"]),
        Route("/runs/{run_id}/cancel", guarded(console.cancel), methods=["POST"]),
        Route("/submit", guarded(console.submit), methods=["GET", "POST"]),
        Route("/inbox", guarded(console.inbox)),
        Route("/dlq", guarded(console.dlq)),
        Route("/dlq/{entry}", guarded(console.dlq_show)),
        Route("/dlq/{entry}/replay", guarded(console.dlq_replay), methods=["POST"]),
        Route("/search", guarded(console.search)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    return console, SecurityHeaders(ConsoleAuth(app, settings.console_token, log))


async def serve(settings: Settings) -> None:
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    telemetry.setup(SERVICE, settings)
    metrics.serve(SERVICE, settings)
    if not settings.console_token:
        log.error(
            "console_refused_to_start", reason="the console needs a login token: set BATON_CONSOLE_TOKEN"
        )
        raise SystemExit(2)
    console, app = create_app(settings, log)
    tune_gc()  # as build_app does for the other services: fewer, cheaper collections
    async with console.open():
        config = uvicorn.Config(
            app, host=settings.console_host, port=settings.console_port, log_level="warning", access_log=False
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve())
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if server.started:
            mark_ready(settings)
            log.info(
                "service_ready",
                event_loop=loop_name(),
                url=f"http://{settings.console_host}:{settings.console_port}/",
                loopback=is_loopback(settings.console_host),
            )
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.console", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="listen address (default: BATON_CONSOLE_HOST)")
    parser.add_argument("--port", type=int, help="port (default: BATON_CONSOLE_PORT)")
    args = parser.parse_args(argv)
    overrides = {"console_host": args.host, "console_port": args.port}
    settings = Settings()
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    run(serve(settings), settings)
