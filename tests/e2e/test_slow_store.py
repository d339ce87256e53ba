"""A request to the store that does not answer is seen while it waits: a warning past
`BATON_STORAGE_SLOW_S` (again at each doubling) and one when it ends, carrying the run and task it holds
up, and counted in `baton_storage_slow_requests`. Before, a MinIO node's death held writes for tens of
seconds and the services logged nothing.

MinIO is really stalled: its process is stopped (SIGSTOP) and continued. Its own Redis, MinIO and services
(tests/stacks.py), since the session's must not stall.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import structlog
from structlog.testing import capture_logs

from baton import client, servers
from baton.dev import settings_kwargs
from shared import metrics
from shared.settings import Settings
from shared.storage import Storage
from tests.helpers import cli_env, wait_for_end
from tests.stacks import own_servers_and_stack, stack_settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
SLOW_S = 0.5


@pytest.fixture(scope="module")
def stalling(tmp_path_factory):
    env = {"BATON_STORAGE_SLOW_S": str(SLOW_S)}
    with own_servers_and_stack(tmp_path_factory.mktemp("slow-store"), workers=1, extra_env=env) as (
        minio,
        stack,
    ):
        try:
            yield minio, stack
        finally:
            os.kill(minio.pid, signal.SIGCONT)  # (if a failed test left it stopped)


async def stall(minio: servers.Server, seconds: float) -> None:
    os.kill(minio.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(minio.pid, signal.SIGCONT)


def slow_count(method: str) -> float:
    return metrics.STORAGE_SLOW.labels(method)._value.get()


async def test_a_stalled_request_is_logged_while_it_waits_and_when_it_ends(stalling):
    minio, stack = stalling
    settings = Settings(**settings_kwargs(stack.env), storage_slow_s=SLOW_S)
    async with Storage.connect(settings) as storage:
        assert storage.slow == SLOW_S
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            ref = await storage.put("runs/r-fast/work/a.txt", b"quick")  # an answered request: nothing
            assert await storage.get(ref) == b"quick"
        assert logs == []

        puts, gets = slow_count("PutObject"), slow_count("GetObject")
        structlog.contextvars.bind_contextvars(run_id="r-stalled", task_id="r-stalled:0:1")
        try:
            with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                stalled = asyncio.create_task(stall(minio, 3 * SLOW_S + 0.1))
                await asyncio.sleep(0.05)
                started = time.monotonic()
                written = await storage.put("runs/r-stalled/work/b.txt", b"held up")
                waited = time.monotonic() - started
                await stalled
                stalled = asyncio.create_task(stall(minio, 1.5 * SLOW_S + 0.05))
                await asyncio.sleep(0.05)
                assert await storage.get(written) == b"held up"
                await stalled
        finally:
            structlog.contextvars.unbind_contextvars("run_id", "task_id")
    assert waited > 3 * SLOW_S
    put_logs = [e for e in logs if e["method"] == "PutObject"]
    get_logs = [e for e in logs if e["method"] == "GetObject"]
    # still waiting at 0.5 s and at 1 s (each doubling; it ends at about 1.5), then how it ended
    assert [(e["event"], e.get("waited_s")) for e in put_logs] == [
        ("storage_waiting", SLOW_S),
        ("storage_waiting", 2 * SLOW_S),
        ("storage_slow", None),
    ], put_logs
    assert put_logs[-1]["took_s"] >= 3 * SLOW_S and put_logs[-1]["outcome"] == "ok"
    assert [e["event"] for e in get_logs] == ["storage_waiting", "storage_slow"], get_logs
    for entry in logs:
        assert entry["log_level"] == "warning"
        assert entry["key"] == "runs/r-stalled/work/b.txt"
        assert (entry["run_id"], entry["task_id"]) == ("r-stalled", "r-stalled:0:1")
    assert slow_count("PutObject") == puts + 1 and slow_count("GetObject") == gets + 1


async def test_a_worker_whose_write_stalls_logs_it_with_its_run_and_task(stalling):
    minio, stack = stalling
    settings = stack_settings(stack)
    run_id = await client.submit(settings, "slow-pair", {}, params={"sleep": 1.0})
    # Stop the store while the first stage sleeps: its write of work/0-slow.txt waits for it.
    started = time.monotonic()
    async for event in client.follow(settings, run_id, block_ms=1000):
        if event.type == "task.started":
            break
        assert time.monotonic() - started < 30, "the first stage did not start"
    await stall(minio, 3.0)
    events = await wait_for_end(settings, run_id, 60)
    assert events[-1].type == "run.completed", events[-1]
    task_id = next(e.task_id for e in events if e.type == "task.completed")

    (worker,) = [handle for handle in stack.procs if handle.startswith("worker")]
    log = stack.log_path(worker).read_text().splitlines()
    lines = [json.loads(line) for line in log if "storage_" in line]
    mine = [line for line in lines if line.get("run_id") == run_id]
    assert [line["event"] for line in mine][:2] == ["storage_waiting", "storage_waiting"], lines
    assert mine[-1]["event"] == "storage_slow" and mine[-1]["outcome"] == "ok", mine
    assert {(line["task_id"], line["method"], line["key"]) for line in mine} == {
        (task_id, "PutObject", f"runs/{run_id}/work/0-slow.txt")
    }, mine
    assert mine[-1]["took_s"] > 1.5 and mine[-1]["service"] == "worker"


def test_the_cli_shows_a_stalled_request_on_stderr_and_keeps_stdout_its_output(stalling, tmp_path):
    minio, stack = stalling
    settings = stack_settings(stack)
    brief = tmp_path / "brief.md"
    brief.write_text("# a brief\n")
    env = {**cli_env(settings), "BATON_STORAGE_SLOW_S": str(SLOW_S)}
    command = [
        sys.executable,
        "-m",
        "baton.cli",
        "submit",
        "content-factory",
        "-i",
        f"brief={brief}",
        "--json",
    ]
    os.kill(minio.pid, signal.SIGSTOP)  # before the command: its upload of the brief waits
    try:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
    finally:
        os.kill(minio.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "submitted"  # stdout: the one JSON object, nothing else
    assert "storage_waiting" in err and "storage_slow" in err, err
    assert "inputs/brief.md" in err and "PutObject" in err, err
