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
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from services.mcp.app import _Server, is_loopback
from shared import metrics, telemetry
from shared.live import Hub
from shared.logging import configure_logging
from shared.service import loop_name, mark_ready, redis_client, run
from shared.settings import Settings
from shared.storage import Storage
from shared.workflow import HUMAN, SequentialWorkflow, load_workflows

from .executor import WorkflowExecutor
from .tasks import RunTaskStore

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


def create_app(settings: Settings, storage: Storage, redis: aioredis.Redis, hub: Hub, log) -> Starlette:
    workflows = load_workflows(settings.workflows).workflows
    root = base_url(settings)
    mounts, listing = [], []
    live: set[str] = set()  # the tasks this process follows now
    starting = asyncio.Semaphore(settings.a2a_max_starting)
    for name, wf in workflows.items():
        url = f"{root}{name}/"
        the_card = card(name, wf, url)
        executor = WorkflowExecutor(name, settings, storage, redis, hub, log, live, starting)
        handler = DefaultRequestHandler(
            agent_executor=executor,
            task_store=RunTaskStore(redis, settings, name, live, executor.part),
            agent_card=the_card,
        )
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
    return BearerAuth(app, settings.a2a_token, log)


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
    # Bounded, and a command waits for a connection as long as it takes: a burst of thousands of A2A requests
    # queues for Redis instead of failing the ones that wait longest (redis-py's own pool: at 101). Its
    # sockets wait 60 s, not redis-py's 5: while 10,000 requests arrive at once the event loop comes round
    # to a connection's handshake only every few seconds (at 5 s, the pool's first 64 connects all failed).
    redis = redis_client(settings, wait=None, socket_connect_timeout=60, socket_timeout=60)
    hub = Hub(settings.redis_url, redis, log, name="baton-gateway:live")  # every task's run, one reader
    hub.start()
    async with Storage.connect(settings) as storage, contextlib.aclosing(redis), contextlib.aclosing(hub):
        app = create_app(settings, storage, redis, hub, log)
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
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="listen address (default: BATON_GATEWAY_HOST)")
    parser.add_argument("--port", type=int, help="port (default: BATON_GATEWAY_PORT)")
    args = parser.parse_args(argv)
    overrides = {"gateway_host": args.host, "gateway_port": args.port}
    settings = Settings()
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    run(serve(settings), settings)
