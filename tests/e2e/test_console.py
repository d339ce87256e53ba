"""The web console over HTTP (no browser): login and bearer, CSRF, escaping, exact versions, acting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import httpx
import pytest

from baton import client
from shared.errors import BatonError
from tests.helpers import wait_for_end

pytestmark = pytest.mark.e2e


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


@contextlib.asynccontextmanager
async def _session(console):
    """A logged-in browser-like client (cookie session)."""
    async with httpx.AsyncClient(base_url=console.url, timeout=10) as http:
        page = await http.get("/login")
        form = {"csrf": _csrf(page.text), "token": console.token, "next": "/runs"}
        done = await http.post("/login", data=form)
        assert done.status_code == 303 and done.headers["location"] == "/runs"
        yield http


def _bearer(console, **headers) -> httpx.AsyncClient:
    headers["authorization"] = f"Bearer {console.token}"
    return httpx.AsyncClient(base_url=console.url, headers=headers, timeout=10)


async def test_a_wrong_token_is_refused_and_no_page_shows_without_one(console):
    async with httpx.AsyncClient(base_url=console.url, timeout=10) as http:
        assert (await http.get("/health")).text == "ok"
        page = await http.get("/login")
        wrong = await http.post("/login", data={"csrf": _csrf(page.text), "token": "not-it", "next": "/"})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        assert "baton_console" not in http.cookies
        assert (await http.get("/runs", headers={"accept": "application/json"})).status_code == 401
        assert (await http.get("/runs", headers={"authorization": "Bearer nope"})).status_code == 401
        redirect = await http.get("/inbox", headers={"accept": "text/html"})
        assert redirect.status_code == 303 and redirect.headers["location"].startswith("/login?next=")
    forged = {"baton_console": "abc.def"}
    async with httpx.AsyncClient(base_url=console.url, timeout=10, cookies=forged) as http:
        assert (await http.get("/runs", headers={"accept": "application/json"})).status_code == 401
    async with _bearer(console) as http:
        ok = await http.get("/runs?format=json")
        assert ok.status_code == 200 and "runs" in ok.json()


async def test_an_output_with_a_script_is_shown_as_text_and_downloaded_at_its_version(
    console, settings, tmp_path
):
    evil = tmp_path / "evil.md"
    evil.write_text("# Title\n\n<script>window.pwned = 1</script>\n")
    run_id = await client.submit(settings, "copy-files", {"evil": evil})
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.completed", events[-1]
    ref = events[-1].outputs["evil"]
    async with _session(console) as http:
        run_page = await http.get(f"/runs/{run_id}")
        assert run_page.status_code == 200 and console.token not in run_page.text
        assert "script-src 'self'" in run_page.headers["content-security-policy"]
        assert ref.version_id in (await http.get(f"/runs/{run_id}/panel/summary")).text
        exact = {"key": ref.key, "version": ref.version_id}
        view = await http.get(f"/runs/{run_id}/file", params=exact)
        assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in view.text
        assert "<script>window" not in view.text
        got = await http.get(f"/runs/{run_id}/file", params={**exact, "download": 1})
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.content == evil.read_bytes()
        outside = await http.get(f"/runs/{run_id}/file", params={"key": "shared/secret.md"})
        assert outside.status_code == 403


async def test_a_large_output_is_offered_for_download_and_streamed_at_its_version(
    console, settings, tmp_path
):
    """At 100x an output's size (64 MB): the file page says how large it is without reading it, and the
    download streams that exact version (the console does not hold it in memory), as `baton get` does."""
    import hashlib
    import os

    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        for _ in range(64):
            out.write(os.urandom(1 << 20))
    run_id = await client.submit(settings, "copy-files", {"big": big})
    events = await wait_for_end(settings, run_id, timeout=120)
    assert events[-1].type == "run.completed", events[-1]
    ref = events[-1].outputs["big"]
    exact = {"key": ref.key, "version": ref.version_id}
    async with _session(console) as http:
        view = await http.get(f"/runs/{run_id}/file", params=exact)
        assert view.status_code == 200 and "Too large to show here" in view.text
        assert f"{64 << 20} bytes" in view.text
        digest = hashlib.sha256()
        async with http.stream("GET", f"/runs/{run_id}/file", params={**exact, "download": 1}) as got:
            assert got.status_code == 200 and got.headers["content-length"] == str(64 << 20)
            async for chunk in got.aiter_bytes():
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
        wrong = {"key": ref.key, "version": "nope", "download": 1}
        gone = await http.get(f"/runs/{run_id}/file", params=wrong)
        assert gone.status_code == 404
    written = await client.download(settings, run_id, tmp_path / "out")
    assert written["big"].read_bytes() == big.read_bytes()


async def test_forms_need_the_sessions_csrf_token_and_bearer_scripts_act_without_one(console, settings):
    async with _session(console) as http:
        refused = await http.post("/submit", data={"workflow": "copy-files", "params": "{}"})
        assert refused.status_code == 403
        form = (await http.get("/submit")).text
        posted = await http.post(
            "/submit", data={"workflow": "copy-files", "params": "{}", "csrf": _csrf(form)}
        )
        assert posted.status_code == 303
        run_id = posted.headers["location"].rsplit("/", 1)[1]
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.completed", events[-1]
    async with _bearer(console) as http:
        scripted = await http.post("/submit", data={"workflow": "slow-pair", "params": '{"sleep": 5}'})
        assert scripted.status_code == 201
        run_id = scripted.json()["run_id"]
        assert (await http.post(f"/runs/{run_id}/cancel")).status_code == 303
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.cancelled", events[-1]


async def test_the_runs_list_pages_and_filters(console, settings):
    ids = [await client.submit(settings, "copy-files", {}) for _ in range(3)]
    for run_id in ids:
        await wait_for_end(settings, run_id)
    async with _bearer(console, accept="application/json") as http:
        first = (await http.get("/runs", params={"workflow": "copy-files"})).json()
        assert [r["run_id"] for r in first["runs"][:3]] == list(reversed(ids))
        failed = (await http.get("/runs", params={"status": "failed", "workflow": "copy-files"})).json()
        assert not {r["run_id"] for r in failed["runs"]} & set(ids)
        assert (await http.get(f"/runs/{ids[0]}")).json()["status"] == "completed"


async def _status(settings, run_id: str) -> str:
    """The run's status; "submitted" until the supervisor has taken it (`run_status` then says there is no
    run yet: a busy supervisor, as in the containers' suite, may take a moment)."""
    try:
        return (await client.run_status(settings, run_id, last=1))["status"]
    except BatonError as exc:
        if not str(exc).startswith(f"no run {run_id!r}"):
            raise
        return "submitted"


async def test_the_inbox_and_baton_runs_waiting_read_a_page_of_the_waiting_runs(console, settings):
    ids = [await client.submit(settings, "approval-strict", {}) for _ in range(55)]  # a page is 50
    async with asyncio.timeout(60):
        while {await _status(settings, r) for r in ids} != {"waiting_for_human"}:  # noqa: ASYNC110 - polled
            await asyncio.sleep(0.2)
    try:
        async with _bearer(console, accept="application/json") as http:
            first = (await http.get("/inbox")).json()
            assert len(first["waiting"]) == 50 and first["total"] >= 55
            second = (await http.get("/inbox", params={"cursor": str(first["next_cursor"])})).json()
        rows = first["waiting"] + second["waiting"]
        listed = [r["run_id"] for r in rows]
        assert len(listed) == len(set(listed)) and set(ids) <= set(listed)
        assert [r["created_at"] for r in rows] == sorted((r["created_at"] for r in rows), reverse=True)
        assert {r["status"] for r in rows} == {"waiting_for_human"}
        async with _session(console) as http:
            page = (await http.get("/inbox")).text
        assert page.count('class="card ask"') == 50 and f'href="/inbox?cursor={first["next_cursor"]}"' in page
        newest = await client.list_runs(settings, waiting=True, limit=3)
        assert [r["run_id"] for r in newest] == listed[:3]
    finally:
        for run_id in ids:
            await client.cancel(settings, run_id)
    for run_id in ids:
        assert (await wait_for_end(settings, run_id))[-1].type == "run.cancelled"
    async with _bearer(console, accept="application/json") as http:
        after = (await http.get("/inbox")).json()
    assert not set(ids) & {r["run_id"] for r in after["waiting"]}


async def test_the_inbox_offers_a_file_too_large_to_show_for_download_without_reading_it(
    console, settings, tmp_path
):
    """A waiting run's file past what a page shows (render.MAX_VIEW_BYTES) is not read at all (a bounded
    GET refuses it before its body): the inbox says so and links the exact version."""
    from services.console import render

    big = tmp_path / "evidence.txt"
    big.write_bytes(b"x" * (render.MAX_VIEW_BYTES + 1))
    run_id = await client.submit(settings, "approval-strict", {"evidence": big})
    try:
        async with asyncio.timeout(60):
            while await _status(settings, run_id) != "waiting_for_human":  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.2)
        async with _session(console) as http:
            page = (await http.get("/inbox")).text
        card = page[page.index(f"/runs/{run_id}") :]
        card = card[: card.find('class="card ask"') if 'class="card ask"' in card else len(card)]
        assert "Too large to show here: download it." in card
        assert "xxxxxxxx" not in card
        assert f"/runs/{run_id}/file?key=runs/{run_id}/inputs/evidence.txt" in card.replace("%2F", "/")
    finally:
        await client.cancel(settings, run_id)
    assert (await wait_for_end(settings, run_id))[-1].type == "run.cancelled"


async def test_the_inbox_shows_a_run_s_first_files_and_lists_the_rest(console, settings, tmp_path):
    """A review of 26 files (25 inputs and the draft): the inbox reads and shows the first ten
    (services/console/app.INBOX_FILES) and lists the other sixteen as links to their exact versions."""
    inputs = {}
    for i in range(25):
        path = tmp_path / f"part-{i:02d}.txt"
        path.write_text(f"contents of part {i:02d}\n")
        inputs[f"part-{i:02d}"] = path
    run_id = await client.submit(settings, "approval-strict", inputs)
    try:
        async with asyncio.timeout(60):
            while await _status(settings, run_id) != "waiting_for_human":  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.2)
        async with _session(console) as http:
            page = (await http.get("/inbox")).text
        card = page[page.index(f'data-run="{run_id}"') :]
        card = card[: card.find('class="card ask"') if 'class="card ask"' in card else len(card)]
        assert card.count('<details class="review"') == 10
        assert "16 more files (not shown here)" in card  # (the other 15 parts and the draft)
        assert "contents of part 09" in card and "contents of part 10" not in card
        assert f"key=runs/{run_id}/inputs/part-24.txt" in card.replace("%2F", "/")
    finally:
        await client.cancel(settings, run_id)
    assert (await wait_for_end(settings, run_id))[-1].type == "run.cancelled"


async def test_a_router_run_shows_its_decision_and_a_bidirectional_run_its_diffs(console, settings, tmp_path):
    request = tmp_path / "request.md"
    request.write_text("My invoice is wrong\n")
    routed = await client.submit(settings, "support", {"request": request})
    brief = tmp_path / "doc.md"
    brief.write_text("first line\n")
    together = await client.submit(settings, "co-write", {"document": brief})
    for run_id in (routed, together):
        events = await wait_for_end(settings, run_id, timeout=40)
        assert events[-1].type == "run.completed", events[-1]
    async with _session(console) as http:
        route = (await http.get(f"/runs/{routed}/panel/pattern")).text
        assert "billing" in route and "90%" in route and "kwclassifier" in route
        versions = (await http.get(f"/runs/{together}/panel/pattern")).text
        assert "5 versions" in versions and "ended: converged" in versions
        assert "No change." in versions  # the newest diff, inline: the last turn changed nothing
        assert f'href="/runs/{together}/diff/2"' in versions
        second = (await http.get(f"/runs/{together}/diff/2")).text
        assert 'class="add"' in second and "+writer2 turn 1" in second


async def test_a_100_turn_collaboration_on_a_megabyte_shows_its_newest_diff_and_links_the_rest(
    console, settings, tmp_path, monkeypatch
):
    """The document view at 100x (100 turns, a 1 MB document): the run's panel reads two versions, not
    all of them, and each older diff has a page of its own; a version too large to diff is said."""
    from services.console import runs as console_runs
    from shared.redisconn import connect
    from shared.storage import Storage
    from shared.workspace import run_prefix

    seed = tmp_path / "doc.md"
    seed.write_text("".join(f"line {i} {'x' * 40}\n" for i in range(20_000)))  # 1 MB
    run_id = await client.submit(settings, "long-stamp", {"document": seed})
    events = await wait_for_end(settings, run_id, timeout=240)
    assert events[-1].type == "run.completed" and events[-1].ended_by == "max_rounds", events[-1]
    r = connect(settings.redis_url)
    try:
        state = await console_runs.load(r, run_id)
    finally:
        await r.aclose()
    versions = console_runs.document_versions(settings.bucket, state, run_prefix(run_id) + "drafts/doc.md")
    n = len(versions)
    assert n == 101  # the seed and one per turn
    async with _session(console) as http:
        panel = await http.get(f"/runs/{run_id}/panel/pattern")
        assert panel.status_code == 200
        assert f"{n} versions" in panel.text and panel.text.count('class="diff"') == 1
        assert "+turn 100" in panel.text and len(panel.text) < 200_000  # the newest diff, no other
        assert f'href="/runs/{run_id}/diff/50"' in panel.text
        older = await http.get(f"/runs/{run_id}/diff/50")
        assert older.status_code == 200 and "+turn 49" in older.text and "+turn 50" not in older.text
        assert "previous diff" in older.text and "next diff" in older.text
        for missing in (1, n + 1):
            assert (await http.get(f"/runs/{run_id}/diff/{missing}")).status_code == 404
    monkeypatch.setattr(console_runs, "DIFF_MAX_BYTES", 100_000)
    async with Storage.connect(settings) as storage:
        big = await console_runs.version_diff(storage, versions[-2], versions[-1])
    assert big["lines"] == [] and "more than the 100,000 read here" in big["note"]


async def test_a_page_of_runs_is_read_from_an_index_of_100000_and_filters_from_their_own(settings):

    from services.console import runs as console_runs
    from shared import streams
    from shared.redisconn import connect

    r = connect(settings.redis_url)
    fake = [f"lp-idx-{i:06d}" for i in range(100_000)]
    try:
        for start in range(0, len(fake), 10_000):  # scored before every real run: at the index's end
            await r.zadd(
                streams.RUN_INDEX, {f: i / 1e9 for i, f in enumerate(fake[start : start + 10_000], start)}
            )
        total = await r.zcard(streams.RUN_INDEX)
        page = await console_runs.page_runs(r, cursor=total - 10, size=50)
        assert page.scanned == 10 and page.next_cursor is None  # no state: listed as nothing, not an error
        # a filter reads its own index (kept by the supervisor), not the 100,000 entries of every run
        failed = await client.submit(settings, "trespass", {})
        completed = await client.submit(settings, "copy-files", {})
        for run_id in (failed, completed):
            await wait_for_end(settings, run_id)
        page = await console_runs.page_runs(r, size=50, status="failed")
        assert page.rows[0]["run_id"] == failed and {row["status"] for row in page.rows} == {"failed"}
        assert page.scanned == len(page.rows) < 1000
        ids = [row["run_id"] for row in (await console_runs.page_runs(r, size=50, status="completed")).rows]
        assert ids[0] == completed and failed not in ids
        running = (await console_runs.page_runs(r, size=500, status="running")).rows
        assert not {failed, completed} & {row["run_id"] for row in running}  # moved out when they ended
        page = await console_runs.page_runs(r, size=50, workflow="trespass")
        assert page.rows[0]["run_id"] == failed and {row["workflow"] for row in page.rows} == {"trespass"}
    finally:
        for start in range(0, len(fake), 10_000):
            await r.zrem(streams.RUN_INDEX, *fake[start : start + 10_000])
        await r.aclose()


async def test_the_event_stream_resumes_after_the_last_event_id_and_ends_with_the_run(console, settings):
    run_id = await client.submit(settings, "copy-files", {})
    await wait_for_end(settings, run_id)
    async with _bearer(console) as http:
        whole = (await http.get(f"/runs/{run_id}/stream")).text
        ids = re.findall(r"^id: (\S+)$", whole, re.M)
        assert len(ids) >= 4 and whole.rstrip().endswith("event: end\ndata: {}")
        rest = (await http.get(f"/runs/{run_id}/stream", headers={"last-event-id": ids[1]})).text
        assert re.findall(r"^id: (\S+)$", rest, re.M) == ids[2:]


async def test_dead_letters_are_paged_shown_and_replayed(console, settings):

    from shared import streams
    from shared.broker import DATA_FIELD, encode
    from shared.events import DeadLetter, RunSubmitted
    from shared.redisconn import connect

    run_id = client.new_run_id()
    valid = RunSubmitted(run_id=run_id, workflow="copy-files", sender="test")
    letters = [
        DeadLetter(stream=streams.RUNS, service="test", reason=f"lost <b>{i}</b>", raw='{"type": "nope"}')
        for i in range(120)
    ]
    raw = encode(valid)[DATA_FIELD].decode()
    letters.append(DeadLetter(stream=streams.RUNS, service="test", reason="now valid", raw=raw))
    r = connect(settings.redis_url)
    try:
        ids = [(await r.xadd(streams.DLQ, {DATA_FIELD: d.model_dump_json()})).decode() for d in letters]
        async with _bearer(console, accept="application/json") as http:
            seen, before = [], None
            while len(seen) < len(ids):  # newest first, a page at a time, each once
                page = (await http.get("/dlq", params={"before": before} if before else {})).json()
                assert page["total"] >= len(ids)
                seen += [d["entry"] for d in page["dead_letters"]]
                before = page["next_before"]
                if len(seen) < len(ids):  # a full page, and where the next one starts
                    assert len(page["dead_letters"]) == settings.console_page_size and before == seen[-1]
            assert seen[: len(ids)] == list(reversed(ids))
        async with _session(console) as http:
            older = await http.get("/dlq", params={"before": ids[-1]})
            assert ids[-2] in older.text and ids[-1] not in older.text and "Older dead letters" in older.text
            shown = await http.get(f"/dlq/{ids[0]}")
            assert "lost &lt;b&gt;0&lt;/b&gt;" in shown.text and "<b>0</b>" not in shown.text
            csrf = _csrf(shown.text)
            kept = await http.post(f"/dlq/{ids[0]}/replay", data={"csrf": csrf})
            assert "kept: still invalid" in kept.text
            replayed = await http.post(f"/dlq/{ids[-1]}/replay", data={"csrf": csrf})
            assert f"replayed to {streams.RUNS}" in replayed.text
        events = await wait_for_end(settings, run_id)
        assert events[-1].type == "run.completed", events[-1]
        assert await r.xrange(streams.DLQ, min=ids[-1], max=ids[-1]) == []
    finally:
        await r.xdel(streams.DLQ, *ids)
        await r.aclose()


async def test_a_run_page_opened_before_the_supervisor_takes_the_run_follows_it(console, settings):
    run_id = client.new_run_id()  # the submit form redirects at once: the supervisor may not have it yet
    async with _session(console) as http:
        early = await http.get(f"/runs/{run_id}")
        assert early.status_code == 404 and "Not known yet" in early.text
        assert f'data-stream="/runs/{run_id}/stream"' in early.text  # the page follows it all the same
        async with http.stream("GET", f"/runs/{run_id}/stream", timeout=60) as live:
            await client.submit(settings, "copy-files", {}, run_id=run_id)
            text = ""
            async for chunk in live.aiter_text():
                text += chunk
                if "event: end" in text:
                    break
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith('data: {"')]
        assert events[-1]["type"] == "run.completed" and events[-1]["run_id"] == run_id
        assert (await http.get(f"/runs/{run_id}")).status_code == 200


async def test_search_finds_a_runs_file_through_the_indexer(console, settings, indexer, tmp_path):
    import asyncio
    import uuid

    word = "zq" + uuid.uuid4().hex[:12]
    notes = tmp_path / "notes.md"
    notes.write_text(f"# Notes\n\nThe {word} protocol.\n")
    run_id = await client.submit(settings, "copy-files", {"notes": notes})
    key = f"runs/{run_id}/inputs/notes.md"
    async with _session(console) as http:
        async with asyncio.timeout(30):
            while key not in (page := (await http.get("/search", params={"q": word})).text):  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # indexed a moment after the upload
    link = re.search(r'href="(/runs/[^"]+/file\?key=[^"]+)"', page).group(1).replace("&amp;", "&")
    assert f"/runs/{run_id}/file?key=" in link and "&version=" in link  # the exact version it indexed
    async with _session(console) as http:
        assert word in (await http.get(link)).text
