"""Supervisor replicas share the results partitions out (services/supervisor/shares.py): a run's outcomes
go to one replica, and a replica that dies has its share taken by the others within seconds."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from baton import client
from services.supervisor.shares import Shares
from shared import streams
from shared.redisconn import connect
from tests.e2e.test_supervisor_windows import Supervisors
from tests.helpers import scrape, total, wait_for_end

pytestmark = pytest.mark.e2e

# (the supervisor's own events carry its name; a task's is the role's, `supervisor`)
SIGNED = ("run.completed",)


async def test_replicas_divide_the_partitions_and_take_a_silent_ones_share(settings):
    """On the real server's clock: three replicas, then one leaving, then one silent (killed)."""
    r = connect(settings.redis_url)
    key = f"test:supervisors:{client.new_run_id()}"
    log = structlog.get_logger()
    a, b, c = (Shares(name, 4, log, beat_s=0.1, ttl_s=1.0, key=key) for name in ("a", "b", "c"))
    everything = {0, 1, 2, 3}
    try:
        for replica in (a, b, c):
            replica.redis = r
        for replica in (a, b, a):
            await replica.beat()
        assert a.owned | b.owned == everything and not a.owned & b.owned and a.owned and b.owned
        for replica in (c, a, b):
            await replica.beat()
        assert a.owned | b.owned | c.owned == everything
        assert sum(len(x.owned) for x in (a, b, c)) == 4 and all(x.owned for x in (a, b, c))
        await c.leave()
        for replica in (a, b):
            await replica.beat()
        assert a.owned | b.owned == everything and not a.owned & b.owned
        # A partition's consumer reads only while it is in its replica's share
        mine, theirs = min(a.owned), min(b.owned)
        await asyncio.wait_for(a.gate(mine)(), 0.5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.gate(theirs)(), 0.3)
        # b goes silent: once its last beat is older than the TTL, a reads everything
        await asyncio.sleep(1.2)
        await a.beat()
        assert a.owned == everything and a.members == ["a"]
        await asyncio.wait_for(a.gate(theirs)(), 0.5)
    finally:
        await r.delete(key)
        await r.aclose()


async def _relays(settings, n: int, timeout: float) -> list[list]:
    ids = [await client.submit(settings, "relay", {}) for _ in range(n)]
    return list(await asyncio.gather(*(wait_for_end(settings, i, timeout) for i in ids)))


def used_handle(senders: set[str]) -> str:
    """The stack handle of one of the supervisors that signed events (`supervisor:<consumer>`)."""
    return sorted(senders)[0].split(":", 1)[1]


def _result_senders(events: list) -> set[str]:
    return {e.sender for e in events if e.type in SIGNED}


async def test_a_second_supervisor_takes_its_share_and_the_survivor_takes_all_when_one_dies(
    settings, stack
):
    """With one partition (this suite on one server) the second replica stands by; with more (the cluster
    suite), each partition's outcomes go to one replica. Either way, one killed outright leaves the other
    moving every run on within seconds, not at the reclaimer's pace."""
    sup = Supervisors(stack)
    try:
        sup.add()
        await asyncio.sleep(2 * 1.0 + 0.5)  # (two beats: each replica has seen the other)
        partitions = int(stack.env.get("BATON_RESULT_PARTITIONS", "1"))
        runs = await _relays(settings, 12, timeout=30)
        by_partition: dict[int, set[str]] = {}
        for events in runs:
            p = streams.partition_of(events[0].run_id, partitions)
            by_partition.setdefault(p, set()).update(_result_senders(events))
        assert all(len(senders) == 1 for senders in by_partition.values()), by_partition
        used = set().union(*by_partition.values())
        if partitions == 1:  # the standby made no step of any run
            assert len(used) == 1
        handles = sup.running()
        assert len(handles) == 2
        # Each replica says on /metrics how many partitions it reads: together, every one of them once
        read = {h: total({h: scrape(stack.metrics[h])}, "baton_supervisor_partitions_read") for h in handles}
        assert sum(read.values()) == partitions, read
        if partitions == 1:
            assert read[used_handle(used)] == 1, read
        victim = used_handle(used)
        assert victim in handles
        survivor = next(h for h in handles if h != victim)
        stack.kill(victim, hard=True)
        loop = asyncio.get_running_loop()
        began = loop.time()
        after = await _relays(settings, 12, timeout=20)
        took = loop.time() - began
        senders = {e.sender for events in after for e in events if e.type in SIGNED}
        assert senders == {f"supervisor:{survivor}"}, senders
        assert all(events[-1].type == "run.completed" for events in after)
        assert took < 15, f"the survivor took {took:.1f}s to move 12 runs on"
    finally:
        sup.restore()
