"""Delayed retries and task deadlines: members of one sorted set (`baton:timers`) scored by due time.

A replica takes up to `BATCH` due timers in one script, moving each one's score forward by a lease (what
one replica took, no other sees as due); it acts on them all at once, then removes those it acted on in
one command, and goes straight on while full batches keep coming due. A replica that dies after taking
timers leaves them to come due again when the lease runs out. A timer that fails for a transient reason
waits for its lease; one that can never work (its run's workflow is gone) is dropped with an error:
neither blocks the timers beside it. (One at a time, a round trip each, a retry storm of 10,000 tasks
failed at once was re-dispatched at ~150 a second: the last run ended 70 s after the burst.)
"""

from __future__ import annotations

import asyncio
import json

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import faults, streams
from shared.events import TaskFailed, new_id, utcnow
from shared.runs import TASK

from .engine import Engine

LEASE_S = 10.0
ROUND_S = 0.2
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
BATCH = 256  # timers one round takes and fires at most
# Take the due members, up to ARGV[3], by moving their scores to ARGV[2] (the lease): they are this caller's.
TAKE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
"""


ENDED_STATUSES = ("completed", "failed", "cancelled")  # (a run still going stays in its status index)


async def run_timers(eng: Engine) -> None:
    """Fire due timers every `ROUND_S` (at once while full batches come due), and drop expired runs from
    the run index now and then."""
    rounds = 0
    while True:
        taken = 0
        try:
            taken = await fire_due(eng)
            if rounds % 300 == 0:
                cutoff = utcnow().timestamp() - eng.retention_s
                await eng.redis.zremrangebyscore(streams.RUN_INDEX, "-inf", cutoff)
                for key in [streams.run_status_index(s) for s in ENDED_STATUSES] + [
                    streams.run_workflow_index(w) for w in eng.workflows.workflows
                ]:
                    await eng.redis.zremrangebyscore(key, "-inf", cutoff)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - Redis briefly away: next round
            eng.log.warning("timers_failed", exc_info=True)
        rounds += 1
        if taken < BATCH:  # a full batch: more may be due now
            await asyncio.sleep(ROUND_S)


async def fire_due(eng: Engine) -> int:
    """Take the due timers (up to `BATCH`), fire them concurrently, remove those fired; returns how many
    were taken."""
    now = utcnow().timestamp()
    taken = await eng.redis.eval(TAKE, 1, streams.TIMERS, repr(now), repr(now + LEASE_S), BATCH)
    if not taken:
        return 0
    done = await asyncio.gather(*(_fire_one(eng, member) for member in taken))
    finished = [member for member, ok in zip(taken, done, strict=True) if ok]
    if finished:
        await eng.redis.zrem(streams.TIMERS, *finished)
    return len(taken)


async def _fire_one(eng: Engine, member: bytes) -> bool:
    """Act on one taken timer: True when it is done with (fired, moot, or dropped as one that can never
    work); False when it failed for a transient reason and comes due again after its lease."""
    try:
        faults.point("supervisor.timer_taken")  # taken, not acted on: it comes due after the lease
        await fire(eng, json.loads(member))
    except TRANSIENT:
        eng.log.warning("timer_failed", timer=member.decode(), exc_info=True)
        return False
    except Exception:  # noqa: BLE001 - it can never work: drop it, keep the others going
        eng.log.error("timer_dropped", timer=member.decode(), exc_info=True)
    return True


async def fire(eng: Engine, timer: dict) -> None:
    loaded = await eng.store.load(timer["run_id"], TASK + timer["task_id"])
    if not loaded.exists:
        return
    state = loaded.view()
    slot = dict.get(state.tasks, timer["task_id"]) if state.active else None
    if slot is None or slot.task.attempt != timer["attempt"]:
        return  # the task finished (or moved on) in time
    if timer["kind"] == "dispatch":
        task = slot.task.model_copy(update={"created_at": utcnow(), "event_id": new_id()})
        await asyncio.gather(
            eng.db.send(streams.run_events(task.run_id), task),
            eng.db.send(eng.dispatch_stream(task), task),
        )
    elif timer["kind"] == "deadline":
        if slot.question is not None:  # its agent waits for a person: the answer's attempt gets a deadline
            return
        wf = eng.workflows.workflows.get(state.workflow)
        timeout = wf.task_timeout if wf is not None else None
        await eng.db.send(
            streams.results_of(state.run_id, eng.settings.result_partitions),
            TaskFailed(
                run_id=state.run_id,
                task_id=slot.task.task_id,
                attempt=slot.task.attempt,
                agent=slot.task.agent,
                retryable=True,
                trace_id=state.trace_id,
                sender=eng.sender,
                error=f"deadline: still running after task_timeout={timeout}s; re-assigned",
            ),
        )
