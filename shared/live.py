"""Following many streams at once, on ONE blocking reader per process: the console's open run pages and
the A2A gateway's tasks in flight.

A follower (`Hub.follow`) first reads its stream's history with plain XRANGEs (COUNT at a time, from
`after`), then joins the `Hub`: one task on one Redis connection, blocked in one XREAD over every stream a
follower watches, that hands each entry to the followers of its stream. So 50 open pages, or 2,000 A2A
tasks, cost one connection and one blocking call, not one of each per follower (each on its own connection,
the gateway held one Redis connection per task in flight: 10,000 tasks meet Redis' default `maxclients`).

When a follower joins with a stream the blocked XREAD does not cover (or from an earlier entry), the hub's
call is ended by `CLIENT UNBLOCK` from the process's other (pooled) connection and issued again with the
new set: Redis' own way to add a key to a blocked read without another connection. After a read that
returned entries the reader waits `GATHER` (25 ms) before the next: on busy streams one read, and one
hand-over to each follower, then carries several entries instead of one each (a live entry may reach its
follower that much later; an entry on a quiet stream is not delayed: the read waiting for it is already
blocked). A follower that joins waits as long before its `CLIENT UNBLOCK`: on busy streams the read has
returned by itself by then and takes the follower along.

A follower's queue is bounded: one that takes its entries slower than its stream grows is cut off once its
queue is full, after the entries it already has; `follow` then returns, and the caller resumes from the
last entry it got (the history path again: nothing lost, nothing twice). The console lets the browser
reconnect with `Last-Event-ID`; `run_events` resumes by itself.

On a Redis Cluster one XREAD cannot cover streams in different hash slots, so the hub runs one reader per
slot that followers watch (each run's stream has its own slot, so in practice one per followed run, all on
one cluster client); a follower joining a slot already being read is picked up when that read returns,
within `CLUSTER_BLOCK` seconds (its history is read at once; only its next live entry may wait that long).

A quiet stream's follower gets an empty chunk every `BLOCK` seconds (the console's keep-alive, which also
notices a closed page). A dropped Redis connection is retried with backoff (shared/waits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.crc import key_slot

from . import streams, waits
from .broker import DATA_FIELD
from .events import Event, each_once_until_end
from .redisconn import connect, is_cluster, pack_wide

BLOCK = 15.0  # seconds the shared XREAD waits; also a quiet follower's keep-alive interval
COUNT = 500  # entries one read returns per stream at most (a long history arrives in chunks)
QUEUE = 2000  # entries a follower may have waiting (for a page, about 1 MB) before it is cut off
UNBLOCK_RETRY = 0.002  # seconds between CLIENT UNBLOCKs while the XREAD is still on its way to Redis
CLUSTER_BLOCK = 1.0  # on a cluster: seconds one slot's XREAD waits (no CLIENT UNBLOCK across nodes)
# Seconds the reader lets entries gather after a read that returned some, before it reads again (above).
# With 50 pages on busy runs: 282-359 us of console CPU per delivered event with none, ~195 with 10 ms,
# ~165 with 25 ms (live p50 2-3.5 -> 7 -> 15 ms); a run's events then reach its page in one or two writes.
GATHER = 0.025
_DATA = DATA_FIELD.encode()


@dataclass(frozen=True)
class Entry:
    """A stream entry as `Hub` hands it on by default: its id and its event's JSON (None without one)."""

    id: str
    data: bytes | None


def raw_entry(entry_id: bytes, fields: dict) -> Entry:
    return Entry(entry_id.decode(), fields.get(_DATA))


def entry_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a comparable pair (`123` is `123-0`, as XREAD reads it)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def full_id(entry_id: str) -> str:
    ms, seq = entry_key(entry_id)
    return f"{ms}-{seq}"


@dataclass(eq=False)
class Page:
    """One follower (an open run page, an A2A task in flight): the last entry handed to it and its bounded
    queue of chunks."""

    key: str
    last: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)  # chunks (lists of entries)
    queued: int = 0  # entries in the queue
    cut: bool = False  # its queue filled up: it gets what is queued, then ends (and resumes from there)


class Hub:
    """One process' live reader: `follow()` serves a follower; `run()` is the reader task (`start()`).
    `convert` turns each entry read (its id and fields) into what followers get (anything with an `id`)."""

    def __init__(
        self,
        redis_url: str,
        control,
        log,
        *,
        block: float = BLOCK,
        queue: int = QUEUE,
        gather: float = GATHER,
        convert: Callable[[bytes, dict], Any] = raw_entry,
        name: str = "baton-live",
    ) -> None:
        self.cluster = is_cluster(redis_url)
        if self.cluster:  # one blocking read per slot: a pool as large as the pages may need
            self.reader = connect(
                redis_url,
                max_connections=4096,
                socket_timeout=CLUSTER_BLOCK + waits.SOCKET_MARGIN,
                socket_connect_timeout=5,
            )
        else:
            # (its XREAD grows with the open pages: 2 arguments each, packed in C past a few dozen)
            self.reader = pack_wide(waits.client(redis_url, block=block, name=name))
        self.slot_readers: dict[int, asyncio.Task] = {}
        self.control = control  # the process' pooled client: history reads and CLIENT UNBLOCK
        self.convert = convert
        self.log, self.block, self.queue_size, self.gather = log, block, queue, gather
        self.pages: dict[str, set[Page]] = {}
        self.cursors: dict[str, str] = {}  # stream -> the entry the next XREAD reads after
        self.armed: dict[str, str] = {}  # the cursors of the XREAD in flight
        self.reader_id: int | None = None
        self.reading = False
        self.dirty = False  # a page joined that the XREAD in flight does not cover
        self.wanted = asyncio.Event()
        self.waker: asyncio.Task | None = None
        self.task: asyncio.Task | None = None

    # --- the reader ----------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.cluster:  # (on a cluster, `join` starts one reader per slot)
            self.task = asyncio.create_task(self.run(), name="live-reader")

    async def close(self) -> None:
        for task in (self.task, self.waker, *self.slot_readers.values()):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.reader.aclose()

    aclose = close  # (contextlib.aclosing)

    async def run(self) -> None:
        retry = waits.Retrier(reconnect_for=float("inf"))
        while True:
            if not self.cursors:
                self.wanted.clear()
                await self.wanted.wait()
                continue
            try:
                if self.reader_id is None:
                    self.reader_id = await self.reader.client_id()
                self.armed, self.dirty = dict(self.cursors), False
                self.reading = True
                try:
                    reply = await self.reader.xread(self.armed, block=int(self.block * 1000), count=COUNT)
                finally:
                    self.reading = False
            except waits.TRANSIENT as exc:
                self.reader_id = None  # a new connection has a new id
                self.log.warning("live_reader_retry", error=str(exc))
                await retry.failed(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. refused by ACL: logged, retried; pages wait
                self.log.error("live_reader_failed", error=str(exc), exc_info=True)
                await asyncio.sleep(waits.BACKOFF_MAX)
                continue
            retry.succeeded()
            for key, entries in reply or ():
                self.deliver(key.decode(), [self.convert(i, f) for i, f in entries], self.armed)
            if reply and self.gather:
                await asyncio.sleep(self.gather)

    async def run_slot(self, slot: int) -> None:
        """On a cluster: the reader of one hash slot's streams, until no open page watches one."""
        retry = waits.Retrier(reconnect_for=float("inf"))
        try:
            while True:
                armed = {k: c for k, c in self.cursors.items() if key_slot(k.encode()) == slot}
                if not armed:
                    return
                try:
                    reply = await self.reader.xread(armed, block=int(CLUSTER_BLOCK * 1000), count=COUNT)
                except waits.TRANSIENT as exc:
                    self.log.warning("live_reader_retry", error=str(exc), slot=slot)
                    await retry.failed(exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - logged, retried; pages wait
                    self.log.error("live_reader_failed", error=str(exc), slot=slot, exc_info=True)
                    await asyncio.sleep(waits.BACKOFF_MAX)
                    continue
                retry.succeeded()
                for key, entries in reply or ():
                    self.deliver(key.decode(), [self.convert(i, f) for i, f in entries], armed)
        finally:
            self.slot_readers.pop(slot, None)

    def deliver(self, key: str, chunk: list, armed: dict[str, str]) -> None:
        if not chunk or key not in self.cursors:
            return  # every page on it has left
        if self.cursors[key] == armed.get(key):  # not moved back by a page that joined meanwhile
            self.cursors[key] = chunk[-1].id
        newest = entry_key(chunk[-1].id)
        for page in list(self.pages.get(key, ())):
            if newest <= entry_key(page.last):
                continue
            last = entry_key(page.last)
            fresh = [e for e in chunk if entry_key(e.id) > last]
            if page.queued + len(fresh) > self.queue_size:
                page.cut = True
                self.leave(page)
                self.log.info("live_page_cut", stream=key, after=page.last, queued=page.queued)
                continue
            page.queue.put_nowait(fresh)
            page.queued += len(fresh)
            page.last = fresh[-1].id

    # --- followers joining and leaving -------------------------------------------------------------------

    def join(self, key: str, last: str) -> Page:
        page = Page(key, last)
        self.pages.setdefault(key, set()).add(page)
        cursor = self.cursors.get(key)
        if cursor is None or entry_key(last) < entry_key(cursor):
            self.cursors[key] = last
            self.dirty = True
            if self.cluster:
                slot = key_slot(key.encode())
                if slot not in self.slot_readers:
                    self.slot_readers[slot] = asyncio.create_task(self.run_slot(slot))
            else:
                self.rearm()
        return page

    def leave(self, page: Page) -> None:
        mine = self.pages.get(page.key)
        if mine is None or page not in mine:
            return
        mine.discard(page)
        if not mine:  # left in the XREAD in flight (harmless), out of the next one
            del self.pages[page.key]
            del self.cursors[page.key]

    def rearm(self) -> None:
        """Have the XREAD cover the current set now: wake the idle reader, or unblock the blocked one."""
        self.wanted.set()
        if self.reading and self.waker is None:
            self.waker = asyncio.create_task(self.wake())

    async def wake(self) -> None:
        # The XREAD may not have reached Redis yet (UNBLOCK then answers 0): try until it is unblocked or
        # has returned by itself (the next call reads the new set anyway). First wait as long as the reader
        # gathers: on busy runs its read returns by itself by then, and the pages that joined meanwhile
        # (one a run) need no UNBLOCK and no extra read.
        unblocked = False
        try:
            await asyncio.sleep(self.gather)
            while self.reading and self.dirty and self.reader_id is not None and not unblocked:
                with contextlib.suppress(*waits.TRANSIENT):
                    unblocked = bool(await self.control.client_unblock(self.reader_id))
                if not unblocked:
                    await asyncio.sleep(UNBLOCK_RETRY)
        finally:
            self.waker = None

    # --- one follower ------------------------------------------------------------------------------------

    async def history(self, key: str, after: str) -> AsyncIterator[list]:
        """The stream after `after`, COUNT entries at a time, until a short read (then the hub's turn)."""
        retry = waits.Retrier()
        last = after
        while True:
            try:
                entries = await self.control.xrange(key, min=f"({last}", count=COUNT)
            except waits.TRANSIENT as exc:
                await retry.failed(exc)
                continue
            retry.succeeded()
            if entries:
                chunk = [self.convert(i, f) for i, f in entries]
                last = chunk[-1].id
                yield chunk
            if len(entries) < COUNT:
                return

    async def follow(self, key: str, after: str = "0") -> AsyncIterator[list]:
        """`key`'s entries after `after`, in chunks: its history, then live ones as the hub reads them; an
        empty chunk after `block` quiet seconds. Returns only if the follower was cut (it took its entries
        too slowly): resume from the last entry it got. Close it (`contextlib.aclosing`) to leave."""
        last = full_id(after)
        async for chunk in self.history(key, last):
            yield chunk
            last = chunk[-1].id
        page = self.join(key, last)
        try:
            while True:
                if page.cut and page.queue.empty():
                    return
                try:
                    async with asyncio.timeout(self.block):
                        chunk = await page.queue.get()
                except TimeoutError:
                    yield []
                    continue
                page.queued -= len(chunk)
                yield chunk
        finally:
            self.leave(page)


async def run_events(hub: Hub, run_id: str, after: str = "0") -> AsyncIterator[Event]:
    """A run's events from its start (or after entry `after`), each once, until its terminal event, over
    `hub` (one made with `raw_entry`): as `baton.client.follow` yields them, without a connection of its
    own. A follower cut for being slow resumes after its last entry; a supervisor's redelivered copy of an
    event (same id) is skipped."""
    async with contextlib.aclosing(_resumed(hub, streams.run_events(run_id), after)) as raws:
        async for event in each_once_until_end(raws):
            yield event


async def _resumed(hub: Hub, key: str, last: str = "0") -> AsyncIterator[bytes | None]:
    """Each entry's event JSON after `last`, for ever: a follower cut for being slow follows again from its
    last entry."""
    while True:
        async with contextlib.aclosing(hub.follow(key, last)) as chunks:
            async for chunk in chunks:
                for entry in chunk:
                    last = entry.id
                    yield entry.data
