"""Small A2A agents for the tests, built with a2a-sdk and served in-process on a loopback port.

Each agent lives at `/<name>/` with its card at `/<name>/.well-known/agent-card.json`:
  echo    - streams two status updates, returns `review.md` quoting the instruction and every file part
  flaky   - fails the first attempt of each Baton task, then behaves like echo
  fail    - always fails
  reject  - rejects every task
  asks    - asks which style guide (input-required), then, on the next message on that task, returns
            `review.md` quoting the answer
  slow    - works for a minute, unless cancelled (the ids of cancelled tasks are kept in `cancelled`)
  guarded - echo, behind a bearer token (GUARD_TOKEN) its card declares
  huge    - returns a 4096-byte artifact (over the limit its test agent declares)
  badcard - serves a card that is not an agent card
  together - echo, once TOGETHER of its tasks are in flight at once (fails after TOGETHER_S without them)

Each agent's `clients` lists the (host, port) every message to it came from: one entry a connection.
`python -m tests.a2a_agents --port N` serves them in a process of their own (the benchmark's remote peer).
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import uvicorn
from a2a.helpers import new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    Part,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    TaskState,
)
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

BEHAVIOURS = ("echo", "flaky", "fail", "reject", "asks", "slow", "huge", "guarded", "linked", "pointer")
BEHAVIOURS += ("diverted", "together")
GUARD_TOKEN = "the-guarded-agents-token"
TOGETHER = 24
TOGETHER_S = 30


def describe(part: Part) -> str:
    if part.HasField("text"):
        return f"text: {part.text}"
    if part.HasField("raw"):
        return f"file {part.filename} ({part.media_type}): {part.raw.decode(errors='replace')}"
    if part.HasField("url"):
        body = httpx.get(part.url, timeout=10).content.decode(errors="replace")
        return f"url {part.filename} ({part.media_type}): {body}"
    if part.HasField("data"):
        return f"data: {part.data}"
    return "unknown part"


class Behaviour(AgentExecutor):
    def __init__(self, name: str, base: str = "") -> None:
        self.name, self.base = name, base
        self.seen: dict[str, int] = {}
        self.cancelled: list[str] = []
        self.clients: set[tuple[str, int]] = set()
        self.in_flight = 0
        self.all_in = asyncio.Event()  # `together`: TOGETHER tasks were in flight at once

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        up = TaskUpdater(event_queue, task.id, task.context_id)
        say = lambda text: up.new_agent_message([Part(text=text)])  # noqa: E731
        await up.start_work(say(f"{self.name}: reading {len(context.message.parts)} parts"))
        tries = self.seen[context.context_id] = self.seen.get(context.context_id, 0) + 1
        if self.name == "fail" or (self.name == "flaky" and tries == 1):
            await up.failed(say(f"{self.name}: the remote model is overloaded (try {tries})"))
            return
        if self.name == "reject":
            await up.reject(say("reject: I do not review poetry"))
            return
        if self.name == "asks" and context.current_task is None:
            await up.requires_input(say("asks: which style guide?"))
            return
        if self.name == "slow":
            await asyncio.sleep(60)
        if self.name == "together" and not await self.gathered():
            await up.failed(say(f"together: only {self.in_flight} tasks at once, not {TOGETHER}"))
            return
        if self.name in ("linked", "pointer"):  # an artifact by URL: on this server, or by another name
            host = self.base if self.name == "linked" else self.base.replace("127.0.0.1", "localhost")
            part = Part(url=f"{host}/files/notes.md", filename="notes.md", media_type="text/markdown")
            await up.add_artifact([part], name="notes")
            await up.complete()
            return
        if self.name == "huge":
            await up.add_artifact([Part(raw=b"h" * 4096, filename="huge.bin")], name="huge")
            await up.complete()
            return
        lines = [describe(p) for p in context.message.parts]
        if self.name == "asks":  # the answer, on the same task: its history holds the first message
            lines = [f"task {task.id} context {task.context_id}"] + lines
        await up.update_status(TaskState.TASK_STATE_WORKING, say(f"{self.name}: writing the review"))
        body = "# Review\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
        await up.add_artifact(
            [Part(raw=body.encode(), filename="review.md", media_type="text/markdown")], name="review"
        )
        await up.complete()

    async def gathered(self) -> bool:
        self.in_flight += 1
        try:
            if self.in_flight >= TOGETHER:
                self.all_in.set()
            try:
                await asyncio.wait_for(self.all_in.wait(), TOGETHER_S)
                return True
            except TimeoutError:
                return False
        finally:
            self.in_flight -= 1

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is not None:
            self.cancelled.append(task.id)
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()


def card(name: str, base: str) -> AgentCard:
    guard = {}
    if name == "guarded":
        guard = dict(
            security_schemes={
                "bearer": SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="Bearer"))
            },
            security_requirements=[SecurityRequirement(schemes={"bearer": StringList(list=[])})],
        )
    # `diverted`'s card names its interface on this server by another name: the worker must not follow it
    # (another address on its network), so `diverted` never hears from it.
    at = base.replace("127.0.0.1", "localhost") if name == "diverted" else base
    return AgentCard(
        **guard,
        name=f"test {name}",
        description=f"A test agent that behaves like {name!r}.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=f"{at}/{name}/", protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain", "text/markdown"],
        default_output_modes=["text/markdown"],
        skills=[AgentSkill(id="review", name="review", description="reviews", tags=["review"])],
    )


def build_app(base: str, behaviours: dict[str, Behaviour]) -> Starlette:
    mounts = []
    for name in BEHAVIOURS:
        the_card = card(name, base)
        behaviours[name] = Behaviour(name, base)
        handler = DefaultRequestHandler(
            agent_executor=behaviours[name], task_store=InMemoryTaskStore(), agent_card=the_card
        )
        routes = [*create_agent_card_routes(the_card), *create_jsonrpc_routes(handler, "/")]
        mounts.append(Mount(f"/{name}", routes=routes))

    async def bad_card(request):
        return JSONResponse({"name": 42, "skills": "none", "capabilities": [1, 2]})

    async def file(request):  # what the `linked` and `pointer` agents' artifact URLs point at
        return PlainTextResponse(f"# {request.path_params['name']}, served by the agents' server\n")

    app = Starlette(
        routes=[
            Route("/badcard/.well-known/agent-card.json", bad_card),
            Route("/files/{name}", file),
            *mounts,
        ]
    )

    async def guarded(scope, receive, send):
        path = scope.get("path", "")
        name = path.strip("/").split("/", 1)[0]
        if scope["type"] == "http" and scope["method"] == "POST" and name in behaviours:
            behaviours[name].clients.add(tuple(scope["client"]))
        if scope["type"] == "http" and path.startswith("/guarded/") and not path.endswith("agent-card.json"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if given != f"Bearer {GUARD_TOKEN}".encode():
                return await PlainTextResponse("unauthorized", 401)(scope, receive, send)
        await app(scope, receive, send)

    return guarded


class AgentsServer:
    """The test agents (or `app`), served by uvicorn in a thread of its own (its own event loop)."""

    def __init__(self, base: str, app=None) -> None:
        self.base = base.rstrip("/")
        host, port = self.base.rsplit("//", 1)[1].split(":")
        self.behaviours: dict[str, Behaviour] = {}
        app = app or build_app(self.base, self.behaviours)
        config = uvicorn.Config(app, host=host, port=int(port), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="a2a-test-agents", daemon=True)

    def start(self) -> AgentsServer:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            self.thread.join(0.05)
        raise RuntimeError(f"the test A2A agents did not start at {self.base}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve the test A2A agents (the benchmark's remote peer).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    base = f"http://{args.host}:{args.port}"
    uvicorn.run(build_app(base, {}), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
