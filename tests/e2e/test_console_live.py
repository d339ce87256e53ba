"""The console's one live reader (shared/live.py, served as SSE by services/console/live.py): many open
pages, one connection and one blocking XREAD; a page that joins is read at once; a page too slow for its
run is cut and resumes."""

from __future__ import annotations

import asyncio
import contextlib
import re

import httpx
import pytest
import structlog

from baton import client
from services.console import live
from shared import streams
from shared.broker import DATA_FIELD
from shared.redisconn import connect
from tests.helpers import wait_for_end

pytestmark = pytest.mark.e2e
IDS = re.compile(r"^id: (\S+)$", re.M)


async def _live_connections(settings) -> list[str]:
    r = connect(settings.redis_url)
    try:
        return [c["name"] for c in await r.client_list() if c["name"].startswith("baton-console")]
    finally:
        await r.aclose()


async def _read_stream(http: httpx.AsyncClient, run_id: str, opened: asyncio.Event) -> str:
    async with http.stream("GET", f"/runs/{run_id}/stream") as resp:
        resp.raise_for_status()
        text = ""
        async for chunk in resp.aiter_text():
            opened.set()
            text += chunk
            if "event: end" in text:
                return text
    return text


async def test_open_pages_share_one_reader_and_each_follows_its_own_run(console, settings):
    run_ids = [client.new_run_id() for _ in range(12)]
    headers = {"authorization": f"Bearer {console.token}"}
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=console.url, headers=headers, limits=limits, timeout=60) as http:
        opened = [asyncio.Event() for _ in run_ids]
        pages = [asyncio.create_task(_read_stream(http, r, o)) for r, o in zip(run_ids, opened, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 30)
        for run_id in run_ids:  # each stream joins the blocked XREAD before its run exists
            await client.submit(settings, "copy-files", {}, run_id=run_id)
        names = await _live_connections(settings)
        texts = await asyncio.wait_for(asyncio.gather(*pages), 60)
    assert names.count("baton-console:live") == 1, names
    assert not [n for n in names if n.startswith("baton-console:r-")], names
    for run_id, text in zip(run_ids, texts, strict=True):
        events = await wait_for_end(settings, run_id)
        assert events[-1].type == "run.completed", events[-1]
        entries = [e.decode() for e, _ in await _xrange(settings, streams.run_events(run_id))]
        assert IDS.findall(text) == entries  # every event once, in order, then the end
        assert text.rstrip().endswith("event: end\ndata: {}")


@contextlib.asynccontextmanager
async def _hub(settings, **kw):
    control = connect(settings.redis_url)
    hub = live.Hub(settings.redis_url, control, structlog.get_logger(), **kw)
    hub.start()
    try:
        yield hub, control
    finally:
        await hub.close()
        await control.aclose()


def _event(run_id: str, n: int, type_: str = "task.progress") -> dict:
    return {DATA_FIELD: f'{{"type": "{type_}", "run_id": "{run_id}", "n": {n}}}'}


async def _until(predicate, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - watches the hub from outside; it signals nobody
            await asyncio.sleep(0.01)


async def test_a_page_that_joins_is_read_at_once_not_after_the_block(settings):
    quiet, joining = client.new_run_id(), client.new_run_id()
    async with _hub(settings, block=60) as (hub, control):
        first = hub.sse(quiet)
        waiting = asyncio.create_task(anext(first))
        await _until(lambda: hub.reading and streams.run_events(quiet) in hub.armed)
        second = hub.sse(joining)
        got = asyncio.create_task(anext(second))
        await _until(lambda: streams.run_events(joining) in hub.armed)  # re-armed, well before 60 s
        await control.xadd(streams.run_events(joining), _event(joining, 1))
        text = await asyncio.wait_for(got, 10)
        assert text.startswith("retry: 1000\n\n")  # with the first message, not a write of its own
        assert '"n": 1' in text
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await second.aclose()
        assert not hub.pages  # both left


async def test_one_read_over_hundreds_of_pages_gives_each_page_its_own_run(settings):
    # 150 streams: an XREAD of 306 arguments, packed by hiredis on one server (shared/redisconn.pack_wide)
    run_ids = [client.new_run_id() for _ in range(150)]
    async with _hub(settings) as (hub, control):
        pages = [hub.sse(run_id) for run_id in run_ids]
        firsts = [asyncio.create_task(anext(page)) for page in pages]
        keys = {streams.run_events(run_id) for run_id in run_ids}
        await _until(lambda: keys <= set(hub.cursors))
        for n, run_id in enumerate(run_ids):
            await control.xadd(streams.run_events(run_id), _event(run_id, n))
        texts = await asyncio.wait_for(asyncio.gather(*firsts), 30)
        for page in pages:
            await page.aclose()
    for n, (run_id, text) in enumerate(zip(run_ids, texts, strict=True)):
        assert f'"run_id": "{run_id}", "n": {n},' in text, (run_id, text)


async def test_a_page_too_slow_for_its_run_is_cut_and_resumes_after_its_last_event(settings):
    run_id = client.new_run_id()
    key = streams.run_events(run_id)
    async with _hub(settings, queue=2) as (hub, control):
        page = hub.sse(run_id)
        first = asyncio.create_task(anext(page))
        await _until(lambda: key in hub.armed and hub.reading)
        await control.xadd(key, _event(run_id, 1))
        received = [await asyncio.wait_for(first, 10)]
        [mine] = hub.pages[key]
        for n in (2, 3):  # the page reads nothing meanwhile: its queue fills
            await control.xadd(key, _event(run_id, n))
            await _until(lambda n=n: mine.queue.qsize() == n - 1)
        await control.xadd(key, _event(run_id, 4))
        await _until(lambda: mine.cut)
        assert key not in hub.pages  # out of the reader: its queue grows no more
        received += [text async for text in page]  # what it had queued, then the response ends
        last = IDS.findall("".join(received))[-1]
        await control.xadd(key, _event(run_id, 5, "run.completed"))
        resumed = [text async for text in hub.sse(run_id, after=last)]  # the browser's Last-Event-ID
    texts = "".join(received) + "".join(resumed)
    assert [int(n) for n in re.findall(r'"n": (\d+)', texts)] == [1, 2, 3, 4, 5]
    assert IDS.findall(texts) == [e.decode() for e, _ in await _xrange(settings, key)]
    assert texts.rstrip().endswith("event: end\ndata: {}")


async def _xrange(settings, key: str):
    r = connect(settings.redis_url)
    try:
        return await r.xrange(key)
    finally:
        await r.aclose()
