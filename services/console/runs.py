"""What the console reads about runs: a page of a run index (the inbox's too), one run and its parts.

Functions of their resources (a Redis client, a Storage), so tests call them without the app.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from shared import streams
from shared.broker import DATA_FIELD
from shared.events import ObjectRef
from shared.runs import RunState, get_run, index_page
from shared.storage import Storage
from shared.workspace import run_prefix

from . import render

CHUNK = 200  # index entries read per round trip while filling a page
SCAN_LIMIT = 5000  # index entries one page looks at before it stops (filtered pages stay bounded)
STATUSES = ("running", "waiting_for_human", "completed", "failed", "cancelled")


@dataclass
class RunsPage:
    rows: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: int | None = None
    total: int = 0
    scanned: int = 0


def _row(run_id: str, core: dict[str, Any]) -> dict[str, Any]:
    waiting = core.get("waiting") or {}
    usage = core.get("usage") or {}
    return {
        "run_id": run_id,
        "workflow": core.get("workflow"),
        "pattern": core.get("pattern"),
        "status": core.get("status"),
        "created_at": core.get("created_at"),
        "updated_at": core.get("updated_at"),
        "question": waiting.get("question"),
        "reason": core.get("reason"),
        "tokens": (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0),
        "cost": usage.get("cost"),
    }


async def page_runs(
    redis, *, cursor: int = 0, size: int = 50, status: str = "", workflow: str = "", waiting: bool = False
) -> RunsPage:
    """One page of runs, newest first, from the index that fits the filter (the runs waiting for a person,
    or in one status, or of one workflow, kept by the supervisor; else every run), each run's core only:
    `shared.runs.index_page`. With a second filter the first one's index is read and the other checked on
    each core; a page reads at most SCAN_LIMIT index entries."""
    if waiting:
        index, status = streams.RUNS_WAITING, "waiting_for_human"
    elif status:
        index = streams.run_status_index(status)
    elif workflow:
        index = streams.run_workflow_index(workflow)
    else:
        index = streams.RUN_INDEX
    found = await index_page(
        redis,
        index,
        cursor=cursor,
        size=size,
        status=status,
        workflow=workflow,
        chunk=CHUNK,
        scan_limit=SCAN_LIMIT,
    )
    rows = [_row(run_id, core) for run_id, core in found.rows]
    return RunsPage(rows=rows, next_cursor=found.next_cursor, total=found.total, scanned=found.scanned)


async def events(redis, run_id: str, count: int | None = None, reverse: bool = False) -> list[dict]:
    """A run's events as dicts (oldest first; the newest `count` with `reverse`), each with its `entry`."""
    key = streams.run_events(run_id)
    if reverse:
        entries = list(reversed(await redis.xrevrange(key, count=count)))
    else:
        entries = await redis.xrange(key, count=count)
    out = []
    for entry_id, fields in entries:
        try:
            event = json.loads(fields[DATA_FIELD.encode()])
        except (KeyError, ValueError):
            continue
        event["entry"] = entry_id.decode()
        out.append(event)
    return out


def last_of(evs: list[dict], type_: str) -> dict | None:
    return next((e for e in reversed(evs) if e.get("type") == type_), None)


async def human_request(redis, state: RunState) -> dict | None:
    """What a waiting run asks: the question, the request file and the files to review (exact refs)."""
    if state.waiting is None:
        return None
    recent = await events(redis, state.run_id, count=200, reverse=True)
    asked = next(
        (
            e
            for e in reversed(recent)
            if e.get("type") == "human.requested" and e.get("task_id") == state.waiting.task_id
        ),
        None,
    )
    inputs = {n: ObjectRef.model_validate(r) for n, r in ((asked or {}).get("inputs") or {}).items()}
    return {"question": state.waiting.question, "request": state.waiting.request, "inputs": inputs}


def readable(run_id: str, key: str) -> bool:
    """The console shows only a run's own files (its MinIO user reads `runs/` only)."""
    return key.startswith(run_prefix(run_id)) and ".." not in key.split("/")


def document_versions(bucket: str, state: RunState, key: str) -> list[dict[str, Any]]:
    """A bidirectional run's document versions (`version_id|etag` in the state) as refs, oldest first:
    nothing is read until one is shown."""
    out = []
    for n, entry in enumerate(state.versions, 1):
        version_id, _, etag = entry.partition("|")
        ref = ObjectRef(bucket=bucket, key=key, version_id=version_id or None, etag=etag or None)
        out.append({"n": n, "ref": ref})
    return out


DIFF_MAX_BYTES = 2_000_000  # a version larger than this is not diffed in the page (download it)
DIFF_MAX_LINES = 3_000  # diff lines shown at most; the rest is counted


async def version_diff(storage: Storage, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The diff between two versions of a document, bounded: each version read at its exact version, the
    diff (pure Python, seconds for megabytes) computed in a thread so that the live pages go on, at most
    DIFF_MAX_LINES shown. A version too large or gone is said, not diffed."""
    texts = []
    for v in (old, new):
        try:
            data = await storage.get(v["ref"], max_bytes=DIFF_MAX_BYTES)
        except Exception as exc:  # noqa: BLE001 - too large or gone (retention): said, not fatal
            return {"n": new["n"], "lines": [], "more": 0, "note": f"version {v['n']}: {exc}"}
        texts.append(data.decode("utf-8", "replace"))
    lines = await asyncio.to_thread(render.diff, *texts, f"version {old['n']}", f"version {new['n']}")
    more = max(0, len(lines) - DIFF_MAX_LINES)
    return {"n": new["n"], "lines": lines[:DIFF_MAX_LINES], "more": more, "note": ""}


async def load(redis, run_id: str) -> RunState | None:
    return await get_run(redis, run_id)
