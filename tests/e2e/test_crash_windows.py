"""A process killed at an exact window between two steps (shared/faults.py) loses nothing and does
nothing twice, or differently, when its work is redelivered."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import time
import uuid

import pytest

from baton import client, servers
from shared import streams
from tests.helpers import last_id, objects_since, of_type, post_webhook, s3_notification, wait_for_end

pytestmark = pytest.mark.e2e


def wait_exit(stack, handle: str, timeout: float = 20) -> int:
    proc = stack.procs[handle]
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{handle} did not reach its fault point in {timeout}s")
        time.sleep(0.05)
    stack.procs.pop(handle)
    return proc.returncode


def replace(stack, service: str, extra: dict[str, str]) -> str:
    """Stop the session's `service` processes and start one with `extra` in its environment."""
    for handle in [h for h in stack.procs if h.startswith(f"{service}-")]:
        stack.kill(handle)
    return stack.start(service, extra)


async def test_a_router_killed_after_deciding_forwards_the_redelivery_to_the_same_agent(settings, stack):
    # The classifier answers `billing` in the first router and `it` in the second, as a sampled model
    # may: a redelivery that classified again would hand the request to another agent.
    crashing = replace(
        stack, "router", {"BATON_FAULTS": "router.after_decision=exit", "BATON_TEST_LABEL": "billing"}
    )
    try:
        run_id = await client.submit(settings, "support-fickle", {}, {"text": "my printer"})
        assert await asyncio.to_thread(wait_exit, stack, crashing) != 0
        replace(stack, "router", {"BATON_TEST_LABEL": "it"})  # reclaims the task after reclaim_idle_ms
        events = await wait_for_end(settings, run_id, timeout=30)
    finally:
        replace(stack, "router", {})
    assert events[-1].type == "run.completed", events[-1]
    assert {e.agent for e in of_type(events, "task.completed")} == {"billing"}
    assert {e.agent for e in of_type(events, "route.decided")} == {"billing"}


async def test_a_notifier_killed_while_publishing_publishes_on_minios_retry(settings, stack, real_servers):
    port = servers.free_port()
    crashing = stack.start(
        "notifier", {"BATON_FAULTS": "notifier.publish=exit", "BATON_NOTIFIER_PORT": str(port)}
    )
    key = f"scratch/crash-{uuid.uuid4().hex}.md"
    body = json.dumps(s3_notification(key)).encode()
    since = await last_id(settings, streams.OBJECTS)
    with contextlib.suppress(OSError, http.client.HTTPException):  # it dies before answering
        post_webhook(f"http://127.0.0.1:{port}/minio/events", body, real_servers.webhook_token)
    assert await asyncio.to_thread(wait_exit, stack, crashing) != 0
    # MinIO retries (its queue target), here reaching the session's notifier
    url = f"http://127.0.0.1:{real_servers.notifier_port}/minio/events"
    assert post_webhook(url, body, real_servers.webhook_token) == 200
    assert [e.key for _i, e in await objects_since(settings, since) if e.key == key] == [key]

