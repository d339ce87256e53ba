"""The A2A gateway, driven by a2a-sdk's own client: each workflow is an A2A agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    TaskState,
)
from google.protobuf import struct_pb2

from baton import client as baton
from baton import servers
from shared import streams
from shared.broker import DATA_FIELD
from shared.redisconn import connect
from tests.e2e.conftest import Gateway
from tests.helpers import wait_for_end

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def agent(
    gateway,
    workflow: str,
    streaming: bool = True,
    token: str | None = None,
    limits: httpx.Limits | None = None,
):
    """An A2A client of `workflow`; `limits`: its connections (httpx's default pool holds 100 at once)."""
    headers = {"Authorization": f"Bearer {token or gateway.token}"}
    pool = {"limits": limits} if limits is not None else {}
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=120), **pool) as http:
        card = await A2ACardResolver(http, f"{gateway.url}{workflow}/").get_agent_card()
        yield card, ClientFactory(ClientConfig(httpx_client=http, streaming=streaming)).create(card)


def message(*parts: Part, task_id: str = "", context_id: str = "") -> SendMessageRequest:
    msg = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=parts, task_id=task_id)
    if context_id:
        msg.context_id = context_id
    return SendMessageRequest(message=msg)


async def drain(stream) -> list:
    return [event async for event in stream]


def last_task_state(events) -> tuple[str, TaskState]:
    task_id, state = "", TaskState.TASK_STATE_UNSPECIFIED
    for event in events:
        kind = event.WhichOneof("payload")
        if kind == "task":
            task_id, state = event.task.id, event.task.status.state
        elif kind == "status_update":
            task_id, state = event.status_update.task_id, event.status_update.status.state
    return task_id, state


async def test_the_root_lists_every_workflow_and_each_card_declares_the_bearer_token(gateway):
    async with httpx.AsyncClient() as http:
        listing = (await http.get(gateway.url)).json()["agents"]
    assert {"copy-files", "approval", "a2a-review"} <= {a["name"] for a in listing}
    async with agent(gateway, "copy-files") as (card, _client):
        assert card.supported_interfaces[0].url == f"{gateway.url}copy-files/"
        assert card.security_schemes["bearer"].http_auth_security_scheme.scheme.lower() == "bearer"
        assert "Copies every input file" in card.skills[0].description


@pytest.mark.parametrize("streaming", [False, True], ids=["send", "stream"])
async def test_a_message_starts_a_run_and_its_outputs_come_back_as_artifacts(gateway, streaming):
    small = Part(raw=b"hello\n", filename="note.txt", media_type="text/plain")
    large = Part(raw=b"x" * 500, filename="big.txt", media_type="text/plain")  # over the 64-byte inline limit
    async with agent(gateway, "copy-files", streaming) as (_card, a2a):
        events = await drain(a2a.send_message(message(Part(text="copy these"), small, large)))
        task_id, state = last_task_state(events)
        assert state == TaskState.TASK_STATE_COMPLETED, events[-1]
        task = await a2a.get_task(GetTaskRequest(id=task_id))
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    parts = {a.name: a.parts[0] for a in task.artifacts}
    assert parts["note"].raw == b"hello\n"
    assert parts["big"].url and not parts["big"].raw  # a presigned URL of that exact version
    async with httpx.AsyncClient() as http:
        assert (await http.get(parts["big"].url)).content == b"x" * 500
    if streaming:
        assert any(e.WhichOneof("payload") == "status_update" for e in events)


async def test_a_file_part_by_url_is_fetched_a_chunk_at_a_time_and_a_bad_url_rejects_the_task(
    gateway, settings
):
    """A file part may name a URL instead of carrying its bytes (how an A2A client sends a large file): the
    gateway fetches it a chunk at a time into the run's inputs (here a presigned URL of its own store); a URL
    that answers 404 rejects the task with the URL and the status, and so does one on the gateway's own
    loopback (a client cannot make it read its network: services/gateway/fetch.py)."""
    import hashlib
    import os

    from shared.events import ObjectRef
    from shared.storage import Storage

    body = os.urandom(2**20) * 24
    async with Storage.connect(settings) as storage:
        source = await storage.put("shared/a2a-url-source.bin", body)
        url = await storage.presign(source)
        missing = await storage.presign(ObjectRef(bucket=settings.bucket, key="shared/no-such-file.bin"))
    by_url = Part(url=url, filename="big.bin", media_type="application/octet-stream")
    async with agent(gateway, "copy-files") as (_card, a2a):
        events = await drain(a2a.send_message(message(Part(text="copy it"), by_url)))
        task_id, state = last_task_state(events)
        assert state == TaskState.TASK_STATE_COMPLETED, events[-1]
        task = await a2a.get_task(GetTaskRequest(id=task_id))
        bad = Part(url=missing, filename="gone.bin")
        bad_id, bad_state = last_task_state(await drain(a2a.send_message(message(Part(text="copy"), bad))))
        rejected = await a2a.get_task(GetTaskRequest(id=bad_id))
        inside = Part(url=f"{gateway.url}health", filename="health.txt")
        inside_id, inside_state = last_task_state(await drain(a2a.send_message(message(inside))))
        refused = await a2a.get_task(GetTaskRequest(id=inside_id))
    parts = {a.name: a.parts[0] for a in task.artifacts}
    async with httpx.AsyncClient(timeout=60) as http:
        copied = (await http.get(parts["big"].url)).content
    assert hashlib.sha256(copied).digest() == hashlib.sha256(body).digest()
    assert bad_state == TaskState.TASK_STATE_REJECTED
    why = rejected.status.message.parts[0].text
    assert "no-such-file.bin" in why and "answered HTTP 404" in why, why
    assert inside_state == TaskState.TASK_STATE_REJECTED
    why = refused.status.message.parts[0].text
    assert "127.0.0.1 is a loopback address" in why and "BATON_A2A_FETCH_HOSTS" in why, why


async def test_a_wrong_token_is_refused(gateway):
    with pytest.raises(Exception, match="401|nauthori"):
        async with agent(gateway, "copy-files", token="not-the-token") as (_card, a2a):
            await drain(a2a.send_message(message(Part(text="hi"))))


async def test_a_run_waiting_for_a_person_is_input_required_and_the_next_message_resumes_it(gateway):
    async with agent(gateway, "approval") as (_card, a2a):
        events = await drain(a2a.send_message(message(Part(text="draft something"))))
        task_id, state = last_task_state(events)
        assert state == TaskState.TASK_STATE_INPUT_REQUIRED
        task = await a2a.get_task(GetTaskRequest(id=task_id))
        assert task.status.message.parts[0].text == "Approve the draft?"
        run_id = task.metadata["baton_run_id"]
        assert run_id == f"a2a-{task_id}"
        events = await drain(
            a2a.send_message(
                message(Part(text="approve, looks good"), task_id=task_id, context_id=task.context_id)
            )
        )
        assert last_task_state(events)[1] == TaskState.TASK_STATE_COMPLETED
        task = await a2a.get_task(GetTaskRequest(id=task_id))
    assert [a.name for a in task.artifacts] == ["final"]


async def test_cancelling_the_task_cancels_the_run(gateway, settings):
    async with agent(gateway, "approval") as (_card, a2a):
        events = await drain(a2a.send_message(message(Part(text="draft something"))))
        task_id, state = last_task_state(events)
        assert state == TaskState.TASK_STATE_INPUT_REQUIRED
        task = await a2a.cancel_task(CancelTaskRequest(id=task_id))
        assert task.status.state == TaskState.TASK_STATE_CANCELED
        run_id = task.metadata["baton_run_id"]
    result = None
    async for event in baton.follow(settings, run_id, block_ms=500):
        result = event
    assert result.type == "run.cancelled"
    # asked once (the task store, saving the task as canceled, asked a second time before)
    r = connect(settings.redis_url)
    try:
        recent = await r.xrevrange(streams.RUNS, count=1000)
    finally:
        await r.aclose()
    requests = [json.loads(fields[DATA_FIELD.encode()]) for _id, fields in recent]
    asked = [e for e in requests if e["type"] == "run.cancel" and e["run_id"] == run_id]
    assert len(asked) == 1, asked


async def test_a_restarted_gateway_answers_tasks_get_from_the_runs_and_resumes_a_waiting_task(
    stack, settings
):
    port, token = servers.free_port(), secrets.token_hex(16)
    env = {"BATON_GATEWAY_HOST": "127.0.0.1", "BATON_GATEWAY_PORT": str(port), "BATON_A2A_TOKEN": token}
    gateway = Gateway(f"http://127.0.0.1:{port}/", token, stack.start("gateway", env))
    try:
        async with agent(gateway, "approval") as (_card, a2a):
            waiting_id, state = last_task_state(await drain(a2a.send_message(message(Part(text="one")))))
            assert state == TaskState.TASK_STATE_INPUT_REQUIRED
            answered_id, state = last_task_state(await drain(a2a.send_message(message(Part(text="two")))))
            assert state == TaskState.TASK_STATE_INPUT_REQUIRED
            context_id = (await a2a.get_task(GetTaskRequest(id=waiting_id))).context_id
        stack.kill(gateway.handle)
        # Answered while no gateway runs: the run goes on without it.
        await baton.respond(settings, f"a2a-{answered_id}", approve=True, text="fine")
        ended = await wait_for_end(settings, f"a2a-{answered_id}", timeout=60)
        assert ended[-1].type == "run.completed", ended[-1]
        # On a port of its own: the old one may be any outgoing connection's local port by now (ephemeral
        # range), and a bind to it then fails (a fresh-clone CI run saw EADDRINUSE here once)
        port = servers.free_port()
        env["BATON_GATEWAY_PORT"] = str(port)
        gateway.url = f"http://127.0.0.1:{port}/"
        gateway.handle = stack.start("gateway", env)
        async with agent(gateway, "approval") as (_card, a2a):
            task = await a2a.get_task(GetTaskRequest(id=answered_id))
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            assert [a.name for a in task.artifacts] == ["final"] and task.artifacts[0].parts[0].raw
            task = await a2a.get_task(GetTaskRequest(id=waiting_id))
            assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            assert task.status.message.parts[0].text == "Approve the draft?" and task.context_id == context_id
            listed = await a2a.list_tasks(ListTasksRequest())
            assert {waiting_id, answered_id} <= {t.id for t in listed.tasks}
            # the task that waited resumes through the new gateway
            reply = message(Part(text="approve"), task_id=waiting_id, context_id=context_id)
            assert last_task_state(await drain(a2a.send_message(reply)))[1] == TaskState.TASK_STATE_COMPLETED
            task = await a2a.get_task(GetTaskRequest(id=waiting_id))
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert [a.name for a in task.artifacts] == ["final"]
    finally:
        if gateway.handle in stack.procs:
            stack.kill(gateway.handle)


async def test_hundreds_of_tasks_in_flight_share_one_live_reader_and_all_complete(gateway, settings):
    """300 A2A tasks at once, each on a run that takes a second or more (queued behind the others): each
    task follows its run on the gateway's one live reader (shared/live.py), not on a connection of its own
    (then 10,000 tasks would be 10,000 Redis connections), and the gateway's pooled client makes a burst
    of task-store writes wait for a connection instead of failing (redis-py's MaxConnectionsError at 101)."""
    n = 300
    sleep = struct_pb2.Value()
    sleep.struct_value.update({"sleep": 1})
    headers = {"Authorization": f"Bearer {gateway.token}"}
    # (no keep-alive: a request sent on a connection the server closes as idle just then fails)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    samples: list[list[str]] = []  # the names of Baton's connections, every half second
    admin = connect(settings.redis_url)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=httpx.Timeout(60, read=300)) as http:
        card = await A2ACardResolver(http, f"{gateway.url}slow-pair/").get_agent_card()
        a2a = ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create(card)

        async def one(i: int) -> TaskState:
            request = message(Part(text=f"task {i}"), Part(data=sleep))
            return last_task_state(await drain(a2a.send_message(request)))[1]

        async def watch() -> None:
            while True:
                listed = await admin.client_list()
                samples.append([c["name"] for c in listed if c["name"].startswith("baton-")])
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch())
        try:
            states = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 240)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await admin.aclose()
    assert states.count(TaskState.TASK_STATE_COMPLETED) == n, {s: states.count(s) for s in set(states)}
    assert max(names.count("baton-gateway:live") for names in samples) == 1
    assert not [name for names in samples for name in names if name.startswith("baton-follow:")]


def _one_at_a_time(stack) -> tuple[Gateway, dict[str, str]]:
    """A gateway of its own that starts new tasks one at a time (BATON_A2A_MAX_STARTING=1), with a lease of
    3 s (a killed one's waiting tasks are another's to start once it lapses), and its env."""
    port, token = servers.free_port(), secrets.token_hex(16)
    env = {
        "BATON_GATEWAY_HOST": "127.0.0.1",
        "BATON_GATEWAY_PORT": str(port),
        "BATON_A2A_TOKEN": token,
        "BATON_A2A_MAX_STARTING": "1",
        "BATON_A2A_LEASE_SECONDS": "3",
    }
    return Gateway(f"http://127.0.0.1:{port}/", token, stack.start("gateway", env)), env


async def test_tasks_a_killed_gateway_had_not_started_are_started_by_the_next(stack, settings):
    """A burst waits its turn to start (here one task at a time) after each task is told `submitted`. A
    gateway killed meanwhile leaves tasks whose runs were never published; the next gateway starts them
    once the killed one's lease lapses (`resume_unstarted`, at its start-up and every half lease), so that
    none waits for ever, and each runs once."""
    gateway, env = _one_at_a_time(stack)
    n = 60
    try:
        async with agent(gateway, "copy-files") as (_card, a2a):

            async def submitted(i: int):
                note = Part(raw=b"note %d\n" % i, filename="note.txt", media_type="text/plain")
                stream = a2a.send_message(message(Part(text=f"task {i}"), note))
                first = await anext(stream)
                assert first.task.status.state == TaskState.TASK_STATE_SUBMITTED
                return first.task.id, stream

            pairs = await asyncio.wait_for(asyncio.gather(*(submitted(i) for i in range(n))), 60)
            stack.kill(gateway.handle, hard=True)
            for _task_id, stream in pairs:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        task_ids = [task_id for task_id, _stream in pairs]
        await asyncio.sleep(2)  # the runs it did publish are taken by the supervisor meanwhile
        admin = connect(settings.redis_url)
        try:
            async with admin.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.exists(streams.run_state(f"a2a-{task_id}"))
                unstarted = n - sum(await pipe.execute())
        finally:
            await admin.aclose()
        assert unstarted > 0, "every run was published before the kill: the test proves nothing"
        env["BATON_GATEWAY_PORT"] = str(port := servers.free_port())
        gateway.url, gateway.handle = f"http://127.0.0.1:{port}/", stack.start("gateway", env)
        for task_id in task_ids:
            events = await wait_for_end(settings, f"a2a-{task_id}", timeout=60)
            assert events[-1].type == "run.completed", events[-1]
            assert len({e.event_id for e in events if e.type == "run.started"}) == 1  # started once
        async with agent(gateway, "copy-files") as (_card, a2a):
            for task_id in task_ids:
                task = await a2a.get_task(GetTaskRequest(id=task_id))
                assert task.status.state == TaskState.TASK_STATE_COMPLETED, (task_id, task.status)
                assert task.artifacts[0].parts[0].raw.startswith(b"note ")
        assert "a2a_tasks_resumed" in stack.log_path(gateway.handle).read_text()
        admin = connect(settings.redis_url)
        try:
            left = await admin.hgetall(streams.a2a_starting("copy-files"))
        finally:
            await admin.aclose()
        assert not {x.decode() for x in left} & set(task_ids)  # none left to start
    finally:
        if gateway.handle in stack.procs:
            stack.kill(gateway.handle)


async def test_a_task_cancelled_while_it_waits_its_turn_never_starts_its_run(stack, settings):
    """Tasks start one at a time here: one cancelled while still in line is `canceled`, leaves the starting
    set, and its run is never published, while the others' runs all complete."""
    gateway, _env = _one_at_a_time(stack)
    n = 60
    try:
        async with agent(gateway, "copy-files") as (_card, a2a):

            async def submitted(i: int):
                note = Part(raw=b"note %d\n" % i, filename="note.txt", media_type="text/plain")
                stream = a2a.send_message(message(Part(text=f"task {i}"), note))
                return (await anext(stream)).task.id, stream

            pairs = await asyncio.wait_for(asyncio.gather(*(submitted(i) for i in range(n))), 60)
            admin = connect(settings.redis_url)
            try:
                waiting = await admin.hgetall(streams.a2a_starting("copy-files"))
                last = next(t for t, _s in reversed(pairs) if t.encode() in waiting)  # still in line
                task = await a2a.cancel_task(CancelTaskRequest(id=last))
                assert task.status.state == TaskState.TASK_STATE_CANCELED
                others = [t for t, _s in pairs if t != last]
                for task_id in others:
                    ended = await wait_for_end(settings, f"a2a-{task_id}", timeout=60)
                    assert ended[-1].type == "run.completed", ended[-1]
                await asyncio.sleep(1)  # (a run published after the others would have started by now)
                assert not await admin.exists(streams.run_state(f"a2a-{last}"))
                assert not await admin.hexists(streams.a2a_starting("copy-files"), last)
            finally:
                await admin.aclose()
            for _task_id, stream in pairs:
                with contextlib.suppress(Exception):
                    await stream.aclose()
    finally:
        if gateway.handle in stack.procs:
            stack.kill(gateway.handle)
