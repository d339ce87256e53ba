import json

import pytest
from pydantic import ValidationError

from services.notifier.s3events import BadNotification, parse_records
from services.router.routing import decide
from shared.broker import make_decoder
from shared.events import ObjectRef, RunSubmitted, TaskAssigned, parse_event
from shared.workflow import parse_workflows

MINIO_RECORD = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "baton/briefs/my topic.md",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "eventName": "s3:ObjectCreated:Put",
            "s3": {
                "bucket": {"name": "baton"},
                "object": {
                    "key": "briefs/my+topic.md",
                    "size": 12,
                    "eTag": "abc",
                    "versionId": "v9",
                    "contentType": "text/markdown",
                    "sequencer": "1800",
                },
            },
        }
    ],
}


def test_s3_records_become_object_changed_events_with_decoded_keys():
    (event,) = parse_records(MINIO_RECORD)
    assert event.key == "briefs/my topic.md" and event.version_id == "v9" and event.etag == "abc"
    assert event.created and event.ref().size == 12


@pytest.mark.parametrize("payload", [{}, {"Records": "x"}, {"Records": [{"s3": {}}]}, [1]])
def test_unreadable_notifications_raise_a_clear_error(payload):
    with pytest.raises(BadNotification):
        parse_records(payload)


def test_events_round_trip_through_the_wire_form():
    event = RunSubmitted(
        run_id="r-1", workflow="w", inputs={"a": ObjectRef(bucket="b", key="k", version_id="v")}
    )
    assert parse_event(event.model_dump_json()) == event


def test_run_ids_that_would_escape_the_workspace_are_refused():
    with pytest.raises(ValidationError):
        RunSubmitted(run_id="../etc", workflow="w")


async def test_decoder_marks_oversized_and_undecodable_payloads():
    decode = make_decoder(1024)

    class Msg:
        def __init__(self, body):
            self.body = body

    assert "over the 1024-byte limit" in (await decode(Msg(b"{" + b" " * 2000 + b"}")))["__baton_invalid__"]
    assert "not valid UTF-8 JSON" in (await decode(Msg(b"\xff")))["__baton_invalid__"]
    assert "must be a JSON object" in (await decode(Msg(b"[]")))["__baton_invalid__"]
    assert await decode(Msg(json.dumps({"type": "x"}).encode())) == {"type": "x"}


def test_router_uses_the_fixed_agent_or_the_static_route_table():
    wf = parse_workflows("agents: {a: {handler: 'x:y'}, b: {handler: 'x:z'}}\nroutes: {refund: b}")
    base = dict(run_id="r", task_id="t", workflow="w", output_prefix="runs/r/")
    assert decide(TaskAssigned(agent="a", **base), wf).agent == "a"
    assert decide(TaskAssigned(intent="refund", **base), wf).agent == "b"
    miss = decide(TaskAssigned(intent="weather", **base), wf)
    assert miss.agent is None and "no route for intent 'weather'" in miss.reason
    assert "unknown agent" in decide(TaskAssigned(agent="zz", **base), wf).reason


def test_a_followers_events_come_each_once_up_to_the_runs_end():
    import asyncio

    from shared.events import RunCompleted, TaskProgress, each_once_until_end

    progress = TaskProgress(run_id="r1", task_id="t1", agent="a", message="half")
    end = RunCompleted(run_id="r1")
    after = TaskProgress(run_id="r1", task_id="t1", agent="a", message="late")
    wire = [None, progress.model_dump_json(), progress.model_dump_json(), end.model_dump_json()]
    wire.append(after.model_dump_json())  # (never read: the run has ended)

    async def raws():
        for raw in wire:
            yield raw if raw is None else raw.encode()

    async def collect():
        return [e async for e in each_once_until_end(raws())]

    events = asyncio.run(collect())
    assert [e.event_id for e in events] == [progress.event_id, end.event_id]
