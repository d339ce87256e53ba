"""A run's events as server-sent events, fed by ONE reader per console process.

A page first reads the run's history with plain XRANGEs (COUNT at a time, from its `after` or the browser's
`Last-Event-ID`), then joins the `Hub`: one task on one Redis connection, blocked in one XREAD over every
run stream an open page watches, that hands each entry to the pages on its stream. So 50 open pages cost
one connection and one blocking call, not 50 of each.

When a page joins with a stream the blocked XREAD does not cover (or from an earlier entry), the hub's call
is ended by `CLIENT UNBLOCK` from the console's other connection and issued again with the new set: Redis'
own way to add a key to a blocked read without another connection. After a read that returned entries the
reader waits `GATHER` (25 ms) before the next: on busy runs one read, and one write to each page, then
carries several entries instead of one each (a live event may reach its page that much later; an entry on
a quiet page is not delayed: the read waiting for it is already blocked). A page that joins waits as long
before its `CLIENT UNBLOCK`: on busy runs the read has returned by itself by then and takes the page along.

A page's queue is bounded: a browser that reads slower than its run writes is cut off once its queue is
full, after the entries it already has, and its EventSource reconnects with `Last-Event-ID` (the history
path again: nothing lost, nothing twice).

On a Redis Cluster one XREAD cannot cover streams in different hash slots, so the hub runs one reader per
slot that open pages watch (each run's stream has its own slot, so in practice one per open run, all on
one cluster client); a page joining a slot already being read is picked up when that read returns, within
`CLUSTER_BLOCK` seconds (its history is read at once; only its next live entry may wait that long).

Each event goes out with its stream entry id as the SSE `id`; a quiet page gets a comment line every
`BLOCK` seconds (which also notices a closed page); the stream ends with `event: end` after the run's
terminal event. A dropped Redis connection is retried with backoff (shared/waits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.crc import key_slot

from shared import streams, waits
from shared.broker import DATA_FIELD
from shared.events import TERMINAL_RUN_EVENTS
from shared.redisconn import connect, is_cluster, pack_wide

BLOCK = 15.0  # seconds the shared XREAD waits; also a quiet page's keep-alive interval
COUNT = 500  # entries one read returns per stream at most (a long history arrives in chunks)
QUEUE = 2000  # entries a page may have waiting for its browser (about 1 MB) before it is cut off
UNBLOCK_RETRY = 0.002  # seconds between CLIENT UNBLOCKs while the XREAD is still on its way to Redis
CLUSTER_BLOCK = 1.0  # on a cluster: seconds one slot's XREAD waits (no CLIENT UNBLOCK across nodes)
# Seconds the reader lets entries gather after a read that returned some, before it reads again (above).
# With 50 pages on busy runs: 282-359 us of console CPU per delivered event with none, ~195 with 10 ms,
# ~165 with 25 ms (live p50 2-3.5 -> 7 -> 15 ms); a run's events then reach its page in one or two writes.
GATHER = 0.025


def entry_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a comparable pair (`123` is `123-0`, as XREAD reads it)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def full_id(entry_id: str) -> str:
    ms, seq = entry_key(entry_id)
    return f"{ms}-{seq}"


@dataclass(frozen=True)
class Entry:
    id: str
    text: str  # the SSE message ("" for an entry without an event)
    terminal: bool


_DATA = DATA_FIELD.encode()


def to_entry(entry_id: bytes, fields: dict) -> Entry:
    eid = entry_id.decode()
    raw = fields.get(_DATA)
    if raw is None:
        return Entry(eid, "", False)
    event = json.loads(raw)
    text = raw.decode().strip()
    if event and "entry" not in event and "\n" not in text and "\r" not in text:
        data = f'{text[:-1]},"entry":"{eid}"}}'  # the event's own JSON plus its entry, not encoded again
    else:  # an entry written by hand: spread over lines, or naming an entry already
        data = json.dumps({**event, "entry": eid})
    return Entry(eid, f"id: {eid}\ndata: {data}\n\n", event.get("type") in TERMINAL_RUN_EVENTS)


@dataclass(eq=False)
class Page:
    """One open run page: the last entry handed to it and its bounded queue of chunks."""

    key: str
    last: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)  # chunks (lists of entries)
    queued: int = 0  # entries in the queue
    cut: bool = False  # its queue filled up: it gets what is queued, then ends (the browser reconnects)


class Hub:
    """The console's one live reader: `sse()` serves a page; `run()` is the reader task (`start()`)."""

    def __init__(
        self,
        redis_url: str,
        control,
        log,
        *,
        block: float = BLOCK,
        queue: int = QUEUE,
        gather: float = GATHER,
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
            self.reader = pack_wide(waits.client(redis_url, block=block, name="baton-console:live"))
        self.slot_readers: dict[int, asyncio.Task] = {}
        self.control = control  # the console's pooled client: history reads and CLIENT UNBLOCK
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
            self.task = asyncio.create_task(self.run(), name="console-live-reader")

    async def close(self) -> None:
        for task in (self.task, self.waker, *self.slot_readers.values()):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.reader.aclose()

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
                self.log.warning("console_live_reader_retry", error=str(exc))
                await retry.failed(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. refused by ACL: logged, retried; pages wait
                self.log.error("console_live_reader_failed", error=str(exc), exc_info=True)
                await asyncio.sleep(waits.BACKOFF_MAX)
                continue
            retry.succeeded()
            for key, entries in reply or ():
                self.deliver(key.decode(), [to_entry(i, f) for i, f in entries], self.armed)
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
                    self.log.warning("console_live_reader_retry", error=str(exc), slot=slot)
                    await retry.failed(exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - logged, retried; pages wait
                    self.log.error("console_live_reader_failed", error=str(exc), slot=slot, exc_info=True)
                    await asyncio.sleep(waits.BACKOFF_MAX)
                    continue
                retry.succeeded()
                for key, entries in reply or ():
                    self.deliver(key.decode(), [to_entry(i, f) for i, f in entries], armed)
        finally:
            self.slot_readers.pop(slot, None)

    def deliver(self, key: str, chunk: list[Entry], armed: dict[str, str]) -> None:
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
                self.log.info("console_live_page_cut", stream=key, after=page.last, queued=page.queued)
                continue
            page.queue.put_nowait(fresh)
            page.queued += len(fresh)
            page.last = fresh[-1].id

    # --- pages joining and leaving -------------------------------------------------------------------

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

    # --- one page ------------------------------------------------------------------------------------

    async def history(self, key: str, after: str) -> AsyncIterator[list[Entry]]:
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
                chunk = [to_entry(i, f) for i, f in entries]
                last = chunk[-1].id
                yield chunk
            if len(entries) < COUNT:
                return

    async def sse(self, run_id: str, after: str = "0") -> AsyncIterator[str]:
        key, last = streams.run_events(run_id), full_id(after)
        # The reconnect delay goes out with the first message, not in a write of its own (the browser knows
        # the stream is open from the response's headers).
        head = "retry: 1000\n\n"
        async for chunk in self.history(key, last):
            text, ended = _text(chunk)
            yield head + text
            head = ""
            if ended:
                return
            last = chunk[-1].id
        page = self.join(key, last)
        try:
            while True:
                if page.cut and page.queue.empty():
                    return  # the browser reconnects after the last entry it got
                try:
                    async with asyncio.timeout(self.block):
                        chunk = await page.queue.get()
                except TimeoutError:
                    yield head + ": keep-alive\n\n"
                    head = ""
                    continue
                page.queued -= len(chunk)
                text, ended = _text(chunk)
                yield head + text
                head = ""
                if ended:
                    return
        finally:
            self.leave(page)


def _text(chunk: list[Entry]) -> tuple[str, bool]:
    """A chunk's SSE messages, up to and including a terminal event, then `event: end`."""
    out = []
    for entry in chunk:
        out.append(entry.text)
        if entry.terminal:
            out.append("event: end\ndata: {}\n\n")
            return "".join(out), True
    return "".join(out), False
