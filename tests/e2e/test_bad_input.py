"""Malformed input never crashes a service: it lands in the dead-letter stream with a reason."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from shared import streams
from shared.broker import DATA_FIELD, encode
from shared.events import ObjectRef, RunSubmitted
from shared.redisconn import connect
from shared.storage import Storage
from tests.helpers import dead_letters, last_id, post_webhook, run, wait_for_end

BRIEF = Path(__file__).resolve().parents[2] / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e

CONSUMED = [
    streams.RUNS, streams.ROUTE, streams.results_stream(0), streams.OBJECTS, streams.agent_stream("outliner")
]
GARBAGE = {
    "not json": {DATA_FIELD: b"\xff\xfe this is not json"},
    "a json list": {DATA_FIELD: b"[1, 2, 3]"},
    "unknown type": {DATA_FIELD: json.dumps({"type": "task.exploded", "run_id": "r1"})},
    "missing fields": {DATA_FIELD: json.dumps({"type": "task.assigned", "run_id": "r-missing"})},
    "wrong schema version": {
        DATA_FIELD: json.dumps(
            {"type": "run.submitted", "schema_version": 99, "run_id": "r-v99", "workflow": "content-factory"}
        )
    },
    "no data field": {"hello": "world"},
    "oversized": {
        DATA_FIELD: json.dumps(
            {
                "type": "run.submitted",
                "run_id": "r-big",
                "workflow": "x",
                "params": {"content": "x" * 100_000},
            }
        )
    },
}


async def test_malformed_events_on_every_consumed_stream_are_dead_lettered(settings):
    since = await last_id(settings, streams.DLQ)
    r = connect(settings.redis_url)
    sent = {}
    try:
        for stream in CONSUMED:
            for label, fields in GARBAGE.items():
                sent[(stream, (await r.xadd(stream, fields)).decode())] = (stream, label)
    finally:
        await r.aclose()

    import asyncio

    for _ in range(100):
        letters = {(d.stream, d.message_id): d for _i, d in await dead_letters(settings, since)}
        if set(sent) <= set(letters):
            break
        await asyncio.sleep(0.1)
    missing = {sent[m] for m in set(sent) - set(letters)}
    assert not missing, f"not dead-lettered: {sorted(missing)}"
    for key, (_stream, label) in sent.items():
        assert letters[key].reason, label
    assert "not valid UTF-8 JSON" in letters[_id_of(sent, streams.RUNS, "not json")].reason
    assert "over the 65536-byte limit" in letters[_id_of(sent, streams.RUNS, "oversized")].reason
    assert "task.exploded" in letters[_id_of(sent, streams.results_stream(0), "unknown type")].reason
    assert "schema_version" in letters[_id_of(sent, streams.RUNS, "wrong schema version")].reason
    assert letters[_id_of(sent, streams.RUNS, "wrong schema version")].run_id == "r-v99"

    # and the services go on serving the next good run
    _run_id, events = await run(settings, "content-factory", {"brief": BRIEF})
    assert events[-1].type == "run.completed", events[-1]


def _id_of(sent, stream, label):
    return next(i for i, v in sent.items() if v == (stream, label))



async def test_notifier_refuses_unauthenticated_and_dead_letters_unreadable_notifications(
    settings, real_servers
):
    url = f"http://127.0.0.1:{real_servers.notifier_port}/minio/events"
    since = await last_id(settings, streams.DLQ)
    assert post_webhook(url, b'{"Records": []}', None) == 401
    assert post_webhook(url, b'{"Records": []}', "wrong") == 401
    assert post_webhook(url, b"{not json", real_servers.webhook_token) == 400
    assert post_webhook(url, b'{"Records": [{"s3": {}}]}', real_servers.webhook_token) == 400
    letters = [d for _i, d in await dead_letters(settings, since) if d.stream == "webhook"]
    assert len(letters) == 2
    assert "unreadable bucket notification" in letters[0].reason


async def test_agent_writing_outside_the_workspace_is_refused_and_nothing_is_written(settings):
    run_id, events = await run(settings, "escape")
    assert events[-1].type == "run.failed"
    assert "'.' or '..' segment" in events[-1].reason
    async with Storage.connect(settings) as storage:
        assert await storage.list("etc/") == []
        assert await storage.list(f"runs/{run_id}/work/") == []


async def test_agent_writing_outside_its_prefixes_is_refused(settings):
    run_id, events = await run(settings, "trespass")
    assert events[-1].type == "run.failed"
    assert "outside the allowed prefixes ['work/']" in events[-1].reason
    failed = [e for e in events if e.type == "task.failed"]
    assert len(failed) == 1 and not failed[0].retryable  # a bad key is permanent: no retry
    async with Storage.connect(settings) as storage:
        assert await storage.head(f"runs/{run_id}/published/not-mine.txt") is None


async def _submit_raw(settings, event: RunSubmitted) -> list:
    """Publish a run the way any client may (a plain XADD, no checks on the way), wait for its end."""
    r = connect(settings.redis_url)
    try:
        await r.xadd(streams.RUNS, encode(event))
    finally:
        await r.aclose()
    return await wait_for_end(settings, event.run_id)


async def test_submitting_a_ref_to_a_missing_object_fails_the_run_clearly(settings):
    event = RunSubmitted(
        run_id="r-missing-input-1",
        workflow="content-factory",
        inputs={"brief": ObjectRef(bucket=settings.bucket, key="briefs/never-uploaded.md")},
    )
    events = await _submit_raw(settings, event)
    assert events[-1].type == "run.failed"
    assert "briefs/never-uploaded.md does not exist" in events[-1].reason


async def test_a_ref_to_a_version_that_does_not_exist_fails_the_run_clearly(settings):
    """The key exists but not the version named: a clear failure (only a missing object or version fails
    a run; MinIO being away is retried)."""
    async with Storage.connect(settings) as storage:
        real = await storage.put("shared/versioned-brief.md", b"# A brief\n")
    event = RunSubmitted(
        run_id="r-missing-version-1",
        workflow="content-factory",
        inputs={"brief": ObjectRef(bucket=settings.bucket, key=real.key, version_id=str(uuid.uuid4()))},
    )
    events = await _submit_raw(settings, event)
    assert events[-1].type == "run.failed"
    assert "input 'brief': cannot copy" in events[-1].reason and "does not exist" in events[-1].reason


@pytest.mark.parametrize("service", ["worker", "supervisor", "router"])
async def test_a_service_with_another_partition_count_refuses_to_start_and_says_why(stack, service):
    """A worker writing outcomes to partitions no supervisor reads would stall its runs without a word."""
    import asyncio
    import subprocess

    deployed = int(stack.env.get("BATON_RESULT_PARTITIONS", "1"))
    other = deployed + 1
    handle = stack.start(service, {"BATON_RESULT_PARTITIONS": str(other)}, wait=False)
    proc = stack.procs.pop(handle)
    try:
        code = await asyncio.to_thread(proc.wait, 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        started = f"{service} started with BATON_RESULT_PARTITIONS={other} beside {deployed}"
        raise AssertionError(started) from None
    assert code != 0
    log = stack.log_path(handle).read_text()
    assert f"BATON_RESULT_PARTITIONS is {other} here, but this deployment's services use {deployed}" in log
    assert not stack.ready_path(handle).exists()
