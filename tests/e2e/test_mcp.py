"""The MCP server, driven by the `mcp` package's own client over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from baton import client
from shared.storage import Storage

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"list_files", "read_file", "write_file", "search_files", "submit_run", "run_status", "respond"}
pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def session(transport: str, stack, mcp_http):
    """An initialized MCP client session over `transport`."""
    if transport == "stdio":
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "services.mcp", "--transport", "stdio"],
            env={**stack.service_env("mcp"), "BATON_LOG_LEVEL": "WARNING"},  # its own ACL users
            cwd=ROOT,
        )
        with open(stack.root / "logs" / "mcp-stdio.log", "a") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    yield s
    else:
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {mcp_http.token}"}, timeout=httpx2.Timeout(30, read=300)
        )
        async with http, streamable_http_client(mcp_http.url, http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                yield s


async def call(s: ClientSession, tool: str, **args) -> dict:
    result = await s.call_tool(tool, args)
    assert not result.is_error, result.content
    return result.structured_content


async def refused(s: ClientSession, tool: str, **args) -> str:
    result = await s.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text


TRANSPORTS = pytest.mark.parametrize("transport", ["stdio", "http"])


@TRANSPORTS
async def test_files_round_trip_and_a_lost_race_returns_the_winning_version(
    transport, stack, mcp_http, settings
):
    key = f"shared/mcp-{transport}-{uuid.uuid4().hex[:8]}/plan.md"
    async with session(transport, stack, mcp_http) as s:
        assert {t.name for t in (await s.list_tools()).tools} == TOOLS
        first = await call(s, "write_file", key=key, content="# Plan\n\nstep one\n")
        assert first["written"] and first["version_id"]

        read = await call(s, "read_file", key=key)
        assert read["content"] == "# Plan\n\nstep one\n" and read["etag"] == first["etag"]
        listed = await call(s, "list_files", prefix=key.rsplit("/", 1)[0] + "/")
        assert [f["key"] for f in listed["files"]] == [key]

        # without if_match a write only creates: the existing version is returned, nothing overwritten
        clash = await call(s, "write_file", key=key, content="someone else's plan")
        assert clash["written"] is False and "already exists" in clash["message"]
        assert clash["current"]["content"] == "# Plan\n\nstep one\n"

        second = await call(s, "write_file", key=key, content="# Plan\n\nstep two\n", if_match=read["etag"])
        assert second["written"] and second["version_id"] != first["version_id"]

        # a writer still holding the first etag lost the race: it gets the winner back
        stale = await call(s, "write_file", key=key, content="stale edit", if_match=first["etag"])
        assert stale["written"] is False and "changed since etag" in stale["message"]
        assert stale["current"]["content"] == "# Plan\n\nstep two\n"
        assert stale["current"]["version_id"] == second["version_id"]

        old = await call(s, "read_file", key=key, version=first["version_id"])
        assert old["content"] == "# Plan\n\nstep one\n"  # every version stays readable
    async with Storage.connect(settings) as storage:
        head = await storage.head(key)
    assert head.version_id == second["version_id"]


@TRANSPORTS
async def test_writes_outside_the_allowed_prefixes_are_refused_and_nothing_is_written(
    transport, stack, mcp_http, settings
):
    run_key = f"runs/r-mcp-{uuid.uuid4().hex[:8]}/published/forged.md"
    async with session(transport, stack, mcp_http) as s:
        message = await refused(s, "write_file", key=run_key, content="forged output")
        assert "outside the writable prefixes" in message and run_key in message
        assert "outside the writable prefixes" in await refused(
            s, "write_file", key="published/x.md", content="x"
        )
        assert "'..' segment" in await refused(s, "write_file", key="shared/../runs/x.md", content="x")
        assert "absolute" in await refused(s, "write_file", key="/shared/x.md", content="x")
        assert "no file" in await refused(s, "read_file", key="shared/does-not-exist.md")
    async with Storage.connect(settings) as storage:
        assert await storage.head(run_key) is None
        assert await storage.head("published/x.md") is None


@TRANSPORTS
async def test_a_written_file_is_found_by_search_files(transport, stack, mcp_http):
    term = "mcpq" + uuid.uuid4().hex[:10]
    key = f"shared/mcp-search-{transport}-{uuid.uuid4().hex[:6]}.md"
    async with session(transport, stack, mcp_http) as s:
        written = await call(s, "write_file", key=key, content=f"Notes about {term} and more.")
        for _ in range(100):
            found = await call(s, "search_files", query=term)
            if found["hits"]:
                break
            await asyncio.sleep(0.05)
        (hit,) = found["hits"]
        assert hit["key"] == key and hit["version_id"] == written["version_id"]
        assert f"**{term}**" in hit["snippet"] and hit["score"] > 0
        assert (await call(s, "search_files", query=term, prefix="runs/"))["hits"] == []


@TRANSPORTS
async def test_submit_a_run_follow_it_and_read_its_output(transport, stack, mcp_http):
    async with session(transport, stack, mcp_http) as s:
        message = await refused(s, "submit_run", workflow="no-such-workflow")
        assert "unknown workflow 'no-such-workflow'" in message
        submitted = await call(
            s,
            "submit_run",
            workflow="by-intent",
            inputs={"note": {"content": f"hello from {transport}\n", "filename": "note.txt"}},
        )
        run_id = submitted["run_id"]
        assert submitted["inputs"]["note"]["key"] == f"runs/{run_id}/inputs/note.txt"
        status = await _wait_status(s, run_id, {"completed", "failed"})
        assert status["status"] == "completed", status
        # the run's end is in its last events (a late duplicate of a task event may follow it)
        assert "run.completed" in [e["type"] for e in status["events"]]
        out = status["outputs"]["note"]
        read = await call(s, "read_file", key=out["key"], version=out["version_id"])
        assert read["content"] == f"hello from {transport}\n"
        # an input given by key: the file's current version is handed over
        key = f"shared/mcp-input-{transport}-{uuid.uuid4().hex[:6]}.txt"
        await call(s, "write_file", key=key, content="by reference\n")
        by_key = await call(s, "submit_run", workflow="by-intent", inputs={"note": key})
        assert by_key["inputs"]["note"]["key"] == key and by_key["inputs"]["note"]["version_id"]
        done = await _wait_status(s, by_key["run_id"], {"completed", "failed"})
        assert done["status"] == "completed", done
        out = done["outputs"]["note"]
        assert (await call(s, "read_file", key=out["key"]))["content"] == "by reference\n"
        assert "no run" in await refused(s, "run_status", run_id="r-never-submitted")
        assert "not valid" in await refused(s, "run_status", run_id="../etc")


async def test_respond_answers_a_run_waiting_for_a_person_which_then_completes(stack, mcp_http, settings):
    async with session("http", stack, mcp_http) as s:
        run_id = (await call(s, "submit_run", workflow="approval-strict"))["run_id"]
        waiting = await _wait_status(s, run_id, {"waiting_for_human", "completed", "failed"})
        assert waiting["status"] == "waiting_for_human", waiting
        assert waiting["waiting"]["question"] == "Ship it?"
        assert "decision" in await refused(s, "respond", run_id=run_id, decision="maybe")
        answer = await call(s, "respond", run_id=run_id, decision="approve", text="ship it")
        assert answer["key"].startswith(f"runs/{run_id}/human/responses/response-")
        assert answer["key"].endswith(".json") and answer["run_status"] == "waiting_for_human"
        done = await _wait_status(s, run_id, {"completed", "failed"})
        assert done["status"] == "completed", done
        assert "final" in done["outputs"]  # the stage after the person's approval ran
        # the run no longer waits: another answer is refused, and nothing more is written
        message = await refused(s, "respond", run_id=run_id, decision="reject", text="too late")
        assert f"run {run_id} is not waiting for a person" in message
        assert "no run" in await refused(s, "respond", run_id="r-never-submitted", decision="approve")
    async with Storage.connect(settings) as storage:
        body = json.loads(await storage.get(await storage.head(answer["key"])))
        responses = await storage.list(f"runs/{run_id}/human/responses/")
    assert body["decision"] == "approve" and body["text"] == "ship it"
    assert [r.key for r in responses] == [answer["key"]]


async def test_run_status_reports_a_cancelled_run_as_cancelled(stack, mcp_http, settings):
    async with session("http", stack, mcp_http) as s:
        run_id = (await call(s, "submit_run", workflow="slow-pair", params={"sleep": 5}))["run_id"]
        await _wait_status(s, run_id, {"running"})
        await client.cancel(settings, run_id, reason="not needed any more")
        status = await _wait_status(s, run_id, {"cancelled", "completed", "failed"})
    assert status["status"] == "cancelled", status
    assert "not needed any more" in status["reason"]


async def test_http_without_the_bearer_token_is_refused(mcp_http):
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.post(mcp_http.url, json=hello, headers=headers)).status_code == 401
        wrong = {**headers, "Authorization": "Bearer not-the-token"}
        assert (await http.post(mcp_http.url, json=hello, headers=wrong)).status_code == 401
        right = {**headers, "Authorization": f"Bearer {mcp_http.token}"}
        assert (await http.post(mcp_http.url, json=hello, headers=right)).status_code == 200


def test_http_off_loopback_without_a_token_refuses_to_start(stack):
    env = {**os.environ, **stack.service_env("mcp"), "BATON_MCP_TOKEN": ""}
    done = subprocess.run(
        [sys.executable, "-m", "services.mcp", "--transport", "http", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "mcp_refused_to_start" in done.stderr and "BATON_MCP_TOKEN" in done.stderr


async def _wait_status(s: ClientSession, run_id: str, until: set[str], timeout: float = 30) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await s.call_tool("run_status", {"run_id": run_id})
        # "no run" until the supervisor has taken the submission (a few milliseconds)
        assert not result.is_error or "no run" in result.content[0].text, result.content
        status = result.structured_content or {"status": "not yet known"}
        if status["status"] in until or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.1)


