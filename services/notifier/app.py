"""The notifier: MinIO bucket notifications (webhook) in, `ObjectChanged` events on `baton:objects` out.

MinIO's webhook target has a `queue_dir`: while this service is down, MinIO keeps the events on disk and
retries. We answer 200 only after the events are in Redis, so an event is never acknowledged and lost.
MinIO replays that queue only every 3 s, so a second target without a queue posts each event at once; an
S3 event (same key, version, event name and sequencer) is published once, whichever copy comes first.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from faststream.asgi import AsgiFastStream, AsgiResponse
from faststream.asgi.request import AsgiRequest

from shared import faults, streams, telemetry
from shared.broker import DATA_FIELD, encode, make_broker
from shared.events import DeadLetter, ObjectChanged
from shared.logging import configure_logging
from shared.service import Resources, loop_name, mark_ready, run
from shared.settings import Settings

from .s3events import BadNotification, parse_records

SERVICE = "notifier"
WEBHOOK_PATH = "/minio/events"
SEEN_TTL_SECONDS = 3600  # how long a published S3 event is remembered, to drop its second copy
# The mark and the entry in one script: a notifier dying, or a connection dropping, leaves both or neither,
# so an event is never marked without being published (MinIO's retry would then be answered 200 and the
# change lost). The marks' hash tag is the stream's name: one slot, as a Redis Cluster needs.
PUBLISH_ONCE = (
    "if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then "
    "return redis.call('XADD', KEYS[1], '*', '__data__', ARGV[1]) end return false"
)


def seen_key(event: ObjectChanged) -> str | None:
    """The dedup mark of one S3 event; None without a sequencer (then two events could look alike)."""
    if not event.sequencer:
        return None
    ident = f"{event.bucket}/{event.key}@{event.version_id}#{event.event_name}#{event.sequencer}#{event.etag}"
    return streams.OBJECTS_SEEN_PREFIX + hashlib.sha256(ident.encode()).hexdigest()[:32]


def create_app(settings: Settings | None = None) -> AsgiFastStream:
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    faults.arm(settings.faults)
    broker = make_broker(settings, SERVICE)
    sender = f"{SERVICE}:{settings.consumer}"
    broker.publisher(  # (declared for the AsyncAPI document; written through the outbox below)
        stream=streams.OBJECTS,
        title="objects",
        schema=ObjectChanged,
        description="One event per created or removed object.",
    )

    def authorized(request: AsgiRequest) -> bool:
        if not settings.webhook_token:
            return True
        given = request.headers.get("authorization", "")
        given = given.split(" ", 1)[1] if given.lower().startswith("bearer ") else given
        return hmac.compare_digest(given.encode(), settings.webhook_token.encode())

    async def webhook(scope, receive, send) -> None:
        request = AsgiRequest(scope, receive, send)
        if scope.get("method") != "POST":
            response = AsgiResponse(b"ok", 200)  # MinIO probes the endpoint before sending
        elif not authorized(request):
            log.warning("webhook_unauthorized", client=str(scope.get("client")))
            response = AsgiResponse(b"unauthorized", 401)
        else:
            response = await handle(await request.body())
        await response(scope, receive, send)

    async def handle(body: bytes) -> AsgiResponse:
        try:
            payload = json.loads(body)
            events = parse_records(payload, sender)
        except (ValueError, BadNotification) as exc:
            reason = f"unreadable bucket notification: {exc}"
            await res.outbox.publish(
                streams.DLQ,
                DeadLetter(
                    stream="webhook",
                    service=SERVICE,
                    reason=reason,
                    raw=body.decode("utf-8", "backslashreplace"),
                ),
            )
            log.warning("notification_dead_lettered", reason=reason)
            return AsgiResponse(reason.encode(), 400)
        for event in events:
            with telemetry.continued(
                "notifier notify",
                event.traceparent,
                kind="producer",
                baton__s3__key=event.key,
                baton__s3__event=event.event_name,
            ):
                await notify(event)
        return AsgiResponse(b"ok", 200)

    async def notify(event: ObjectChanged) -> None:
        if telemetry.enabled():
            event = event.model_copy(update={"traceparent": telemetry.current_traceparent()})
        mark = seen_key(event)
        faults.point("notifier.publish")
        if mark is None:
            await res.outbox.publish(streams.OBJECTS, event)
        elif not await res.outbox.call(
            "EVAL", PUBLISH_ONCE, 2, streams.OBJECTS, mark, encode(event)[DATA_FIELD], SEEN_TTL_SECONDS
        ):
            return  # the other webhook target delivered it first
        log.info("object_changed", key=event.key, event_name=event.event_name, version=event.version_id)

    async def health(scope, receive, send) -> None:
        await AsgiResponse(b"ok", 200)(scope, receive, send)

    res = Resources(settings)
    app = AsgiFastStream(broker, asgi_routes=[(WEBHOOK_PATH, webhook), ("/health", health)], logger=None)

    @app.on_startup
    async def _open() -> None:
        # What the notifier writes goes through an outbox: with BATON_REDIS_WAIT_REPLICAS, MinIO is
        # answered 200 only once replicas have the event (a failover then loses no change it was told of).
        await res.open(storage=False, outbox=True)

    @app.after_startup
    async def _ready() -> None:
        mark_ready(settings)
        listen = f"{settings.notifier_host}:{settings.notifier_port}"
        log.info("service_ready", event_loop=loop_name(), listen=listen)

    @app.after_shutdown
    async def _close() -> None:
        await res.close()

    app.settings = settings  # type: ignore[attr-defined]
    return app


def main() -> None:
    app = create_app()
    settings: Settings = app.settings  # type: ignore[attr-defined]
    run(
        app.run(
            run_extra_options={
                "host": settings.notifier_host,
                "port": settings.notifier_port,
                "access_log": "false",
            }
        ),
        settings,
    )
