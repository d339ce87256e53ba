"""Delayed retries and task deadlines: members of one sorted set (`baton:timers`) scored by due time.

A replica owns a due timer by moving its score forward by a lease in one script (whoever moves it first
wins); it acts, then removes it. A replica that dies after taking a timer leaves it to come due again
when the lease runs out. A timer that fails for a transient reason waits for its lease; one that can
never work (its run's workflow is gone) is dropped with an error: neither blocks the timers behind it.
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
# Move a due member's score forward (the lease) if nobody else did: 1 if this caller took it.
TAKE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
  return 1
end
return 0
"""


ENDED_STATUSES = ("completed", "failed", "cancelled")  # (a run still going stays in its status index)


async def run_timers(eng: Engine) -> None:
    """Fire due timers every `ROUND_S`, and drop expired runs from the run index now and then."""
    rounds = 0
    while True:
        try:
            await fire_due(eng)
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
        await asyncio.sleep(ROUND_S)


async def fire_due(eng: Engine) -> int:
    now = utcnow().timestamp()
    due = await eng.redis.zrangebyscore(streams.TIMERS, "-inf", now, start=0, num=100, withscores=True)
    fired = 0
    for member, score in due:
        if not await eng.redis.eval(TAKE, 1, streams.TIMERS, member, repr(score), now + LEASE_S):
            continue  # another replica took it
        try:
            faults.point("supervisor.timer_taken")  # taken, not acted on: it comes due after the lease
            await fire(eng, json.loads(member))
        except TRANSIENT:
            eng.log.warning("timer_failed", timer=member.decode(), exc_info=True)
            continue  # comes due again when its lease runs out
        except Exception:  # noqa: BLE001 - it can never work: drop it, keep the others going
            eng.log.error("timer_dropped", timer=member.decode(), exc_info=True)
        await eng.redis.zrem(streams.TIMERS, member)
        fired += 1
    return fired


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
