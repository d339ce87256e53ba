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
FLUSH_EVERY = 0.005


class DoneCounter:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or os.environ["BENCH_REDIS_URL"]
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._count = 0

    def done(self) -> None:
        pid = os.getpid()
        if self._pid != pid:  # first task of this process (forked children start over)
            self._start(pid)
        with self._lock:
            self._count += 1

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
            count = self._count
            if count != flushed:
                client.incrby(DONE_KEY, count - flushed)
                flushed = count
