"""The one place that knows how Baton talks to Redis Streams through FastStream.

- Wire format: each stream entry has one field, `__data__`, holding the event as JSON. Any language can
  XADD it; FastStream reads that field natively.
- Consumer groups with a bounded batch (`max_records`), acknowledged only after the handler returned,
  i.e. after its outputs and events are durable.
- Malformed input (bad JSON, oversized, unknown type, failed validation) goes to the dead-letter stream
  with its reason and is acknowledged; the service keeps serving.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from faststream._internal.middlewares import BaseMiddleware
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.broker.cluster_broker import RedisClusterBroker
from faststream.redis.configs.state import RedisClusterConnectionState, _get_driver_info
from faststream.redis.parser.message import MessageFormat
from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.exceptions import ResponseError

from . import faults, metrics, streams, telemetry
from .errors import HandlerTimeout, is_transient
from .events import DeadLetter
from .logging import bind_event
from .redisconn import POOL, StreamReadCluster, cluster_parts
from .settings import Settings

DATA_FIELD = "__data__"
# The stream entry id of the message being handled (set by every consumer path before the handler runs):
# a handler can tell a redelivery of its entry from a second entry carrying the same work.
CURRENT_ENTRY: contextvars.ContextVar[str | None] = contextvars.ContextVar("baton_entry", default=None)
# (client, stream, group, consumer) of the entry being handled, where a retry can check it is still ours
CURRENT_CLAIM: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("baton_claim", default=None)


class Fence:
    """FastStream's per-message path: the handler runs as `task`, which the heartbeat cancels once another
    consumer holds the entry (the batched path cancels its handlers' own tasks)."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.lost = False

    def stop(self, _entries) -> None:
        self.lost = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


CURRENT_FENCE: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("baton_fence", default=None)

# Re-take each entry in ARGV[3..] that consumer ARGV[2] still holds in group ARGV[1] of stream KEYS[1]
# (XCLAIM JUSTID resets its idle time, so no one reclaims it meanwhile) and return those another consumer
# holds now: theirs to handle. The heartbeat and a retry use it: an unconditional XCLAIM after Redis was away
# would take back an entry another consumer has reclaimed and is handling. An entry pending for no one
# (acknowledged meanwhile, or its delivery lost with a failed-over master) is neither re-taken nor returned:
# no one else runs it, so its handler goes on.
RETAKE = (
    "local taken = {} for i = 3, #ARGV do "
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1) "
    "if #p > 0 then if p[1][2] == ARGV[2] then "
    "redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID') "
    "else taken[#taken + 1] = ARGV[i] end end "
    "end return taken"
)


class Reclaimed(Exception):  # noqa: N818 - an outcome, not a failure of ours
    """Another consumer took the entry while this one waited to retry it: it is theirs to handle now."""


async def still_ours() -> bool:
    """Whether the entry being handled is still this consumer's (re-taken if so). True when it cannot be
    told (no claim known, or Redis still away: the retry fails or succeeds as before)."""
    claim, entry = CURRENT_CLAIM.get(), CURRENT_ENTRY.get()
    if claim is None or entry is None:
        return True
    redis, stream, group, consumer = claim
    try:
        return not await redis.eval(RETAKE, 1, stream, group, consumer, entry)
    except Exception:  # noqa: BLE001
        return True


_INVALID = "__baton_invalid__"

log = structlog.get_logger()


class EventFormat(MessageFormat):
    """Entries carry the bare event JSON: no envelope, readable from any language."""

    @classmethod
    async def encode(
        cls, *, message, reply_to, headers, correlation_id, serializer=None, codec=None
    ) -> bytes:
        if isinstance(message, BaseModel):
            return message.model_dump_json(exclude_none=False).encode()
        if isinstance(message, bytes):
            return message
        return json.dumps(message, default=str).encode()

    @classmethod
    def parse(cls, data: bytes) -> tuple[bytes, dict[str, Any]]:
        headers = {"content-type": "application/json"}
        if telemetry.enabled():  # FastStream's telemetry middleware continues the trace from its headers
            traceparent = telemetry.traceparent_in(data)
            if traceparent:
                headers["traceparent"] = traceparent
        return data, headers


def encode(event: BaseModel) -> dict[str, bytes]:
    """The fields of a stream entry for `event` (for raw XADD, e.g. in pipelines)."""
    return {DATA_FIELD: event.model_dump_json().encode()}


def _raw_payload(msg) -> bytes:
    data = msg.raw_message.get("data", {}) if isinstance(msg.raw_message, dict) else {}
    if isinstance(data, dict) and DATA_FIELD.encode() in data:
        return data[DATA_FIELD.encode()]
    return msg.body if isinstance(msg.body, bytes) else bytes(str(msg.body), "utf-8")


def payload_of(fields: dict[bytes, bytes]) -> bytes:
    """An entry's event JSON: its `__data__` field, or (as FastStream reads an entry without that field)
    the JSON of all its fields."""
    body = fields.get(DATA_FIELD.encode())
    if body is None:
        body = json.dumps(
            {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
        ).encode()
    return body


def check_payload(body: bytes, max_bytes: int) -> tuple[dict | None, str | None]:
    """(the JSON object, None), or (None, why the payload must be dead-lettered)."""
    if len(body) > max_bytes:
        return None, (
            f"event is {len(body)} bytes, over the {max_bytes}-byte limit: "
            "put content in the bucket and send an ObjectRef"
        )
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"payload is not valid UTF-8 JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"payload must be a JSON object, got {type(value).__name__}"
    return value, None


def decode_event(body: bytes, adapter: TypeAdapter, max_bytes: int) -> tuple[Any, str | None]:
    """(event, None) for a valid payload; (None, why it must be dead-lettered) otherwise. The one
    decoder of every consumer path: FastStream's (through `make_decoder`), the batched one, the reclaimer.
    A valid payload is parsed once (pydantic straight from the bytes); only a refused one is looked at
    again to say why."""
    if len(body) > max_bytes:
        return None, check_payload(body, max_bytes)[1]
    try:
        return adapter.validate_json(body), None
    except ValidationError as exc:
        return None, check_payload(body, max_bytes)[1] or describe_validation_error(exc)


def make_decoder(max_bytes: int) -> Callable[[Any], Awaitable[Any]]:
    """FastStream's decoder: an entry's JSON object, or a marker (with the reason) the middleware
    dead-letters; FastStream validates the object against the handler's event type afterwards."""

    async def decode(msg, original=None) -> Any:
        value, reason = check_payload(msg.body, max_bytes)
        return {_INVALID: reason} if reason is not None else value

    return decode


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("event", "body"))
        parts.append(f"{loc or 'event'}: {err.get('msg')}")
    return "invalid event: " + "; ".join(parts)


def _run_id_of(raw: bytes) -> str | None:
    try:
        value = json.loads(raw)
    except Exception:
        return None
    run_id = value.get("run_id") if isinstance(value, dict) else None
    return run_id if isinstance(run_id, str) else None


def dead_letter_event(
    stream: str, group: str | None, message_id: str | None, service: str, reason: str, raw: bytes
) -> DeadLetter:
    """The dead letter for one entry: its reason, its whole raw payload, its run if readable.

    Whole, however large: an oversized event is dead-lettered for its size, and `baton dlq replay` can
    only put back what was kept (the stream it came from already held it, so the DLQ holds it once more).
    """
    return DeadLetter(
        stream=stream,
        group=group,
        message_id=message_id,
        service=service,
        reason=reason,
        raw=raw.decode("utf-8", "backslashreplace"),
        run_id=_run_id_of(raw),
    )


# Seconds before each in-process retry of a transient failure: ~7 s in all, past a cluster's failover (a
# replica takes over a few node timeouts after its master died; 2 s each in `baton dev up --cluster`).
TRANSIENT_RETRIES = (0.05, 0.2, 1.0, 2.0, 4.0)


async def call_handler(handler, event, timeout: float | None, retries=TRANSIENT_RETRIES):
    """Call `handler(event)` under its time limit; retry a transient failure a few times, at once.

    A dropped connection or an exhausted pool usually heals within a second: retrying here, while the
    message's heartbeat goes on, avoids leaving it for the reclaimer (`reclaim_idle_ms`, 30 s by default).
    Past `timeout` seconds the handler is cancelled and HandlerTimeout raised (never retried here): the
    message stays pending, and the reclaimer redelivers it or dead-letters it after `max_deliveries`.
    """
    for delay in (*retries, None):
        limit = asyncio.timeout(timeout or None)
        try:
            async with limit:
                faults.point("handler")
                return await handler(event)
        except TimeoutError as exc:
            if limit.expired():
                raise HandlerTimeout(f"the handler ran past its time limit of {timeout:g} s") from exc
            if delay is None:
                raise
            error = exc
        except Exception as exc:
            if delay is None or not is_transient(exc):
                raise
            error = exc
        metrics.RETRIES.inc()
        log.warning("handler_retrying", error=f"{type(error).__name__}: {error}", in_seconds=delay)
        await asyncio.sleep(delay)
        # While Redis was away the heartbeat failed too: past `reclaim_idle_ms` another consumer may have
        # taken the entry (chaos, with a 2 s reclaim time, saw both run a task after a Redis restart)
        if not await still_ours():
            raise Reclaimed(f"entry {CURRENT_ENTRY.get()} was taken by another consumer during the retries")


def bind_handler(handler, timeout: float | None = None):
    """`handler` with the event's run and task ids bound for logging, run by `call_handler` (time limit,
    prompt retries of transient faults), and a ValidationError raised inside it (a bug or bad state, not
    a malformed message) turned into a HandlerError."""

    async def bound(event):
        bind_event(event)
        fence = CURRENT_FENCE.get()
        try:
            if fence is None:
                return await call_handler(handler, event, timeout)
            fence.task = asyncio.create_task(call_handler(handler, event, timeout))
            try:
                return await fence.task
            except asyncio.CancelledError:
                if fence.lost and not asyncio.current_task().cancelling():  # (not stopping: fenced off)
                    raise Reclaimed(
                        f"entry {CURRENT_ENTRY.get()} was taken by another consumer while its handler ran "
                        "(this one stalled, or was cut off from Redis, past the reclaim time)"
                    ) from None
                raise
        except ValidationError as exc:
            raise HandlerError(f"{type(exc).__name__}: {exc}") from exc

    bound.__name__ = getattr(handler, "__name__", "handler")
    return bound


def make_broker(settings: Settings, service: str, logger=None, readers: int = 0) -> RedisBroker:
    """A RedisBroker with Baton's wire format, decoder and dead-letter middleware, FastStream's own
    Prometheus middleware, and its OpenTelemetry middleware when tracing is on (shared/telemetry.py).
    Starts this process's `/metrics` if `settings.metrics_port` is set. `readers`: the FastStream
    subscribers the service registers, each holding a connection while its read blocks; its client's pool
    holds that many besides redis-py's default 100 (which, readers included, refused a worker of 150
    agents its start: MaxConnectionsError)."""
    holder: dict[str, RedisBroker] = {}
    telemetry.setup(service, settings)
    metrics.serve(service, settings)
    confirm = None
    if settings.redis_wait_replicas:  # (batch imports this module: bound here)
        from .batch import ReplicaWait, confirm_delivery

        replicas = ReplicaWait(settings.redis_wait_replicas)

        async def confirm(stream: str, group: str, entry: str) -> None:
            await confirm_delivery(
                client_of(holder["broker"]), replicas, stream, group, settings.consumer, entry
            )

    class DeadLetterMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next, msg):
            structlog.contextvars.unbind_contextvars("run_id", "task_id", "event_type")
            group, mid = getattr(msg, "group", None), _message_id(msg)
            CURRENT_ENTRY.set(mid)
            claim = (client_of(holder["broker"]), _stream_of(msg), group, settings.consumer)
            CURRENT_CLAIM.set(claim if group and mid else None)
            beat = [mid] if group and mid else []
            fence = Fence()
            fenced = CURRENT_FENCE.set(fence)
            keepalive = asyncio.create_task(
                keep_claimed(
                    client_of(holder["broker"]),
                    _stream_of(msg),
                    group,
                    settings.consumer,
                    lambda: beat,
                    settings.heartbeat_s,
                    on_lost=fence.stop,
                )
            )
            try:
                if confirm is not None and group and mid:
                    await confirm(_stream_of(msg), group, mid)
                decoded = await msg.decode()
                if isinstance(decoded, dict) and _INVALID in decoded:
                    return await dead_letter(msg, decoded[_INVALID])
                return await call_next(msg)
            except ValidationError as exc:  # the message itself is invalid (handler errors are wrapped)
                return await dead_letter(msg, describe_validation_error(exc))
            except Reclaimed as exc:  # another consumer has it now: left alone (not acknowledged, not noted)
                log.warning("entry_reclaimed_meanwhile", message_id=mid, error=str(exc))
                raise
            except Exception as exc:
                # Left pending: the reclaimer redelivers it, and dead-letters it after max_deliveries.
                await record_error(
                    client_of(holder["broker"]),
                    _stream_of(msg),
                    getattr(msg, "group", None),
                    _message_id(msg),
                    exc,
                )
                raise
            finally:
                keepalive.cancel()
                CURRENT_FENCE.reset(fenced)

    async def dead_letter(msg, reason: str) -> None:
        stream = _stream_of(msg)
        letter = dead_letter_event(
            stream, getattr(msg, "group", None), _message_id(msg), service, reason, _raw_payload(msg)
        )
        await holder["broker"].publish(letter, stream=streams.DLQ)
        metrics.DEAD_LETTERED.labels(stream).inc()
        log.warning("dead_lettered", stream=stream, reason=reason, message_id=letter.message_id)

    target, connection = broker_target(settings)
    broker = broker_class(settings)(
        target,
        **connection,
        max_connections=POOL + readers,
        message_format=EventFormat,
        middlewares=[*_observers(service), DeadLetterMiddleware],
        decoder=make_decoder(settings.max_event_bytes),
        logger=logger if logger is not None else logging.getLogger(f"baton.{service}.faststream"),
        log_level=logging.DEBUG,  # one INFO line per message costs throughput and says nothing new
    )
    holder["broker"] = broker
    # Declared for the AsyncAPI document: the middleware above writes there with `broker.publish`. Its
    # title is not "dlq", which the notifier's own publisher of the same stream already names.
    broker.publisher(
        stream=streams.DLQ,
        title="dead-letters",
        schema=DeadLetter,
        description="Events this service could not handle, with the reason (then acknowledged).",
    )
    return broker


class _ClusterState(RedisClusterConnectionState):
    """FastStream's cluster connection, on a client that finds a stream read's slot from the command (its
    consumers' XREADGROUPs cost one round trip each, not three: redisconn.stream_read_keys)."""

    async def connect(self) -> StreamReadCluster:
        if not self._connected:
            options = {k: v for k, v in self._options.items() if v is not None} | _get_driver_info()
            self._client = StreamReadCluster(**options)
            self._connected = True
        return self._client


class ClusterBroker(RedisClusterBroker):
    def _make_connection_state(self, connection_options: dict, kwargs: dict) -> _ClusterState:
        return _ClusterState(connection_options)


def broker_class(settings: Settings) -> type[RedisBroker]:
    return ClusterBroker if settings.cluster else RedisBroker


def broker_target(settings: Settings) -> tuple[str, dict]:
    """The broker's URL (and, for a cluster, its seed nodes and credentials)."""
    if not settings.cluster:
        return settings.redis_url, {}
    seeds, auth = cluster_parts(settings.redis_url)
    return f"redis://{seeds[0][0]}:{seeds[0][1]}", {"startup_nodes": seeds, **auth}


def _observers(service: str) -> list:
    """FastStream's own middlewares: Prometheus always (cheap), OpenTelemetry only when tracing is on."""
    from faststream.redis.prometheus import RedisPrometheusMiddleware
    from prometheus_client import REGISTRY

    found = [RedisPrometheusMiddleware(registry=REGISTRY, app_name=f"baton-{service}")]
    if telemetry.enabled():
        from faststream.redis.opentelemetry import RedisTelemetryMiddleware

        found.insert(0, RedisTelemetryMiddleware())
    return found


def _message_id(msg) -> str | None:
    mid = msg.raw_message.get("message_ids") if isinstance(msg.raw_message, dict) else None
    if mid:
        first = mid[0]
        return first.decode() if isinstance(first, bytes) else str(first)
    return None


def group_sub(stream: str, group: str, settings: Settings) -> StreamSub:
    """A consumer-group subscription with a bounded read (never the whole backlog)."""
    return StreamSub(
        stream,
        group=group,
        consumer=settings.consumer,
        max_records=settings.max_records,
        polling_interval=1000,
    )


def subscribe(
    broker: RedisBroker,
    stream: str,
    group: str,
    settings: Settings,
    handler,
    start: str = "0",
    timeout: float | None = None,
    **kw,
):
    """Register `handler` on `stream` through consumer group `group`; binds run/task ids for logs.
    `start`: where the group reads from when it is first created (`create_groups`); `timeout`: the
    handler's time limit (default `settings.handler_timeout_s`)."""

    bound = bind_handler(handler, timeout or settings.handler_timeout_s)
    bound.__annotations__ = {"event": typing.get_type_hints(handler, include_extras=True)["event"]}
    bound.__doc__ = handler.__doc__
    subscriber = broker.subscriber(stream=group_sub(stream, group, settings), **kw)(bound)
    adapter = TypeAdapter(bound.__annotations__["event"])
    # (the reclaimer's redeliveries: their span is made by hand, as on the batched path)
    registry(broker).append(Subscription(stream, group, telemetry.traced(stream, bound), adapter, start))
    return subscriber


@dataclass
class Subscription:
    """What the reclaimer needs to redeliver a stuck message to the same handler."""

    stream: str
    group: str
    handler: Callable[[Any], Awaitable[Any]]
    adapter: TypeAdapter
    start: str = "0"  # where the group starts reading when it is first created


async def create_group(redis, stream: str, group: str, start: str = "0") -> None:
    """Create `group` on `stream` (and the stream) reading from `start`; an existing group is left as is.

    From `0` by default: work appended before the group existed (a task for an agent whose workers have
    never run yet) is delivered, not skipped as it would be from `$`.
    """
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def create_groups(redis, broker) -> None:
    """Create the groups of every subscription of `broker` before its subscribers start (FastStream's own
    subscribers would create them at `$`, then find them existing)."""
    for sub in registry(broker):
        await create_group(redis, sub.stream, sub.group, sub.start)


def registry(broker: RedisBroker) -> list[Subscription]:
    if not hasattr(broker, "_baton_subscriptions"):
        broker._baton_subscriptions = []  # type: ignore[attr-defined]
    return broker._baton_subscriptions  # type: ignore[attr-defined]


class HandlerError(Exception):
    """An exception raised inside a handler (as opposed to a message that failed validation)."""


def errors_key(stream: str, group: str | None) -> str:
    return f"baton:errors:{stream}:{group}"


async def record_error(
    redis, stream: str, group: str | None, message_id: str | None, exc: BaseException
) -> None:
    """Remember why a message failed, so its dead letter can say so after the last delivery."""
    if not message_id:
        return
    key = errors_key(stream, group)
    try:
        await redis.hset(key, message_id, f"{type(exc).__name__}: {exc}"[:2000])
        await redis.expire(key, 7 * 24 * 3600)
    except Exception:  # noqa: BLE001 - best effort: the failure itself is already being handled
        log.warning("could_not_record_error", stream=stream, message_id=message_id)


async def keep_claimed(
    redis, stream: str, group: str, consumer: str, ids, every: float, on_lost: Callable | None = None
) -> None:
    """The heartbeat: every `every` seconds, reset the idle time of the entries `ids()` names that are
    still this consumer's (`RETAKE`: one script for them all), so the reclaimer leaves them alone while they
    are being handled. `on_lost(entries)` is told of those another consumer holds now (this one was stalled
    or cut off from Redis past the reclaim time): theirs to handle, so this one should stop.

    A consumer that dies stops refreshing, its entries go idle, and another consumer reclaims them after
    `reclaim_idle_ms`. Used by FastStream's path (one entry), the batched consumer (every entry in
    flight) and the reclaimer (the entries it claimed and has not handled yet). Runs until cancelled.
    """
    while True:
        await asyncio.sleep(every)
        current = list(ids())
        if not current:
            continue
        try:
            taken = await redis.eval(RETAKE, 1, stream, group, consumer, *current)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis briefly away: the next beat tries again
            log.warning("heartbeat_failed", stream=stream, error=str(exc))
            continue
        if on_lost is not None and taken:
            on_lost({t.decode() if isinstance(t, bytes) else t for t in taken})


def _stream_of(msg) -> str:
    stream = msg.raw_message.get("channel", "?") if isinstance(msg.raw_message, dict) else "?"
    return stream.decode() if isinstance(stream, bytes) else str(stream)


def client_of(broker: RedisBroker):
    """The broker's own redis-py client (FastStream keeps it once connected)."""
    return broker._connection
