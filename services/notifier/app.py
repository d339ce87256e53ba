"""The notifier: MinIO bucket notifications (webhook) in, `ObjectChanged` events on `baton:objects` out.

MinIO's webhook target has a `queue_dir`: while this service is down, MinIO keeps the events on disk and
retries. We answer 200 only after the events are in Redis, so an event is never acknowledged and lost.
"""

from __future__ import annotations

import asyncio
import hmac
import json

from faststream.asgi import AsgiFastStream, AsgiResponse
from faststream.asgi.request import AsgiRequest

from shared import streams
from shared.broker import RAW_LIMIT, make_broker
from shared.events import DeadLetter, ObjectChanged
from shared.logging import configure_logging
from shared.service import Resources
from shared.settings import Settings

from .s3events import BadNotification, parse_records

SERVICE = "notifier"
WEBHOOK_PATH = "/minio/events"


def create_app(settings: Settings | None = None) -> AsgiFastStream:
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    broker = make_broker(settings, SERVICE)
    sender = f"{SERVICE}:{settings.consumer}"
    objects = broker.publisher(
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
            await broker.publish(
                DeadLetter(
                    stream="webhook",
                    service=SERVICE,
                    reason=reason,
                    raw=body[:RAW_LIMIT].decode("utf-8", "backslashreplace"),
                ),
                stream=streams.DLQ,
            )
            log.warning("notification_dead_lettered", reason=reason)
            return AsgiResponse(reason.encode(), 400)
        for event in events:
            await objects.publish(event)
            log.info("object_changed", key=event.key, event_name=event.event_name, version=event.version_id)
        return AsgiResponse(b"ok", 200)

    async def health(scope, receive, send) -> None:
        await AsgiResponse(b"ok", 200)(scope, receive, send)

    res = Resources(settings)
    app = AsgiFastStream(broker, asgi_routes=[(WEBHOOK_PATH, webhook), ("/health", health)], logger=None)

    @app.after_startup
    async def _ready() -> None:
        log.info("service_ready", listen=f"{settings.notifier_host}:{settings.notifier_port}")

    @app.after_shutdown
    async def _close() -> None:
        await res.close()

    app.settings = settings  # type: ignore[attr-defined]
    return app


def main() -> None:
    app = create_app()
    settings: Settings = app.settings  # type: ignore[attr-defined]
    asyncio.run(
        app.run(
            run_extra_options={
                "host": settings.notifier_host,
                "port": settings.notifier_port,
                "access_log": "false",
            }
        )
    )
