"""The notifier publishes an S3 event once, though MinIO's two webhook targets both deliver it."""

from __future__ import annotations

import copy

from redis.crc import key_slot

from services.notifier.app import seen_key
from services.notifier.s3events import parse_records
from shared import streams
from shared.events import ObjectChanged


def event(**kw) -> ObjectChanged:
    fields = {
        "bucket": "baton",
        "key": "briefs/a.md",
        "version_id": "v1",
        "etag": "e1",
        "event_name": "s3:ObjectCreated:Put",
        "sequencer": "17F0A1B2C3D4E5F6",
    }
    return ObjectChanged(**{**fields, **kw})


def notification(config_id: str, event_time: str, **obj) -> dict:
    """One S3 event as one of MinIO's webhook targets sends it (the targets differ in the configuration
    id and, with a queue, the time the record was built)."""
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": "baton/briefs/a.md",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "eventTime": event_time,
                "eventName": "s3:ObjectCreated:Put",
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "s3": {
                    "configurationId": config_id,
                    "bucket": {"name": "baton"},
                    "object": {
                        "key": "briefs/a.md",
                        "size": 3,
                        "eTag": "e1",
                        "versionId": "v1",
                        "sequencer": "17F0A1B2C3D4E5F6",
                        **obj,
                    },
                },
            }
        ],
    }


def test_the_copies_both_webhook_targets_send_share_one_mark():
    (queued,) = parse_records(notification("baton-notifier", "2026-11-29T20:00:00.100Z"), "notifier:a")
    (fast,) = parse_records(notification("baton-notifier-2", "2026-11-29T20:00:00.000Z"), "notifier:b")
    assert queued != fast  # the events differ (sender, event id) ...
    assert seen_key(queued) == seen_key(fast) is not None  # ... and are still one S3 event


def test_another_version_or_event_of_the_same_key_is_not_a_copy():
    original = notification("baton-notifier", "2026-11-29T20:00:00Z")
    (first,) = parse_records(original)
    overwrite = copy.deepcopy(original)
    overwrite["Records"][0]["s3"]["object"].update(versionId="v2", eTag="e2", sequencer="17F0A1B2C3D4E5F7")
    (second,) = parse_records(overwrite)
    assert seen_key(first) != seen_key(second)
    assert seen_key(event(event_name="s3:ObjectRemoved:DeleteMarkerCreated")) != seen_key(event())


def test_events_without_a_sequencer_are_never_deduplicated():
    assert seen_key(event(sequencer=None)) is None


def test_a_mark_is_in_the_slot_of_the_stream_it_is_written_with():
    """Mark and entry are written by one script: on a Redis Cluster both keys must be in one slot."""
    assert key_slot(seen_key(event()).encode()) == key_slot(streams.OBJECTS.encode())
