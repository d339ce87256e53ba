"""Human-in-the-loop: a run pauses, survives a supervisor restart, and resumes on a response file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from baton import client
from shared.errors import NotWaitingError
from tests.helpers import of_type, s3_client, wait_for_end

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


async def _until(settings, run_id, type_, timeout=20):
    async def find():
        async for event in client.follow(settings, run_id, block_ms=500):
            if event.type == type_:
                return event

    return await asyncio.wait_for(find(), timeout)



async def test_a_paused_run_survives_a_restart_and_resumes_on_a_plain_s3_upload(settings, stack):
    run_id = await client.submit(settings, "approval", {})
    asked = await _until(settings, run_id, "human.requested")
    assert asked.question == "Approve the draft?"
    waiting = await client.list_runs(settings, waiting=True)
    assert any(r["run_id"] == run_id and r["question"] == "Approve the draft?" for r in waiting)
    request = json.loads(
        s3_client(settings).get_object(Bucket=settings.bucket, Key=asked.request.key)["Body"].read()
    )
    assert request["question"] == "Approve the draft?" and "draft" in request["inputs"]

    supervisor = next(h for h in stack.procs if h.startswith("supervisor"))
    stack.kill(supervisor, hard=True)
    stack.start("supervisor")

    s3_client(settings).put_object(
        Bucket=settings.bucket,
        Key=f"runs/{run_id}/human/responses/ok.json",
        Body=json.dumps({"decision": "approve", "text": "looks good"}).encode(),
    )
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.completed", events[-1]
    assert set(events[-1].outputs) == {"final"}
    received = of_type(events, "human.received")
    assert received[0].approved and received[0].text == "looks good"
    assert not any(r["run_id"] == run_id for r in await client.list_runs(settings, waiting=True))


async def test_a_rejection_goes_back_to_the_declared_stage(settings):
    run_id = await client.submit(settings, "approval", {})
    await _until(settings, run_id, "human.requested")
    await client.respond(settings, run_id, approve=False, text="too short")

    # asked again after the drafter's second go; approve this time
    async def second_ask():
        count = 0
        async for event in client.follow(settings, run_id, block_ms=500):
            count += event.type == "human.requested"
            if count == 2:
                return

    await asyncio.wait_for(second_ask(), 20)
    await client.respond(settings, run_id, approve=True)
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.completed"
    drafts = [e for e in of_type(events, "task.assigned") if e.agent == "drafter"]
    assert len(drafts) == 2 and drafts[0].task_id != drafts[1].task_id


async def test_a_rejection_fails_the_run_when_the_workflow_says_so(settings):
    run_id = await client.submit(settings, "approval-strict", {})
    await _until(settings, run_id, "human.requested")
    await client.respond(settings, run_id, approve=False, text="not now")
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.failed"
    assert events[-1].reason == "rejected by a person at stage 2: not now"


async def test_the_router_fallback_can_be_a_person(settings):
    run_id = await client.submit(settings, "support-human", {}, {"text": "maybe a refund?"})
    asked = await _until(settings, run_id, "human.requested")
    assert "confidence 0.30 is below" in asked.question
    await client.respond(settings, run_id, approve=True, text="refunded")
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.completed" and "response" in events[-1].outputs


def _baton(stack, *args: str) -> subprocess.CompletedProcess:
    """The `baton` command, as the CLI's own users."""
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", *args],
        env={**os.environ, **stack.service_env("cli")},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def test_a_response_to_a_run_not_waiting_for_a_person_is_refused(settings, stack):
    # a run still at its first stage (the lost answer: written before the run asked)
    run_id = await client.submit(settings, "slow-approval", {}, {"sleep": 6})
    await _until(settings, run_id, "task.started")
    early = _baton(stack, "respond", run_id, "--approve", "--text", "too early")
    assert early.returncode != 0
    assert f"run {run_id} is not waiting for a person" in early.stderr
    with pytest.raises(NotWaitingError, match=f"run {run_id} is not waiting for a person"):
        await client.respond(settings, run_id, approve=True)

    await _until(settings, run_id, "human.requested")
    answered = _baton(stack, "respond", run_id, "--approve", "--text", "now")
    assert answered.returncode == 0, answered.stderr
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.completed" and "slow2" in events[-1].outputs
    late = _baton(stack, "respond", run_id, "--reject")
    assert late.returncode != 0 and f"run {run_id} is not waiting for a person" in late.stderr
    responses = s3_client(settings).list_objects_v2(
        Bucket=settings.bucket, Prefix=f"runs/{run_id}/human/responses/"
    )
    assert len(responses["Contents"]) == 1  # only the answer given while the run waited

    missing = _baton(stack, "respond", "r-never-submitted", "--approve")
    assert missing.returncode != 0 and "no run 'r-never-submitted'" in missing.stderr


async def test_a_response_resumes_the_run_even_if_its_bucket_notification_never_comes(settings, stack):
    """MinIO drops the notifications of objects written just as it starts (README, Reliability, bug 9;
    `make chaos-burst` left 3 of 5,000 runs waiting that way): `baton respond`, the console, MCP and the
    A2A gateway announce the response file themselves, so the notification is no longer needed."""
    run_id = await client.submit(settings, "approval", {})
    await _until(settings, run_id, "human.requested")
    notifier = next(h for h in stack.procs if h.startswith("notifier"))
    stack.kill(notifier, hard=True)  # no notification reaches the supervisor while it is away
    try:
        await client.respond(settings, run_id, approve=True, text="no notification needed")
        events = await wait_for_end(settings, run_id, timeout=30)
    finally:
        stack.start("notifier")
    assert events[-1].type == "run.completed", events[-1]
    assert [e.text for e in of_type(events, "human.received")] == ["no notification needed"]


async def test_an_empty_waiting_index_is_filled_from_the_status_index_with_the_runs_still_waiting(settings):
    # as after an upgrade from the unordered waiting set: the supervisor fills the index at its start
    from shared import streams
    from shared.redisconn import connect
    from shared.runs import index_waiting

    waiting = await client.submit(settings, "approval", {})
    await _until(settings, waiting, "human.requested")
    stale = "r-0000000000000000stal"  # listed in the status index, but its state says otherwise
    r = connect(settings.redis_url)
    try:
        score = await r.zscore(streams.RUNS_WAITING, waiting)
        assert score is not None
        await r.hset(streams.run_state(stale), "core", json.dumps({"status": "completed"}))
        await r.zadd(streams.run_status_index("waiting_for_human"), {stale: 1.0})
        # (the supervisor lists a run again right after the commit that made it wait: let that land first)
        await asyncio.sleep(1)
        await r.delete(streams.RUNS_WAITING)
        assert await index_waiting(r, chunk=2) >= 1
        assert await r.zscore(streams.RUNS_WAITING, waiting) == score  # by submission time, as before
        assert await r.zscore(streams.RUNS_WAITING, stale) is None
        assert await index_waiting(r) == 0  # it exists now: nothing to do
        assert any(row["run_id"] == waiting for row in await client.list_runs(settings, waiting=True))
    finally:
        await r.zrem(streams.run_status_index("waiting_for_human"), stale)
        await r.delete(streams.run_state(stale))
        await r.aclose()
        await client.cancel(settings, waiting)
