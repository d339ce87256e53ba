"""Traces: one OpenTelemetry trace per run, carried from event to event as a W3C `traceparent`.

Off (nothing set up, nothing recorded, a few attribute checks per task) unless the standard OTel
variables name an OTLP endpoint: `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
(and `OTEL_SDK_DISABLED` is not true). Then spans go out over OTLP/HTTP in batches, from a thread.

How a trace crosses processes: every event created while a span is current carries that span's
`traceparent` (a default of `BaseEvent`), so the consumer of the event continues the same trace. On the
FastStream per-message path FastStream's own telemetry middleware makes the consumer span (our wire
format hands it the event's `traceparent` as a header); the batched path (`shared/batch.py`) and the
reclaimer make a span of the same name, `<stream> process`, with `traced`. An event without a
`traceparent` (a plain XADD from another language) still works: its consumer starts a new trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

_tracer: Any = None  # an opentelemetry Tracer once `setup` turned tracing on; None means off
_service: str | None = None
_otel: Any = None  # what the hot paths use of the API, bound once by `setup` (no import per call)
NOOP = contextlib.nullcontext()
TRACEPARENT = re.compile(rb'"traceparent":\s*"(00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})"')
TRACEPARENT_FORMAT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
# Inside the handling of an event whose trace is not sampled: its `traceparent`, carried as it is by every
# event made meanwhile (W3C lets a participant that records nothing pass it on unchanged), with no OTel
# context, span or id made for it (`traced`).
_UNSAMPLED: contextvars.ContextVar[str | None] = contextvars.ContextVar("baton_unsampled", default=None)


def enabled() -> bool:
    return _tracer is not None


def setup(service: str, settings) -> bool:
    """Turn tracing on for this process if the settings name an OTLP endpoint; idempotent. Returns
    whether tracing is on. `service` becomes the spans' `service.name` (`baton-<service>`)."""
    global _tracer, _service
    if _tracer is not None:
        return True
    if not settings.tracing:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The standard variables (endpoint, headers, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*) are read by the SDK.
    resource = Resource.create({"service.name": f"baton-{service}", "service.namespace": "baton"})
    provider = TracerProvider(resource=_hashed_once(resource))
    # The endpoint from the settings: the CLI's may come from `baton dev up`'s saved environment.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_traces_url)))
    trace.set_tracer_provider(provider)
    _bind_api()
    _tracer = trace.get_tracer("baton")
    _service = service
    return True


def _hashed_once(resource):
    """`resource` with its hash computed once: the exporter groups every span it encodes by resource, and
    the SDK's `Resource.__hash__` is a JSON dump of all its attributes (a resource never changes)."""
    from opentelemetry.sdk.resources import Resource

    class FixedResource(Resource):
        def __hash__(self) -> int:
            if self._hash is None:
                self._hash = super().__hash__()
            return self._hash

    fixed = FixedResource(resource.attributes, resource.schema_url)
    fixed._hash = None
    return fixed


def _bind_api() -> None:
    global _otel
    from types import SimpleNamespace

    from opentelemetry import context, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, Status, StatusCode

    _otel = SimpleNamespace(
        attach=context.attach,
        detach=context.detach,
        Context=Context,
        get_current_span=trace.get_current_span,
        set_span_in_context=trace.set_span_in_context,
        NonRecordingSpan=trace.NonRecordingSpan,
        SpanContext=trace.SpanContext,
        TraceFlags=trace.TraceFlags,
        SpanKind=SpanKind,
        CONSUMER=SpanKind.CONSUMER,
        error=lambda message: Status(StatusCode.ERROR, message),
    )


def shutdown() -> None:
    """Send what is buffered (the SDK also does it at exit)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush(5000)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, or None (tracing off, or no span)."""
    if _tracer is None:
        return None
    carried = _UNSAMPLED.get()
    if carried is not None:
        return carried
    ctx = _otel.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def traceparent_in(body: bytes) -> str | None:
    """The `traceparent` of an event's JSON, found without parsing it (FastStream's headers)."""
    found = TRACEPARENT.search(body) if b'"traceparent"' in body else None
    return found.group(1).decode() if found else None


def context_of(traceparent: str | None):
    """The OTel context whose remote parent `traceparent` names (an empty context without one)."""
    if _otel is None:
        _bind_api()
    if not traceparent or not TRACEPARENT_FORMAT.match(traceparent):
        return _otel.Context()
    _version, trace_id, span_id, flags = traceparent.split("-")
    parent = _otel.SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=_otel.TraceFlags(int(flags, 16))
    )
    return _otel.set_span_in_context(_otel.NonRecordingSpan(parent), _otel.Context())


def _recording() -> bool:
    """False inside an unsampled trace: children of an unsampled span are not made at all (their cost is
    the SDK's, sampled or not). True with no current span: a new trace, which the sampler decides."""
    if _UNSAMPLED.get() is not None:
        return False
    current = _otel.get_current_span()
    return current.is_recording() or not current.get_span_context().is_valid


def _event_attributes(event) -> dict[str, Any]:
    # The agent is in the span's name and destination (`baton:agent:<agent> process`): not repeated. Each
    # attribute is checked, copied and encoded by the SDK: on a no-op hop a few of them are a visible cost.
    attrs = {}
    for name in ("run_id", "task_id", "attempt", "type"):
        value = getattr(event, name, None)
        if value is not None and not isinstance(value, (dict, list)):
            attrs[f"baton.{name}"] = value
    return attrs


def traced(stream: str, handler: Callable[[Any], Awaitable[Any]]):
    """`handler` inside a consumer span named as FastStream's (`<stream> process`), continuing the
    event's trace; the handler itself when tracing is off. An exception marks the span as an error.

    The span is started, made current and ended by hand rather than with `start_as_current_span` (two
    nested generator-based context managers per entry); what leaves the handler is recorded the same way."""
    if _tracer is None:
        return handler
    from .broker import CURRENT_ENTRY

    name = f"{stream} process"
    fixed = {
        "messaging.system": "redis",
        "messaging.operation": "process",
        "messaging.destination.name": stream,
    }
    otel = _otel

    async def in_span(event):
        traceparent = getattr(event, "traceparent", None) or (
            event.get("traceparent") if isinstance(event, dict) else None
        )
        if traceparent and traceparent.endswith("-00") and TRACEPARENT_FORMAT.match(traceparent):
            # An unsampled trace goes on unsampled, carried as it came: no context, span or id is made
            token = _UNSAMPLED.set(traceparent)
            try:
                return await handler(event)
            finally:
                _UNSAMPLED.reset(token)
        parent = context_of(traceparent)
        attrs = {**fixed, **_event_attributes(event)}
        entry = CURRENT_ENTRY.get()
        if entry:
            attrs["messaging.message.id"] = entry
        current = _tracer.start_span(name, context=parent, kind=otel.CONSUMER, attributes=attrs)
        token = otel.attach(otel.set_span_in_context(current))
        try:
            return await handler(event)
        except Exception as exc:  # as the SDK's `use_span` records it
            current.record_exception(exc)
            current.set_status(otel.error(f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            otel.detach(token)
            current.end()

    in_span.__name__ = getattr(handler, "__name__", "handler")
    return in_span


def span(name: str, kind: str = "internal", **attributes):
    """A child span of the current one (a no-op context when tracing is off); yields the span or None.
    An exception leaving it marks it as an error."""
    if _tracer is None or not _recording():
        return NOOP
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    return _tracer.start_as_current_span(name, kind=_otel.SpanKind[kind.upper()], attributes=attrs)


def continued(name: str, traceparent: str | None, kind: str = "internal", **attributes):
    """A span continuing the trace `traceparent` names (a new trace without one); no-op when off."""
    if _tracer is None:
        return NOOP
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    return _tracer.start_as_current_span(
        name, context=context_of(traceparent), kind=_otel.SpanKind[kind.upper()], attributes=attrs
    )


def interval(name: str, since: datetime, **attributes) -> None:
    """A finished child span from `since` to now (e.g. the time a task waited in its stream)."""
    if _tracer is None or not _recording():
        return
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    start = int(since.timestamp() * 1e9)
    _tracer.start_span(name, start_time=start, attributes=attrs).end()


def mark_error(message: str, current=None) -> None:
    """Mark the current span (or `current`) as failed, with `message`."""
    if _tracer is None:
        return
    (current or _otel.get_current_span()).set_status(_otel.error(message[:500]))


def set_attributes(target, **attributes) -> None:
    """Set attributes (`__` in a name becomes `.`) on a span `span` yielded; nothing when it is None."""
    if target is None:
        return
    target.set_attributes({k.replace("__", "."): v for k, v in attributes.items() if v is not None})


def spanned(
    name: str, attributes: Callable[..., dict] | None = None, after: Callable[[Any], dict] | None = None
):
    """Decorate an async function: each call in a span `name` (tags from `attributes(*args, **kwargs)`
    before, from `after(result)` once it returned). Off: one check per call."""

    def wrap(func):
        @functools.wraps(func)
        async def call(*args, **kwargs):
            if _tracer is None or not _recording():
                return await func(*args, **kwargs)
            tags = attributes(*args, **kwargs) if attributes else {}
            # Started, made current and ended by hand, as in `traced` (this is on every supervisor hop)
            current = _tracer.start_span(
                name, attributes={k.replace("__", "."): v for k, v in tags.items() if v is not None}
            )
            token = _otel.attach(_otel.set_span_in_context(current))
            try:
                result = await func(*args, **kwargs)
                if after is not None:
                    set_attributes(current, **after(result))
                return result
            except Exception as exc:
                current.record_exception(exc)
                current.set_status(_otel.error(f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                _otel.detach(token)
                current.end()

        return call

    return wrap


@contextlib.contextmanager
def submission(run_id: str, workflow: str) -> Iterator[None]:
    """The root span of a run: the client submitting it (a CLI, the gateway, the console)."""
    with span("run submit", kind="producer", baton__run_id=run_id, baton__workflow=workflow):
        yield
