"""Client-side operations shared by the CLI and the tests: set up the bucket, submit, follow, download.

A client needs no FastStream: it speaks the documented wire format with plain redis-py.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import posixpath
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import redis.asyncio as aioredis
from botocore.exceptions import ClientError
from pydantic import ValidationError
from redis.exceptions import RedisError

from baton.servers import FAST_WEBHOOK_ARN, WEBHOOK_ARN
from shared import manifests, streams, telemetry, waits
from shared.broker import DATA_FIELD, encode
from shared.errors import BatonError, NotWaitingError
from shared.events import (
    TERMINAL_RUN_EVENTS,
    DeadLetter,
    Event,
    ObjectChanged,
    ObjectRef,
    RunCancelRequested,
    RunSubmitted,
    each_once_until_end,
    new_id,
    parse_event,
    utcnow,
)
from shared.partitions import record_partitions
from shared.redisconn import connect
from shared.runs import get_run, index_page
from shared.search import SearchHit, request_search
from shared.settings import Settings
from shared.storage import Storage
from shared.workspace import run_prefix


async def init_workspace(settings: Settings, notifications: bool = True) -> list[str]:
    """Create the bucket, turn versioning on, and route its events to the notifier's webhook target.

    With `settings.acl_passwords`, also create each service's Redis ACL user and MinIO user (shared/acl.py).
    Needs admin credentials for both. Returns warnings for the operator.
    """
    async with Storage.connect(settings) as storage:
        await storage.ensure_bucket()
        if notifications:
            try:
                await storage.enable_notifications(WEBHOOK_ARN, FAST_WEBHOOK_ARN)
            except ClientError as exc:
                if "arn" not in str(exc).lower():
                    raise
                # A MinIO configured with the durable target only: events arrive, a few seconds later.
                await storage.enable_notifications(WEBHOOK_ARN)
    warnings = await _record_partitions(settings)
    if not settings.acl_passwords:
        return warnings
    from shared import acl

    return warnings + await acl.apply(settings, settings.acl_passwords)


async def _record_partitions(settings: Settings) -> list[str]:
    """Record `BATON_RESULT_PARTITIONS` as the count every service must use from now on (services that
    start with another refuse to). Best effort: without Redis (or its admin), the first service records it."""
    redis = connect(settings.redis_url)
    try:
        await record_partitions(redis, settings)
    except (RedisError, OSError) as exc:
        return [
            f"could not record BATON_RESULT_PARTITIONS={settings.result_partitions} in {streams.SETTINGS} "
            f"({type(exc).__name__}: {exc}); the first service to start will record its own count"
        ]
    finally:
        await redis.aclose()
    return []


@contextlib.asynccontextmanager
async def _redis(settings: Settings, redis: aioredis.Redis | None = None) -> AsyncIterator[aioredis.Redis]:
    """`redis` when the caller holds a pooled client (a service: the A2A gateway, the console), else a
    connection of its own for this one call (the CLI)."""
    if redis is not None:
        yield redis
        return
    client = connect(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def new_run_id() -> str:
    return f"r-{new_id()[:20]}"


async def submit(
    settings: Settings,
    workflow: str,
    inputs: dict[str, Path],
    params: dict | None = None,
    run_id: str | None = None,
    *,
    storage: Storage | None = None,
    redis: aioredis.Redis | None = None,
) -> str:
    """Upload the inputs into a fresh run workspace and publish `RunSubmitted`; returns the run id.
    `storage`, `redis`: clients a program submitting many runs holds for all of them (else this call
    opens its own, as the CLI's one run does)."""
    run_id = run_id or new_run_id()
    with telemetry.submission(run_id, workflow):
        return await _submit(settings, workflow, inputs, params, run_id, storage, redis)


async def _submit(
    settings: Settings,
    workflow: str,
    inputs: dict[str, Path],
    params,
    run_id: str,
    storage: Storage | None,
    redis: aioredis.Redis | None,
) -> str:
    refs = {}
    async with contextlib.AsyncExitStack() as stack:
        if storage is None:
            storage = await stack.enter_async_context(Storage.connect(settings))
        for name, path in inputs.items():
            path = Path(path)
            if not path.is_file():
                raise BatonError(f"input {name}={path}: no such file")
            with path.open("rb") as body:  # (sent a chunk at a time: a large input is not read whole)
                refs[name] = await put_input(storage, run_id, path.name, body)
        await publish_run(settings, run_id, workflow, refs, params, redis=redis, storage=storage)
    return run_id


async def put_input(storage: Storage, run_id: str, filename: str, data: bytes | BinaryIO) -> ObjectRef:
    """One run input, `runs/<run>/inputs/<filename>`, written once (If-None-Match) and typed by its name:
    the CLI's and the console's uploads."""
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if filename.endswith(".md"):
        ctype = "text/markdown; charset=utf-8"
    key = f"{run_prefix(run_id)}inputs/{filename}"
    return await storage.put(key, data, content_type=ctype, if_none_match=True)


async def publish_run(
    settings: Settings,
    run_id: str,
    workflow: str,
    inputs: dict[str, ObjectRef],
    params: dict | None = None,
    sender: str = "cli",
    *,
    redis: aioredis.Redis | None = None,
    storage: Storage | None = None,
) -> None:
    """Publish `RunSubmitted` for inputs already in the bucket (outside the run's workspace is fine).
    Inputs too many for one event (`settings.max_event_bytes`: some 300 at 64 KiB) go in a manifest
    object in the run's inputs (`inputs_manifest`), which the supervisor reads; `storage`: the client to
    write it with (one is opened if needed)."""
    root = telemetry.NOOP if telemetry.current_traceparent() else telemetry.submission(run_id, workflow)
    with root:
        event = RunSubmitted(
            run_id=run_id, workflow=workflow, inputs=inputs, params=params or {}, sender=sender
        )
    if inputs and len(event.model_dump_json()) > settings.max_event_bytes:
        manifest = await _inputs_manifest(settings, run_id, inputs, storage)
        event = event.model_copy(update={"inputs": {}, "inputs_manifest": manifest})
    async with _redis(settings, redis) as client:
        await client.xadd(streams.RUNS, encode(event))


INPUTS_MANIFEST = ".baton-inputs.json"  # in the run's inputs/: the one prefix every submitter may write


async def _inputs_manifest(
    settings: Settings, run_id: str, inputs: dict[str, ObjectRef], storage: Storage | None
) -> ObjectRef:
    """The run's inputs as a JSON object, written once (a second publish of the run finds it there)."""
    body = manifests.encode(inputs)
    key = f"{run_prefix(run_id)}inputs/{INPUTS_MANIFEST}"
    async with contextlib.AsyncExitStack() as stack:
        if storage is None:
            storage = await stack.enter_async_context(Storage.connect(settings))
        return await storage.put_once(key, body, content_type="application/json")


def follower_name(run_id: str) -> str:
    """The CLIENT LIST name of the connection following `run_id` (an operator can find it by name)."""
    return f"baton-follow:{run_id}"


async def follow(settings: Settings, run_id: str, block_ms: int = 5000) -> AsyncIterator[Event]:
    """Yield a run's events from the start, blocking for new ones (no polling), until the run ends.

    Waits as long as the run takes: quiet stages longer than the block and dropped connections are
    outlasted (shared/waits.py), resuming after the last entry read. Each event once: a supervisor that
    dies before acknowledging a message records it again when the message is redelivered (same event
    id), and that copy is skipped here."""
    block = block_ms / 1000
    client = waits.client(settings.redis_url, block=block, name=follower_name(run_id))
    key, data = streams.run_events(run_id), DATA_FIELD.encode()
    try:
        entries = waits.follow_stream(client, key, block=block)
        raws = (fields.get(data) async for _entry_id, fields in entries)
        async with contextlib.aclosing(entries):
            async for event in each_once_until_end(raws):
                yield event
    finally:
        await client.aclose()


async def run_result(settings: Settings, run_id: str) -> Event | None:
    """The run's terminal event, if it has ended."""
    async with _redis(settings) as client:
        entries = await client.xrevrange(streams.run_events(run_id), count=50)
    for _id, fields in entries:
        event = parse_event(fields[DATA_FIELD.encode()])
        if event.type in TERMINAL_RUN_EVENTS:
            return event
    return None


async def download(settings: Settings, run_id: str, out_dir: Path) -> dict[str, Path]:
    """Download a completed run's outputs (exact versions) into `out_dir`."""
    result = await run_result(settings, run_id)
    if result is None:
        raise BatonError(f"run {run_id} has not finished (or does not exist)")
    if result.type != "run.completed":
        raise BatonError(f"run {run_id} failed: {result.reason}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    async with Storage.connect(settings) as storage:
        for name, ref in result.outputs.items():
            target = out_dir / posixpath.basename(ref.key)
            async with storage.open(ref) as reader:  # a chunk at a time: any size in bounded memory
                with target.open("wb") as out:
                    async for chunk in reader.chunks():
                        out.write(chunk)
            written[name] = target
    return written


async def respond(
    settings: Settings, run_id: str, approve: bool, text: str = "", attachment: Path | None = None
) -> ObjectRef:
    """Answer a run that waits for a person: the response file's creation event resumes it.

    Refused (`NotWaitingError`) unless the run waits for a person now: a response written earlier would
    be ignored by the supervisor, and the person would believe they had answered."""
    await ensure_waiting(settings, run_id)
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    body: dict = {"decision": "approve" if approve else "reject", "text": text}
    async with Storage.connect(settings) as storage:
        if attachment is not None:
            if not attachment.is_file():
                raise BatonError(f"--file {attachment}: no such file")
            key = f"{run_prefix(run_id)}human/attachments/{stamp}-{attachment.name}"
            body["attachment"] = (await storage.put(key, attachment.read_bytes())).uri()
        return await write_response(storage, settings, run_id, body, stamp=stamp)


async def write_response(
    storage: Storage,
    settings: Settings,
    run_id: str,
    body: dict,
    *,
    sender: str = "cli",
    stamp: str | None = None,
    redis: aioredis.Redis | None = None,
) -> ObjectRef:
    """The response file a waiting run resumes on (`baton respond`, the console, MCP, the A2A gateway):
    `{"decision", "text", ...}` under `runs/<run_id>/human/responses/`, under a new key each time (never
    written over), then `announce`d."""
    stamp = stamp or utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{run_prefix(run_id)}human/responses/response-{stamp}-{secrets.token_hex(3)}.json"
    body_bytes = json.dumps(body).encode()
    ref = await storage.put(key, body_bytes, content_type="application/json", if_none_match=True)
    await announce(settings, ref, sender, redis=redis)
    return ref


async def announce(
    settings: Settings, ref: ObjectRef, sender: str = "cli", *, redis: aioredis.Redis | None = None
) -> None:
    """Tell the supervisor that a response file landed, as the bucket's notification will: MinIO drops
    the notifications of objects written just as it starts (README, Reliability, bug 9), and a person's
    answer must not wait for ever on one. The notification, when it comes too, finds the response
    applied (the supervisor applies each response file once)."""
    event = ObjectChanged(
        bucket=ref.bucket,
        key=ref.key,
        version_id=ref.version_id,
        etag=ref.etag,
        size=ref.size,
        content_type=ref.content_type,
        event_name="s3:ObjectCreated:Put",
        sender=sender,
    )
    async with _redis(settings, redis) as client:
        await client.xadd(streams.OBJECTS, encode(event))


async def ensure_waiting(
    settings: Settings, run_id: str, *, redis: aioredis.Redis | None = None
) -> dict[str, Any]:
    """The run's status if it waits for a person; else `NotWaitingError` (BatonError if there is no run)."""
    status = await run_status(settings, run_id, last=1, redis=redis)
    if status["status"] != "waiting_for_human":
        raise NotWaitingError(f"run {run_id} is not waiting for a person (it is {status['status']})")
    return status


async def list_runs(settings: Settings, waiting: bool = False, limit: int = 20) -> list[dict]:
    """The newest `limit` runs (or runs waiting for a person), newest first, with their status: a page of
    the run index (or the waiting index, advisory: each run's state decides)."""
    index = streams.RUNS_WAITING if waiting else streams.RUN_INDEX
    client = connect(settings.redis_url)
    try:
        page = await index_page(client, index, size=limit, status="waiting_for_human" if waiting else "")
    finally:
        await client.aclose()
    rows = []
    for run_id, core in page.rows:
        asks = core.get("waiting") or {}
        rows.append(
            {
                "run_id": run_id,
                "workflow": core.get("workflow"),
                "status": core.get("status"),
                "created_at": datetime.fromisoformat(core["created_at"]).isoformat(),
                "question": asks.get("question"),
                "request": (asks.get("request") or {}).get("key"),
                "reason": core.get("reason"),
            }
        )
    return rows


async def count_runs(settings: Settings, waiting: bool = False) -> int:
    """How many runs the run index (or the waiting index) lists."""
    client = connect(settings.redis_url)
    try:
        return await client.zcard(streams.RUNS_WAITING if waiting else streams.RUN_INDEX)
    finally:
        await client.aclose()


async def search(
    settings: Settings,
    query: str,
    prefix: str = "",
    limit: int = 10,
    prefixes: list[str] | None = None,
    sender: str = "cli",
) -> list[SearchHit]:
    """Full-text search through the indexer (request/reply over Redis), best hits first."""
    client = waits.client(settings.redis_url, block=settings.search_timeout)
    try:
        return await request_search(
            client,
            query,
            prefix=prefix,
            prefixes=prefixes,
            limit=limit,
            timeout=settings.search_timeout,
            sender=sender,
        )
    finally:
        await client.aclose()


END_STATUS = {"run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled"}


async def run_status(
    settings: Settings, run_id: str, last: int = 20, *, redis: aioredis.Redis | None = None
) -> dict[str, Any]:
    """Where a run stands: status, outputs (refs), what it waits for, and its last `last` events.

    Read from the run's state key and event stream; tolerant of event types this client does not know.
    """
    async with _redis(settings, redis) as client:
        run = await get_run(client, run_id)
        entries = await client.xrevrange(streams.run_events(run_id), count=max(last, 1))
    if run is None and not entries:
        raise BatonError(f"no run {run_id!r} (a run just submitted appears once the supervisor has taken it)")
    state: dict[str, Any] = run.model_dump(mode="json") if run is not None else {}
    events: list[dict[str, Any]] = []
    seen: set = set()
    for _entry_id, fields in reversed(entries):
        try:
            event = json.loads(fields[DATA_FIELD.encode()])
        except (KeyError, ValueError):
            continue
        if event.get("event_id") not in seen:  # a redelivery's second record of one event: once
            seen.add(event.get("event_id"))
            events.append(event)
    terminal = next((e for e in reversed(events) if e.get("type") in TERMINAL_RUN_EVENTS), None)
    if terminal is not None:
        status = END_STATUS.get(terminal["type"], "failed")
    else:
        status = state.get("status") or "submitted"
    outputs = (terminal or {}).get("outputs") or state.get("final") or {}
    waiting = state.get("waiting") if status == "waiting_for_human" else None
    return {
        "run_id": run_id,
        "status": status,
        "workflow": state.get("workflow"),
        "pattern": state.get("pattern"),
        "reason": (terminal or {}).get("reason") or state.get("reason"),
        "outputs": {name: ObjectRef.model_validate(ref) for name, ref in outputs.items()},
        "waiting": waiting,
        "events": events[-last:] if last > 0 else [],
    }


async def cancel(
    settings: Settings,
    run_id: str,
    reason: str = "cancelled by a user",
    sender: str = "cli",
    *,
    redis: aioredis.Redis | None = None,
) -> None:
    """Ask the supervisor to stop a run; it ends `cancelled` and its tasks are dropped."""
    async with _redis(settings, redis) as client:
        await client.xadd(
            streams.RUNS, encode(RunCancelRequested(run_id=run_id, reason=reason, sender=sender))
        )


async def dlq_list(
    settings: Settings,
    count: int = 50,
    before: str | None = None,
    *,
    redis: aioredis.Redis | None = None,
) -> list[tuple[str, DeadLetter]]:
    """The newest dead letters (older than entry `before`, for the next page), newest first, with their
    entry ids in `baton:dlq`."""
    async with _redis(settings, redis) as client:
        entries = await client.xrevrange(streams.DLQ, max=f"({before}" if before else "+", count=count)
    return [(i.decode(), DeadLetter.model_validate_json(f[DATA_FIELD.encode()])) for i, f in entries]


async def dlq_length(settings: Settings, *, redis: aioredis.Redis | None = None) -> int:
    async with _redis(settings, redis) as client:
        return await client.xlen(streams.DLQ)


async def dlq_show(settings: Settings, entry_id: str, *, redis: aioredis.Redis | None = None) -> DeadLetter:
    async with _redis(settings, redis) as client:
        entries = await client.xrange(streams.DLQ, min=entry_id, max=entry_id)
    if not entries:
        raise BatonError(f"no dead letter {entry_id} in {streams.DLQ}")
    return DeadLetter.model_validate_json(entries[0][1][DATA_FIELD.encode()])


async def dlq_replay(
    settings: Settings, entry_ids: list[str] | None = None, stream: str | None = None
) -> dict[str, str]:
    """Validate dead letters again; the valid ones go back to their stream and leave the DLQ, the others
    stay. Returns entry id -> what happened (`dlq_replay_iter` yields them as it goes)."""
    return {eid: what async for eid, what in dlq_replay_iter(settings, entry_ids, stream)}


DLQ_PAGE = 500  # dead letters read, checked and replayed per round trip by `dlq_replay_iter`


async def dlq_replay_iter(
    settings: Settings, entry_ids: list[str] | None = None, stream: str | None = None
) -> AsyncIterator[tuple[str, str]]:
    """`dlq_replay`, one (entry id, what happened) at a time. Without ids: every dead letter there is when
    it starts (only those read from `stream`, if given), a page at a time (any number of them in bounded
    memory, a page's appends and deletes in one pipeline each), never one that arrives meanwhile (a letter
    refused again after its replay would otherwise come round for ever)."""
    client = connect(settings.redis_url)
    try:
        if entry_ids is not None:
            for entry_id in entry_ids:
                entries = await client.xrange(streams.DLQ, min=entry_id, max=entry_id)
                if not entries:
                    yield entry_id, "not found"
                    continue
                for item in await _replay_page(client, entries):
                    yield item
            return
        newest = await client.xrevrange(streams.DLQ, count=1)
        if not newest:
            return
        last, start = newest[0][0].decode(), "-"
        while True:
            entries = await client.xrange(streams.DLQ, min=start, max=last, count=DLQ_PAGE)
            if not entries:
                return
            for item in await _replay_page(client, entries, stream):
                yield item
            start = f"({entries[-1][0].decode()}"
            if entries[-1][0].decode() == last:
                return
    finally:
        await client.aclose()


async def _replay_page(client, entries, stream: str | None = None) -> list[tuple[str, str]]:
    """Check a page of dead letters and put the valid ones back: their appends in one pipeline, then the
    deletes of those appended (two slots on a cluster: a crash between them leaves a letter to replay
    again, and every consumer handles a repeated event once)."""
    outcome: dict[str, str] = {}
    valid: list[tuple[str, DeadLetter, Any]] = []
    for entry_id, fields in entries:
        eid = entry_id.decode()
        letter = DeadLetter.model_validate_json(fields[DATA_FIELD.encode()])
        if stream is not None and letter.stream != stream:
            continue
        if not (
            letter.stream in REPLAYABLE
            or streams.is_results(letter.stream)
            or letter.stream.startswith("baton:agent:")
        ):
            outcome[eid] = f"kept: {letter.stream} is not a stream Baton consumes"
            continue
        try:
            event = parse_event(letter.raw)
        except (ValidationError, ValueError) as exc:
            outcome[eid] = f"kept: still invalid ({str(exc).splitlines()[0]})"
            continue
        valid.append((eid, letter, event))
        outcome[eid] = ""
    if valid:
        appends = client.pipeline(transaction=False)
        for _eid, letter, event in valid:
            appends.xadd(letter.stream, encode(event))
        new_ids = await appends.execute()
        deletes = client.pipeline(transaction=False)
        deletes.xdel(streams.DLQ, *(eid for eid, _letter, _event in valid))
        await deletes.execute()
        for (eid, letter, _event), new_id in zip(valid, new_ids, strict=True):
            outcome[eid] = f"replayed to {letter.stream} as {new_id.decode()}"
    return list(outcome.items())


REPLAYABLE = {streams.RUNS, streams.ROUTE, streams.OBJECTS}  # and every results partition, every agent


async def trim(settings: Settings, now_ms: int | None = None) -> dict[str, int]:
    """Trim Baton's work streams below the oldest entry any consumer group still needs; drop dead letters
    and idle consumers older than the retention (`BATON_RETENTION_DAYS`).

    An entry is needed while it is pending in some group, or not yet delivered to some group; nothing
    at or above that point is ever removed (XTRIM MINID), so unacknowledged work cannot be lost. A dead
    letter goes once it is older than the retention and the supervisor has read it. A consumer name goes
    once it has nothing pending and has not been seen for the retention (every restarted process has a
    new name, so the names would otherwise pile up).
    """
    client = connect(settings.redis_url)
    removed: dict[str, int] = {}
    keep_ms = int(settings.retention_days * 86_400_000)
    now_ms = now_ms if now_ms is not None else int(utcnow().timestamp() * 1000)
    try:
        names = [streams.RUNS, streams.ROUTE, streams.OBJECTS]
        names += streams.result_streams(settings.result_partitions)
        async for key in client.scan_iter(match="baton:agent:*", _type="stream"):
            names.append(key.decode())
        for name in names:
            floor = await safe_floor(client, name)
            if floor is not None:
                removed[name] = await client.xtrim(name, minid=floor, approximate=False)
        floor = await safe_floor(client, streams.DLQ)
        cutoff = (now_ms - keep_ms, 0)
        if floor is not None:
            cutoff = min(cutoff, _id(floor))
        minid = f"{cutoff[0]}-{cutoff[1]}"
        removed[streams.DLQ] = await client.xtrim(streams.DLQ, minid=minid, approximate=False)
        gone = 0
        for name in [*names, streams.DLQ]:
            try:
                groups = await client.xinfo_groups(name)
            except aioredis.ResponseError:
                continue
            for group in groups:
                for consumer in await client.xinfo_consumers(name, group["name"]):
                    if not consumer["pending"] and consumer["idle"] > keep_ms:
                        gone += await client.xgroup_delconsumer(name, group["name"], consumer["name"])
        removed["idle consumers"] = gone
    finally:
        await client.aclose()
    return removed


async def safe_floor(client: aioredis.Redis, stream: str) -> str | None:
    """The lowest entry id some group still needs; None if the stream has no groups (keep everything)."""
    try:
        groups = await client.xinfo_groups(stream)
    except aioredis.ResponseError:
        return None
    if not groups:
        return None
    floors = []
    for group in groups:
        pending = await client.xpending(stream, group["name"])
        if pending["pending"]:
            floors.append(_id(pending["min"]))
        else:
            ms, seq = _id(group["last-delivered-id"])
            floors.append((ms, seq + 1))
    ms, seq = min(floors)
    return f"{ms}-{seq}"


def _id(value) -> tuple[int, int]:
    ms, _, seq = (value.decode() if isinstance(value, bytes) else str(value)).partition("-")
    return int(ms), int(seq or 0)
