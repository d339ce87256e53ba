"""Nothing lost, nothing done twice: crashes, poison messages, deadlines, cancellation, replays."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from baton import client
from shared import streams
from shared.broker import DATA_FIELD, encode
from shared.events import DeadLetter, TaskAssigned, TaskCompleted
from shared.redisconn import connect
from tests.helpers import dead_letters, last_id, of_type, run, wait_for_end, wait_handled

RESULTS = streams.results_stream(0)  # (one results partition: the default)

pytestmark = pytest.mark.e2e


async def _until(settings, run_id, predicate, timeout=20):
    async def find():
        async for event in client.follow(settings, run_id, block_ms=500):
            if predicate(event):
                return event

    return await asyncio.wait_for(find(), timeout)


async def test_a_worker_killed_mid_task_is_reclaimed_and_the_task_completes_once(settings, stack):
    run_id = await client.submit(settings, "slow-pair", {}, {"sleep": 2.5})
    started = await _until(settings, run_id, lambda e: e.type == "task.started")
    victim = started.sender.split(":", 1)[1]  # worker:<handle>
    stack.kill(victim, hard=True)  # SIGKILL mid-task: its message stays pending, its heartbeat stops
    try:
        events = await wait_for_end(settings, run_id, timeout=40)
    finally:
        stack.start("worker")
    assert events[-1].type == "run.completed", events[-1]
    done = of_type(events, "task.completed")
    assert sorted(e.task_id for e in done) == sorted({e.task_id for e in done})  # each task completed once
    assert len(done) == 2
    assert len(of_type(events, "run.completed")) == 1
    first_stage = [e.sender for e in of_type(events, "task.started") if e.task_id.endswith(".0.slow")]
    assert first_stage[0] == started.sender and first_stage[-1] != started.sender  # taken over


async def test_a_poison_message_is_dead_lettered_after_max_deliveries_and_the_group_keeps_flowing(settings):
    r = connect(settings.redis_url)
    since = await last_id(settings, streams.DLQ)
    try:
        # A valid event whose handling always fails: the run's stored state is corrupt.
        corrupt = {"rev": 1, "core": b'{"this is": "not a run state"}'}
        await r.hset(streams.run_state("r-poisoned"), mapping=corrupt)
        poison = TaskCompleted(run_id="r-poisoned", task_id="r-poisoned.0.x", agent="x")
        poison_id = (await r.xadd(RESULTS, encode(poison))).decode()
    finally:
        await r.aclose()
    # meanwhile, good work flows through the same group
    _run_id, events = await run(settings, "flaky")
    assert events[-1].type == "run.completed"
    for _ in range(150):
        letters = [d for _i, d in await dead_letters(settings, since) if d.message_id == poison_id]
        if letters:
            break
        await asyncio.sleep(0.1)
    assert letters, "the poison message was not dead-lettered"
    assert "failed 3 deliveries (max_deliveries=3)" in letters[0].reason
    assert "last error: HandlerError" in letters[0].reason and letters[0].run_id == "r-poisoned"


async def test_a_task_past_its_deadline_is_reassigned_and_the_late_result_ignored(settings):
    run_id, events = await run(settings, "deadline", timeout=30)
    assert events[-1].type == "run.completed", events[-1]
    failed = of_type(events, "task.failed")
    assert failed and "deadline" in failed[0].error and failed[0].attempt == 1
    assert [e.attempt for e in of_type(events, "task.assigned")] == [1, 2]
    assert events[-1].outputs["sleepy"].key.endswith("work/sleepy.txt")
    # the first attempt finishes later; its result is recorded but changes nothing
    for _ in range(100):
        types = await _types(settings, run_id)
        if ("task.completed", 1) in types:
            break
        await asyncio.sleep(0.1)
    assert ("task.completed", 1) in types and ("task.completed", 2) in types
    assert [t for t, _a in types].count("run.completed") == 1


async def _types(settings, run_id) -> list[tuple[str, int | None]]:
    """(type, attempt) of every event in a run's stream, including those after its end."""
    r = connect(settings.redis_url)
    try:
        entries = await r.xrange(streams.run_events(run_id))
    finally:
        await r.aclose()
    return [(e["type"], e.get("attempt")) for e in (json.loads(f[DATA_FIELD.encode()]) for _i, f in entries)]


async def test_retries_wait_their_backoff_and_permanent_errors_are_not_retried(settings):
    _run_id, events = await run(settings, "flaky")
    failed, second = of_type(events, "task.failed")[0], of_type(events, "task.assigned")[1]
    assert (second.created_at - failed.created_at).total_seconds() >= 0.2  # backoff 0.5 s, jitter >= 50%
    _run_id, events = await run(settings, "flaky-permanent")
    assert events[-1].type == "run.failed" and len(of_type(events, "task.assigned")) == 1
    # an agent's own policy wins over its workflow's: max_attempts 1 there, 3 in the workflow
    _run_id, events = await run(settings, "flaky-agent-policy")
    assert events[-1].type == "run.failed" and len(of_type(events, "task.assigned")) == 1
    assert "failed after 1 attempt" in events[-1].reason


async def test_cancel_stops_a_running_run_and_drops_its_queued_work(settings):
    run_id = await client.submit(settings, "slow-pair", {}, {"sleep": 1.5})
    await _until(settings, run_id, lambda e: e.type == "task.started")
    await client.cancel(settings, run_id, "changed my mind")
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.cancelled" and events[-1].reason == "changed my mind"
    # the running task stops at its next checkpoint (its write) and nothing further is assigned
    for _ in range(100):
        types = await _types(settings, run_id)
        if ("task.failed", 1) in types:
            break
        await asyncio.sleep(0.1)
    kinds = [t for t, _a in types]
    assert "task.failed" in kinds and "task.completed" not in kinds
    assert kinds.count("task.assigned") == 1
    r = connect(settings.redis_url)
    try:
        entries = await r.xrange(streams.run_events(run_id))
    finally:
        await r.aclose()
    failed = [json.loads(f[DATA_FIELD.encode()]) for _i, f in entries]
    assert any(e["type"] == "task.failed" and "cancelled" in e["error"] for e in failed)


async def test_two_supervisors_one_killed_mid_run_every_run_completes_once(settings, stack):
    # The survivor runs FastStream's per-message path (BATON_BATCH=0), the one killed the batched path:
    # after the kill, the per-message supervisor finishes every run on its own.
    extra = stack.start("supervisor", {"BATON_BATCH": "0"})
    run_ids = [await client.submit(settings, "slow-pair", {}, {"sleep": 0.8}) for _ in range(4)]
    await asyncio.sleep(1.0)
    first = next(h for h in stack.procs if h.startswith("supervisor") and h != extra)
    stack.kill(first, hard=True)
    try:
        results = await asyncio.gather(*(wait_for_end(settings, r, timeout=40) for r in run_ids))
    finally:
        stack.start("supervisor")
        stack.kill(extra)
    r = connect(settings.redis_url)
    try:
        for run_id, events in zip(run_ids, results, strict=True):
            assert events[-1].type == "run.completed", events[-1]
            entries = await r.xrange(streams.run_events(run_id))
            types = [json.loads(f[DATA_FIELD.encode()])["type"] for _i, f in entries]
            assert types.count("run.completed") == 1
    finally:
        await r.aclose()


async def test_dlq_replay_requeues_what_now_validates_and_keeps_the_rest(settings):
    from shared.events import RunSubmitted

    good = RunSubmitted(run_id="r-replayed-1", workflow="flaky")
    letters = [
        DeadLetter(stream=streams.RUNS, service="test", reason="was failing", raw=good.model_dump_json()),
        DeadLetter(stream=streams.RUNS, service="test", reason="garbage", raw="{not json"),
    ]
    r = connect(settings.redis_url)
    try:
        ids = [(await r.xadd(streams.DLQ, encode(letter))).decode() for letter in letters]
    finally:
        await r.aclose()
    outcome = await client.dlq_replay(settings, ids)
    assert outcome[ids[0]].startswith(f"replayed to {streams.RUNS}")
    assert outcome[ids[1]].startswith("kept: still invalid")
    assert (await wait_for_end(settings, "r-replayed-1"))[-1].type == "run.completed"
    remaining = {i for i, _d in await client.dlq_list(settings, 500)}
    assert ids[1] in remaining and ids[0] not in remaining


async def test_dlq_replay_all_pages_through_thousands_and_leaves_what_arrives_meanwhile(settings):
    """`baton dlq replay --all --stream S` at scale: every letter of S there at its start is handled, a
    page at a time (2,400 letters: five pages), and a letter dead-lettered meanwhile stays (one that failed
    again after its replay would otherwise come round for ever). Other streams' letters are left alone."""
    target = f"baton:agent:dlq-scale-{uuid.uuid4().hex[:8]}"  # an agent stream nobody reads
    letters = []
    for i in range(2_400):
        if i % 8 == 7:  # every eighth still invalid
            letters.append(DeadLetter(stream=target, service="test", reason="bad", raw='{"type": "nope"}'))
            continue
        task = TaskAssigned(
            run_id=f"r-dlq-scale-{i}", task_id="t1", workflow="w", agent="nobody", output_prefix="runs/x/"
        )
        raw = task.model_dump_json()
        letters.append(DeadLetter(stream=target, service="test", reason="was failing", raw=raw))
    r = connect(settings.redis_url)
    ids: list[str] = []
    late: list[str] = []
    try:
        pipe = r.pipeline(transaction=False)
        for letter in letters:
            pipe.xadd(streams.DLQ, encode(letter))
        ids = [i.decode() for i in await pipe.execute()]
        outcome: dict[str, str] = {}
        async for entry_id, what in client.dlq_replay_iter(settings, stream=target):
            outcome[entry_id] = what
            if len(outcome) == client.DLQ_PAGE:  # meanwhile, more letters arrive
                for letter in letters[:3]:
                    late.append((await r.xadd(streams.DLQ, encode(letter))).decode())
        assert set(outcome) == set(ids)  # (--stream: no other test's letter)
        mine = {i: outcome[i] for i in ids}
        replayed = [i for i, what in mine.items() if what.startswith(f"replayed to {target} as ")]
        assert len(replayed) == 2_100
        assert sum(what.startswith("kept: still invalid") for what in mine.values()) == 300
        assert not set(late) & set(outcome)
        assert await r.xlen(target) == 2_100  # each once
        left = {i.decode() for i, _f in await r.xrange(streams.DLQ, min=ids[0])}
        assert left == {i for i in ids if i not in replayed} | set(late)
    finally:
        await r.delete(target)
        if ids or late:
            await r.xdel(streams.DLQ, *ids, *late)
        await r.aclose()


async def test_trim_never_removes_unacknowledged_entries(settings):
    r = connect(settings.redis_url)
    stream = "baton:agent:trim-test"
    try:
        await r.delete(stream)
        await r.xgroup_create(stream, "g", id="0", mkstream=True)
        ids = [(await r.xadd(stream, {"n": str(i)})).decode() for i in range(6)]
        got = await r.xreadgroup("g", "c", {stream: ">"}, count=4)  # 4 delivered, 2 never read
        await r.xack(stream, "g", ids[0], ids[1])  # 2 acked, 2 pending
        removed = await client.trim(settings)
        left = [i.decode() for i, _f in await r.xrange(stream)]
    finally:
        await r.delete(stream)
        await r.aclose()
    assert len(got[0][1]) == 4
    assert removed[stream] == 2 and left == ids[2:]


async def test_trim_drops_old_dead_letters_and_idle_consumers_but_nothing_still_needed(settings):
    short = settings.model_copy(update={"retention_days": 1 / 86_400})  # one second
    r = connect(settings.redis_url)
    stream = "baton:agent:trim-consumers"
    try:
        await r.delete(stream)
        await r.xgroup_create(stream, "g", id="0", mkstream=True)
        await r.xadd(stream, {"n": "1"})
        await r.xreadgroup("g", "busy", {stream: ">"}, count=1)  # one entry pending on `busy`
        await r.xreadgroup("g", "idle", {stream: ">"}, count=1)  # nothing for `idle`
        letter = (await r.xadd(streams.DLQ, {"__data__": '{"note": "an old letter"}'})).decode()
        await asyncio.sleep(1.5)
        removed = await client.trim(short)
        consumers = {c["name"].decode() for c in await r.xinfo_consumers(stream, "g")}
        for _ in range(50):  # the supervisor reads dead letters too: once it has, the letter may go
            removed = await client.trim(short)
            if not await r.xrange(streams.DLQ, min=letter, max=letter):
                break
            await asyncio.sleep(0.1)
        letters_left = await r.xrange(streams.DLQ, min=letter, max=letter)
    finally:
        await r.delete(stream)
        await r.aclose()
    assert consumers == {"busy"}, consumers  # the idle one went; the one with pending work stays
    assert not letters_left and removed["idle consumers"] >= 0


async def test_an_expired_lease_holder_is_refused_on_write(settings):
    from shared.locks import LeaseLocks, LeaseLostError
    from shared.storage import Storage

    r = connect(settings.redis_url)
    locks = LeaseLocks(r)
    key = "runs/r-lease/drafts/doc.md"
    try:
        async with Storage.connect(settings) as storage:
            first = await locks.acquire(key, ttl_ms=300)
            assert first is not None and await locks.acquire(key) is None  # held
            v1 = await locks.put(storage, first, b"one", None)
            await asyncio.sleep(0.5)  # first's lease expires while it "thinks"
            second = await locks.acquire(key, ttl_ms=5000)
            assert second is not None and second.token > first.token
            v2 = await locks.put(storage, second, b"two", v1.etag)
            with pytest.raises(LeaseLostError):
                await locks.put(storage, first, b"stale", v1.etag)
            head = await storage.head(key)
            assert head.etag == v2.etag and await storage.get(head) == b"two"
            assert await locks.release(second)
    finally:
        await r.aclose()


async def test_a_duplicate_outcome_is_acknowledged_and_ignored(settings):
    """Regression (found by make chaos): a stale outcome crashed the supervisor's handler, so the
    message was redelivered until dead-lettered and the run's undispatched next task was never sent."""
    run_id, events = await run(settings, "slow-pair", params={"sleep": 0})
    assert events[-1].type == "run.completed"
    first = of_type(events, "task.completed")[0]
    r = connect(settings.redis_url)
    try:
        entry = (await r.xadd(RESULTS, encode(first))).decode()
    finally:
        await r.aclose()
    # read by the group (not merely not pending yet) and acknowledged
    await wait_handled(settings, RESULTS, streams.SUPERVISOR_GROUP, entry)


async def test_the_per_message_worker_path_marks_outcomes_and_acknowledges_a_redelivery(settings, stack):
    """BATON_BATCH=0 (FastStream's per-message subscriber): outcome and done-mark in one MULTI/EXEC, and a
    task delivered again after its outcome was sent is acknowledged, not run twice."""
    brief = Path(__file__).resolve().parents[2] / "examples" / "briefs" / "topic.md"
    run_id, events = await run(settings, "per-message", {"brief": brief})
    assert events[-1].type == "run.completed", events[-1]
    done = of_type(events, "task.completed")
    assert len(done) == 2
    assert {e.sender for e in done} == {f"worker:{stack.per_message_worker}"}
    r = connect(settings.redis_url)
    try:
        marks = await r.hgetall(streams.run_done(run_id, 1))
        # (`…@`: the entry that owns an attempt; `.ended`: the run's end, so the hash exists to expire)
        outcomes = {k: v for k, v in marks.items() if not k.endswith(b"@") and k != b".ended"}
        assert outcomes == {f"{e.task_id}:{e.attempt}".encode(): b"task.completed" for e in done}
        assert {k for k in marks if k.endswith(b"@")} == {k + b"@" for k in outcomes}
        first = next(e for e in events if e.type == "task.assigned")
        stream = streams.agent_stream("permsg")
        since = await last_id(settings, RESULTS)
        entry = (await r.xadd(stream, encode(first))).decode()
        await wait_handled(settings, stream, "permsg", entry)  # read by the group and acknowledged
        since = f"({since}" if since != "0" else "-"
        again = [json.loads(f[DATA_FIELD.encode()]) for _i, f in await r.xrange(RESULTS, min=since)]
    finally:
        await r.aclose()
    assert not [e for e in again if e["task_id"] == first.task_id], "the task ran twice"


async def _wait_nothing_pending(settings, stream: str, group: str, timeout: float = 20) -> None:
    r = connect(settings.redis_url)
    try:
        for _ in range(int(timeout / 0.1)):
            if not (await r.xpending(stream, group))["pending"]:
                return
            await asyncio.sleep(0.1)
    finally:
        await r.aclose()
    raise AssertionError(f"entries of {stream} still pending in group {group!r}")


async def test_a_cpu_bound_sync_agent_starves_no_heartbeat_and_no_task_runs_twice(settings):
    """A plain `def` handler spinning longer than reclaim_idle_ms (1.5 s here) runs in a thread: the
    worker's heartbeats go on, so neither its task nor the others in that process are taken over."""
    run_ids = [await client.submit(settings, "burn", {}, {"burn": 2.5})]
    run_ids += [await client.submit(settings, "slow-pair", {}, {"sleep": 1}) for _ in range(2)]
    ends = await asyncio.gather(*(wait_for_end(settings, r, timeout=40) for r in run_ids))
    assert [events[-1].type for events in ends] == ["run.completed"] * 3, [e[-1] for e in ends]
    # every task was read (the runs ended) and none is held by a second runner any more
    await _wait_nothing_pending(settings, streams.agent_stream("burn"), "burn")
    await _wait_nothing_pending(settings, streams.agent_stream("slow"), "slow")
    for run_id in run_ids:
        types = await _types(settings, run_id)
        assert types.count(("task.started", 1)) == types.count(("task.assigned", 1)), (run_id, types)
        assert types.count(("task.completed", 1)) == types.count(("task.assigned", 1)), (run_id, types)


async def _new_agents_run(settings, stack, tmp_path, env: dict | None = None) -> tuple[set, set, str]:
    """Two agents no worker has hosted yet, one per worker path: a task is queued for each before any
    group exists, then a worker (with `env`) starts for each. (agents, agents that completed, logs)."""
    suffix = uuid.uuid4().hex[:8]
    agents = {f"new-batched-{suffix}": "100", f"new-permsg-{suffix}": "0"}  # name -> BATON_BATCH
    workflows = tmp_path / "workflows.yaml"
    lines = ["agents:"] + [f'  {name}: {{handler: "tests.agents:echo", writes: [work/]}}' for name in agents]
    lines += ["workflows:", f"  new: {{pattern: sequential, stages: [{next(iter(agents))}]}}"]
    workflows.write_text("\n".join(lines) + "\n")
    since = await last_id(settings, RESULTS)
    r = connect(settings.redis_url)
    try:
        for name in agents:
            task = TaskAssigned(
                run_id=f"r-{name}", task_id=f"r-{name}.0", agent=name, workflow="new", output_prefix=""
            )
            await r.xadd(streams.agent_stream(name), encode(task))  # the stream exists, its group doesn't
        env = {**(env or {}), "BATON_WORKFLOWS": str(workflows)}
        handles = [
            stack.start("worker", {**env, "BATON_AGENTS": a, "BATON_BATCH": b}) for a, b in agents.items()
        ]
        try:
            for _ in range(100):
                entries = await r.xrange(RESULTS, min=since)
                results = [json.loads(f[DATA_FIELD.encode()]) for _i, f in entries]
                done = {e["agent"] for e in results if e["type"] == "task.completed"}
                if set(agents) <= done:
                    break
                await asyncio.sleep(0.1)
        finally:
            logs = "".join(stack.log_path(h).read_text() for h in handles)
            for handle in handles:
                stack.kill(handle)
    finally:
        await r.aclose()
    return set(agents), done, logs


async def test_a_task_queued_before_its_agent_group_exists_runs_once_a_worker_starts(
    settings, stack, tmp_path
):
    """An agent added to the workflow file gets tasks before any worker that knows it has started: its
    group is created from the stream's start, so the queued task is not skipped (on both worker paths)."""
    agents, done, _logs = await _new_agents_run(settings, stack, tmp_path)
    assert agents <= done, f"tasks queued before the group existed never ran: {agents - done}"


async def test_a_transient_handler_failure_is_retried_at_once_not_left_for_the_reclaimer(
    settings, stack, tmp_path
):
    """The handler's first two calls raise a ConnectionError (a fault point): retried in-process after 50
    and 200 ms on both worker paths, the task completes without waiting for the reclaimer."""
    agents, done, logs = await _new_agents_run(settings, stack, tmp_path, {"BATON_FAULTS": "handler=raise*2"})
    assert agents <= done, f"never completed: {agents - done}"
    assert logs.count('"handler_retrying"') == 4, logs[-3000:]
    assert '"redelivering"' not in logs  # not the reclaimer's doing


async def test_a_task_past_its_agents_time_limit_is_stopped_and_retried(settings):
    """No deadline in the workflow: the agent's `time_limit` alone ends a hanging attempt, with a reason,
    and the retry policy takes over (a hanging handler used to keep its heartbeat for ever)."""
    _run_id, events = await run(settings, "hang", timeout=30)
    assert events[-1].type == "run.completed", events[-1]
    (failed,) = of_type(events, "task.failed")
    assert failed.attempt == 1 and failed.retryable
    assert "ran past its time limit of 1 s" in failed.error


async def test_an_oversized_dead_letter_keeps_its_whole_payload_and_replays_it(settings):
    """An event refused for its size is the one most needing its payload back: the letter keeps it whole
    (it was cut at 64 KiB), and replaying it puts the whole original back on its stream."""
    big = TaskAssigned(
        run_id="r-oversized",
        task_id=f"r-oversized.{uuid.uuid4().hex[:8]}",
        workflow="flaky",
        agent="echo",
        instruction="x" * (settings.max_event_bytes + 10_000),
        output_prefix="runs/r-oversized/",
    )
    stream = streams.agent_stream("echo")
    since = await last_id(settings, streams.DLQ)
    r = connect(settings.redis_url)
    try:
        original = encode(big)[DATA_FIELD]
        entry = (await r.xadd(stream, {DATA_FIELD: original})).decode()
        for _ in range(100):
            letters = [(i, d) for i, d in await dead_letters(settings, since) if d.message_id == entry]
            if letters:
                break
            await asyncio.sleep(0.1)
        assert letters, "the oversized task was not dead-lettered"
        (letter_id, letter), = letters
        assert "over the 65536-byte limit" in letter.reason and letter.raw.encode() == original
        outcome = await client.dlq_replay(settings, [letter_id])
        assert outcome[letter_id].startswith(f"replayed to {stream} as ")
        replayed = outcome[letter_id].rsplit(" ", 1)[1]
        (_i, fields), = await r.xrange(stream, min=replayed, max=replayed)
    finally:
        await r.aclose()
    assert TaskAssigned.model_validate_json(fields[DATA_FIELD.encode()]) == big


async def test_a_write_a_stalled_holder_lands_after_its_lease_is_detected_by_the_next_holder(settings):
    """The documented limit of LeaseLocks: the store does not check the token, so a holder stalled between
    its lease check and its PUT can land one write; the next holder's conditional write then fails."""
    from shared.errors import PreconditionFailedError
    from shared.locks import LeaseLocks
    from shared.storage import Storage

    r = connect(settings.redis_url)
    locks = LeaseLocks(r)
    key = f"runs/r-lease/drafts/stall-{uuid.uuid4().hex[:8]}.md"
    try:
        async with Storage.connect(settings) as storage:
            first = await locks.acquire(key, ttl_ms=300)
            v1 = await locks.put(storage, first, b"one", None)
            await locks.renew(first)  # the check `put` makes ... then the holder stalls
            await asyncio.sleep(0.5)
            second = await locks.acquire(key, ttl_ms=5000)
            assert second is not None
            await storage.put(key, b"stale", if_match=v1.etag)  # ... and its PUT lands after all
            with pytest.raises(PreconditionFailedError):
                await locks.put(storage, second, b"two", v1.etag)
            assert await storage.get(await storage.head(key)) == b"stale"
            await locks.release(second)
    finally:
        await r.aclose()


async def test_a_second_entry_with_the_same_task_is_dropped_while_the_first_runs(settings):
    """A task sent twice (a supervisor that died between sending it and acknowledging its cause sends it
    again on the redelivery) runs once: the first entry owns the attempt."""
    from shared.runs import get_run

    run_id = await client.submit(settings, "slow-pair", {}, {"sleep": 2})
    r = connect(settings.redis_url)
    try:
        task = None
        for _ in range(100):
            state = await get_run(r, run_id)
            if state is not None and state.tasks:
                (slot,) = state.tasks.values()
                task = slot.task
                break
            await asyncio.sleep(0.05)
        assert task is not None
        await r.xadd(streams.agent_stream("slow"), encode(task))  # the same assignment, a second entry
    finally:
        await r.aclose()
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.completed", events[-1]
    first = [e for e in events if e.type == "task.started" and e.task_id == task.task_id]
    assert len(first) == 1, [(e.type, e.sender) for e in first]
