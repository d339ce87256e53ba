"""Fuzz: thousands of malformed messages at every consumed stream; each lands in the DLQ with a reason,
no service crashes, and a good run afterwards still completes."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared import streams
from shared.broker import DATA_FIELD
from shared.events import parse_event
from tests.helpers import dead_letters, last_id, run

pytestmark = pytest.mark.e2e

CONSUMED = [
    streams.RUNS, streams.ROUTE, streams.results_stream(0), streams.OBJECTS, streams.agent_stream("outliner")
]
EVENT_TYPES = [
    "run.submitted",
    "task.assigned",
    "task.completed",
    "task.failed",
    "object.changed",
    "route.decided",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# near misses: a real event type with fields of the wrong kind, or none at all
near_misses = st.builds(
    lambda t, extra: json.dumps({"type": t, **extra}).encode(),
    st.sampled_from(EVENT_TYPES),
    st.dictionaries(
        st.sampled_from(["run_id", "task_id", "attempt", "inputs", "outputs", "agent", "key"]),
        json_values,
        max_size=4,
    ),
)
payloads = st.one_of(
    st.binary(max_size=64),  # arbitrary bytes, mostly not UTF-8 or not JSON
    json_values.map(lambda v: json.dumps(v).encode()),
    near_misses,
)


def invalid(payload: bytes) -> bool:
    try:
        parse_event(payload)
    except Exception:  # noqa: BLE001
        return True
    return False


async def test_thousands_of_malformed_messages_all_land_in_the_dlq(settings, stack):
    batch: list[bytes] = []

    @hsettings(max_examples=500, database=None, suppress_health_check=list(HealthCheck), deadline=None)
    @given(payloads)
    def collect(payload):
        if invalid(payload):
            batch.append(payload)

    collect()
    assert len(batch) > 400
    since = await last_id(settings, streams.DLQ)
    r = aioredis.Redis.from_url(settings.redis_url)
    sent: set[tuple[str, str]] = set()
    try:
        async with r.pipeline(transaction=False) as pipe:
            for stream in CONSUMED:
                for payload in batch:
                    pipe.xadd(stream, {DATA_FIELD: payload})
            ids = await pipe.execute()
        sent = {
            (stream, i.decode()) for stream, i in zip([s for s in CONSUMED for _ in batch], ids, strict=True)
        }
    finally:
        await r.aclose()
    assert len(sent) >= 2000
    for _ in range(300):
        letters = {(d.stream, d.message_id): d for _i, d in await dead_letters(settings, since)}
        if sent <= set(letters):
            break
        await asyncio.sleep(0.2)
    missing = sent - set(letters)
    assert not missing, f"{len(missing)} of {len(sent)} malformed messages were not dead-lettered"
    assert all(letters[k].reason for k in sent)
    for handle, proc in stack.procs.items():
        assert proc.poll() is None, f"{handle} died"
    _run_id, events = await run(settings, "content-factory", {"brief": _brief()})
    assert events[-1].type == "run.completed"


def _brief():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "examples" / "briefs" / "topic.md"
