"""The supervisor at scale: a burst of runs, a wide plan, an aggregator with thousands of inputs, events
too big to send, and tasks that die in the dead-letter stream. Correctness only: speed is `make bench`'s."""

from __future__ import annotations

import asyncio
import json

import pytest

from baton import client
from shared import streams
from shared.broker import encode
from shared.events import RunSubmitted, TaskAssigned
from shared.redisconn import connect, is_cluster
from shared.runs import get_run
from shared.storage import Storage
from tests.helpers import of_type, run, wait_for_end

pytestmark = pytest.mark.e2e


def _supervisor_log(stack) -> str:
    return "".join(stack.log_path(h).read_text() for h in stack.procs if h.startswith("supervisor"))


async def _statuses(r, run_ids: list[str]) -> dict[str, str]:
    async with r.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hget(streams.run_state(run_id), "core")
        raws = await pipe.execute()
    return {i: json.loads(raw)["status"] for i, raw in zip(run_ids, raws, strict=True) if raw}


async def test_a_burst_of_runs_published_at_once_all_complete_without_a_handler_failing(settings, stack):
    """1,500 runs XADDed in one pipeline: past redis-py's 100-connection pool, which the old supervisor
    exhausted from about 300 runs on (MaxConnectionsError, then a reclaim's wait per run)."""
    before = _supervisor_log(stack).count("handler_failed")
    run_ids = [f"burst-{i}-{client.new_run_id()}" for i in range(1500)]
    r = connect(settings.redis_url)
    try:
        async with r.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.xadd(streams.RUNS, encode(RunSubmitted(run_id=run_id, workflow="relay")))
            await pipe.execute()
        statuses: dict[str, str] = {}
        for _ in range(600):  # (each round takes a fraction of a second: well over a minute in all)
            statuses = await _statuses(r, run_ids)
            if sum(s == "completed" for s in statuses.values()) == len(run_ids):
                break
            await asyncio.sleep(0.25)
    finally:
        await r.aclose()
    assert sum(s == "completed" for s in statuses.values()) == len(run_ids), {
        s: sum(v == s for v in statuses.values()) for s in set(statuses.values())
    }
    log = _supervisor_log(stack)
    assert log.count("handler_failed") == before
    assert "MaxConnectionsError" not in log and "timers_failed" not in log
    # Each run's stream tells its story once, in order: per stage assigned, started (relayed from the
    # supervisor's read loop), completed, and the next stage only after that
    r = connect(settings.redis_url)
    try:
        async with r.pipeline(transaction=False) as pipe:
            for run_id in run_ids[::5]:
                pipe.xrange(streams.run_events(run_id))
            histories = await pipe.execute()
    finally:
        await r.aclose()
    for run_id, entries in zip(run_ids[::5], histories, strict=True):
        story = [
            (e["type"], e.get("task_id")) for e in (json.loads(f[b"__data__"]) for _i, f in entries)
        ]
        tasks = [t for kind, t in story if kind == "task.assigned"]
        expected = [("run.started", None)]
        for t in tasks:
            expected += [("task.assigned", t), ("task.started", t), ("task.completed", t)]
        assert len(tasks) == 3 and story == [*expected, ("run.completed", None)], (run_id, story)


async def test_a_plan_of_two_thousand_subtasks_completes_and_its_aggregator_sees_every_input(
    settings, tmp_path
):
    seed = tmp_path / "seed.txt"
    seed.write_text("a seed\n")
    run_id, events = await run(
        settings, "wide", inputs={"seed": seed}, params={"width": 2000}, timeout=170
    )
    assert events[-1].type == "run.completed", events[-1]
    subtasks = [e for e in of_type(events, "task.completed") if ".sub." in e.task_id]
    assert len({e.task_id for e in subtasks}) == 2000
    aggregate = next(e for e in of_type(events, "task.assigned") if e.task_id.endswith(".aggregate"))
    # 2,000 refs do not fit in one event: they travel in a manifest object in the run's workspace
    assert aggregate.inputs == {} and aggregate.inputs_manifest is not None
    assert aggregate.inputs_manifest.key.startswith(f"runs/{run_id}/manifests/")
    async with Storage.connect(settings) as storage:
        assert (await storage.get(events[-1].outputs["count"])).decode() == "2000 inputs; 14 bytes\n"
    r = connect(settings.redis_url)
    try:
        state = await get_run(r, run_id)
    finally:
        await r.aclose()
    assert state.n_accepted == state.n_subtasks == 2000 and not state.tasks
    assert all(s.status == "accepted" for s in state.subtasks.values())


async def test_a_plan_past_max_subtasks_fails_the_run_with_the_reason(settings):
    _run_id, events = await run(settings, "wide", params={"width": 10_001}, timeout=60)
    assert events[-1].type == "run.failed"
    assert "10001 subtasks, more than max_subtasks=10000" in events[-1].reason


async def test_a_task_too_big_to_send_fails_its_run_instead_of_being_sent(settings):
    """The supervisor checks a task's size before it sends it: a worker would dead-letter it."""
    empty = RunSubmitted(run_id=client.new_run_id(), workflow="relay", params={"blob": ""})
    blob = "x" * (settings.max_event_bytes - len(empty.model_dump_json()) - 200)
    # the submission fits (200 bytes to spare); a task carries the params and more, so it does not
    _run_id, events = await run(settings, "relay", params={"blob": blob})
    assert events[-1].type == "run.failed"
    assert "over the 65536-byte event limit" in events[-1].reason
    assert not of_type(events, "task.assigned")


async def test_a_submission_too_big_to_read_fails_its_run_with_the_reason(settings):
    run_id = client.new_run_id()
    r = connect(settings.redis_url)
    try:
        big = RunSubmitted(run_id=run_id, workflow="relay", params={"blob": "x" * 70_000})
        await r.xadd(streams.RUNS, encode(big))
    finally:
        await r.aclose()
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.failed"
    assert "the submission was dead-lettered by supervisor from baton:runs" in events[-1].reason
    assert "over the 65536-byte limit" in events[-1].reason


async def test_a_task_that_dies_in_the_dead_letter_stream_fails_its_run_within_seconds(settings):
    """A worker refuses the run's outstanding task (here: oversized); the run fails with that reason,
    and the dead letter can still be replayed."""
    run_id = await client.submit(settings, "slow-pair", {}, {"sleep": 20})
    r = connect(settings.redis_url)
    try:
        task = None
        for _ in range(100):
            state = await get_run(r, run_id)
            if state is not None and state.tasks:
                (slot,) = state.tasks.values()
                task = slot.task
                break
            await asyncio.sleep(0.1)
        assert task is not None
        bloated = TaskAssigned(**{**task.model_dump(), "instruction": "y" * 70_000})
        await r.xadd(streams.agent_stream("slow"), encode(bloated))
    finally:
        await r.aclose()
    events = await wait_for_end(settings, run_id, timeout=15)  # long before the 20 s stage ends
    assert events[-1].type == "run.failed"
    reason = events[-1].reason
    assert f"task {task.task_id} was dead-lettered by worker from baton:agent:slow" in reason, reason
    letters = [(i, d) for i, d in await client.dlq_list(settings, 50) if d.run_id == run_id]
    assert letters
    entry_id, _letter = letters[0]
    replayed = await client.dlq_replay(settings, [entry_id])  # still works: back to its stream
    assert entry_id in replayed, replayed


async def test_a_client_with_every_connection_busy_makes_the_next_command_wait_not_fail(settings):
    """`connect()`'s pool is bounded and blocking: 250 blocking pops at once on a pool of 100 (redis-py's
    default bound, past which its own pool raises MaxConnectionsError) all finish, the later ones once
    earlier ones give their connections back. (On a cluster, `BoundedCluster` lets 64 through at a time.)"""
    r = connect(settings.redis_url)
    key = f"baton:test:empty:{client.new_run_id()}"  # (an empty list: each pop blocks its 300 ms)
    try:
        pops = [r.blpop([key], timeout=0.3) for _ in range(250)]
        replies = await asyncio.wait_for(asyncio.gather(*pops), 30)
        assert replies == [None] * 250
        if not is_cluster(settings.redis_url):
            assert r.connection_pool.max_connections == 100
    finally:
        await r.aclose()
