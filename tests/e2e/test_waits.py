"""Clients wait as long as asked (shared/waits.py): through a silent minute, a killed connection, and a
search answer slower than redis-py's default socket timeout of 5 s."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from baton import client
from baton.dev import settings_kwargs
from shared import streams
from shared.broker import DATA_FIELD
from shared.events import parse_event
from shared.redisconn import connect
from shared.search import SearchHit, SearchRequest, SearchResponse, SearchUnavailableError, request_search
from shared.settings import Settings
from tests.helpers import last_id

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def as_cli(stack) -> Settings:
    """The CLI's own ACL users: a follower needs no more than they may do."""
    return Settings(**settings_kwargs(stack.service_env("cli")))


async def baton(stack, *args: str) -> tuple[int, str, str]:
    """Run the `baton` command as the CLI's users; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "baton.cli",
        *args,
        env={**os.environ, **stack.service_env("cli")},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out.decode(), err.decode()


async def test_a_stage_silent_for_a_minute_is_followed_by_submit_wait_watch_and_follow(stack):
    cli = as_cli(stack)
    # two runs side by side: one submitted with `--wait`, one watched by `baton watch` and by follow()
    waited = asyncio.create_task(baton(stack, "submit", "silent-minute", "--wait", "--json"))
    run_id = await client.submit(cli, "silent-minute", {})
    watched = asyncio.create_task(baton(stack, "watch", run_id))
    events = [e async for e in client.follow(cli, run_id)]  # the default 5 s block

    assert events[-1].type == "run.completed", events[-1]
    gaps = [(b.created_at - a.created_at).total_seconds() for a, b in zip(events, events[1:], strict=False)]
    assert max(gaps) >= 55, gaps  # the premise: the stage really was silent for most of a minute
    code, out, err = await waited
    assert code == 0, err
    assert json.loads(out)["status"] == "completed"
    code, _out, err = await watched
    assert code == 0, err
    assert "silent completed" in err and "run completed" in err


async def test_a_follow_whose_connection_is_killed_resumes_with_no_event_lost_or_repeated(stack, settings):
    cli = as_cli(stack)
    run_id = await client.submit(cli, "slow-pair", {}, {"sleep": 1.5})
    admin = connect(settings.redis_url)
    kills = 0

    async def kill_while_blocked() -> None:
        """Kill the follower's connection whenever it is blocked in its XREAD."""
        nonlocal kills
        while True:
            for c in await admin.client_list():
                if c.get("name") == client.follower_name(run_id) and "b" in c.get("flags", ""):
                    kills += await admin.client_kill_filter(_id=c["id"])
                    await asyncio.sleep(0.3)
            await asyncio.sleep(0.02)

    killer = asyncio.create_task(kill_while_blocked())
    try:
        followed = [e async for e in client.follow(cli, run_id)]
    finally:
        killer.cancel()
    try:
        entries = await admin.xrange(streams.run_events(run_id))
    finally:
        await admin.aclose()

    assert kills >= 2, kills
    assert followed[-1].type == "run.completed", followed[-1]
    ids = [e.event_id for e in followed]
    assert len(ids) == len(set(ids))  # nothing repeated
    recorded: list[str] = []
    for _entry_id, fields in entries:
        event = parse_event(fields[DATA_FIELD.encode()])
        if event.event_id not in recorded:
            recorded.append(event.event_id)
        if event.type == "run.completed":
            break
    assert ids == recorded  # nothing lost, in the stream's order


async def test_a_search_answer_later_than_the_socket_timeout_is_waited_for(settings, indexer):
    """With the indexer down, this test answers one request itself, 6.5 s late: the asker, on a client
    with redis-py's default 5 s socket timeout, still gets it; another asker waits its 6 s and is told
    the indexer did not answer (not a socket timeout)."""
    plain = connect(settings.redis_url)  # socket timeout: redis-py's default, 5 s
    hit = SearchHit(key="shared/late.md", snippet="a **late** answer", score=1.0)
    indexer.stop()
    try:
        since = await last_id(settings, streams.SEARCH)
        start = time.monotonic()
        asked = asyncio.create_task(request_search(plain, "late", timeout=12, sender="late-test"))
        unanswered = asyncio.create_task(
            client.search(settings.model_copy(update={"search_timeout": 6.0}), "nobody answers")
        )
        request = None
        while request is None:
            reply = await plain.xread({streams.SEARCH: since}, block=1000)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    since = entry_id
                    candidate = SearchRequest.model_validate_json(fields[DATA_FIELD.encode()])
                    if candidate.sender == "late-test":
                        request = candidate
        await asyncio.sleep(6.5 - (time.monotonic() - start))
        answer = SearchResponse(request_id=request.request_id, query=request.query, hits=[hit])
        await plain.rpush(request.reply_to, answer.model_dump_json())
        assert await asked == [hit]
        with pytest.raises(SearchUnavailableError, match="did not answer within 6s"):
            await unanswered
    finally:
        indexer.start()
        await plain.aclose()
