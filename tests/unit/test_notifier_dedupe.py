"""The notifier publishes an S3 event once, though MinIO's two webhook targets both deliver it."""

from __future__ import annotations

from services.notifier.app import seen_key
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


def test_both_copies_of_one_event_share_a_mark_and_other_events_do_not():
    mark = seen_key(event())
    assert mark and mark.startswith("baton:objects:seen:")
    assert seen_key(event(sender="another consumer")) == mark  # the same S3 event, delivered twice
    assert seen_key(event(version_id="v2", sequencer="17F0A1B2C3D4E5F7")) != mark  # an overwrite
    assert seen_key(event(event_name="s3:ObjectRemoved:DeleteMarkerCreated")) != mark


def test_events_without_a_sequencer_are_never_deduplicated():
    assert seen_key(event(sequencer=None)) is None
