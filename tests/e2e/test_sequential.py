"""The sequential pipeline end to end: real Redis, real MinIO, every service its own process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from baton import client
from shared import manifests, streams
from shared.broker import DATA_FIELD
from shared.events import RunCompleted
from shared.redisconn import connect
from shared.storage import Storage
from tests.helpers import (
    last_id,
    objects_since,
    of_type,
    post_webhook,
    run,
    s3_client,
    s3_notification,
    wait_for_end,
    wait_handled,
)

BRIEF = Path(__file__).resolve().parents[2] / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e


async def test_three_stage_run_completes_with_outputs_at_expected_keys(settings):
    run_id, events = await run(settings, "content-factory", {"brief": BRIEF})
    end = events[-1]
    assert isinstance(end, RunCompleted), end
    assert [e.agent for e in of_type(events, "task.completed")] == ["outliner", "writer", "seo"]
    article = end.outputs["article"]
    assert article.key == f"runs/{run_id}/published/topic.md"
    async with Storage.connect(settings) as storage:
        text = (await storage.get(article)).decode()
        outline = await storage.head(f"runs/{run_id}/drafts/outline.md")
        draft = await storage.head(f"runs/{run_id}/drafts/draft.md")
    assert outline is not None and draft is not None
    assert text.startswith("---\ntitle: Event-driven agent teams\nslug: event-driven-agent-teams\n")
    # one section per point of the brief, plus introduction and conclusion
    assert text.count("\n## ") == 6
    assert end.usage.seconds > 0


async def test_work_is_spread_over_both_worker_processes(settings):
    results = await asyncio.gather(*(run(settings, "content-factory", {"brief": BRIEF}) for _ in range(6)))
    workers = set()
    for _run_id, events in results:
        assert events[-1].type == "run.completed"
        workers.update(e.sender for e in of_type(events, "task.started"))
    assert len(workers) == 2, workers


async def test_events_carry_references_never_content(settings):
    _run_id, events = await run(settings, "content-factory", {"brief": BRIEF})
    brief_line = max(BRIEF.read_text().splitlines(), key=len)
    for event in events:
        assert brief_line not in event.model_dump_json()


async def test_dropping_a_brief_into_the_watched_prefix_publishes_the_article(settings, tmp_path):
    """S3 client -> MinIO notification -> notifier -> baton:objects -> supervisor: no polling."""
    s3 = s3_client(settings)
    name = f"drop-{tmp_path.name}"
    body = BRIEF.read_bytes().replace(b"Event-driven agent teams", b"Dropped brief")
    put = s3.put_object(Bucket=settings.bucket, Key=f"briefs/{name}.md", Body=body)
    from services.supervisor.runs import trigger_run_id

    run_id = trigger_run_id(settings.bucket, f"briefs/{name}.md", put["VersionId"])
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.completed", events[-1]
    published = s3.get_object(Bucket=settings.bucket, Key=f"published/{name}.md")["Body"].read().decode()
    assert "title: Dropped brief" in published


async def test_a_duplicate_notification_starts_one_run(settings, real_servers, tmp_path):
    """MinIO delivers an event through two targets, and retries: the notifier publishes it once, and a
    copy that gets through anyway (no sequencer, or after the mark expired) names the same run."""
    from services.supervisor.runs import trigger_run_id

    s3 = s3_client(settings)
    key = f"briefs/dup-{tmp_path.name}.md"
    put = s3.put_object(Bucket=settings.bucket, Key=key, Body=BRIEF.read_bytes())
    run_id = trigger_run_id(settings.bucket, key, put["VersionId"])
    assert (await wait_for_end(settings, run_id, timeout=30))[-1].type == "run.completed"
    url = f"http://127.0.0.1:{real_servers.notifier_port}/minio/events"
    since = await last_id(settings, streams.OBJECTS)
    for sequencer in ("dup-1", "dup-1", None):  # one event delivered twice, then one the notifier can't tell
        body = s3_notification(key, put["VersionId"], put["ETag"].strip('"'), sequencer)
        assert post_webhook(url, json.dumps(body).encode(), real_servers.webhook_token) == 200
    published = [(i, e) for i, e in await objects_since(settings, since) if e.key == key]
    assert [e.sequencer for _i, e in published] == ["dup-1", None]
    await wait_handled(settings, streams.OBJECTS, streams.SUPERVISOR_GROUP, published[-1][0])
    submitted = await last_id(settings, streams.RUNS)  # the copy's RunSubmitted, for the same run id
    await wait_handled(settings, streams.RUNS, streams.SUPERVISOR_GROUP, submitted)
    r = connect(settings.redis_url)
    try:
        entries = await r.xrange(streams.run_events(run_id))
    finally:
        await r.aclose()
    types = [json.loads(f[DATA_FIELD.encode()])["type"] for _i, f in entries]
    assert types.count("run.completed") == 1 and types.count("task.assigned") == 3, types


async def test_input_is_read_at_the_exact_version_handed_over(settings, tmp_path):
    """Overwriting an input after submission does not change what the run reads."""
    first = tmp_path / "note.txt"
    first.write_text("version one\n")
    run_id, events = await run(settings, "by-intent", {"note": first})
    assert events[-1].type == "run.completed", events[-1]
    routed = of_type(events, "route.decided")
    assert routed and routed[0].agent == "echo" and routed[0].label == "copy"
    async with Storage.connect(settings) as storage:
        ref = events[-1].outputs["note"]
        await storage.put(ref.key, b"changed later")
        assert await storage.get(ref) == b"version one\n"


async def test_retryable_failure_is_retried_as_a_new_attempt(settings):
    _run_id, events = await run(settings, "flaky")
    assert events[-1].type == "run.completed", events[-1]
    failed = of_type(events, "task.failed")
    assert len(failed) == 1 and failed[0].retryable and failed[0].attempt == 1
    assert [e.attempt for e in of_type(events, "task.assigned")] == [1, 2]


async def test_unknown_workflow_fails_the_run_with_a_clear_reason(settings):
    _run_id, events = await run(settings, "no-such-workflow")
    assert events[-1].type == "run.failed"
    assert "unknown workflow 'no-such-workflow'" in events[-1].reason


async def test_a_completed_state_and_its_run_completed_event_are_written_together(settings):
    """Whoever reads `completed` (baton status, the MCP server) finds run.completed in the run's stream:
    the supervisor writes the end event in the same script as the state (regression: it came after)."""
    run_ids = [await client.submit(settings, "slow-pair", {}, {"sleep": 0}) for _ in range(5)]
    r = connect(settings.redis_url)
    try:
        pending = set(run_ids)
        for _ in range(6000):
            for run_id in list(pending):
                raw = await r.hget(streams.run_state(run_id), "core")
                if raw and json.loads(raw)["status"] == "completed":
                    entries = await r.xrange(streams.run_events(run_id))
                    types = [json.loads(f[DATA_FIELD.encode()])["type"] for _i, f in entries]
                    assert "run.completed" in types, types
                    pending.discard(run_id)
            if not pending:
                break
            await asyncio.sleep(0.002)
    finally:
        await r.aclose()
    assert not pending


def _ready_line(stack, handle: str) -> dict:
    """The `service_ready` log line of one service process (written just after its ready file)."""
    for _ in range(100):
        for line in stack.log_path(handle).read_text().splitlines():
            if '"service_ready"' in line:
                return json.loads(line)
        time.sleep(0.05)
    raise AssertionError(f"{handle} logged no service_ready:\n{stack.log_path(handle).read_text()[-2000:]}")


def test_every_service_runs_on_uvloop_unless_told_otherwise(stack):
    """BATON_EVENT_LOOP: uvloop by default, the standard library's loop when asked; each service's ready
    log says which loop it actually runs on."""
    handles = [h for h, proc in stack.procs.items() if proc.poll() is None]
    assert {h.rsplit("-", 1)[0] for h in handles} >= {"notifier", "supervisor", "router", "worker"}
    for handle in handles:
        assert _ready_line(stack, handle)["event_loop"] == "uvloop", handle
    router = stack.start("router", {"BATON_EVENT_LOOP": "asyncio"})
    try:
        assert _ready_line(stack, router)["event_loop"] == "asyncio"
    finally:
        stack.kill(router)


async def test_a_run_of_more_inputs_than_one_event_holds_sees_them_all(settings, tmp_path):
    """600 inputs (a RunSubmitted of some 120 KB, over the 64 KiB event limit: the run was dead-lettered
    and failed): the client puts their refs in a manifest in the run's inputs, the supervisor reads it, and
    the agent sees every input (its task's own manifest, as a wide plan's aggregator's)."""
    n = 600
    inputs = {}
    for i in range(n):
        path = tmp_path / f"part-{i:03d}.txt"
        path.write_text(f"part {i}\n")
        inputs[f"part-{i:03d}"] = path
    run_id = await client.submit(settings, "count-inputs", inputs)
    events = await wait_for_end(settings, run_id, timeout=60)
    assert events[-1].type == "run.completed", events[-1]
    async with Storage.connect(settings) as storage:
        count = await storage.get(events[-1].outputs["count"])
    assert count.startswith(b"600 inputs"), count
    r = connect(settings.redis_url)
    try:
        entries = await r.xrange(streams.RUNS, min="-", max="+")
    finally:
        await r.aclose()
    submitted = [json.loads(f[DATA_FIELD.encode()]) for _i, f in entries]
    mine = next(e for e in submitted if e.get("run_id") == run_id and e["type"] == "run.submitted")
    assert mine["inputs"] == {} and mine["inputs_manifest"]["key"].endswith("/inputs/.baton-inputs.json")


async def _submitted_by_hand(settings, run_id: str, manifest) -> list:
    """A RunSubmitted of `count-inputs` written by hand (a plain XADD) naming `manifest`; the run's events
    once it ended."""
    event = {"type": "run.submitted", "run_id": run_id, "workflow": "count-inputs",
             "inputs_manifest": manifest.model_dump(mode="json")}  # fmt: skip
    r = connect(settings.redis_url)
    try:
        await r.xadd(streams.RUNS, {DATA_FIELD: json.dumps(event)})
    finally:
        await r.aclose()
    return await wait_for_end(settings, run_id, timeout=30)


async def test_an_inputs_manifest_that_is_not_one_fails_the_run_by_name(settings):
    """A RunSubmitted written by hand whose manifest is not a JSON object of refs: the run fails, naming
    the manifest and what is wrong (nothing hangs)."""
    run_id = client.new_run_id()
    async with Storage.connect(settings) as storage:
        bad = await storage.put(f"runs/{run_id}/inputs/list.json", b'{"a": {"bucket": 3}}')
    events = await _submitted_by_hand(settings, run_id, bad)
    assert events[-1].type == "run.failed"
    assert "list.json is not a JSON object of ObjectRefs by name: a.bucket" in events[-1].reason, events[-1]


async def test_an_inputs_manifest_outside_the_run_fails_it_by_name(settings):
    """A manifest is read only under the run's own prefix: one naming another run's manifest fails the
    run, naming it (its refs are never read in)."""
    other, run_id = client.new_run_id(), client.new_run_id()
    async with Storage.connect(settings) as storage:
        ok = await storage.put(f"runs/{other}/inputs/x.txt", b"x")
        theirs = await storage.put(f"runs/{other}/inputs/.baton-inputs.json", manifests.encode({"x": ok}))
    events = await _submitted_by_hand(settings, run_id, theirs)
    assert events[-1].type == "run.failed"
    assert f"the inputs manifest {theirs.key} is not under runs/{run_id}/" in events[-1].reason, events[-1]


async def test_a_stage_of_more_outputs_than_one_event_holds_hands_on_all_of_them(settings):
    """An agent writes 600 outputs (a TaskCompleted of some 125 KB: dead-lettered, the run failed): the
    worker puts their refs in a manifest, the supervisor reads it, and the next stage sees all 600."""
    run_id = await client.submit(settings, "split-and-count", {}, {"parts": 600})
    events = await wait_for_end(settings, run_id, timeout=90)
    assert events[-1].type == "run.completed", events[-1]
    split = next(e for e in events if e.type == "task.completed" and e.agent == "splitter")
    assert len(split.outputs) == 600 and split.outputs_manifest is None  # (recorded with its outputs)
    async with Storage.connect(settings) as storage:
        count = await storage.get(events[-1].outputs["count"])
    assert count.startswith(b"600 inputs"), count
