"""Batched consumption of a stream, for handlers that must keep up with many small messages (the worker).

FastStream's per-message path costs a few hundred microseconds of Python and three or four round trips to
Redis per message (read, one XADD per event, XACK). Here one consumer reads up to `size` entries per
XREADGROUP and runs their handlers concurrently (at most `size` in flight), and every write the handlers
make goes through an `Outbox`: entries (XADD) and acknowledgements (XACK) queued during one turn of the
event loop are sent in one pipeline, one round trip for the lot (group commit).

The per-message contract is the same as on the FastStream path:
- each entry is decoded and validated on its own; a malformed one (bad JSON, not an object, oversized,
  failed validation) goes to the dead-letter stream with its reason and is acknowledged, and the others are
  handled as usual;
- an entry is acknowledged only after everything its handler wrote is durable (its XACK is queued once
  the handler's writes have been confirmed, so it always travels in a later pipeline);
- a handler that raises leaves its entry pending, with the error recorded, for the reclaimer; while a
  handler runs, its entry's idle time is reset (the heartbeat), as on the FastStream path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

try:
    import hiredis
except ImportError:  # redis-py works without it, only slower
    hiredis = None

import structlog
from pydantic import BaseModel, TypeAdapter
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

from . import metrics, streams, telemetry
from .broker import (
    CURRENT_CLAIM,
    CURRENT_ENTRY,
    DATA_FIELD,
    RETAKE,
    Reclaimed,
    Subscription,
    bind_handler,
    create_group,
    dead_letter_event,
    decode_event,
    encode,
    keep_claimed,
    payload_of,
    record_error,
    registry,
)
from .errors import NotReplicated
from .redisconn import connect

log = structlog.get_logger()

READ_ERROR_BACKOFF = 1.0
# A command refused by a cluster without running: sent again once the slot map is refreshed.
REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)
WAIT_MS = 2000  # most a pipeline waits for its replicas (loopback: well under a millisecond)
CLUSTER_ATTEMPTS = 8  # ~6 s of backoff: a master's replica takes over within a few node timeouts
PIPELINE_TIMEOUT = 10.0
READ_COMMANDS = frozenset({"exists"})  # identical ones queued together share one command
# Appends one `__data__` entry per event to the stream KEYS[1], in order, and returns their ids; in the same
# script (so atomically, even if the process dies right after) sets the hash fields that mark some of
# them as sent. ARGV: n, the n entries, then per mark: its hash's index in KEYS, field, value.
XADD_ALL = (
    "local n = tonumber(ARGV[1]) local ids = {} "
    "for i = 1, n do ids[i] = redis.call('XADD', KEYS[1], '*', '__data__', ARGV[i + 1]) end "
    "for j = n + 2, #ARGV, 3 do redis.call('HSET', KEYS[tonumber(ARGV[j])], ARGV[j + 1], ARGV[j + 2]) end "
    "return ids"
)


class Outbox:
    """Group commit for one process: the commands queued in one loop turn go to Redis in one pipeline.

    `send` (XADD of an event) and `call` (another command, e.g. EXISTS) return a future resolved with the
    reply once the pipeline has run (or failed with its error); `ack` queues an acknowledgement. One pipeline
    is in flight at a time and whatever is queued meanwhile goes in the next. In a pipeline the `call`s run
    first, then each stream's entries in the order they were sent, then the acknowledgements. The entries
    for one stream are appended by one small Lua script (plain XADDs, in order): a pipelined command costs
    the client ~10 µs of redis-py, an entry in the script ~1 µs.
    """

    def __init__(
        self, redis, timeout: float = PIPELINE_TIMEOUT, wait_replicas: int = 0, pipelines: int = 1
    ) -> None:
        self.redis = redis
        self.timeout = timeout
        # Pipelines in flight at once, each on its own connection: with more than one, what is queued while
        # one is out goes in another at once (Redis works on one while the process prepares the next), but
        # two pipelines' commands may run in either order: only for callers that await what they depend on.
        self.pipelines = pipelines
        # With replicas to wait for, each pipeline ends with WAIT on every connection it wrote on: its
        # replies (and so every acknowledgement that follows) come once that many replicas have the writes.
        self.wait = ReplicaWait(wait_replicas) if wait_replicas else None
        # stream -> (__data__, mark or None, future)
        self._entries: dict[str, list[tuple[bytes, tuple | None, asyncio.Future]]] = {}
        self._ops: list[tuple[str, tuple, asyncio.Future]] = []
        self._reads: dict[tuple, asyncio.Future] = {}  # identical reads queued together share one command
        self._acks: dict[tuple[str, str], list[bytes | str]] = {}
        self._flushers: set[asyncio.Task] = set()
        self._pending = False  # a flusher is created and has not taken its first batch yet

    def call(self, command: str, *args) -> asyncio.Future:
        if command in READ_COMMANDS and (command, *args) in self._reads:
            return self._reads[(command, *args)]
        future = asyncio.get_running_loop().create_future()
        self._ops.append((command, args, future))
        if command in READ_COMMANDS:
            self._reads[(command, *args)] = future
        self._schedule()
        return future

    def send(
        self,
        stream: str,
        event: BaseModel | None,
        mark: tuple[str, str, str] | None = None,
        data: bytes | None = None,
    ) -> asyncio.Future:
        """Append `event` to `stream` with the next pipeline. `mark` (hash key, field, value) is set in the
        same script as the append: either both happen or neither. `data`: the event's JSON, if the caller
        has it already."""
        future = asyncio.get_running_loop().create_future()
        body = data if data is not None else encode(event)[DATA_FIELD]
        self._entries.setdefault(stream, []).append((body, mark, future))
        self._schedule()
        return future

    async def publish(self, stream: str, event: BaseModel) -> None:
        """Send and wait until it is written."""
        await self.send(stream, event)

    def ack(self, stream: str, group: str, entry_id: bytes | str) -> None:
        self._acks.setdefault((stream, group), []).append(entry_id)
        self._schedule()

    async def drain(self) -> None:
        """Wait until everything queued so far has been written."""
        while self._flushers:
            await asyncio.shield(next(iter(self._flushers)))

    def _schedule(self) -> None:
        if len(self._flushers) < self.pipelines and (len(self._flushers) == 0 or not self._pending):
            self._pending = True  # (one flusher waits to take what this loop turn queues)
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flushers.add(task)

    async def _flush(self) -> None:
        self._pending = False
        try:
            while self._entries or self._ops or self._acks:
                entries, self._entries = self._entries, {}
                ops, self._ops = self._ops, []
                acks, self._acks = self._acks, {}
                self._reads = {}
                commands = [(command.upper(), *args) for command, args, _future in ops]
                for stream, items in entries.items():
                    commands.append(_append_command(stream, items))
                for (stream, group), ids in acks.items():
                    commands.append(("XACK", stream, group, *ids))
                try:
                    async with asyncio.timeout(self.timeout):  # one deadline for the round trip
                        replies = await self._pipeline(commands)
                except Exception as exc:  # noqa: BLE001 - connection lost: each waiting task decides
                    replies = [exc] * (len(entries) + len(ops) + len(acks))
                    if acks:  # those entries stay pending: the reclaimer redelivers them
                        log.warning("ack_failed", error=str(exc), entries=sum(len(i) for i in acks.values()))
                for (_command, _args, future), reply in zip(ops, replies, strict=False):
                    _resolve(future, reply)
                for items, reply in zip(entries.values(), replies[len(ops) :], strict=False):
                    for i, (_data, _mark, future) in enumerate(items):
                        _resolve(future, reply if isinstance(reply, BaseException) else reply[i])
        finally:  # (at once, not in a done-callback: a command queued meanwhile must start one)
            self._flushers.discard(asyncio.current_task())

    async def _pipeline(self, commands: list[tuple]) -> list:
        """Send the commands in one write and read their replies, raw (an error reply becomes its exception).

        redis-py's own pipeline costs ~3 µs more per command (its command stack, response callbacks and a
        chain of awaits per reply), which is a tenth of a task's cost here.
        """
        if isinstance(self.redis, RedisCluster):
            return await self._cluster_pipeline(commands)
        async with _held(self.redis) as connection:
            return await _exchange(connection, commands, self.wait)

    async def _cluster_pipeline(self, commands: list[tuple]) -> list:
        """The same on a cluster: one pipeline per node, to the nodes at once. A command refused because its
        slot is elsewhere or the cluster is failing over (MOVED, TRYAGAIN, CLUSTERDOWN: it did not run)
        is sent again once the slot map is refreshed; one refused with ASK (its slot is being migrated and
        its key is not on the old node any more) goes at once to the node ASK names, after ASKING, as
        Redis Cluster's protocol asks. A lost connection fails that node's commands, as on one server (the
        callers decide: nothing is acknowledged that was not written)."""
        cluster: RedisCluster = self.redis
        replies: list = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(CLUSTER_ATTEMPTS):
            await cluster.initialize()
            groups: dict = {}
            for i in todo:
                slot = cluster.keyslot(_key_of(commands[i]))
                groups.setdefault(cluster.nodes_manager.get_node_from_slot(slot), []).append(i)
            failed = await self._exchange_groups(groups, commands, replies)
            asked: dict = {}  # (host, port) -> indexes
            for i in todo:
                if isinstance(replies[i], AskError):
                    asked.setdefault(replies[i].node_addr, []).append(i)
            if asked:
                targets = {cluster.get_node(host=h, port=p): idx for (h, p), idx in asked.items()}
                unknown = targets.pop(None, [])  # (a node the map does not know yet: refreshed below)
                failed |= await self._exchange_groups(targets, commands, replies, asking=True)
                failed |= bool(unknown)
            again = [i for i in todo if isinstance(replies[i], REDIRECTED)]
            if failed or again:
                await cluster.nodes_manager.initialize()  # a node failed or a slot moved: learn the map
            if not again:
                return replies
            todo = again
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        return replies

    async def _exchange_groups(self, groups: dict, commands: list[tuple], replies: list, asking=False):
        """Each node's commands in one pipeline, the nodes at once; each reply into `replies`. With
        `asking`, each command is preceded by ASKING (which lets the next command in on an importing
        node). True if a node's exchange failed as a whole."""

        def batch(idx: list[int]) -> list[tuple]:
            if not asking:
                return [commands[i] for i in idx]
            return [c for i in idx for c in (("ASKING",), commands[i])]

        outcomes = await asyncio.gather(
            *(_node_exchange(node, batch(idx), self.wait) for node, idx in groups.items()),
            return_exceptions=True,
        )
        step = 2 if asking else 1
        for idx, outcome in zip(groups.values(), outcomes, strict=True):
            for j, i in enumerate(idx):
                replies[i] = outcome if isinstance(outcome, BaseException) else outcome[j * step + step - 1]
        return any(isinstance(o, BaseException) for o in outcomes)


class ReplicaWait:
    """WAIT for `replicas` replicas after a pipeline, or for as many as the master has when it has fewer
    (a promoted master before the old one is back as its replica): then every copy that exists has the
    writes, and no failover can lose them (there is no one to fail over to). Each master's count of
    replicas is learned from ROLE and looked at again every `refresh` seconds."""

    def __init__(self, replicas: int, timeout_ms: int = WAIT_MS, refresh: float = 1.0) -> None:
        self.replicas, self.timeout_ms, self.refresh = replicas, timeout_ms, refresh
        self._present: dict[tuple, tuple[int, float]] = {}  # (host, port) -> (replicas, when learned)

    async def command(self, connection) -> tuple | None:
        """The WAIT to end this connection's pipeline with (None: its master has no replica)."""
        present, learned = self._present.get((connection.host, connection.port), (0, 0.0))
        if time.monotonic() - learned > self.refresh:
            present = await self.learn(connection)
        return ("WAIT", min(self.replicas, present), self.timeout_ms) if present else None

    async def learn(self, connection) -> int:
        await connection.send_packed_command(_pack(connection, [("ROLE",)]))
        role = await connection.read_response()
        present = len(role[2]) if role and role[0] == b"master" else 0
        self._present[(connection.host, connection.port)] = (present, time.monotonic())
        return present


async def _exchange(connection, commands: list[tuple], wait: ReplicaWait | None = None) -> list:
    """Send the commands (then WAIT, if asked) and read their replies. Replicas short of the WAIT fail
    every command of the pipeline: written on the master, maybe lost by a failover, so not acknowledged."""
    replies, acked, wanted = await _exchange_confirmed(connection, commands, wait)
    if acked < wanted:
        within = f"within {wait.timeout_ms} ms"
        short = NotReplicated(f"{acked} of {wanted} replicas confirmed the writes {within}")
        replies = [short] * len(commands)
    return replies


async def _exchange_confirmed(
    connection, commands: list[tuple], wait: ReplicaWait | None
) -> tuple[list, int, int]:
    """The commands' replies (an error reply as its exception), then how many replicas confirmed them
    and how many were waited for (0 and 0: no WAIT)."""
    wait_command = await wait.command(connection) if wait is not None else None
    await connection.send_packed_command(
        _pack(connection, commands + [wait_command] if wait_command else commands)
    )
    replies: list = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    if not wait_command:
        return replies, 0, 0
    acked = await connection.read_response()
    if acked < wait_command[1]:
        await wait.learn(connection)  # maybe a replica went away: the next pipelines wait for the rest
    return replies, acked, wait_command[1]


async def _node_exchange(node, commands: list[tuple], wait: ReplicaWait | None = None) -> list:
    async with _held(node=node) as connection:
        return await _exchange(connection, commands, wait)


@contextlib.asynccontextmanager
async def _held(redis=None, key: str | None = None, node=None):
    """A connection for one exchange: from `redis`'s pool, or on a cluster from `node` or the node that
    serves `key`. One whose exchange failed is closed, never reused (replies may be left unread)."""
    if node is None and isinstance(redis, RedisCluster):
        node = redis.get_node_from_key(key)
    if node is not None:
        connection = node.acquire_connection()
    else:
        connection = await redis.connection_pool.get_connection()
    try:
        yield connection
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        if node is not None:
            node.release(connection)
        else:
            await redis.connection_pool.release(connection)


async def confirm_delivery(
    redis, wait: ReplicaWait, stream: str, group: str, consumer: str, entry: str
) -> None:
    """For FastStream's per-message path, which reads on connections of its own: re-take the entry just
    delivered (XCLAIM JUSTID, a write after the delivery), then WAIT on that connection, so the replicas
    hold the entry and its delivery before the handler acts on it (`BatchConsumer._read_replicated`)."""
    async with _held(redis, stream) as connection:
        _taken, acked, wanted = await _exchange_confirmed(
            connection, [("EVAL", RETAKE, 1, stream, group, consumer, entry)], wait
        )
    if acked < wanted:
        log.warning("read_not_replicated", stream=stream, replicas=acked, wanted=wanted)


def _key_of(command: tuple):
    """The key a command routes by: EVAL's first key, else its first argument."""
    if command[0] == "EVAL":
        return command[3]
    return command[1]


def _pack(connection, commands: list[tuple]) -> list[bytes]:
    """The commands in the Redis protocol: hiredis's C packer when it is there (redis-py's asyncio
    connection packs in Python, about a tenth of a worker's CPU at full load)."""
    if hiredis is None:
        return connection.pack_commands(commands)
    return [b"".join(hiredis.pack_command(command) for command in commands)]


def _append_command(stream: str, items: list[tuple[bytes, tuple | None, asyncio.Future]]) -> tuple:
    keys: dict[str, int] = {stream: 1}  # key -> its 1-based index in KEYS
    marks: list = []
    for _data, mark, _future in items:
        if mark is not None:
            key, field, value = mark
            marks += [keys.setdefault(key, len(keys) + 1), field, value]
    return ("EVAL", XADD_ALL, len(keys), *keys, len(items), *(data for data, _m, _f in items), *marks)


def _resolve(future: asyncio.Future, reply) -> None:
    if future.done():  # its task was cancelled
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)


class BatchConsumer:
    """One consumer of one stream in one consumer group, with up to `size` handlers in flight."""

    def __init__(
        self,
        *,
        stream: str,
        group: str,
        consumer: str,
        size: int,
        model: Any,
        handler: Callable[[Any], Awaitable[Any]],
        service: str,
        max_event_bytes: int,
        heartbeat_s: float,
        block_ms: int = 1000,
        read: int | None = None,
        gate: Callable[[], Awaitable[None]] | None = None,
        start: str = "0",
    ) -> None:
        self.stream, self.group, self.consumer = stream, group, consumer
        self._handled = {o: metrics.HANDLED.labels(stream, o) for o in ("ok", "error", "dead_lettered")}
        self.start_at = start  # where the group reads from when it is first created
        self.size = size
        self.read = read or size  # most entries one XREADGROUP takes
        self.adapter = TypeAdapter(model)
        self.handler = handler
        self.service = service
        self.max_event_bytes = max_event_bytes
        self.heartbeat_s = heartbeat_s
        self.block_ms = block_ms
        self.gate = gate  # awaited before each read: returns while this consumer is to read its stream
        self.redis = None
        self.reads = None  # the client of its blocking reads (`Batched`: not the commands' pool)
        self.outbox: Outbox | None = None
        self._inflight: dict[asyncio.Task, bytes] = {}
        self._lost: set[bytes] = set()  # entries whose handler was stopped: another consumer took them
        self._freed = asyncio.Event()  # set when a handler finishes (O(1), where asyncio.wait is O(n))
        self._tasks: list[asyncio.Task] = []

    async def declare(self, redis, outbox: Outbox, reads=None) -> None:
        """Create the group if needed, reading from the stream's start unless told otherwise
        (`create_group`). `reads`: the client its blocking XREADGROUPs use (default: `redis`)."""
        self.redis, self.outbox, self.reads = redis, outbox, reads or redis
        await create_group(redis, self.stream, self.group, self.start_at)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read_loop()), asyncio.create_task(self._heartbeat())]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop reading, give running handlers `grace` seconds, then write what they queued."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._inflight:
            _done, pending = await asyncio.wait(list(self._inflight), timeout=grace)
            for task in pending:  # left pending in Redis: redelivered by the reclaimer
                task.cancel()
        if self.outbox is not None:
            await self.outbox.drain()

    async def _read_loop(self) -> None:
        while True:
            if self.gate is not None:
                await self.gate()
            free = min(self.size - len(self._inflight), self.read)
            if free <= 0:
                self._freed.clear()
                await self._freed.wait()
                continue
            try:
                async with asyncio.timeout(self.block_ms / 1000 + PIPELINE_TIMEOUT + WAIT_MS / 1000):
                    if self.outbox.wait is None:
                        reply = await self.reads.xreadgroup(
                            self.group, self.consumer, {self.stream: ">"}, count=free, block=self.block_ms
                        )
                    else:
                        reply = await self._read_replicated(free)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: wait and read again
                log.error("read_failed", stream=self.stream, group=self.group, error=str(exc))
                if isinstance(self.reads, RedisCluster):  # (a failover: learn who serves the stream now)
                    with contextlib.suppress(Exception):
                        await self.reads.nodes_manager.initialize()
                await asyncio.sleep(READ_ERROR_BACKOFF)
                continue
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    task = asyncio.create_task(self._handle(entry_id, fields))
                    self._inflight[task] = entry_id
                    task.add_done_callback(self._finished)

    async def _read_replicated(self, count: int) -> list:
        """XREADGROUP, then WAIT on the same connection (BATON_REDIS_WAIT_REPLICAS): the entries are
        handled only once the replicas hold them and their delivery to this consumer. Without it, a master
        killed just after a read could take with it an entry a handler was already acting on (a worker's
        claim on the attempt then named an entry no one would ever redeliver, and the task's next copy was
        dropped as a duplicate: the run never ended). A WAIT that comes back short is logged and the
        entries handled anyway, as they would be without replicas to wait for."""
        read = (
            "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count, "BLOCK", self.block_ms,
            "STREAMS", self.stream, ">",
        )  # fmt: skip
        async with _held(self.reads, self.stream) as connection:
            (raw,), _acked, _wanted = await _exchange_confirmed(connection, [read], None)
            if isinstance(raw, BaseException):
                raise raw
            if raw:  # (not pipelined with the read: a read served by another client's XADD, once blocked,
                # would run a WAIT queued behind it before its own delivery counted as this client's write)
                _none, acked, wanted = await _exchange_confirmed(connection, [], self.outbox.wait)
                if acked < wanted:
                    log.warning("read_not_replicated", stream=self.stream, replicas=acked, wanted=wanted)
        pairs = functools.partial(zip, strict=True)
        return [
            (stream, [(entry_id, dict(pairs(fields[::2], fields[1::2]))) for entry_id, fields in items])
            for stream, items in (raw.items() if isinstance(raw, dict) else raw or ())  # (RESP3: a map)
        ]

    def _finished(self, task: asyncio.Task) -> None:
        self._inflight.pop(task, None)
        self._freed.set()

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        # (its own task, its own copy of the read loop's context: no ids of another entry are bound)
        raw = payload_of(fields)
        event, reason = decode_event(raw, self.adapter, self.max_event_bytes)
        try:
            if reason is not None:
                await self._dead_letter(entry_id, raw, reason)
            else:
                CURRENT_ENTRY.set(entry_id.decode())
                CURRENT_CLAIM.set((self.redis, self.stream, self.group, self.consumer))
                await self.handler(event)
        except Reclaimed as exc:  # another consumer has it now: not ours to record or acknowledge
            log.warning(
                "entry_reclaimed_meanwhile", stream=self.stream, message_id=entry_id.decode(), error=str(exc)
            )
            return
        except asyncio.CancelledError:
            if entry_id not in self._lost:
                raise  # (stopping)
            self._lost.discard(entry_id)
            log.warning(
                "handler_stopped_entry_reclaimed",
                stream=self.stream,
                message_id=entry_id.decode(),
                error="another consumer took the entry while this one handled it (stalled, or cut off from "
                "Redis, past the reclaim time): theirs to handle now",
            )
            return
        except Exception as exc:  # noqa: BLE001 - left pending: the reclaimer redelivers it
            log.exception("handler_failed", stream=self.stream, message_id=entry_id.decode())
            self._handled["error"].inc()
            await record_error(self.redis, self.stream, self.group, entry_id.decode(), exc)
            return
        self.outbox.ack(self.stream, self.group, entry_id)
        if reason is None:
            self._handled["ok"].inc()

    async def _dead_letter(self, entry_id: bytes, raw: bytes, reason: str) -> None:
        letter = dead_letter_event(self.stream, self.group, entry_id.decode(), self.service, reason, raw)
        await self.outbox.publish(streams.DLQ, letter)
        metrics.DEAD_LETTERED.labels(self.stream).inc()
        self._handled["dead_lettered"].inc()
        log.warning("dead_lettered", stream=self.stream, reason=reason, message_id=letter.message_id)

    async def _heartbeat(self) -> None:
        """Keep every entry in flight claimed (one XCLAIM JUSTID for the lot), so none is reclaimed; stop
        the handlers of those another consumer took meanwhile (fencing: one runner per entry)."""
        await keep_claimed(
            self.redis,
            self.stream,
            self.group,
            self.consumer,
            self._inflight.values,
            self.heartbeat_s,
            on_lost=self._stop_lost,
        )

    def _stop_lost(self, lost: set[str]) -> None:
        for task, entry_id in list(self._inflight.items()):
            if entry_id.decode() in lost and not task.done():
                self._lost.add(entry_id)
                task.cancel()


class InOrder:
    """Runs the calls for one key one at a time, in the order they were made; other keys run meanwhile.

    For a batched consumer whose handlers must not overlap per key (the supervisor: the events of one
    run). Tasks start in the order their entries were read and asyncio's locks are first come, first
    served, so one key's events are handled in stream order.
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                return await call()
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


class Batched:
    """The batched subscriptions of one service: one outbox, one `BatchConsumer` per stream.

    `subscribe` also registers the handler with the reclaimer (as `shared.broker.subscribe` does), so
    entries left pending are redelivered to it one by one. `attach` ties the consumers to the app's
    lifespan: groups are created before the service reports ready, reading starts once the broker (which
    handlers may use) is connected, and on shutdown running handlers get a few seconds to finish.
    """

    def __init__(self, settings, service: str) -> None:
        self.settings, self.service = settings, service
        self.consumers: list[BatchConsumer] = []
        self._outbox: Outbox | None = None
        self._redis = None
        self._reads = None

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("the outbox exists once the service has started")
        return self._outbox

    def subscribe(
        self,
        broker,
        stream: str,
        group: str,
        model: Any,
        handler,
        size: int | None = None,
        max_event_bytes: int | None = None,
        timeout: float | None = None,
        ahead: int = 1,
        gate: Callable[[], Awaitable[None]] | None = None,
        start: str = "0",
    ) -> None:
        """`size`: most entries read at once for this stream; default `settings.batch`. `ahead`: up to
        this many reads' entries in flight (more than 1: the next read goes out, and its entries are
        handled, while the last ones wait for Redis).
        `max_event_bytes`: larger entries are dead-lettered; default `settings.max_event_bytes`.
        `timeout`: the handler's time limit; default `settings.handler_timeout_s`. `gate`: awaited before
        each read (the supervisor's share of the results partitions: `services/supervisor/shares.py`).
        `start`: where the group reads from when it is first created (`create_group`)."""
        # Each entry in its own consumer span, named as FastStream's telemetry middleware names them
        bound = telemetry.traced(stream, bind_handler(handler, timeout or self.settings.handler_timeout_s))
        consumer = BatchConsumer(
            stream=stream,
            group=group,
            consumer=self.settings.consumer,
            size=(size or self.settings.batch) * ahead,
            read=size or self.settings.batch,
            model=model,
            handler=bound,
            service=self.service,
            max_event_bytes=max_event_bytes or self.settings.max_event_bytes,
            heartbeat_s=self.settings.heartbeat_s,
            gate=gate,
            start=start,
        )
        self.consumers.append(consumer)
        registry(broker).append(Subscription(stream, group, bound, consumer.adapter, start))

    def attach(self, app) -> None:
        @app.on_startup
        async def _declare() -> None:
            # Its own client, without redis-py's per-command socket timeout (a timer per reply read): the
            # outbox puts one deadline on each pipeline, and reads block for at most `block_ms`.
            self._redis = connect(self.settings.redis_url, socket_timeout=None, socket_connect_timeout=5)
            self._outbox = Outbox(self._redis, wait_replicas=self.settings.redis_wait_replicas)
            # The blocking reads on a client of their own, a connection for each consumer: each holds one
            # for up to a second. On the commands' pool (100), a worker hosting 150 agents had every
            # connection held by a read, and the outbox's writes waited until they timed out: its tasks
            # failed, each one five times over.
            if self.consumers:
                self._reads = connect(
                    self.settings.redis_url,
                    max_connections=len(self.consumers),
                    wait=None,
                    socket_timeout=None,
                    socket_connect_timeout=5,
                )
            for consumer in self.consumers:
                await consumer.declare(self._redis, self._outbox, self._reads)

        @app.after_startup
        async def _read() -> None:
            for consumer in self.consumers:
                consumer.start()

        @app.on_shutdown
        async def _stop() -> None:
            for consumer in self.consumers:
                await consumer.stop()
            for client in (self._reads, self._redis):
                if client is not None:
                    await client.aclose()
