"""Completion counting for the baselines: in-process, flushed to Redis by a thread every few ms.

A per-task Redis round trip would slow the baselines down; this costs one lock and an add per task.
"""

from __future__ import annotations

import os
import threading
import time

import redis

DONE_KEY = "bench:done"  # completions so far (INCRBY)
FIRST_KEY = "bench:first"  # hash: consumer process -> time of its first completion
LAST_KEY = "bench:last"  # hash: consumer process -> time of its latest completion (with `last=True`)
PUBLISH_KEY = "bench:publish"  # hash: start, end (a publisher's own clock, after its imports)
CHORD_DONE_KEY = "bench:chord:done"  # hash: at (a chord callback's time), parts (results it received)
FLUSH_EVERY = 0.005


class DoneCounter:
    """`last=True` also records when each process completed its latest task (a burst's end, exactly)."""

    def __init__(self, url: str | None = None, last: bool = False) -> None:
        self.url = url or os.environ["BENCH_REDIS_URL"]
        self.last = last
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._count = 0
        self._last_at = 0.0

    def done(self) -> None:
        pid = os.getpid()
        if self._pid != pid:  # first task of this process (forked children start over)
            self._start(pid)
        with self._lock:
            self._count += 1
            if self.last:
                self._last_at = time.time()

    def _start(self, pid: int) -> None:
        with self._lock:
            if self._pid == pid:
                return
            self._lock = threading.Lock()
            self._pid, self._count = pid, 0
            client = redis.Redis.from_url(self.url)
            client.hsetnx(FIRST_KEY, f"pid-{pid}", repr(time.time()))
            threading.Thread(target=self._flush, args=(client,), daemon=True).start()

    def _flush(self, client: redis.Redis) -> None:
        flushed = 0
        while True:
            time.sleep(FLUSH_EVERY)
            with self._lock:
                count, last_at = self._count, self._last_at
            if count != flushed:
                if self.last:  # the time first: whoever sees the count complete sees the time too
                    client.hset(LAST_KEY, f"pid-{os.getpid()}", repr(last_at))
                client.incrby(DONE_KEY, count - flushed)
                flushed = count


def mark_published(url: str, start: float, end: float) -> None:
    """Record when a publisher sent its first and last message (after its imports and connecting)."""
    redis.Redis.from_url(url).hset(PUBLISH_KEY, mapping={"start": repr(start), "end": repr(end)})
