"""With BATON_REDIS_WAIT_REPLICAS, what the router and the notifier write is acknowledged only once a
replica has it, as the supervisor's and the workers' writes are: a failover right after cannot lose a task
the router took, nor a bucket change MinIO was answered 200 for.

A Valkey master and its replica of their own; the replica is paused (SIGSTOP) to stand for one that has not
got the writes yet: WAIT then times out, and nothing may be acknowledged until it is back (SIGCONT).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
import uuid

import httpx
import pytest
import redis.asyncio as aioredis

from baton import servers
from baton.dev import Stack, local_env
from services.router.routing import decide
from shared import streams
from shared.broker import encode
from shared.events import TaskAssigned
from shared.workflow import load_workflows
from tests.helpers import s3_notification
from tests.stacks import ROOT, TEST_WORKFLOWS

pytestmark = pytest.mark.e2e


@pytest.fixture
def replicated(tmp_path):
    """A master and one replica in sync; yields (master, replica)."""
    password = secrets.token_urlsafe(12)
    master = servers.start_redis(tmp_path / "master", password=password)
    replica = None
    try:
        port = master.extra["port"]
        replica = servers.start_redis(
            tmp_path / "replica", password=password, extra_args=["--replicaof", "127.0.0.1", str(port)]
        )

        async def in_sync() -> None:
            r = aioredis.from_url(replica.url)
            try:
                for _ in range(200):
                    if (await r.info("replication")).get("master_link_status") == "up":
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("the replica did not sync with its master in 10 s")
            finally:
                await r.aclose()

        asyncio.run(in_sync())
        yield master, replica
    finally:
        if replica is not None:
            os.kill(replica.pid, signal.SIGCONT)  # (a paused process ignores SIGTERM until it runs)
            replica.stop()
        master.stop()


@pytest.fixture
def waiting_stack(replicated, real_servers, tmp_path):
    """The router and the notifier on the replicated master, waiting for 1 replica."""
    master, replica = replicated
    port = servers.free_port()
    env = local_env(master.url, real_servers.s3_url, TEST_WORKFLOWS, port, "tok")
    env.update(
        BATON_CWD=str(ROOT),
        BATON_REDIS_WAIT_REPLICAS="1",
        BATON_RECLAIM_IDLE_MS="1500",
        A2A_TEST_URL=f"http://127.0.0.1:{servers.free_port()}",  # (the test workflows' a2a agents load)
        A2A_TEST_TOKEN="not-the-token",
        A2A_GATEWAY_TOKEN="not-the-token",
    )
    stack = Stack(tmp_path / "stack", env)
    try:
        stack.start("router")
        stack.start("notifier")
        yield stack, master, replica, f"http://127.0.0.1:{port}/minio/events"
    finally:
        stack.stop_all()


async def _until(check, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def _task() -> TaskAssigned:
    run_id = f"wait-{uuid.uuid4().hex[:10]}"
    return TaskAssigned(
        run_id=run_id,
        task_id=f"{run_id}.0",
        workflow="by-intent",
        intent="copy",
        output_prefix=f"runs/{run_id}/",
        sender="test",
    )


async def test_the_router_acknowledges_a_task_only_once_a_replica_has_its_forward(waiting_stack):
    stack, master, replica, _url = waiting_stack
    agent = decide(_task(), load_workflows(TEST_WORKFLOWS)).agent
    r = aioredis.from_url(master.url)

    async def forwarded(task: TaskAssigned) -> bool:
        return any(
            task.task_id.encode() in f[b"__data__"] for _i, f in await r.xrange(streams.agent_stream(agent))
        )

    async def pending() -> int:
        return (await r.xpending(streams.ROUTE, streams.ROUTER_GROUP))["pending"]

    try:
        first = _task()
        await r.xadd(streams.ROUTE, encode(first))
        await _until(lambda: forwarded(first), "the first task forwarded")
        await _until(lambda: _none(pending), "the first task acknowledged")

        os.kill(replica.pid, signal.SIGSTOP)
        second = _task()
        await r.xadd(streams.ROUTE, encode(second))
        # Several WAITs of 2 s fail meanwhile (the decision recorded first, then the forward): retried in
        # the handler as a transient fault, never acknowledged, never dead-lettered.
        await asyncio.sleep(6)
        assert await pending() == 1, "acknowledged although no replica confirmed the writes"
        log = stack.log_path(next(h for h in stack.procs if h.startswith("router"))).read_text()
        assert "replicas confirmed the writes" in log and "handler_retrying" in log
        assert await r.xlen(streams.DLQ) == 0

        os.kill(replica.pid, signal.SIGCONT)
        await _until(lambda: _none(pending), "the second task acknowledged once the replica is back", 40)
        assert await forwarded(second) and await r.xlen(streams.DLQ) == 0
    finally:
        os.kill(replica.pid, signal.SIGCONT)
        await r.aclose()


async def test_the_notifier_answers_minio_only_once_a_replica_has_the_change(waiting_stack):
    _stack, master, replica, url = waiting_stack
    r = aioredis.from_url(master.url)
    key = f"briefs/{uuid.uuid4().hex[:8]}.md"
    body = s3_notification(key)
    headers = {"authorization": "Bearer tok"}

    async def published() -> int:
        return sum(key.encode() in f[b"__data__"] for _i, f in await r.xrange(streams.OBJECTS))

    try:
        async with httpx.AsyncClient(timeout=30) as http:
            os.kill(replica.pid, signal.SIGSTOP)
            refused = await http.post(url, json=body, headers=headers)
            assert refused.status_code != 200, "MinIO told the change was kept before a replica had it"
            os.kill(replica.pid, signal.SIGCONT)
            # MinIO sends it again; the change was on the master already: it is kept once, and answered 200
            await _until(
                lambda: _ok(http.post(url, json=body, headers=headers)), "the notifier answers 200 again", 30
            )
        assert await published() == 1
    finally:
        os.kill(replica.pid, signal.SIGCONT)
        await r.aclose()


async def _none(count) -> bool:
    return await count() == 0


async def _ok(request) -> bool:
    return (await request).status_code == 200


def _watching(replica, stream: str, group: str):
    """A handler that notes each entry as it starts, then what the replica holds pending at that moment;
    returns (handler, started, seen on the replica, the replica's client)."""
    on_replica = aioredis.from_url(replica.url)
    started: list = []
    seen: list = []

    async def handler(event: TaskAssigned) -> None:
        started.append(event.task_id)
        rows = await on_replica.xpending_range(stream, group, "-", "+", 10)
        seen.append([(row["message_id"], row["consumer"]) for row in rows])

    return handler, started, seen, on_replica


async def _handled_only_once_replicated(replica, add, started: list, seen: list) -> None:
    """Pause the replica, add an entry (`add()`), see it not handled for a second, resume the replica and
    see it handled, with its delivery to consumer `a` on the replica by then."""
    await asyncio.sleep(0.3)  # (reading: empty reads wait for nothing)
    os.kill(replica.pid, signal.SIGSTOP)
    entry = await add()
    await asyncio.sleep(1.0)
    assert started == [], "handled before a replica had the entry and its delivery"
    os.kill(replica.pid, signal.SIGCONT)

    async def handled() -> bool:
        return bool(seen)

    await _until(handled, "the entry handled once the replica is back", 10)
    assert seen == [[(entry, b"a")]]  # the replica had the delivery when the handler ran


async def test_a_batched_consumer_handles_an_entry_only_once_a_replica_has_it_and_its_delivery(replicated):
    """A read is a write too (the delivery to the consumer): with replicas to wait for, the batched
    consumer WAITs after each read and handles the entries only then. A master killed just after a read
    cannot take with it an entry a handler is already acting on (`make test-cluster` lost runs that way:
    a worker's claim on an attempt named an entry that no longer existed)."""
    from shared.batch import BatchConsumer, Outbox

    master, replica = replicated
    r = aioredis.from_url(master.url, socket_timeout=None)
    stream, group = f"test:confirmed:{secrets.token_hex(4)}", "g"
    handler, started, seen, on_replica = _watching(replica, stream, group)
    consumer = BatchConsumer(
        stream=stream,
        group=group,
        consumer="a",
        size=10,
        model=TaskAssigned,
        handler=handler,
        service="test",
        max_event_bytes=65536,
        heartbeat_s=0.05,
        block_ms=100,
    )
    await consumer.declare(r, Outbox(r, wait_replicas=1))
    consumer.start()
    try:
        await _handled_only_once_replicated(replica, lambda: r.xadd(stream, encode(_task())), started, seen)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
        await consumer.stop()
        await r.aclose()
        await on_replica.aclose()


async def test_a_per_message_consumer_handles_an_entry_only_once_a_replica_has_it_and_its_delivery(
    replicated,
):
    """The same on FastStream's per-message path (the router; workers with BATON_BATCH=0), which reads on
    connections of its own: the entry is re-taken (a write after its delivery) and WAITed for first."""
    from shared.settings import Settings
    from tests.helpers import per_message_consumer

    master, replica = replicated
    stream, group = f"test:confirmed:{secrets.token_hex(4)}", "g"
    handler, started, seen, on_replica = _watching(replica, stream, group)
    s = Settings(redis_url=master.url, consumer="a", redis_wait_replicas=1)
    broker, redis = await per_message_consumer(s, stream, group, handler)
    try:
        add = lambda: redis.xadd(stream, encode(_task()))  # noqa: E731
        await _handled_only_once_replicated(replica, add, started, seen)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
        await broker.stop()
        await on_replica.aclose()
