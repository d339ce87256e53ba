"""Run state lives in Redis: a supervisor killed between stages loses nothing."""

from __future__ import annotations

import asyncio

import pytest

from baton import client
from tests.helpers import of_type, wait_for_end

pytestmark = pytest.mark.e2e


async def test_run_completes_after_the_supervisor_is_killed_between_stages(settings, stack):
    run_id = await client.submit(settings, "slow-pair", {}, {"sleep": 1.5})
    seen = []

    async def until_first_stage_started():
        async for event in client.follow(settings, run_id, block_ms=500):
            seen.append(event)
            if event.type == "task.started":
                return

    await asyncio.wait_for(until_first_stage_started(), 20)
    supervisor = next(h for h in stack.procs if h.startswith("supervisor"))
    stack.kill(supervisor, hard=True)  # SIGKILL: no graceful shutdown
    await asyncio.sleep(2.5)  # stage 1 completes while no supervisor is running
    stack.start("supervisor")
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.completed", events[-1]
    assert [e.stage for e in of_type(events, "task.assigned")] == [0, 1]
    assert len(of_type(events, "task.completed")) == 2
