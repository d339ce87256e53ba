"""Both ways at once: a `kind: a2a` stage whose remote agent is a workflow behind Baton's own gateway.

The inner run's person step becomes the gateway task's `input-required`, which becomes a question in the
outer run; the outer run's person answers it, and the answer travels back down to the inner run.
"""

from __future__ import annotations

import asyncio

import pytest

from baton import client
from shared.storage import Storage
from tests.helpers import of_type, wait_for_end

pytestmark = pytest.mark.e2e


async def _until(settings, run_id: str, type_: str, timeout: float = 60):
    async def find():
        async for event in client.follow(settings, run_id, block_ms=500):
            if event.type == type_:
                return event

    return await asyncio.wait_for(find(), timeout)


async def test_a_question_of_a_run_behind_the_gateway_is_answered_by_the_person_of_the_delegating_run(
    settings, stack, gateway
):
    worker = stack.start(
        "worker",
        {
            "BATON_AGENTS": "remote-baton",
            "A2A_GATEWAY_URL": gateway.url.rstrip("/"),
            "A2A_GATEWAY_TOKEN": gateway.token,
        },
    )
    try:
        outer = await client.submit(settings, "a2a-both-ways", {})
        asked = await _until(settings, outer, "human.requested")
        assert asked.question == "remote-baton asks: Approve the draft?"
        recorded = (await client.run_status(settings, outer, last=50))["events"]
        [question] = [e for e in recorded if e["type"] == "task.input_required"]
        inner = f"a2a-{question['resume']['a2a_task_id']}"  # the gateway's run for that A2A task
        assert (await client.run_status(settings, inner, last=0))["status"] == "waiting_for_human"

        await client.respond(settings, outer, approve=True, text="ship it")
        events = await wait_for_end(settings, outer, timeout=90)
        assert events[-1].type == "run.completed", events[-1]
        inner_events = await wait_for_end(settings, inner, timeout=30)
        assert inner_events[-1].type == "run.completed", inner_events[-1]
        [received] = of_type(inner_events, "human.received")
        assert received.approved and received.text == "ship it"
        # the inner run's output came back up as the outer stage's artifact, under its `writes` prefix
        final = events[-1].outputs["final"]
        assert final.key.startswith(f"runs/{outer}/reviews/")
        async with Storage.connect(settings) as storage:
            assert await storage.get(final) == await storage.get(inner_events[-1].outputs["final"])
    finally:
        stack.kill(worker)

