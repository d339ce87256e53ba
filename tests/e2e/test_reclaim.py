"""The reclaimer on a real Redis: claimed entries stay claimed while they wait for their turn."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import pytest
from pydantic import TypeAdapter

from shared.broker import Subscription, encode, make_broker, registry
from shared.events import TaskAssigned
from shared.reclaim import Reclaimer
from shared.settings import Settings

pytestmark = pytest.mark.e2e


def _task(i: int) -> TaskAssigned:
    return TaskAssigned(
        run_id="r-reclaim",
        task_id=f"r-reclaim.{i}.x",
        workflow="w",
        agent="x",
        output_prefix="runs/r-reclaim/",
    )


async def test_entries_claimed_together_are_not_claimed_again_while_they_wait(real_servers):
    """One sweep claims several entries and handles them in turn; a slow first one must not let the
    others go idle, or a second consumer claims them too and both run them (found by make chaos)."""
    stream, group = f"test:reclaim:{secrets.token_hex(4)}", "g"
    handled: Counter = Counter()

    async def slow(event: TaskAssigned) -> None:
        handled[event.task_id] += 1
        await asyncio.sleep(0.5)

    brokers, reclaimers = [], []
    for name in ("r1", "r2"):
        s = Settings(redis_url=real_servers.redis_url, consumer=name, reclaim_idle_ms=300, max_deliveries=5)
        broker = make_broker(s, "test")
        await broker.connect()
        registry(broker).append(Subscription(stream, group, slow, TypeAdapter(TaskAssigned)))
        brokers.append(broker)
        reclaimers.append(Reclaimer(broker, s, "test"))
    redis = brokers[0]._connection
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        for i in range(3):
            await redis.xadd(stream, encode(_task(i)))
        await redis.xreadgroup(group, "dead", {stream: ">"}, count=10)  # taken, never acknowledged
        await asyncio.sleep(0.4)  # idle past reclaim_idle_ms
        first = asyncio.create_task(reclaimers[0].sweep(registry(brokers[0])[0]))
        await asyncio.sleep(0.1)  # r1 claimed all three and is busy with the first
        for _ in range(12):  # meanwhile r2 sweeps again and again, for longer than r1 needs
            await reclaimers[1].sweep(registry(brokers[1])[0])
            await asyncio.sleep(0.15)
        await first
        assert handled == {f"r-reclaim.{i}.x": 1 for i in range(3)}, handled
        assert (await redis.xpending(stream, group))["pending"] == 0
    finally:
        await redis.delete(stream)
        for broker in brokers:
            await broker.stop()


async def test_a_retry_stops_when_another_consumer_took_the_entry_and_the_heartbeat_leaves_it(real_servers):
    """Found by `make chaos-burst` (reclaim time 2 s): a handler retried a transient error across a Redis
    restart while its heartbeat could not reach Redis; another worker reclaimed the entry, and both ran it.
    A retry now re-takes its entry only if it is still its own, and the heartbeat likewise."""
    from redis.asyncio import Redis

    from shared.broker import CURRENT_CLAIM, CURRENT_ENTRY, Reclaimed, call_handler, keep_claimed

    stream, group = f"test:retake:{secrets.token_hex(4)}", "g"
    redis = Redis.from_url(real_servers.redis_url)
    calls: Counter = Counter()

    async def pending_owner(entry: bytes) -> str:
        (row,) = await redis.xpending_range(stream, group, entry, entry, 1)
        return row["consumer"].decode()

    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        ids = [await redis.xadd(stream, {"n": str(i)}) for i in range(2)]
        await redis.xreadgroup(group, "a", {stream: ">"}, count=2)  # both are consumer a's
        CURRENT_CLAIM.set((redis, stream, group, "a"))

        async def taken_meanwhile(_event) -> None:  # fails, and b reclaims the entry before the retry
            calls["taken"] += 1
            await redis.xclaim(stream, group, "b", 0, [ids[0]], justid=True)
            raise ConnectionError("Redis went away")

        CURRENT_ENTRY.set(ids[0].decode())
        with pytest.raises(Reclaimed):
            await call_handler(taken_meanwhile, None, None, retries=(0.05, 0.05))
        assert calls["taken"] == 1 and await pending_owner(ids[0]) == "b"

        async def still_ours(_event) -> str:  # fails once; nobody took it: the retry goes on
            calls["ours"] += 1
            if calls["ours"] == 1:
                raise ConnectionError("Redis went away")
            return "done"

        CURRENT_ENTRY.set(ids[1].decode())
        assert await call_handler(still_ours, None, None, retries=(0.05,)) == "done"
        assert calls["ours"] == 2 and await pending_owner(ids[1]) == "a"

        # a's heartbeat for both entries keeps its own and leaves b's with b
        beat = asyncio.create_task(keep_claimed(redis, stream, group, "a", lambda: ids, 0.05))
        await asyncio.sleep(0.2)
        beat.cancel()
        assert [await pending_owner(i) for i in ids] == ["b", "a"]
    finally:
        CURRENT_CLAIM.set(None)
        await redis.delete(stream)
        await redis.aclose()


async def test_a_per_message_handler_stops_when_another_consumer_took_its_entry(real_servers):
    """Fencing on FastStream's per-message path (the router; workers with BATON_BATCH=0): the heartbeat
    that finds the entry taken by another consumer stops the handler; the entry stays with that one."""
    from tests.helpers import per_message_consumer

    stream, group = f"test:fence:{secrets.token_hex(4)}", "g"
    started, finished = asyncio.Event(), []

    async def slow(event: TaskAssigned) -> None:
        started.set()
        await asyncio.sleep(1.5)
        finished.append(event.task_id)

    s = Settings(redis_url=real_servers.redis_url, consumer="a", reclaim_idle_ms=300, max_deliveries=5)
    broker, redis = await per_message_consumer(s, stream, group, slow)
    try:
        entry = await redis.xadd(stream, encode(_task(0)))
        await asyncio.wait_for(started.wait(), 10)
        await redis.xclaim(stream, group, "b", 0, [entry], justid=True)  # b reclaimed it meanwhile
        await asyncio.sleep(2.0)
        assert finished == [], "the handler of the entry b took was not stopped"
        (row,) = await redis.xpending_range(stream, group, entry, entry, 1)
        assert row["consumer"] == b"b"
    finally:
        await redis.delete(stream)
        await broker.stop()
