"""The benchmark's run watcher against a real Redis: a run counts as ended however many of its own events
follow its end (a co-editing burst's 10,000 runs all completed, and the watcher missed 33 of them)."""

from __future__ import annotations

import secrets

import redis

from bench.runs import RunWatch
from shared import streams
from shared.broker import encode
from shared.events import RunCompleted, RunStarted, TaskCompleted


def _record(client: redis.Redis, run_id: str, events) -> None:
    for event in events:
        client.xadd(streams.run_events(run_id), encode(event))


def _started(run_id: str) -> RunStarted:
    return RunStarted(run_id=run_id, workflow="co-edit", pattern="bidirectional")


def test_a_run_ended_before_its_last_turns_outcomes_counts_as_ended(settings):
    client = redis.Redis.from_url(settings.redis_url)
    tag = secrets.token_hex(3)
    late, unfinished = f"r-watch-{tag}-late", f"r-watch-{tag}-open"
    turns = [TaskCompleted(run_id=late, task_id=f"{late}.turn.{i}", agent="a") for i in range(1, 7)]
    ended = RunCompleted(run_id=late, outputs={})
    _record(client, late, [_started(late), ended, *turns])
    client.zadd(streams.run_status_index("completed"), {late: 1.0})
    _record(client, unfinished, [_started(unfinished), *turns[:4]])
    client.zadd(streams.run_status_index("running"), {unfinished: 1.0})
    try:
        watch = RunWatch(client, [late, unfinished])
        assert watch.wait(0.2) is False
        assert set(watch.ended) == {late} and watch.pending == {unfinished}
        assert watch.ended[late][0] == "run.completed"
        assert abs(watch.ended[late][1] - ended.created_at.timestamp()) < 1e-3
    finally:
        client.delete(streams.run_events(late), streams.run_events(unfinished))
        client.zrem(streams.run_status_index("completed"), late)
        client.zrem(streams.run_status_index("running"), unfinished)
        client.close()
