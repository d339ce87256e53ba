"""The supervisor's promises at its exact windows (issue 17): a supervisor killed before or after a commit,
or after taking a timer, loses nothing and sends no task twice; timers with two replicas fire once; a
response written before the run asks is applied; cancelling, failing subtasks, the compare-and-set retry
and retention.

Tests that replace the session's supervisor do it through `Supervisors`, which leaves exactly one normal
supervisor running when the test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from baton import client
from services.supervisor.decisions import Decision, add_task, new_task
from services.supervisor.engine import Engine
from services.supervisor.store import Loaded
from services.supervisor.timers import LEASE_S
from shared import streams
from shared.batch import Outbox
from shared.broker import DATA_FIELD
from shared.errors import NotWaitingError
from shared.events import Event, TaskAssigned, TaskProgress
from shared.redisconn import connect
from shared.runs import RunState, TaskSlot, get_run
from shared.workflow import parse_workflows
from tests.helpers import last_id, objects_since, of_type, s3_client, wait_for_end, wait_handled

pytestmark = pytest.mark.e2e


class Supervisors:
    """Replaces or joins the session's supervisor for one test; `restore` leaves one normal one."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.armed: set[str] = set()
        self.added: list[str] = []

    def running(self) -> list[str]:
        return [h for h in self.stack.procs if h.startswith("supervisor-")]

    def replace(self, faults: str | None = None, layout: dict | None = None) -> str:
        """SIGKILL every supervisor (nothing it holds is acknowledged), then start one (armed if `faults`).

        First, up to a few seconds, until the supervisors hold no entry unacknowledged: a test that saw a
        task start kills them after the step that sent it, not inside it (on a loaded machine the worker
        can start the task before the supervisor's acknowledgement has left: killed then, the step's event
        is redelivered and its task sent again, as it should be, but that is another window's test)."""
        running = self.running()
        self.settled(running)
        for handle in running:
            self.stack.kill(handle, hard=True)
        return self.add(faults, layout)

    def settled(self, consumers: list[str], timeout: float = 2.0) -> None:
        """Until `consumers` hold no entry of the supervisor's streams unacknowledged (or `timeout`)."""
        import redis

        partitions = int(self.stack.env.get("BATON_RESULT_PARTITIONS", "1"))
        watched = [streams.RUNS, streams.OBJECTS, *streams.result_streams(partitions)]

        def held(r, stream: str) -> int:
            if not r.exists(stream):
                return 0
            summary = r.xpending(stream, streams.SUPERVISOR_GROUP)
            return sum(c["pending"] for c in summary["consumers"] if c["name"].decode() in consumers)

        with redis.Redis.from_url(self.stack.env["REDIS_URL"]) as r:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(held(r, s) for s in watched):
                time.sleep(0.02)

    def add(self, faults: str | None = None, layout: dict | None = None) -> str:
        """One more supervisor (`layout`: ONE_SLOT for the commit a cluster makes)."""
        handle = self.stack.start(
            "supervisor", {**({"BATON_FAULTS": faults} if faults else {}), **(layout or {})}
        )
        self.added.append(handle)
        if faults:
            self.armed.add(handle)
        return handle

    async def exited(self, handle: str, timeout: float = 30) -> int:
        """Until `handle` has died at its fault point; its exit code."""
        proc = self.stack.procs[handle]
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{handle} did not reach its fault point in {timeout}s")
            await asyncio.sleep(0.05)
        self.stack.procs.pop(handle)
        return proc.returncode

    def restore(self) -> None:
        for handle in self.running():
            proc = self.stack.procs[handle]
            if handle in self.armed or proc.poll() is not None:
                self.stack.kill(handle)
        normal = self.running()
        for handle in [h for h in self.added if h in normal][: max(len(normal) - 1, 0)]:
            self.stack.kill(handle)  # the ones a test added beside a normal one
        if not self.running():
            self.stack.start("supervisor")


# A commit in the run's own hash slot, its tasks and indexes sent after it (owed in `c:` meanwhile), as on a
# cluster; by default, on this one server, they are written in the commit's own script.
ONE_SLOT = {"BATON_REDIS_ONE_SLOT": "1"}


@pytest.fixture
def supervisors(stack):
    sup = Supervisors(stack)
    try:
        yield sup
    finally:
        sup.restore()


# --- reading a run ---------------------------------------------------------------------------------------
async def until(settings, run_id: str, predicate, timeout: float = 30) -> Event:
    async def find():
        async for event in client.follow(settings, run_id, block_ms=500):
            if predicate(event):
                return event
        raise AssertionError(f"run {run_id} ended before the awaited event")

    return await asyncio.wait_for(find(), timeout)


def started(task_part: str):
    return lambda e: e.type == "task.started" and task_part in e.task_id


async def raw_events(settings, run_id: str) -> list[dict]:
    """Every entry of the run's stream as JSON, duplicates and entries after its end included."""
    r = connect(settings.redis_url)
    try:
        entries = await r.xrange(streams.run_events(run_id))
    finally:
        await r.aclose()
    return [json.loads(f[DATA_FIELD.encode()]) for _i, f in entries]


async def sent(settings, agent: str, run_id: str, since: str = "0") -> list[tuple[str, int]]:
    """(task id, attempt) of every task of `run_id` appended to `agent`'s stream after `since`."""
    r = connect(settings.redis_url)
    try:
        entries = await r.xrange(streams.agent_stream(agent), min=f"({since}" if since != "0" else "-")
    finally:
        await r.aclose()
    tasks = [json.loads(f[DATA_FIELD.encode()]) for _i, f in entries]
    return [(t["task_id"], t["attempt"]) for t in tasks if t.get("run_id") == run_id]


async def fields(settings, run_id: str) -> dict[str, bytes]:
    r = connect(settings.redis_url)
    try:
        raw = await r.hgetall(streams.run_state(run_id))
    finally:
        await r.aclose()
    return {k.decode(): v for k, v in raw.items()}


def core(state_fields: dict[str, bytes]) -> dict:
    return json.loads(state_fields["core"])


def causes(state_fields: dict[str, bytes]) -> dict[str, dict]:
    """The `c:<event_id>` fields: what a commit still owes (shared/runs.py)."""
    return {k: json.loads(v) for k, v in state_fields.items() if k.startswith("c:")}


async def is_waiting_indexed(settings, run_id: str) -> bool:
    r = connect(settings.redis_url)
    try:
        return await r.zscore(streams.RUNS_WAITING, run_id) is not None
    finally:
        await r.aclose()


async def eventually(check, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        await asyncio.sleep(0.1)


def baton(stack, *args: str) -> subprocess.CompletedProcess:
    """The `baton` command, as the CLI's own users."""
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", *args],
        env={**os.environ, **stack.service_env("cli")},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=stack.env.get("BATON_CWD"),
    )


def sub(id_, agent="maker", instruction="", **kw):
    return {"id": id_, "agent": agent, "instruction": instruction, **kw}


# --- 1. a crash at each named window ---------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["one-slot", "one-server"])
async def test_killed_after_committing_a_stage_hop_the_redelivery_sends_the_next_stage_once(
    settings, supervisors, layout
):
    since = await last_id(settings, streams.agent_stream("slow"))
    run_id = await client.submit(settings, "slow-pair", {}, {"sleep": 4})
    await until(settings, run_id, started(".0.slow"))
    armed = supervisors.replace("supervisor.after_commit=exit", ONE_SLOT if layout == "one-slot" else None)
    assert await supervisors.exited(armed) != 0  # died committing stage 1, before anything after it
    nxt = f"{run_id}.1.slow"
    state = await fields(settings, run_id)
    assert core(state)["stage"] == 1 and f"t:{nxt}" in state
    if layout == "one-slot":
        assert [c["tasks"] for c in causes(state).values()] == [[nxt]]  # owed, and not sent yet:
        assert (nxt, 1) not in await sent(settings, "slow", run_id, since)
    else:  # sent by the commit itself: nothing owed
        assert not causes(state)
        assert (nxt, 1) in await sent(settings, "slow", run_id, since)

    supervisors.add()
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    assert await sent(settings, "slow", run_id, since) == [(f"{run_id}.0.slow", 1), (nxt, 1)]
    assert [e.task_id for e in of_type(events, "task.assigned")] == [f"{run_id}.0.slow", nxt]
    assert len(of_type(events, "task.started")) == 2


async def test_killed_after_committing_a_bidirectional_start_the_document_is_still_seeded(
    settings, supervisors, tmp_path
):
    seed = tmp_path / "doc.md"
    seed.write_text("first line\n")
    armed = supervisors.replace("supervisor.after_commit=exit")
    run_id = await client.submit(settings, "co-write", {"document": seed})
    assert await supervisors.exited(armed) != 0
    state = await fields(settings, run_id)
    assert core(state)["phase"] == "seeding"
    (owed,) = causes(state).values()
    assert [key for _source, key in owed["copies"]] == [f"runs/{run_id}/drafts/doc.md"]

    supervisors.add()
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed" and events[-1].ended_by == "converged", events[-1]
    turns = [e.task_id for e in of_type(events, "task.assigned")]
    assert len(turns) > 1 and len(turns) == len(set(turns))
    assert len(of_type(events, "task.started")) == len(turns)


async def test_killed_after_committing_a_human_request_the_run_waits_listed_with_its_request(
    settings, supervisors
):
    run_id = await client.submit(settings, "slow-approval", {}, {"sleep": 3})
    await until(settings, run_id, started(".0.slow"))
    armed = supervisors.replace("supervisor.after_commit=exit")
    assert await supervisors.exited(armed) != 0
    state = core(await fields(settings, run_id))
    assert state["status"] == "waiting_for_human"
    request_key = state["waiting"]["request"]["key"]
    request = s3_client(settings).get_object(Bucket=settings.bucket, Key=request_key)
    assert json.loads(request["Body"].read())["question"] == "Go on?"

    supervisors.add()  # the redelivered outcome puts the run in the waiting index

    async def listed():
        return any(r["run_id"] == run_id for r in await client.list_runs(settings, waiting=True))

    await eventually(listed, what=f"{run_id} listed as waiting")
    cli = await asyncio.to_thread(baton, supervisors.stack, "runs", "--waiting", "--json")
    assert cli.returncode == 0 and run_id in [r["run_id"] for r in json.loads(cli.stdout)], cli.stderr
    await client.respond(settings, run_id, approve=True, text="go")
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    assert len(of_type(events, "human.requested")) == 1 and len(of_type(events, "human.received")) == 1
    assert not await is_waiting_indexed(settings, run_id)


async def test_killed_after_committing_a_fan_out_every_subtask_runs_once(settings, supervisors):
    since = {a: await last_id(settings, streams.agent_stream(a)) for a in ("maker", "maker2")}
    plan = [sub("a"), sub("b", agent="maker2"), sub("c")]
    run_id = await client.submit(settings, "build-slow-plan", {}, {"plan": plan, "plan_sleep": 3})
    await until(settings, run_id, started(".plan"))
    armed = supervisors.replace("supervisor.after_commit=exit", ONE_SLOT)
    assert await supervisors.exited(armed) != 0
    expected = {f"{run_id}.sub.a.maker", f"{run_id}.sub.b.maker2", f"{run_id}.sub.c.maker"}
    (owed,) = causes(await fields(settings, run_id)).values()
    assert set(owed["tasks"]) == expected
    assert not await sent(settings, "maker", run_id, since["maker"])
    assert not await sent(settings, "maker2", run_id, since["maker2"])

    supervisors.add()
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    tasks = await sent(settings, "maker", run_id, since["maker"]) + await sent(
        settings, "maker2", run_id, since["maker2"]
    )
    assert sorted(tasks) == sorted((t, 1) for t in expected)  # each subtask sent once
    subtask_starts = [e.task_id for e in of_type(events, "task.started") if ".sub." in e.task_id]
    assert sorted(subtask_starts) == sorted(expected)
    final = s3_client(settings).get_object(Bucket=settings.bucket, Key=events[-1].outputs["final"].key)
    text = final["Body"].read().decode()
    assert all(f"subtask={s}" in text for s in "abc")


async def test_killed_after_committing_a_bidirectional_turn_the_next_turn_is_still_sent(
    settings, supervisors, tmp_path
):
    seed = tmp_path / "doc.md"
    seed.write_text("first line\n")
    run_id = await client.submit(settings, "slow-co-write", {"document": seed}, {"turn_sleep": 3})
    await until(settings, run_id, started(".turn.1"))
    armed = supervisors.replace("supervisor.after_commit=exit", ONE_SLOT)
    assert await supervisors.exited(armed) != 0  # died committing turn 2 (on turn 1's new version)
    turn2 = f"{run_id}.turn.2"
    state = await fields(settings, run_id)
    # (a start's copy may also still be owed, if the killed supervisor had not yet deleted that record)
    assert f"t:{turn2}" in state and [turn2] in [c["tasks"] for c in causes(state).values()]

    supervisors.add()
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed" and events[-1].ended_by == "converged", events[-1]
    turns = [e.task_id for e in of_type(events, "task.assigned")]
    assert turns[:2] == [f"{run_id}.turn.1", turn2] and len(turns) == len(set(turns))


async def test_killed_after_committing_a_persons_answer_the_next_stage_is_still_sent(settings, supervisors):
    run_id = await client.submit(settings, "slow-approval", {}, {"sleep": 0.5})
    await until(settings, run_id, lambda e: e.type == "human.requested")
    await eventually(lambda: is_waiting_indexed(settings, run_id), what="waiting index")
    armed = supervisors.replace("supervisor.after_commit=exit", ONE_SLOT)
    await client.respond(settings, run_id, approve=True, text="go on")
    assert await supervisors.exited(armed) != 0  # died committing the answer and stage 3
    last = f"{run_id}.2.slow"
    state = await fields(settings, run_id)
    assert f"t:{last}" in state and [last] in [c["tasks"] for c in causes(state).values()]

    supervisors.add()
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.completed", events[-1]
    assert [e.task_id for e in of_type(events, "task.started")] == [f"{run_id}.0.slow", last]


async def test_killed_before_committing_a_human_request_nothing_is_committed_and_the_redelivery_asks(
    settings, supervisors
):
    run_id = await client.submit(settings, "slow-approval", {}, {"sleep": 3})
    await until(settings, run_id, started(".0.slow"))
    armed = supervisors.replace("supervisor.before_commit=exit")
    rev = (await fields(settings, run_id))["rev"]
    assert await supervisors.exited(armed) != 0
    state = await fields(settings, run_id)
    assert state["rev"] == rev and core(state)["status"] == "running" and not causes(state)
    assert "human.requested" not in [e["type"] for e in await raw_events(settings, run_id)]

    supervisors.add()
    await until(settings, run_id, lambda e: e.type == "human.requested")
    await eventually(lambda: is_waiting_indexed(settings, run_id), what="waiting index")
    await client.respond(settings, run_id, approve=True)
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    assert len(of_type(events, "human.requested")) == 1
    assert [e.task_id for e in of_type(events, "task.assigned")] == [f"{run_id}.0.slow", f"{run_id}.2.slow"]


async def no_timers(settings) -> None:
    """Until no timer of an earlier test is left (so an armed supervisor takes this test's)."""
    r = connect(settings.redis_url)
    try:
        for _ in range(150):
            if not await r.zcard(streams.TIMERS):
                return
            await asyncio.sleep(0.1)
    finally:
        await r.aclose()


async def test_a_retry_timer_taken_by_a_supervisor_that_dies_fires_after_its_lease(settings, supervisors):
    await no_timers(settings)
    since = await last_id(settings, streams.agent_stream("flaky"))
    armed = supervisors.replace("supervisor.timer_taken=exit")
    run_id = await client.submit(settings, "flaky", {})
    assert await supervisors.exited(armed) != 0
    r = connect(settings.redis_url)
    try:
        timers = [(json.loads(m), s) for m, s in await r.zrange(streams.TIMERS, 0, -1, withscores=True)]
    finally:
        await r.aclose()
    mine = [(t, s) for t, s in timers if t.get("run_id") == run_id]
    assert [(t["kind"], t["attempt"]) for t, _s in mine] == [("dispatch", 2)]
    assert mine[0][1] > time.time() + LEASE_S / 2  # leased: not due again before the lease runs out

    supervisors.add()
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    failed = of_type(events, "task.failed")[0]
    retries = [e for e in of_type(events, "task.assigned") if e.attempt == 2]
    assert len(retries) == 1
    assert (retries[0].created_at - failed.created_at).total_seconds() >= LEASE_S - 0.5
    task = f"{run_id}.0.flaky"
    assert await sent(settings, "flaky", run_id, since) == [(task, 1), (task, 2)]


# --- 2. a response written before the run asks -----------------------------------------------------------
async def write_response(settings, run_id: str, name: str, text: str) -> None:
    """Straight to the bucket, as any S3 tool would (the CLI refuses a run that is not waiting); returns
    once the supervisor has handled its ObjectChanged (kept it: the run is not waiting yet)."""
    key = f"runs/{run_id}/human/responses/{name}"
    since = await last_id(settings, streams.OBJECTS)
    s3_client(settings).put_object(
        Bucket=settings.bucket, Key=key, Body=json.dumps({"decision": "approve", "text": text}).encode()
    )

    async def published():
        return [i for i, e in await objects_since(settings, since) if e.key == key]

    (entry_id, *_) = await eventually(published, what=f"the ObjectChanged of {key}")
    await wait_handled(settings, streams.OBJECTS, streams.SUPERVISOR_GROUP, entry_id)
    assert core(await fields(settings, run_id))["status"] == "running"  # it came before the ask


async def test_a_response_written_before_the_run_asks_is_applied_when_it_asks(settings):
    run_id = await client.submit(settings, "slow-approval", {}, {"sleep": 3})
    await until(settings, run_id, started(".0.slow"))
    await write_response(settings, run_id, "early.json", "answered early")
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    types = [e.type for e in events]
    assert types.index("human.requested") < types.index("human.received") < types.index("run.completed")
    (received,) = of_type(events, "human.received")
    assert received.approved and received.text == "answered early"
    assert (await raw_events(settings, run_id))[-1]["type"] == "run.completed"  # nothing recorded after


async def test_a_response_written_before_the_ask_is_applied_when_the_asker_dies_after_its_commit(
    settings, supervisors
):
    run_id = await client.submit(settings, "slow-approval", {}, {"sleep": 3})
    await until(settings, run_id, started(".0.slow"))
    await write_response(settings, run_id, "early.json", "answered early")
    armed = supervisors.replace("supervisor.after_commit=exit")
    assert await supervisors.exited(armed) != 0  # the run is waiting; nothing after the commit ran
    assert core(await fields(settings, run_id))["status"] == "waiting_for_human"
    supervisors.add()
    events = await wait_for_end(settings, run_id, timeout=30)
    assert events[-1].type == "run.completed", events[-1]
    assert [e.text for e in of_type(events, "human.received")] == ["answered early"]


async def test_a_response_applied_when_the_run_asks_is_sent_on_even_if_its_send_fails(settings, supervisors):
    """Found by `make chaos-burst`: the run asks (commit 1), a response already there is applied (commit 2,
    under its own cause, inside the same handling), and sending commit 2's task fails. The event that made
    the run ask is retried; its redo must send what commit 2 still owes, which has no redelivery of its own
    (it hung the run until this was fixed)."""
    run_id = await client.submit(settings, "slow-approval", {}, {"sleep": 3})
    await until(settings, run_id, started(".0.slow"))
    await write_response(settings, run_id, "early.json", "answered early")
    supervisors.replace("supervisor.after_commit=raise*2")  # after commit 1, then after commit 2
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    assert [e.text for e in of_type(events, "human.received")] == ["answered early"]
    assert [e.task_id for e in of_type(events, "task.completed")] == [f"{run_id}.0.slow", f"{run_id}.2.slow"]
    assert not causes(await fields(settings, run_id))  # nothing left owed


# --- 3. timers with two supervisors ----------------------------------------------------------------------
async def test_two_supervisors_dispatch_each_retry_and_fire_each_deadline_once(settings, supervisors):
    supervisors.add()  # a second replica beside the session's: both fire due timers every 0.2 s
    since = await last_id(settings, streams.agent_stream("flaky"))
    flaky = [await client.submit(settings, "flaky", {}) for _ in range(6)]
    deadline = await client.submit(settings, "deadline", {})
    ends = await asyncio.gather(*(wait_for_end(settings, r, timeout=40) for r in [*flaky, deadline]))
    assert all(events[-1].type == "run.completed" for events in ends), [e[-1] for e in ends]
    for run_id, events in zip(flaky, ends, strict=False):
        assert [e.attempt for e in of_type(events, "task.assigned")] == [1, 2], run_id
        task = f"{run_id}.0.flaky"
        assert await sent(settings, "flaky", run_id, since) == [(task, 1), (task, 2)]
    await eventually(
        lambda: _late_completion(settings, deadline), what="the deadline run's late first attempt"
    )
    raw = await raw_events(settings, deadline)
    assert [e["attempt"] for e in raw if e["type"] == "task.assigned"] == [1, 2]
    timed_out = [e for e in raw if e["type"] == "task.failed" and "deadline" in e.get("error", "")]
    assert [e["attempt"] for e in timed_out] == [1]  # one deadline, fired by one replica


async def _late_completion(settings, run_id: str) -> bool:
    raw = await raw_events(settings, run_id)
    return any(e["type"] == "task.completed" and e["attempt"] == 1 for e in raw)


async def test_poison_timers_do_not_block_a_later_valid_one(settings):
    gone = f"r-renamed-{uuid.uuid4().hex[:12]}"
    r = connect(settings.redis_url)
    try:
        # a run whose workflow was renamed away since, with the task the timer names outstanding
        state = RunState(run_id=gone, workflow="renamed-away", pattern="sequential", trace_id=gone)
        task = TaskAssigned(
            run_id=gone, task_id=f"{gone}.0.x", agent="gone", workflow="renamed-away", output_prefix="runs/x/"
        )
        await r.hset(
            streams.run_state(gone),
            mapping={
                "rev": 1,
                "core": state.model_dump_json(),
                f"t:{task.task_id}": TaskSlot(task=task).model_dump_json(),
            },
        )
        poison = [
            "{not json",
            json.dumps({"kind": "dispatch"}),
            json.dumps({"kind": "deadline", "run_id": gone, "task_id": task.task_id, "attempt": 1}),
        ]
        # due before anything else, so every pass of every replica meets them first
        await r.zadd(streams.TIMERS, {m: time.time() - 60 - i for i, m in enumerate(poison)})
        run_id = await client.submit(settings, "flaky", {})
        events = await wait_for_end(settings, run_id, timeout=30)
        assert events[-1].type == "run.completed", events[-1]
        assert [e.attempt for e in of_type(events, "task.assigned")] == [1, 2]

        async def dropped():
            return [await r.zscore(streams.TIMERS, m) for m in poison] == [None] * len(poison)

        await eventually(dropped, what="the poison timers dropped")
        # the deadline's TaskFailed cannot be decided (no workflow): dead-lettered, it fails its run
        gone_events = await wait_for_end(settings, gone, timeout=30)
        assert gone_events[-1].type == "run.failed" and "dead-lettered" in gone_events[-1].reason
    finally:
        await r.delete(streams.run_state(gone), streams.run_events(gone))
        await r.aclose()


# --- 4. cancelling ---------------------------------------------------------------------------------------
async def test_cancelling_a_hierarchical_run_mid_fan_out_drops_its_subtasks(settings):
    plan = [sub(i, instruction="sleep=3") for i in "abc"]
    run_id = await client.submit(settings, "build-slow-plan", {}, {"plan": plan, "plan_sleep": 0})
    await until(settings, run_id, started(".sub."))
    await client.cancel(settings, run_id, "stop the build")
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.cancelled" and events[-1].reason == "stop the build", events[-1]
    assert not [k for k in await fields(settings, run_id) if k.startswith("t:")]
    assert not await is_waiting_indexed(settings, run_id)

    async def every_subtask_stopped():
        raw = await raw_events(settings, run_id)
        stopped = {e["task_id"] for e in raw if e["type"] == "task.failed" and "cancel" in e["error"]}
        return raw if len([t for t in stopped if ".sub." in t]) == 3 else None

    raw = await eventually(every_subtask_stopped, what="every subtask stopped or dropped")
    after_end = raw[[e["type"] for e in raw].index("run.cancelled") :]
    assert not [e for e in raw if e["type"] == "task.completed" and ".sub." in e["task_id"]]
    assert "task.assigned" not in [e["type"] for e in after_end]  # no review, no aggregate, no retry


async def test_cancelling_a_run_waiting_for_a_person_ends_it_and_unlists_it(settings):
    run_id = await client.submit(settings, "approval", {})
    await until(settings, run_id, lambda e: e.type == "human.requested")
    await eventually(lambda: is_waiting_indexed(settings, run_id), what="waiting index")
    await client.cancel(settings, run_id, "nobody will answer")
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.cancelled" and events[-1].reason == "nobody will answer", events[-1]

    async def unlisted():
        return not await is_waiting_indexed(settings, run_id)

    await eventually(unlisted, timeout=10, what="the run out of the waiting index")
    assert not any(r["run_id"] == run_id for r in await client.list_runs(settings, waiting=True))
    with pytest.raises(NotWaitingError):
        await client.respond(settings, run_id, approve=True)
    assert len(of_type(events, "task.assigned")) == 1  # the drafter only: nothing after the person


# --- 5. a hierarchical subtask that fails ----------------------------------------------------------------
async def test_a_failing_subtask_is_retried_after_the_backoff_or_reassigned_when_permanent(settings):
    plan = [sub("a", agent="flaky"), sub("b", agent="broken")]
    run_id = await client.submit(settings, "build-failing", {}, {"plan": plan})
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.completed", events[-1]
    a = [e for e in of_type(events, "task.assigned") if ".sub.a." in e.task_id]
    assert [(e.agent, e.attempt) for e in a] == [("flaky", 1), ("flaky", 2)]
    failed = next(e for e in of_type(events, "task.failed") if ".sub.a." in e.task_id)
    # retry_backoff 1.0 s with jitter in [50%, 100%]: not before half of it
    assert (a[1].created_at - failed.created_at).total_seconds() >= 0.45
    b = [e for e in of_type(events, "task.assigned") if ".sub.b." in e.task_id]
    assert [(e.agent, e.attempt) for e in b] == [("broken", 1), ("maker2", 1)]  # permanent: not retried


async def test_a_subtask_failing_permanently_with_no_alternate_fails_the_run_naming_it(settings):
    plan = [sub("a", agent="maker2"), sub("c", agent="doomed")]
    run_id = await client.submit(settings, "build-failing", {}, {"plan": plan})
    events = await wait_for_end(settings, run_id, timeout=40)
    assert events[-1].type == "run.failed", events[-1]
    assert "subtask 'c' could not be done by anyone (doomed)" in events[-1].reason
    assert "doomed cannot do" in events[-1].reason
    assert len([e for e in of_type(events, "task.assigned") if ".sub.c." in e.task_id]) == 1


# --- 6. the compare-and-set retry ------------------------------------------------------------------------
CAS_WORKFLOWS = """
agents:
  cas-probe: {handler: "tests.agents:noop", writes: [work/]}  # no worker reads its stream
workflows:
  cas: {pattern: sequential, stages: [cas-probe]}
"""


class Quiet:
    def __getattr__(self, _name):
        return lambda *args, **kwargs: None


async def test_two_handlers_racing_on_one_run_one_commits_and_the_other_decides_again(settings):
    workflows = parse_workflows(CAS_WORKFLOWS)
    run_id = f"r-cas-{uuid.uuid4().hex[:12]}"
    redis = connect(settings.redis_url, socket_timeout=None)
    eng = Engine(settings, workflows, Quiet(), sender="supervisor:cas-test")
    eng.bind(None, redis, Outbox(redis))
    state = RunState(run_id=run_id, workflow="cas", pattern="sequential", trace_id=run_id)

    def task(name: str) -> TaskAssigned:
        return new_task(state, workflows, task_id=f"{run_id}.{name}", agent="cas-probe", inputs={})

    calls: list[str] = []

    def finish(name: str, then: str | None = None):
        """A handler's decision: its task is done (a note says so); `then` is assigned next."""

        def choose(s: RunState) -> Decision:
            calls.append(name)
            s.tasks.pop(f"{run_id}.{name}")
            s.note(f"{name} done")
            note = TaskProgress(run_id=run_id, task_id=f"{run_id}.{name}", agent="cas-probe", message=name)
            decision = Decision(state=s, notes=[note])
            if then:
                decision.assign.append(add_task(s, task(then), "stage"))
            return decision

        return choose

    try:
        for name in ("t1", "t2"):
            add_task(state, task(name), "stage")
        assert await eng.store.commit(Loaded(run_id), state)
        # both handlers read revision 1 before either commits: exactly one compare-and-set can win
        first = await eng.store.load(run_id, f"t:{run_id}.t1")
        second = await eng.store.load(run_id, f"t:{run_id}.t2")
        await asyncio.gather(
            eng.decide(run_id, finish("t1", then="t3"), cause="e1", loaded=first),
            eng.decide(run_id, finish("t2"), cause="e2", loaded=second),
        )
        await eng.db.drain()
        assert sorted(calls) in (["t1", "t1", "t2"], ["t1", "t2", "t2"])  # the loser decided again
        final = await get_run(redis, run_id)
        assert set(final.tasks) == {f"{run_id}.t3"}
        assert sorted(final.history) == ["t1 done", "t2 done"]
        stored = await fields(settings, run_id)
        assert stored["rev"] == b"3" and not causes(stored)
        raw = await raw_events(settings, run_id)
        assert sorted(e["message"] for e in raw if e["type"] == "task.progress") == ["t1", "t2"]
        assert [e["task_id"] for e in raw if e["type"] == "task.assigned"] == [f"{run_id}.t3"]
        assert await sent(settings, "cas-probe", run_id) == [(f"{run_id}.t3", 1)]
    finally:
        await redis.delete(
            streams.run_state(run_id), streams.run_events(run_id), streams.agent_stream("cas-probe")
        )
        await redis.aclose()


async def test_a_kept_state_another_replica_moved_on_is_read_again_never_committed_over(settings):
    """Replica A keeps the state it committed; replica B moves the run on; A's next decision on its kept
    state fails the compare-and-set, reads again and decides on B's state. An event that needs a field A
    never saw (B's task) is not decided on the kept state at all, and one found ignored on it is decided
    again on a fresh read (only a read shows what a redelivery owes)."""
    workflows = parse_workflows(CAS_WORKFLOWS)
    run_id = f"r-kept-{uuid.uuid4().hex[:12]}"
    redis = connect(settings.redis_url, socket_timeout=None)
    a = Engine(settings, workflows, Quiet(), sender="supervisor:a")
    b = Engine(settings.model_copy(update={"state_cache": 0}), workflows, Quiet(), sender="supervisor:b")
    a.bind(None, redis, Outbox(redis))
    b.bind(None, redis, Outbox(redis))
    state = RunState(run_id=run_id, workflow="cas", pattern="sequential", trace_id=run_id)

    def task(name: str) -> TaskAssigned:
        return new_task(state, workflows, task_id=f"{run_id}.{name}", agent="cas-probe", inputs={})

    seen: list[list[str]] = []

    def step(done: str | None, then: str | None, note: str):
        def choose(s: RunState) -> Decision:
            seen.append(sorted(s.history))
            if done is not None:
                s.tasks.pop(f"{run_id}.{done}")
            s.note(note)
            d = Decision(state=s)
            if then is not None:
                d.assign.append(add_task(s, task(then), "stage"))
            return d

        return choose

    try:
        created = Loaded(run_id, fields={"core": state.model_dump_json().encode()}, all_tasks=True)
        created.all_subtasks, created.state = True, state
        await a.decide(run_id, step(None, "t1", "a started"), cause="e0", loaded=created)
        assert run_id in a.store.kept  # A keeps what it committed (revision 1)
        await b.decide(run_id, step("t1", "t2", "b took t1"), cause="e1", want=(f"t:{run_id}.t1",))
        # A decides on its kept revision 1: the commit fails, A reads revision 2 and decides again
        seen.clear()
        hits = a.store.hits
        await a.decide(run_id, step(None, None, "a noted"), cause="e2")
        assert a.store.hits == hits + 1
        assert seen == [["a started"], ["a started", "b took t1"]]
        final = await get_run(redis, run_id)
        assert final.history == ["a started", "b took t1", "a noted"]
        assert set(final.tasks) == {f"{run_id}.t2"}
        assert (await fields(settings, run_id))["rev"] == b"3"
        # an event naming B's task, which A's kept state (revision 3, its own commit) never read: not used
        assert f"t:{run_id}.t2" not in a.store.kept[run_id][0].fields
        seen.clear()
        hits = a.store.hits
        await a.decide(run_id, step("t2", None, "a took t2"), cause="e3", want=(f"t:{run_id}.t2",))
        assert seen == [["a noted", "a started", "b took t1"]]  # one decision, on what it read
        assert a.store.hits == hits
        # ignored on the kept state: decided again on a fresh read, then ignored (nothing committed)
        calls: list[int] = []

        def ignore(s: RunState) -> Decision:
            calls.append(1)
            return Decision.ignore("nothing to do")

        await a.decide(run_id, ignore, cause="e4")
        assert len(calls) == 2
        assert (await fields(settings, run_id))["rev"] == b"4"
        await a.db.drain()
        await b.db.drain()
        assert await sent(settings, "cas-probe", run_id) == [(f"{run_id}.t1", 1), (f"{run_id}.t2", 1)]
    finally:
        await redis.delete(
            streams.run_state(run_id), streams.run_events(run_id), streams.agent_stream("cas-probe")
        )
        await redis.aclose()


# --- 7. retention ----------------------------------------------------------------------------------------
async def ttls(settings, run_id: str) -> dict[str, int]:
    r = connect(settings.redis_url)
    try:
        keys = (streams.run_state(run_id), streams.run_events(run_id), streams.run_done(run_id, 1))
        return {key: await r.ttl(key) for key in keys}
    finally:
        await r.aclose()


async def test_an_ended_runs_keys_expire_after_the_retention(settings):
    retention = int(settings.retention_days * 86400)
    run_id = await client.submit(settings, "relay", {})
    assert (await wait_for_end(settings, run_id))[-1].type == "run.completed"
    for key, ttl in (await ttls(settings, run_id)).items():
        assert retention - 120 < ttl <= retention, (key, ttl)


async def test_a_cancelled_runs_late_outcome_does_not_outlive_the_retention(settings):
    retention = int(settings.retention_days * 86400)
    run_id = await client.submit(settings, "slow-pair", {}, {"sleep": 1.5})
    await until(settings, run_id, started(".0.slow"))
    await client.cancel(settings, run_id)
    assert (await wait_for_end(settings, run_id))[-1].type == "run.cancelled"

    async def stopped():  # the running task's outcome (and its done-mark) come after the end
        return any(e["type"] == "task.failed" for e in await raw_events(settings, run_id))

    await eventually(stopped, what="the cancelled task's outcome")
    for key, ttl in (await ttls(settings, run_id)).items():
        assert retention - 120 < ttl <= retention, (key, ttl)


async def test_copies_one_commit_owes_made_at_once_make_one_version(settings):
    """Found by CI (`make test-containers`): a bidirectional run ended `converged` after one turn. The
    notification of its input, handled while the run's first commit was still copying the seed, redid the
    copy that commit owed (a redo sends what any commit of the run still owes); the copy was a HEAD, then
    CopyObject, so both made a version of the document, and the second one (the seed again) read as a turn
    that changed nothing. The copy is create-only now: one version, whoever copies first."""
    from shared.storage import Storage

    workflows = parse_workflows(CAS_WORKFLOWS)
    run_id = f"r-copy-{uuid.uuid4().hex[:12]}"
    key = f"runs/{run_id}/drafts/doc.md"
    redis = connect(settings.redis_url, socket_timeout=None)
    eng = Engine(settings, workflows, Quiet(), sender="supervisor:copy-test")
    state = RunState(run_id=run_id, workflow="cas", pattern="sequential", trace_id=run_id)
    try:
        async with Storage.connect(settings) as storage:
            eng.bind(storage, redis, Outbox(redis))
            seed = await storage.put(
                f"runs/{run_id}/inputs/doc.md", b"first line\n", content_type="text/markdown"
            )
            await asyncio.gather(*(eng.copy_once(state, [(seed, key)]) for _ in range(3)))
            made = await storage.head(key)
        versions = s3_client(settings).list_object_versions(Bucket=settings.bucket, Prefix=key)["Versions"]
        assert [v["VersionId"] for v in versions] == [made.version_id]
        assert made.etag == seed.etag and made.content_type == "text/markdown"
    finally:
        await redis.aclose()
