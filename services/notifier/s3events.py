"""S3 event records (as MinIO, AWS S3 and compatible stores send them) -> ObjectChanged events."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from shared.events import ObjectChanged
from shared.telemetry import TRACEPARENT_FORMAT


class BadNotification(ValueError):
    """A notification body that is not a list of S3 event records."""


def parse_records(payload: Any, sender: str = "notifier") -> list[ObjectChanged]:
    if not isinstance(payload, dict) or not isinstance(payload.get("Records"), list):
        raise BadNotification("notification has no `Records` list")
    events = []
    for i, record in enumerate(payload["Records"]):
        try:
            s3 = record["s3"]
            obj = s3["object"]
            events.append(
                ObjectChanged(
                    bucket=s3["bucket"]["name"],
                    key=unquote_plus(obj["key"]),
                    version_id=obj.get("versionId") or None,
                    etag=(obj.get("eTag") or None),
                    size=obj.get("size"),
                    content_type=obj.get("contentType") or None,
                    event_name=record["eventName"],
                    sequencer=obj.get("sequencer"),
                    sender=sender,
                    traceparent=_traceparent(obj.get("userMetadata")),
                )
            )
        except (KeyError, TypeError) as exc:
            raise BadNotification(f"record {i} lacks field {exc}") from exc
        except ValueError as exc:
            raise BadNotification(f"record {i} is invalid: {exc}") from exc
    return events


def _traceparent(metadata: Any) -> str | None:
    """The writer's trace context, which Baton's storage puts in the object's metadata when tracing."""
    if not isinstance(metadata, dict):
        return None
    for name, value in metadata.items():
        if str(name).lower() in ("x-amz-meta-traceparent", "traceparent") and isinstance(value, str):
            return value if TRACEPARENT_FORMAT.match(value) else None
    return None
