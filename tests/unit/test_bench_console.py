"""The console benchmark's page readers (bench/console.py `Pages`): plain HTTP/1.1 over asyncio streams, read
as an EventSource reads them, against a local server that writes exactly the bytes given. No timing is
asserted. And the idle-class cgroup the console may run in (`--console-idle`), and the steps of
`--console-pages`."""

import asyncio
import json
import os
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.common import IdleCgroup, Pinned, parse_cpus, ratio_interval
from bench.console import Pages, parse_plan, parse_step
from bench.run import parse_args


def event(entry: str, kind: str = "task.assigned") -> bytes:
    created = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()  # after the stream connected: live
    data = json.dumps({"type": kind, "created_at": created, "entry": entry})
    return f"id: {entry}\ndata: {data}\n\n".encode()


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def read_pages(responses: dict[str, bytes], last_ids=None) -> tuple[Pages, list[bytes]]:
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append(head)
        run_id = head.split(b" ")[1].split(b"/")[2].decode()
        writer.write(responses[run_id])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        pages = Pages(
            f"http://127.0.0.1:{port}", "tok", list(responses), k=2, deadline=1e12, last_ids=last_ids
        )
        await asyncio.wait_for(pages._main(), 10)
    return pages, requests


def test_a_page_reads_events_split_across_chunks_until_the_end_event():
    body = event("1-0") + event("2-0") + b"event: end\ndata: {}\n\n"
    ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    # chunk boundaries inside a line and inside the CRLF-free SSE framing
    response = ok + chunked(body[:7], body[7:50], body[50:])
    missing = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"

    pages, requests = asyncio.run(read_pages({"run-a": response, "run-b": missing}))

    assert (pages.opened, pages.ended, pages.errors) == (2, 1, 1)
    assert len(pages.arrivals) == 2 and pages.early == 0
    assert all(b"authorization: Bearer tok\r\n" in r for r in requests)
    assert sorted(r.split(b" ")[1] for r in requests) == [b"/runs/run-a/stream", b"/runs/run-b/stream"]
    assert not any(b"last-event-id" in r for r in requests)


def test_a_page_given_a_last_entry_resumes_after_it_as_a_reconnecting_event_source():
    body = event("7-0") + b"event: end\ndata: {}\n\n"
    ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body)

    pages, requests = asyncio.run(read_pages({"run-a": ok + body, "run-b": ok + body}, {"run-a": "6-3"}))

    assert (pages.opened, pages.ended, pages.errors) == (2, 2, 0)
    heads = {r.split(b" ")[1]: r for r in requests}
    assert b"\r\nlast-event-id: 6-3\r\n" in heads[b"/runs/run-a/stream"]
    assert heads[b"/runs/run-a/stream"].endswith(b"\r\n\r\n")
    assert b"last-event-id" not in heads[b"/runs/run-b/stream"]


@pytest.mark.parametrize("shares", [None, 2])
def test_an_idle_class_cgroup_takes_a_process_and_gives_it_back(tmp_path, shares):
    """Where the machine allows it (root, the cpu controller, Linux 5.15+), a process moved in runs
    idle-class (or at the CPU weight of compose's `cpu_shares: 2`) and goes back to its parent cgroup when
    the scenario ends; elsewhere the error says why."""
    sleeper = subprocess.Popen(["sleep", "60"])
    name = f"baton-test-idle-{sleeper.pid}"
    try:
        try:
            with IdleCgroup(name, shares=shares) as group:
                group.add(sleeper.pid)
                assert group.pids() == [sleeper.pid]
                if shares is None:
                    assert (group.path / "cpu.idle").read_text().strip() == "1"
                elif group.v2:
                    assert (group.path / "cpu.weight").read_text().strip() == "1"
                else:
                    assert (group.path / "cpu.shares").read_text().strip() == "2"
                assert f"/{name}" in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
            assert f"/{name}" not in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
            assert not group.path.exists()
        except RuntimeError as exc:  # not root, or no writable cpu controller: said plainly
            assert " cgroup at " in str(exc) or "cpu controller" in str(exc)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_without_a_cpu_controller_the_idle_cgroup_says_so(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    try:
        IdleCgroup("x", root=tmp_path)
    except RuntimeError as exc:
        assert "cpu controller is not enabled" in str(exc)
    else:
        raise AssertionError("a cgroup v2 without the cpu controller was accepted")


def test_a_pages_step_names_its_kind_and_a_bad_one_is_refused_by_name():
    assert parse_step("0") == ("rolling", 0)
    assert parse_step("50") == ("rolling", 50)
    assert parse_step("w50") == ("waiting", 50)
    assert parse_step("t25") == ("ticking", 25)
    for bad in ("x50", "w", "t-1", "", "l50"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_step(bad)


def test_a_pages_list_is_parsed_whole_and_a_bad_step_stops_the_arguments_by_name(capsys):
    assert parse_plan("0, 50,,w5,t5") == [("rolling", 0), ("rolling", 50), ("waiting", 5), ("ticking", 5)]
    assert parse_args(["--console-pages", "0,t50"]).console_pages == [("rolling", 0), ("ticking", 50)]
    assert parse_args([]).console_pages[-1] == ("ticking", 50)  # the default goes through the same parse
    with pytest.raises(SystemExit):
        parse_args(["--console-pages", "0,x5"])
    assert "console pages step 'x5'" in capsys.readouterr().err


def _affinity(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning apart needs two CPUs to split")
def test_pinned_puts_the_moved_process_on_its_cpus_the_rest_on_the_others_and_frees_all_at_exit():
    every = os.sched_getaffinity(0)
    mine = {max(every)}
    before = subprocess.Popen(["sleep", "60"])  # started before: moved to the rest
    try:
        with Pinned(mine) as pinned:
            assert _affinity(0) == _affinity(before.pid) == every - mine
            later = subprocess.Popen(["sleep", "60"])  # started inside: inherits the rest
            moved = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])  # with a child of its own
            try:
                assert _affinity(later.pid) == every - mine
                pinned.move(moved.pid)
                assert _affinity(moved.pid) == mine
                seen = {}
                thread = threading.Thread(
                    target=lambda: (pinned.this_thread(), seen.update(cpus=_affinity(0)))
                )
                thread.start()
                thread.join()
                assert seen["cpus"] == mine
                assert _affinity(0) == every - mine  # the thread's CPUs are its own
            finally:
                for p in (later, moved):
                    p.kill()
                    p.wait()
        assert _affinity(0) == _affinity(before.pid) == every
    finally:
        before.kill()
        before.wait()


def test_console_cpus_are_parsed_and_a_set_leaving_nothing_or_not_ours_is_refused_by_name(capsys):
    assert parse_cpus("1") == {1} or len(os.sched_getaffinity(0)) < 2
    every = os.sched_getaffinity(0)
    for bad, says in (
        ("x", "not 'x'"),
        (",".join(map(str, every)), "none would be left"),
        ("4096", "CPU 4096 is not one"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_cpus(bad)
    with pytest.raises(SystemExit):
        parse_args(["--console-cpus", "4096"])
    assert "CPU 4096" in capsys.readouterr().err


def test_cpu_shares_out_of_range_are_refused_by_name():
    with pytest.raises(ValueError, match="cpu shares must be 2-262144"):
        IdleCgroup("x", shares=1)


def test_a_ratio_of_percentiles_comes_with_an_interval_that_holds_it():
    """The same samples: 1x, an interval around it; samples 20 % slower: 1.2x, an interval that excludes
    1x; a few samples: an interval too wide to resolve 5 %."""
    import random

    rng = random.Random(1)
    base = [rng.lognormvariate(0, 0.5) for _ in range(5000)]
    same = ratio_interval(base, base, 99, rounds=200)
    assert same[0] == 1.0 and same[1] <= 1.0 <= same[2]
    slower = ratio_interval([x * 1.2 for x in base], base, 99, rounds=200)
    assert abs(slower[0] - 1.2) < 1e-9 and 1.0 < slower[1] <= 1.2 <= slower[2]
    few = ratio_interval(base[:100], base[100:200], 99, rounds=200)
    assert few[2] - few[1] > 0.1
    assert ratio_interval([], base, 99) is None
