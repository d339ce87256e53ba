"""The A2A gateway: each workflow published as an A2A agent (a2a-sdk 1.3, JSON-RPC binding).

`/<workflow>/` is one agent (its card at `/<workflow>/.well-known/agent-card.json`); `/` lists them all.
Cards are public; everything else needs `Authorization: Bearer $BATON_A2A_TOKEN` (declared in each card).
Like the MCP server it is a checked door, not a second API: runs go through the documented wire format
(baton/client.py), inputs and answers are files, status comes from the run's own events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import os
import secrets
import socket

import redis.asyncio as aioredis
import uvicorn
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    Task,
    TaskState,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from a2a.utils.errors import UnsupportedOperationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from services.mcp.app import _Server, is_loopback
from shared import metrics, streams, telemetry
from shared.errors import BatonError, PreconditionFailedError
from shared.fetch import Fetcher, Policy
from shared.live import Hub
from shared.logging import configure_logging
from shared.service import loop_name, mark_ready, redis_client, run
from shared.settings import Settings
from shared.storage import Storage
from shared.workflow import HUMAN, SequentialWorkflow, load_workflows

from .executor import WorkflowExecutor
from .tasks import FINAL, RunTaskStore, agent_message, run_of_task

SERVICE = "gateway"
SCHEME = "bearer"


def base_url(settings: Settings) -> str:
    return (settings.gateway_url or f"http://{settings.gateway_host}:{settings.gateway_port}/").rstrip(
        "/"
    ) + "/"


def card(name: str, wf, url: str) -> AgentCard:
    """A workflow's card: one skill, described from the workflow's description, pattern and inputs."""
    agents = ", ".join(dict.fromkeys(a for a in wf.agents_used()))
    asks = isinstance(wf, SequentialWorkflow) and any(s.agent == HUMAN for s in wf.stages)
    named_input = getattr(wf, "input", None) or (wf.trigger.input if wf.trigger else None)
    how = (
        "Send the instruction as text (it becomes params `text` and `instruction`), params as a data part, "
        "and input files as file parts (named by the part's metadata `name`, else the file's stem"
        + (f"; this workflow reads input `{named_input}`" if named_input else "")
        + "). Outputs come back as artifacts."
        + (
            " A person approves a stage: the task turns input-required; answer with a message "
            "(`reject ...` rejects)."
            if asks
            else ""
        )
    )
    description = wf.description or f"Baton workflow {name!r} ({wf.pattern})."
    return AgentCard(
        name=name,
        description=description,
        version="1.0.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain", "application/json", "application/octet-stream"],
        default_output_modes=["application/octet-stream"],
        security_schemes={
            SCHEME: SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="Bearer"))
        },
        security_requirements=[SecurityRequirement(schemes={SCHEME: StringList(list=[])})],
        skills=[
            AgentSkill(
                id=name,
                name=name,
                description=f"{description} Pattern: {wf.pattern}; agents: {agents}. {how}",
                tags=["baton", wf.pattern],
            )
        ],
    )


class RequestHandler(DefaultRequestHandler):
    """a2a-sdk's handler, except for a resubscription (`SubscribeToTask`) to a task this process does not
    hold (another replica follows it, or none does since a restart): a2a-sdk tails such a task only
    through a shared event stream, which the gateway does not keep (it waited for ever), so it is served
    here from the task's run: the task as its run stands, then its updates from the run's events, until
    the run ends or asks a person. One waiting for an answer is refused at once, saying so."""

    def __init__(self, *, agent_executor: WorkflowExecutor, task_store: RunTaskStore, **kw) -> None:
        super().__init__(agent_executor=agent_executor, task_store=task_store, **kw)
        self.executor, self.tasks = agent_executor, task_store

    async def on_subscribe_to_task(self, params, context):
        if await self._active_task_registry.get(params.id) is None:
            newest = await self.executor.newest_entry(params.id)  # (before the task: nothing falls between)
            task = await self.tasks.get(params.id, context)  # as its run stands
            if task is not None and task.status.state not in FINAL:
                if task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
                    raise UnsupportedOperationError(
                        message=f"task {params.id} waits for an answer: send it a message (tasks/get "
                        "shows the question)"
                    )
                yield task
                async with contextlib.aclosing(self.executor.tail(task, newest)) as updates:
                    async for update in updates:
                        yield update
                return
        async for event in super().on_subscribe_to_task(params, context):
            yield event


def create_app(
    settings: Settings,
    storage: Storage,
    redis: aioredis.Redis,
    hub: Hub,
    log,
    fetching: Fetcher,
    instance: str,
) -> tuple[Starlette, dict[str, tuple[WorkflowExecutor, RunTaskStore]]]:
    """The ASGI app, and each workflow's executor and task store (`resume_unstarted` needs them);
    `fetching`: what fetches file part URLs, from where its policy allows (`shared/fetch.py`); `instance`:
    this gateway's name among its replicas (its lease's, `hold_lease`)."""
    workflows = load_workflows(settings.workflows).workflows
    root = base_url(settings)
    mounts, listing, parts = [], [], {}
    live: set[str] = set()  # the tasks this process follows now
    starting = asyncio.Semaphore(settings.a2a_max_starting)
    for name, wf in workflows.items():
        url = f"{root}{name}/"
        the_card = card(name, wf, url)
        executor = WorkflowExecutor(
            name, settings, storage, redis, hub, log, live, starting, fetching, instance
        )
        store = RunTaskStore(redis, settings, name, live, executor.part, executor.cancelled_here)
        parts[name] = (executor, store)
        handler = RequestHandler(agent_executor=executor, task_store=store, agent_card=the_card)
        routes = [*create_agent_card_routes(the_card), *create_jsonrpc_routes(handler, "/")]
        mounts.append(Mount(f"/{name}", routes=routes))
        listing.append(
            {
                "name": name,
                "description": the_card.description,
                "url": url,
                "card": f"{url}{AGENT_CARD_WELL_KNOWN_PATH.lstrip('/')}",
            }
        )

    async def index(request):
        return JSONResponse({"agents": listing})

    async def health(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", index), Route("/health", health), *mounts])
    return BearerAuth(app, settings.a2a_token, log), parts


async def resume_unstarted(
    parts: dict[str, tuple[WorkflowExecutor, RunTaskStore]], redis: aioredis.Redis, log, instance: str
) -> int:
    """At start-up: start the runs of the tasks a stopped gateway had told `submitted` but not started (it
    stopped while they waited their turn, `BATON_A2A_MAX_STARTING`), so that no task waits for ever: the
    workflow's starting set (`streams.a2a_starting`) names them, each with the gateway that accepted it.
    A gateway still running (its lease, `streams.a2a_gateway`, not lapsed) keeps its own: replicas started
    beside a busy one leave its burst to it. Each task taken over is claimed first, so that its gateway,
    if only stalled, does not start it too. A task whose run exists already is only taken out of the set;
    one whose run may have been published just before the stop is published again, which starts it once
    (the supervisor takes a second RunSubmitted of a run as a duplicate). Returns how many tasks were
    started."""
    resumed = 0
    for name, (executor, store) in parts.items():
        waiting = await redis.hgetall(streams.a2a_starting(name))
        owners = {owner.decode() for owner in waiting.values()} - {instance}
        alive = {owner for owner in owners if await redis.exists(streams.a2a_gateway(owner))}
        for raw_id, owner in waiting.items():
            task_id = raw_id.decode()
            if owner.decode() in alive or task_id in executor.live:  # (a new request of this process)
                continue
            await redis.hset(streams.a2a_starting(name), task_id, instance)  # taken over
            task = await store.stored(task_id)
            run_id = run_of_task(task_id)
            if (
                task is None
                or task.status.state != TaskState.TASK_STATE_SUBMITTED
                or not task.history
                or await redis.hget(streams.run_state(run_id), "core") is not None
            ):
                await executor.started(task_id)
                continue
            try:
                async with executor.starting:
                    await executor.start(run_id, task.history[0], again=True)
            except (BatonError, PreconditionFailedError) as exc:
                task.status.state = TaskState.TASK_STATE_REJECTED
                _say(task, f"run {run_id} could not be started after a restart: {exc}")
            else:
                task.status.state = TaskState.TASK_STATE_WORKING
                _say(task, f"run {run_id} submitted (after the gateway restarted)")
            await store.save(task)
            await executor.started(task_id)
            resumed += 1
            log.info("a2a_task_resumed", submitted_run=run_id, workflow=name, task=task_id)
    return resumed


async def hold_lease(redis: aioredis.Redis, instance: str, seconds: float, log) -> None:
    """Renew this gateway's lease until cancelled: while it holds, no other gateway takes its waiting
    tasks for a stopped one's. A failed renewal is retried at the next one."""
    while True:
        try:
            await redis.set(streams.a2a_gateway(instance), "1", px=int(seconds * 1000))
        except Exception as exc:  # noqa: BLE001 - logged; the next renewal tries again
            log.warning("a2a_lease_renewal_failed", error=str(exc), instance=instance)
        await asyncio.sleep(seconds / 6)


async def keep_resuming(parts, redis: aioredis.Redis, log, instance: str, every: float) -> None:
    """`resume_unstarted` at start-up, then every `every` seconds: the waiting tasks of a replica that
    stopped while this one runs are started too, once its lease lapses."""
    while True:
        try:
            resumed = await resume_unstarted(parts, redis, log, instance)
        except Exception as exc:  # noqa: BLE001 - logged, tried again; the gateway serves on meanwhile
            log.error("a2a_resume_failed", error=str(exc), exc_info=True)
        else:
            if resumed:
                log.warning(
                    "a2a_tasks_resumed", count=resumed, why="a stopped gateway had not started their runs"
                )
        await asyncio.sleep(every)


def _say(task: Task, text: str) -> None:
    task.status.timestamp.GetCurrentTime()
    task.status.message.CopyFrom(agent_message(task, text))


class BearerAuth:
    """ASGI middleware: the cards, the listing and `/health` are public; every other request must carry
    `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app, token: str, log) -> None:
        self.app, self.token, self.log = app, token.encode(), log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.token and not _public(scope):
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            given = header[7:].strip() if header[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.token):
                self.log.warning("a2a_unauthorized", client=str(scope.get("client")), path=scope.get("path"))
                response = PlainTextResponse("unauthorized", 401, headers={"www-authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _public(scope) -> bool:
    path = scope.get("path") or "/"
    return scope.get("method") == "GET" and (
        path in ("/", "/health") or path.endswith(AGENT_CARD_WELL_KNOWN_PATH)
    )


async def serve(settings: Settings) -> None:
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    telemetry.setup(SERVICE, settings)
    metrics.serve(SERVICE, settings)
    if not settings.a2a_token and not is_loopback(settings.gateway_host):
        log.error(
            "gateway_refused_to_start",
            reason=f"the A2A gateway on {settings.gateway_host} needs a bearer token: set BATON_A2A_TOKEN "
            "(or listen on 127.0.0.1)",
        )
        raise SystemExit(2)
    try:
        fetching = Policy(settings.a2a_fetch_hosts, {"the store": settings.s3_endpoint_url})
    except ValueError as exc:
        log.error("gateway_refused_to_start", reason=str(exc))
        raise SystemExit(2) from exc
    # Bounded, and a command waits for a connection as long as it takes: a burst of thousands of A2A requests
    # queues for Redis instead of failing the ones that wait longest (redis-py's own pool: at 101). Its
    # sockets wait 60 s, not redis-py's 5: while 10,000 requests arrive at once the event loop comes round
    # to a connection's handshake only every few seconds (at 5 s, the pool's first 64 connects all failed).
    redis = redis_client(settings, wait=None, socket_connect_timeout=60, socket_timeout=60)
    hub = Hub(settings.redis_url, redis, log, name="baton-gateway:live")  # every task's run, one reader
    hub.start()
    async with (
        Storage.connect(settings) as storage,
        contextlib.aclosing(redis),
        contextlib.aclosing(hub),
        contextlib.aclosing(Fetcher(fetching)) as fetcher,
    ):
        instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        lease_s = settings.a2a_lease_seconds
        lease = asyncio.create_task(hold_lease(redis, instance, lease_s, log), name="a2a-lease")
        app, parts = create_app(settings, storage, redis, hub, log, fetcher, instance)
        config = uvicorn.Config(
            app, host=settings.gateway_host, port=settings.gateway_port, log_level="warning", access_log=False
        )
        server = _Server(config)  # uvicorn's, with an event set once it listens
        task = asyncio.create_task(server.serve())
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if server.started:
            mark_ready(settings)
            auth = "bearer" if settings.a2a_token else "none"
            log.info("service_ready", event_loop=loop_name(), url=base_url(settings), auth=auth)
            resuming = asyncio.create_task(keep_resuming(parts, redis, log, instance, lease_s / 2))
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if server.started and not resuming.done():
            resuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resuming
        lease.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease
        try:  # stopped: what it leaves waiting is the next gateway's to start, at once
            await redis.delete(streams.a2a_gateway(instance))
        except Exception as exc:  # noqa: BLE001 - logged; the lease then lapses by itself
            log.warning("a2a_lease_release_failed", error=str(exc), instance=instance)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="listen address (default: BATON_GATEWAY_HOST)")
    parser.add_argument("--port", type=int, help="port (default: BATON_GATEWAY_PORT)")
    args = parser.parse_args(argv)
    overrides = {"gateway_host": args.host, "gateway_port": args.port}
    settings = Settings()
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    run(serve(settings), settings)
