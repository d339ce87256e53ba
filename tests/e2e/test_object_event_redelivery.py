"""A supervisor killed after committing a step caused by a bucket change (a person's response) sends that
step's tasks when the change is redelivered to another supervisor. Found by `make chaos` (run
chaos-00111: a co-write turn committed by a supervisor that exited at `supervisor.after_commit` was never
sent; its `c:<event>` field stayed, and the redelivered ObjectChanged was acknowledged without it)."""

from __future__ import annotations

import asyncio

import pytest

from baton import client
from tests.e2e.test_crash_windows import replace, wait_exit
from tests.helpers import of_type, wait_for_end

pytestmark = pytest.mark.e2e


async def _until(settings, run_id, type_, timeout=30):
    async def find():
        async for event in client.follow(settings, run_id, block_ms=500):
            if event.type == type_:
                return event

    return await asyncio.wait_for(find(), timeout)


@pytest.mark.xfail(
    raises=AssertionError,
    strict=True,
    reason="objects.apply_response and objects.on_object load the run without c:<event>, so a redelivered "
    "ObjectChanged cannot re-send what its commit caused (services/supervisor/objects.py)",
)
async def test_a_supervisor_killed_after_committing_a_response_sends_the_next_stage_on_redelivery(
    settings, stack
):
    run_id = await client.submit(settings, "approval-strict", {})
    await _until(settings, run_id, "human.requested")
    crashing = replace(stack, "supervisor", {"BATON_FAULTS": "supervisor.after_commit=exit"})
    try:
        await client.respond(settings, run_id, approve=True, text="ship it")
        assert await asyncio.to_thread(wait_exit, stack, crashing, 30) != 0
    finally:
        replace(stack, "supervisor", {})  # reclaims the response's event after reclaim_idle_ms
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.completed", events[-1]
    assert len(of_type(events, "human.received")) == 1
