"""The console in a real browser: Debian's chromium, headless, driven by Playwright (`executable_path`:
Playwright's own browser builds are not downloaded). Few and short: the machine is shared. Screenshots go
to tests/artifacts/console/."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from baton import client
from shared.redisconn import connect
from shared.runs import get_run
from shared.storage import Storage
from tests.e2e.test_hierarchical_pattern import sub
from tests.helpers import wait_for_end

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
WAIT_MS = 60_000  # a loaded 2-core CI machine is slow, not stuck


def _chromium() -> str:
    path = os.environ.get("BATON_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        message = f"no chromium at {path} (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
async def browser():
    from playwright.async_api import async_playwright

    executable = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        yield chromium
        await chromium.close()


async def _login(browser, console, token: str | None = None, **context):
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()
    await page.goto(f"{console.url}/runs")  # sent to the login page
    await page.fill("input[name=token]", token or console.token)
    await page.click("button[type=submit]")
    return ctx, page


async def _until(settings, run_id: str, type_: str, timeout: float = 30):
    async def find():
        async for event in client.follow(settings, run_id, block_ms=1000):
            if event.type == type_:
                return event

    return await asyncio.wait_for(find(), timeout)


async def test_a_wrong_token_is_refused(browser, console):
    ctx, page = await _login(browser, console, token="not-the-token")
    try:
        await page.wait_for_selector("p.error[role=alert]", timeout=WAIT_MS)
        assert "Wrong token" in await page.inner_text("p.error")
        assert "/login" in page.url
        assert not [c for c in await ctx.cookies() if c["name"] == "baton_console"]
        await page.screenshot(path=ARTIFACTS / "wrong-token.png")
    finally:
        await ctx.close()


async def test_a_run_submitted_from_the_form_shows_its_timeline_live(browser, console, settings):
    ctx, page = await _login(browser, console)
    try:
        await page.goto(f"{console.url}/submit")
        await page.select_option("select[name=workflow]", "slow-pair")
        await page.fill("textarea[name=params]", json.dumps({"sleep": 1}))
        await page.click("form.submit button[type=submit]")
        await page.wait_for_url("**/runs/r-*", timeout=WAIT_MS)
        await page.wait_for_selector("#live-state:text('live'), #live-state:text('ended')", timeout=WAIT_MS)
        await page.wait_for_selector("#timeline li.e-task-started", timeout=WAIT_MS)  # before the end
        await page.wait_for_selector("#timeline li.e-run-completed", timeout=WAIT_MS)
        rows = page.locator("#tasks tbody tr")
        assert await rows.count() == 2
        assert await page.locator("#tasks tbody tr.t-done").count() == 2
        assert (await rows.nth(0).locator("td.c-agent").inner_text()) == "slow"
        assert (await rows.nth(0).locator("td.c-worker").inner_text()).startswith("worker")
        await page.wait_for_selector("#run-status .s-completed", timeout=WAIT_MS)
        await page.screenshot(path=ARTIFACTS / "run-timeline.png", full_page=True)
    finally:
        await ctx.close()


async def test_files_uploaded_in_the_form_become_the_runs_inputs(browser, console, settings, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nuploaded from the form\n")
    data = tmp_path / "data.json"
    data.write_text('{"rows": 3}\n')
    ctx, page = await _login(browser, console)
    try:
        await page.goto(f"{console.url}/submit")
        await page.select_option("select[name=workflow]", "copy-files")
        await page.set_input_files("input[name=file1]", str(notes))
        await page.fill("input[name=name2]", "table")
        await page.set_input_files("input[name=file2]", str(data))
        await page.screenshot(path=ARTIFACTS / "submit-upload.png", full_page=True)
        await page.click("form.submit button[type=submit]")
        await page.wait_for_url("**/runs/r-*", timeout=WAIT_MS)
        run_id = page.url.rsplit("/", 1)[1]
        await page.wait_for_selector("#run-status .s-completed", timeout=WAIT_MS)
        summary = await page.inner_text("#summary")
        assert "notes: notes.md" in summary and "table: data.json" in summary
    finally:
        await ctx.close()
    events = await wait_for_end(settings, run_id)
    redis = connect(settings.redis_url)
    try:
        inputs = (await get_run(redis, run_id)).inputs
    finally:
        await redis.aclose()
    assert {n: r.key for n, r in inputs.items()} == {  # where `baton submit` puts them
        "notes": f"runs/{run_id}/inputs/notes.md",
        "table": f"runs/{run_id}/inputs/data.json",
    }
    assert events[-1].type == "run.completed", events[-1]
    async with Storage.connect(settings) as storage:
        assert await storage.get(inputs["notes"]) == notes.read_bytes()
        assert await storage.get(inputs["table"]) == data.read_bytes()


async def test_approving_in_the_inbox_resumes_the_run_to_its_end(browser, console, settings):
    run_id = await client.submit(settings, "approval", {})
    await _until(settings, run_id, "human.requested")
    ctx, page = await _login(browser, console)
    try:
        await page.goto(f"{console.url}/inbox")
        card = page.locator(f"section.ask[data-run='{run_id}']")
        await card.wait_for(timeout=WAIT_MS)
        assert "Approve the draft?" in await card.locator(".question").inner_text()
        assert await card.locator("details.review").count() >= 1  # the draft, rendered
        await page.screenshot(path=ARTIFACTS / "inbox.png", full_page=True)
        await card.locator("textarea[name=text]").fill("Looks good <b>to me</b>")
        await card.locator("button.approve").click()
        await page.wait_for_url(f"**/runs/{run_id}", timeout=WAIT_MS)
        await page.wait_for_selector("#timeline li.e-human-received", timeout=WAIT_MS)
        await page.wait_for_selector("#timeline li.e-run-completed", timeout=WAIT_MS)
        assert "Looks good <b>to me</b>" in await page.inner_text("#timeline li.e-human-received")
    finally:
        await ctx.close()
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.completed", events[-1]


async def test_a_hierarchical_run_is_drawn_as_its_plan_and_an_output_script_stays_text(
    browser, console, settings, tmp_path
):
    plan = [sub("a", instruction="sleep=0.5"), sub("b", depends_on=["a"]), sub("c", depends_on=["a"])]
    run_id = await client.submit(settings, "build", {}, {"plan": plan})
    evil = tmp_path / "evil.md"
    evil.write_text("# Evil\n\n<script>window.pwned = 1</script>\n")
    evil_run = await client.submit(settings, "copy-files", {"evil": evil})
    ctx, page = await _login(browser, console, viewport={"width": 390, "height": 844})
    try:
        await page.goto(f"{console.url}/runs/{run_id}")  # opened while it runs: the graph follows live
        await page.wait_for_selector("svg.plan g.node", timeout=WAIT_MS)
        await page.wait_for_function(
            "document.querySelectorAll('svg.plan g.node.st-accepted').length === 3", timeout=WAIT_MS
        )
        assert await page.locator("svg.plan path.edge").count() == 2
        await page.wait_for_selector("#run-status .s-completed", timeout=WAIT_MS)
        # usable at 390 px: nothing makes the page itself scroll sideways (tables and the graph scroll inside)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert await page.locator("header.top nav a[href='/inbox']").is_visible()
        await page.screenshot(path=ARTIFACTS / "plan-390px.png", full_page=True)
        await page.set_viewport_size({"width": 1280, "height": 900})
        await page.screenshot(path=ARTIFACTS / "plan.png", full_page=True)  # the README's (docs/console.png)

        events = await wait_for_end(settings, evil_run)
        ref = events[-1].outputs["evil"]
        await page.goto(f"{console.url}/runs/{evil_run}/file?key={ref.key}&version={ref.version_id}")
        assert "<script>window.pwned = 1</script>" in await page.inner_text("pre.content")
        assert await page.evaluate("window.pwned") is None
        await page.screenshot(path=ARTIFACTS / "script-as-text.png")
    finally:
        await ctx.close()
