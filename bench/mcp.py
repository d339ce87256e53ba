"""The MCP server at 10x and 100x: N assistants working through it at once, each as one would.

Each session is the `mcp` package's own client over streamable HTTP (one HTTP client each), and does what
an assistant does with Baton's tools: initialize, list the tools, write a note (`write_file`), read it back
(`read_file`), start a run of `relay` (`submit_run`: three no-op stages) and follow it with `run_status`
every 0.2 s until it has ended. Sessions of a burst start together. Measured per burst: sessions that
saw their run complete (and every other ending, by kind), wall time, tool calls a second, each tool's
latency (p50/p99), the MCP server's CPU per tool call. The clients run in this process, on the same two
cores: their CPU is reported beside the server's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from baton import servers
from baton.dev import mcp_http_env
from bench import runs as whole_runs
from bench.a2a import _cpu, _ms

WORKFLOW = "relay"
POLL_S = 0.2  # how often a session asks for its run's status, as an assistant following a run would
ENDED = {"completed", "failed", "cancelled"}


async def _session(url: str, token: str, i: int, tag: str, calls: dict[str, list[float]]) -> str:
    """One assistant's session; returns how it ended (`completed`, another status, or the error)."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(60, read=300)
    )

    async def call(s: ClientSession, tool: str, **args) -> dict:
        t0 = time.monotonic()
        result = await s.call_tool(tool, args)
        calls.setdefault(tool, []).append(time.monotonic() - t0)
        if result.is_error:
            raise RuntimeError(f"{tool}: {result.content[0].text[:120]}")
        return result.structured_content

    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as s:
            t0 = time.monotonic()
            await s.initialize()
            calls.setdefault("initialize", []).append(time.monotonic() - t0)
            await s.list_tools()
            key = f"shared/bench-mcp/{tag}/{i}.md"
            await call(s, "write_file", key=key, content=f"# Note {i}\n\nfrom session {i}\n")
            await call(s, "read_file", key=key)
            run_id = (await call(s, "submit_run", workflow=WORKFLOW))["run_id"]
            while True:
                status = (await call(s, "run_status", run_id=run_id, events=5))["status"]
                if status in ENDED:
                    return status
                await asyncio.sleep(POLL_S)


async def _burst(url: str, token: str, n: int) -> dict:
    tag = secrets.token_hex(3)
    calls: dict[str, list[float]] = {}
    endings: dict[str, int] = {}

    async def one(i: int) -> None:
        try:
            ending = await _session(url, token, i, tag, calls)
        except Exception as exc:  # noqa: BLE001 - counted by kind: the scenario reports every ending
            ending = f"{type(exc).__name__}: {str(exc)[:80]}"
        endings[ending] = endings.get(ending, 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.monotonic() - t0
    total = sum(len(v) for v in calls.values())
    return {
        "sessions": n,
        "completed": endings.get("completed", 0),
        "endings": endings,
        "wall_s": round(wall, 2),
        "tool_calls": total,
        "tool_calls_per_s": round(total / wall, 1),
        "latency": {tool: {**_ms(v), "calls": len(v)} for tool, v in sorted(calls.items())},
    }


def scenario(srv: whole_runs.Servers, sizes: list[int], workers: int) -> dict:
    """One MCP server (streamable HTTP) on a full stack; a burst of sessions of each size, in turn."""
    srv.clean()
    stack = srv.stack("mcp", workers=workers)
    port, token = servers.free_port(), secrets.token_hex(16)
    out: dict = {"workflow": WORKFLOW, "poll_s": POLL_S, "workers": workers, "bursts": []}
    try:
        handle = stack.start("mcp", mcp_http_env(port, token))
        pid = stack.procs[handle].pid
        for n in sizes:
            print(f"- mcp: {n:,} sessions at once", flush=True)
            cpu0, mine0 = _cpu(pid), sum(os.times()[:2])
            burst = asyncio.run(_burst(f"http://127.0.0.1:{port}/mcp", token, n))
            server_s, mine_s = _cpu(pid) - cpu0, sum(os.times()[:2]) - mine0
            burst["mcp_cpu_s"] = round(server_s, 2)
            burst["mcp_cpu_ms_per_call"] = round(server_s / max(burst["tool_calls"], 1) * 1000, 2)
            burst["clients_cpu_s"] = round(mine_s, 2)
            burst["ok"] = burst["completed"] == n
            out["bursts"].append(burst)
    finally:
        stack.stop_all()
    out["ok"] = all(b["ok"] for b in out["bursts"])
    return out


def table(results: dict) -> list[str]:
    r = results.get("mcp")
    if not r:
        return []
    lines = [
        "",
        f"MCP server: sessions at once, each writing a note, reading it, starting a '{r['workflow']}' run "
        f"and asking its status every {r['poll_s']:g} s until it ends; {r['workers']} workers",
        f"{'sessions':>9} {'completed':>10} {'wall s':>7} {'calls/s':>8} {'submit p50/p99 ms':>18} "
        f"{'status p50/p99 ms':>18} {'server ms/call':>15} {'clients s':>10}",
    ]
    for b in r["bursts"]:
        lat = b["latency"]
        sub, st = lat.get("submit_run", {}), lat.get("run_status", {})
        submit = f"{sub.get('p50_ms', 0)}/{sub.get('p99_ms', 0)}"
        status = f"{st.get('p50_ms', 0)}/{st.get('p99_ms', 0)}"
        lines.append(
            f"{b['sessions']:>9,} {b['completed']:>10,} {b['wall_s']:>7.1f} {b['tool_calls_per_s']:>8,.0f} "
            f"{submit:>18} {status:>18} "
            f"{b['mcp_cpu_ms_per_call']:>15.2f} {b['clients_cpu_s']:>10.1f}"
            + ("" if b["ok"] else f"  NOT OK: {b['endings']}")
        )
    return lines
