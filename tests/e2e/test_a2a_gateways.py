"""Two A2A gateways at once on one Baton, as replicas behind one address would be: tasks live in Redis with
their runs, so either gateway answers for a task the other started (get, cancel, the answer to a
question), and a gateway that starts while another still has a burst waiting its turn leaves that burst
to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal

import httpx
import pytest
from a2a.types import CancelTaskRequest, GetTaskRequest, Part, SubscribeToTaskRequest, TaskState
from google.protobuf import struct_pb2

from baton import servers
from shared import streams
from shared.redisconn import connect
from tests.e2e.conftest import Gateway
from tests.e2e.test_a2a_gateway import agent, drain, last_task_state, message
from tests.helpers import wait_for_end

pytestmark = pytest.mark.e2e
# Tasks in each burst below; more by hand to try the takeover at size (600, 6,000): each stream is its own
# connection, so the bursts' client has no pool limit.
BURST = int(os.environ.get("BATON_TEST_A2A_BURST", "60"))
UNPOOLED = httpx.Limits(max_connections=None, max_keepalive_connections=0)


@contextlib.contextmanager
def second_gateway(stack, token: str, **env: str):
    """Another gateway process beside the session's, with the same token (one address, two replicas)."""
    port = servers.free_port()
    settings = {
        "BATON_GATEWAY_HOST": "127.0.0.1",
        "BATON_GATEWAY_PORT": str(port),
        "BATON_A2A_TOKEN": token,
        "BATON_A2A_INLINE_BYTES": "64",
        **env,
    }
    gateway = Gateway(f"http://127.0.0.1:{port}/", token, stack.start("gateway", settings))
    try:
        yield gateway
    finally:
        if gateway.handle in stack.procs:
            stack.kill(gateway.handle)


async def test_either_gateway_answers_for_a_task_the_other_started(stack, gateway):
    with second_gateway(stack, gateway.token) as other:
        async with agent(gateway, "approval") as (_card, first), agent(other, "approval") as (_card2, second):
            task_id, state = last_task_state(await drain(first.send_message(message(Part(text="draft")))))
            assert state == TaskState.TASK_STATE_INPUT_REQUIRED
            task = await second.get_task(GetTaskRequest(id=task_id))
            assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            assert task.status.message.parts[0].text == "Approve the draft?"
            # answered through the other gateway: that one follows the run to its end
            reply = message(Part(text="approve"), task_id=task_id, context_id=task.context_id)
            assert (
                last_task_state(await drain(second.send_message(reply)))[1] == TaskState.TASK_STATE_COMPLETED
            )
            task = await first.get_task(GetTaskRequest(id=task_id))
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            assert [a.name for a in task.artifacts] == ["final"]


@contextlib.asynccontextmanager
async def slow_task_on_the_first(stack, gateway, seconds: float):
    """A task on the session's gateway whose two stages take `seconds` each, with clients of it and of a
    second replica: (first, second, task id, the first's stream of it)."""
    slow = struct_pb2.Value()
    slow.struct_value.update({"sleep": seconds})
    with second_gateway(stack, gateway.token) as other:
        async with (
            agent(gateway, "slow-pair") as (_card, first),
            agent(other, "slow-pair") as (_card2, second),
        ):
            stream = first.send_message(message(Part(text="take your time"), Part(data=slow)))
            yield first, second, (await anext(stream)).task.id, stream


async def test_a_task_in_flight_on_one_gateway_is_seen_and_cancelled_through_the_other(
    stack, gateway, settings
):
    async with slow_task_on_the_first(stack, gateway, 5) as (_first, second, task_id, stream):
        run_id = f"a2a-{task_id}"
        for _ in range(100):  # until its run has started
            task = await second.get_task(GetTaskRequest(id=task_id))
            if task.status.state == TaskState.TASK_STATE_WORKING:
                break
            await asyncio.sleep(0.1)
        assert task.status.state == TaskState.TASK_STATE_WORKING
        cancelled = await second.cancel_task(CancelTaskRequest(id=task_id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        # the first gateway's stream, following the run, ends with it
        rest = await asyncio.wait_for(drain(stream), 30)
        assert last_task_state(rest)[1] == TaskState.TASK_STATE_CANCELED
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.cancelled"


async def test_resubscribing_through_a_replica_that_does_not_hold_the_task_streams_it_from_its_run(
    stack, gateway
):
    """a2a-sdk tails a task another replica runs only through a shared event stream, which the gateway does
    not keep (such a resubscription waited for ever): the other replica serves it from the task's run, the
    task as it stands, then its updates to its end, as the replica holding it streams them."""
    async with slow_task_on_the_first(stack, gateway, 1) as (first, second, task_id, stream):
        for _ in range(100):  # until its run has started
            if (
                await second.get_task(GetTaskRequest(id=task_id))
            ).status.state == TaskState.TASK_STATE_WORKING:
                break
            await asyncio.sleep(0.1)
        there = await asyncio.wait_for(drain(second.subscribe(SubscribeToTaskRequest(id=task_id))), 60)
        here = await asyncio.wait_for(drain(stream), 60)
    assert there[0].task.id == task_id and there[0].task.status.state == TaskState.TASK_STATE_WORKING
    assert last_task_state(there) == last_task_state(here) == (task_id, TaskState.TASK_STATE_COMPLETED)

    def artifacts(events) -> list[tuple[str, bytes]]:
        updates = [e.artifact_update.artifact for e in events if e.WhichOneof("payload") == "artifact_update"]
        return [(a.name, a.parts[0].raw) for a in updates]

    assert artifacts(there) == artifacts(here) and b"slept in stage" in artifacts(there)[0][1]
    # its stage updates, from the run's events after the resubscription, not its whole history again
    told = [
        e.status_update.status.message.parts[0].text
        for e in there
        if e.WhichOneof("payload") == "status_update"
    ]
    assert told and not any("submitted" in text for text in told)


async def test_resubscribing_to_a_task_that_waits_for_an_answer_elsewhere_is_refused_at_once(stack, gateway):
    with second_gateway(stack, gateway.token) as other:
        async with agent(gateway, "approval") as (_card, first), agent(other, "approval") as (_card2, second):
            task_id, state = last_task_state(await drain(first.send_message(message(Part(text="draft")))))
            assert state == TaskState.TASK_STATE_INPUT_REQUIRED
            with pytest.raises(Exception, match="waits for an answer: send it a message"):
                await asyncio.wait_for(drain(second.subscribe(SubscribeToTaskRequest(id=task_id))), 10)
            await first.cancel_task(CancelTaskRequest(id=task_id))


@contextlib.contextmanager
def frozen(stack, gateway: Gateway):
    """The gateway's process stopped (SIGSTOP) meanwhile, as a stalled one would be: no lease renewed."""
    pid = stack.procs[gateway.handle].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _burst(a2a, n: int) -> list:
    """`n` tasks sent at once, each told `submitted`: (task id, its stream)."""

    async def one(i: int):
        note = Part(raw=b"note %d\n" % i, filename="note.txt", media_type="text/plain")
        stream = a2a.send_message(message(Part(text=f"task {i}"), note))
        return (await anext(stream)).task.id, stream

    return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 60 + n / 10)


async def _waiting(settings) -> int:
    admin = connect(settings.redis_url)
    try:
        return await admin.hlen(streams.a2a_starting("copy-files"))
    finally:
        await admin.aclose()


async def _all_complete_once(settings, pairs) -> None:
    endings = await asyncio.wait_for(
        asyncio.gather(*(drain(stream) for _task_id, stream in pairs)), 120 + len(pairs) / 10
    )
    states = [last_task_state(events)[1] for events in endings]
    assert states.count(TaskState.TASK_STATE_COMPLETED) == len(pairs), {
        s: states.count(s) for s in set(states)
    }
    for task_id, _stream in pairs:
        events = await wait_for_end(settings, f"a2a-{task_id}", timeout=30)
        assert len({e.event_id for e in events if e.type == "run.started"}) == 1


async def test_a_gateway_starting_beside_a_busy_one_leaves_its_waiting_burst_to_it(stack, settings):
    """The first gateway starts tasks one at a time, so most of a burst waits its turn in its starting set.
    A second gateway that starts while the first is stalled, but within its lease, must not take them as a
    stopped gateway's leftovers: each task completes once, through the gateway that accepted it."""
    token = secrets.token_hex(16)
    with second_gateway(stack, token, BATON_A2A_MAX_STARTING="1") as busy:
        async with agent(busy, "copy-files", limits=UNPOOLED) as (_card, a2a):
            pairs = await _burst(a2a, BURST)
            with frozen(stack, busy):
                assert await _waiting(settings) > 1, "the burst had started already: the test proves nothing"
                with second_gateway(stack, token, BATON_A2A_LEASE_SECONDS="2") as newcomer:
                    await asyncio.sleep(2)  # its look at start-up, and the next (every half lease)
                    assert "a2a_task_resumed" not in stack.log_path(newcomer.handle).read_text()
            await _all_complete_once(settings, pairs)


async def test_the_waiting_burst_of_a_gateway_stalled_past_its_lease_is_started_once_by_another(
    stack, settings
):
    """Stalled longer than its lease (2 s here), a gateway's waiting tasks are taken over by another, each
    claimed first: when it wakes it follows those runs instead of starting them again. Each task completes
    once and none is rejected (its inputs were uploaded already: not taken for a name used twice)."""
    token = secrets.token_hex(16)
    lease = {"BATON_A2A_LEASE_SECONDS": "2"}
    with second_gateway(stack, token, BATON_A2A_MAX_STARTING="1", **lease) as stalled:
        async with agent(stalled, "copy-files", limits=UNPOOLED) as (_card, a2a):
            pairs = await _burst(a2a, BURST)
            with frozen(stack, stalled), second_gateway(stack, token, **lease) as other:
                for _ in range(300 + BURST // 2):  # its lease lapses within 2 s; the other looks every 1 s
                    if await _waiting(settings) == 0:
                        break
                    await asyncio.sleep(0.1)
                assert await _waiting(settings) == 0
                assert "a2a_tasks_resumed" in stack.log_path(other.handle).read_text()
            await _all_complete_once(settings, pairs)
