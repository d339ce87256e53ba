"""The supervisor's timers (services/supervisor/timers.py) taken and fired in batches, on a real Redis (a
database of their own, so the session's supervisors never see them). What happens when one fires (a retry
re-dispatched, a deadline's TaskFailed) is tested end to end elsewhere (test_supervisor_windows.py,
the retry tests); here `fire` is replaced by a recorder, to see which timers are taken and when."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import pytest
import structlog
from structlog.testing import capture_logs

from services.supervisor import timers
from shared import streams
from shared.redisconn import connect
from tests.conftest import cluster_mode

pytestmark = pytest.mark.skipif(cluster_mode(), reason="a database of its own: not on a cluster")


@pytest.fixture
async def eng(real_servers):
    parts = urlsplit(real_servers.redis_url)
    url = urlunsplit(parts._replace(path="/13"))
    redis = connect(url)
    await redis.delete(streams.TIMERS)
    yield SimpleNamespace(redis=redis, log=structlog.get_logger())
    await redis.delete(streams.TIMERS)
    await redis.aclose()


def _timer(i: int) -> str:
    return json.dumps({"kind": "dispatch", "run_id": f"r-{i}", "task_id": f"r-{i}.0.a", "attempt": 2})


class Recorder:
    """Stands in for `timers.fire`: records each timer, at most `at_once` seen in flight together."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.fired: list[str] = []
        self.in_flight = self.at_once = 0
        self.fail = fail or {}

    async def __call__(self, eng, timer: dict) -> None:
        self.in_flight += 1
        self.at_once = max(self.at_once, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # a round trip's worth
            if timer["run_id"] in self.fail:
                raise self.fail[timer["run_id"]]
            self.fired.append(timer["run_id"])
        finally:
            self.in_flight -= 1


async def test_due_timers_are_taken_a_batch_at_a_time_fired_together_and_removed(eng, monkeypatch):
    now = time.time()
    await eng.redis.zadd(streams.TIMERS, {_timer(i): now - 1 for i in range(600)})
    await eng.redis.zadd(streams.TIMERS, {_timer(1000 + i): now + 60 for i in range(5)})  # not yet due
    fire = Recorder()
    monkeypatch.setattr(timers, "fire", fire)
    taken = [await timers.fire_due(eng) for _ in range(4)]
    assert taken == [timers.BATCH, timers.BATCH, 600 - 2 * timers.BATCH, 0]
    assert sorted(fire.fired) == sorted(f"r-{i}" for i in range(600))  # each once
    assert fire.at_once == timers.BATCH  # a batch fired together, not one round trip after another
    left = await eng.redis.zrange(streams.TIMERS, 0, -1)
    assert sorted(json.loads(m)["run_id"] for m in left) == [f"r-{1000 + i}" for i in range(5)]


async def test_two_replicas_taking_at_once_fire_each_timer_once(eng, monkeypatch):
    await eng.redis.zadd(streams.TIMERS, {_timer(i): time.time() - 1 for i in range(400)})
    fire = Recorder()
    monkeypatch.setattr(timers, "fire", fire)
    while sum(await asyncio.gather(timers.fire_due(eng), timers.fire_due(eng))):
        pass
    assert sorted(fire.fired) == sorted(f"r-{i}" for i in range(400))
    assert await eng.redis.zcard(streams.TIMERS) == 0


async def test_a_transient_failure_keeps_its_timer_for_after_the_lease_and_a_hopeless_one_is_dropped(
    eng, monkeypatch
):
    now = time.time()
    await eng.redis.zadd(streams.TIMERS, {_timer(i): now - 1 for i in range(3)})
    fire = Recorder({"r-0": ConnectionError("Redis went away"), "r-1": KeyError("workflow gone")})
    monkeypatch.setattr(timers, "fire", fire)
    with capture_logs() as logs:
        assert await timers.fire_due(eng) == 3
    assert fire.fired == ["r-2"]
    left = await eng.redis.zrange(streams.TIMERS, 0, -1, withscores=True)
    assert [json.loads(m)["run_id"] for m, _ in left] == ["r-0"]  # comes due again when its lease ends
    assert left[0][1] >= now + timers.LEASE_S - 1
    assert await timers.fire_due(eng) == 0  # not before
    assert {entry["event"] for entry in logs} == {"timer_failed", "timer_dropped"}
