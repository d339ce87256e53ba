"""Client-side operations shared by the CLI and the tests: set up the bucket, submit, follow, download.

A client needs no FastStream: it speaks the documented wire format with plain redis-py.
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

from baton.servers import WEBHOOK_ARN
from shared import streams
from shared.broker import DATA_FIELD, encode
from shared.errors import BatonError
from shared.events import TERMINAL_RUN_EVENTS, Event, RunSubmitted, new_id, parse_event
from shared.settings import Settings
from shared.storage import Storage
from shared.workspace import run_prefix


async def init_workspace(settings: Settings, notifications: bool = True) -> None:
    """Create the bucket, turn versioning on, and route its events to the notifier's webhook target."""
    async with Storage.connect(settings) as storage:
        await storage.ensure_bucket()
        if notifications:
            await storage.enable_notifications(WEBHOOK_ARN)


def new_run_id() -> str:
    return f"r-{new_id()[:20]}"


async def submit(
    settings: Settings,
    workflow: str,
    inputs: dict[str, Path],
    params: dict | None = None,
    run_id: str | None = None,
) -> str:
    """Upload the inputs into a fresh run workspace and publish `RunSubmitted`; returns the run id."""
    run_id = run_id or new_run_id()
    refs = {}
    async with Storage.connect(settings) as storage:
        for name, path in inputs.items():
            path = Path(path)
            if not path.is_file():
                raise BatonError(f"input {name}={path}: no such file")
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".md":
                ctype = "text/markdown; charset=utf-8"
            key = f"{run_prefix(run_id)}inputs/{path.name}"
            refs[name] = await storage.put(key, path.read_bytes(), content_type=ctype, if_none_match=True)
    event = RunSubmitted(run_id=run_id, workflow=workflow, inputs=refs, params=params or {}, sender="cli")
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.xadd(streams.RUNS, encode(event))
    finally:
        await client.aclose()
    return run_id


async def follow(settings: Settings, run_id: str, block_ms: int = 5000) -> AsyncIterator[Event]:
    """Yield a run's events from the start, blocking for new ones (no polling), until the run ends."""
    client = aioredis.Redis.from_url(settings.redis_url)
    last = "0"
    try:
        while True:
            reply = await client.xread({streams.run_events(run_id): last}, block=block_ms, count=100)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    raw = fields.get(DATA_FIELD.encode())
                    if raw is None:
                        continue
                    event = parse_event(raw)
                    yield event
                    if event.type in TERMINAL_RUN_EVENTS:
                        return
    finally:
        await client.aclose()


async def run_result(settings: Settings, run_id: str) -> Event | None:
    """The run's terminal event, if it has ended."""
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        entries = await client.xrevrange(streams.run_events(run_id), count=50)
    finally:
        await client.aclose()
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
            target.write_bytes(await storage.get(ref))
            written[name] = target
    return written
