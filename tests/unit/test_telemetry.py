"""shared/telemetry.py's spans, recorded by the SDK into memory (no exporter, no Jaeger): the batched
path's consumer span continues the event's trace, records a failure, and is not made for an unsampled
trace, whose context still reaches the events made under it. The end-to-end proof against a real Jaeger
is tests/e2e/test_tracing.py."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared import telemetry
from shared.events import TaskAssigned

TRACE, PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def spans(monkeypatch):
    """Tracing on for this test only, with a provider of its own (the global one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=telemetry._hashed_once(Resource.create({"service.name": "t"})))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry._bind_api()
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("baton"))
    yield exporter
    provider.shutdown()


def _task(flags: str) -> TaskAssigned:
    return TaskAssigned(
        run_id="r1", task_id="r1.0.a", workflow="w", agent="a", output_prefix="runs/r1/work/",
        sender="test", traceparent=f"00-{TRACE}-{PARENT}-{flags}",
    )


async def test_a_sampled_task_is_a_consumer_span_of_its_trace_with_its_children(spans):
    made = {}

    async def handler(event):
        telemetry.interval("task queue wait", event.created_at)
        with telemetry.span("task run"):
            made["child"] = TaskAssigned(**event.model_dump(exclude={"traceparent", "event_id"}))
        made["here"] = telemetry.current_traceparent()

    await telemetry.traced("baton:agent:a", handler)(_task("01"))
    by_name = {s.name: s for s in spans.get_finished_spans()}
    consumer = by_name["baton:agent:a process"]
    assert consumer.kind is SpanKind.CONSUMER and consumer.end_time is not None
    assert f"{consumer.context.trace_id:032x}" == TRACE and f"{consumer.parent.span_id:016x}" == PARENT
    assert consumer.attributes["baton.run_id"] == "r1" and consumer.attributes["baton.attempt"] == 1
    assert consumer.attributes["messaging.destination.name"] == "baton:agent:a"
    assert {by_name["task queue wait"].parent.span_id, by_name["task run"].parent.span_id} == {
        consumer.context.span_id
    }
    # Events made under the task run span carry its context; after it, the consumer span's.
    assert made["child"].traceparent == f"00-{TRACE}-{by_name['task run'].context.span_id:016x}-01"
    assert made["here"] == f"00-{TRACE}-{consumer.context.span_id:016x}-01"
    assert telemetry.current_traceparent() is None  # the context is detached after the entry


async def test_a_handler_that_raises_leaves_an_error_span_with_the_exception(spans):
    async def handler(event):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await telemetry.traced("baton:agent:a", handler)(_task("01"))
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "RuntimeError: boom"
    assert [e.name for e in span.events] == ["exception"]


async def test_an_unsampled_trace_makes_no_span_but_carries_its_context_on(spans):
    seen = {}

    async def handler(event):
        telemetry.interval("task queue wait", event.created_at)
        with telemetry.span("task run") as current:
            seen["span"] = current
        seen["traceparent"] = telemetry.current_traceparent()

    await telemetry.traced("baton:agent:a", handler)(_task("00"))
    assert spans.get_finished_spans() == ()
    assert seen == {"span": None, "traceparent": f"00-{TRACE}-{PARENT}-00"}


async def test_a_spanned_call_that_fails_is_an_error_span_with_its_tags(spans):
    @telemetry.spanned("supervisor decide", lambda run_id: {"baton__run_id": run_id, "baton__cause": None})
    async def decide(run_id):
        raise ValueError(f"bad run {run_id}")

    with pytest.raises(ValueError):
        await decide("r9")
    (span,) = spans.get_finished_spans()
    assert dict(span.attributes) == {"baton.run_id": "r9"}
    assert span.status.status_code is StatusCode.ERROR and "bad run r9" in span.status.description


def test_the_resource_hash_is_the_sdks_computed_once():
    resource = Resource.create({"service.name": "baton-worker"})
    fixed = telemetry._hashed_once(resource)
    assert hash(fixed) == hash(resource) == hash(fixed) and fixed == resource
