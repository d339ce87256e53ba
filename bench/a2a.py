"""The A2A gateway at 10x and 100x: N A2A tasks sent at once, as N clients would, each followed to its end.

Each task is a `SendStreamingMessage` through a2a-sdk's own client (one HTTP connection each, no
keep-alive) with a text part, a small file part and `{"sleep": S}`, on workflow `a2a-wait`: two stages
that each wait S seconds without using a core, so every task stays in flight until the runs ahead of it
are done. Measured per burst: tasks completed (and every other ending, by kind), wall time and tasks/s,
each task's time to its first update and to `completed` (p50/p99), the gateway's CPU per task, and the
most Redis connections open at once (sampled every 50 ms) with the gateway's live reader among them.
The client runs in this process, on the same two cores: its own CPU is reported beside the gateway's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
import uuid

import httpx
import redis
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState
from google.protobuf import struct_pb2

from baton import servers
from bench import runs as whole_runs
from bench.common import percentile

WORKFLOW = "a2a-wait"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _ms(values: list[float]) -> dict:
    if not values:
        return {}
    return {"p50_ms": round(percentile(values, 50) * 1000), "p99_ms": round(percentile(values, 99) * 1000)}


class Connections:
    """The most connections Redis had open at once, and how many of them were the gateway's live reader."""

    def __init__(self, client: redis.Redis) -> None:
        self.client, self.peak, self.readers = client, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.is_set():
            listed = self.client.client_list()
            self.peak = max(self.peak, len(listed))
            self.readers = max(self.readers, sum(c["name"] == "baton-gateway:live" for c in listed))
            time.sleep(0.05)

    def __enter__(self) -> Connections:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


async def _burst(url: str, token: str, n: int, sleep: float) -> dict:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx.Timeout(120, read=1800)
    data = struct_pb2.Value()
    data.struct_value.update({"sleep": sleep})
    first: list[float] = []
    done: list[float] = []
    endings: dict[str, int] = {}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as http:
        card = await A2ACardResolver(http, f"{url}{WORKFLOW}/").get_agent_card()
        a2a = ClientFactory(ClientConfig(httpx_client=http, streaming=True)).create(card)

        async def one(i: int) -> None:
            parts = [
                Part(text=f"task {i}"),
                Part(raw=b"input %d\n" % i, filename="note.txt", media_type="text/plain"),
                Part(data=data),
            ]
            request = SendMessageRequest(
                message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=parts)
            )
            t0, state = time.monotonic(), None
            try:
                async for event in a2a.send_message(request):
                    if state is None:
                        first.append(time.monotonic() - t0)
                    kind = event.WhichOneof("payload")
                    if kind == "task":
                        state = event.task.status.state
                    elif kind == "status_update":
                        state = event.status_update.status.state
            except Exception as exc:  # noqa: BLE001 - counted by kind: the scenario reports every ending
                ending = f"{type(exc).__name__}: {str(exc)[:80]}"
            else:
                ending = TaskState.Name(state) if state is not None else "no event"
                if state == TaskState.TASK_STATE_COMPLETED:
                    done.append(time.monotonic() - t0)
            endings[ending] = endings.get(ending, 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.monotonic() - t0
    return {
        "tasks": n,
        "completed": len(done),
        "endings": endings,
        "wall_s": round(wall, 1),
        "tasks_per_s": round(n / wall, 1),
        "first_update": _ms(first),
        "to_completed": _ms(done),
    }


def scenario(srv: whole_runs.Servers, sizes: list[int], sleep: float, workers: int) -> dict:
    """One gateway on a full stack; a burst of each size in `sizes`, in turn, on an emptied Redis."""
    client = srv.clean()
    stack = srv.stack("a2a", workers=workers)
    port, token = servers.free_port(), secrets.token_hex(16)
    out: dict = {"workflow": WORKFLOW, "stage_sleep_s": sleep, "workers": workers, "bursts": []}
    try:
        handle = stack.start(
            "gateway",
            {"BATON_GATEWAY_HOST": "127.0.0.1", "BATON_GATEWAY_PORT": str(port), "BATON_A2A_TOKEN": token},
        )
        pid = stack.procs[handle].pid
        for n in sizes:
            print(f"- a2a: {n:,} tasks at once on runs of 2 x {sleep:g} s", flush=True)
            cpu0, mine0 = _cpu(pid), sum(os.times()[:2])
            with Connections(client) as conns:
                burst = asyncio.run(_burst(f"http://127.0.0.1:{port}/", token, n, sleep))
            gateway_s, client_s = _cpu(pid) - cpu0, sum(os.times()[:2]) - mine0
            burst["gateway_cpu_ms_per_task"] = round(1000 * gateway_s / n, 1)
            burst["client_cpu_ms_per_task"] = round(1000 * client_s / n, 1)
            burst["redis_connections_peak"] = conns.peak
            burst["gateway_live_readers_peak"] = conns.readers
            out["bursts"].append(burst)
            print(f"  {_line(burst)}", flush=True)
        out["gateway_log"] = whole_runs._log_problems(stack, "gateway")
        log = b"".join(stack.log_path(h).read_bytes() for h in stack.procs if h.startswith("gateway-"))
        out["gateway_log"]["tracebacks"] = log.count(b"Traceback (most recent call last)")
    finally:
        stack.stop_all()
    return out


def _line(b: dict) -> str:
    others = {k: v for k, v in b["endings"].items() if k != "TASK_STATE_COMPLETED"}
    return (
        f"{b['completed']:,}/{b['tasks']:,} completed in {b['wall_s']} s ({b['tasks_per_s']} tasks/s); "
        f"first update p50/p99 {b['first_update'].get('p50_ms', '-')}/{b['first_update'].get('p99_ms', '-')}"
        f" ms, completed p50/p99 {b['to_completed'].get('p50_ms', '-')}/"
        f"{b['to_completed'].get('p99_ms', '-')} ms; gateway {b['gateway_cpu_ms_per_task']} ms CPU a task "
        f"(client {b['client_cpu_ms_per_task']}); Redis connections at most {b['redis_connections_peak']} "
        f"({b['gateway_live_readers_peak']} live reader)" + (f"; other endings {others}" if others else "")
    )


def table(results: dict) -> list[str]:
    a2a = results.get("a2a")
    if not a2a:
        return []
    lines = ["", f"A2A gateway: tasks sent at once on runs of 2 x {a2a['stage_sleep_s']:g} s"]
    lines += [f"  {_line(b)}" for b in a2a["bursts"]]
    if a2a.get("gateway_log"):
        lines.append(f"  gateway log: {a2a['gateway_log']}")
    return lines


def markdown(results: dict) -> list[str]:
    a2a = results.get("a2a")
    if not a2a:
        return []
    out = [
        "",
        f"A2A gateway, tasks sent at once (streaming, one connection each) on runs of 2 x "
        f"{a2a['stage_sleep_s']:g} s:",
        "",
        "| tasks | completed | wall | tasks/s | first update p50 / p99 | completed p50 / p99 "
        "| gateway CPU a task | Redis connections (peak) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in a2a["bursts"]:
        f, c = b["first_update"], b["to_completed"]
        out.append(
            f"| {b['tasks']:,} | {b['completed']:,} | {b['wall_s']} s | {b['tasks_per_s']} "
            f"| {f.get('p50_ms', '-')} / {f.get('p99_ms', '-')} ms | {c.get('p50_ms', '-')} / "
            f"{c.get('p99_ms', '-')} ms | {b['gateway_cpu_ms_per_task']} ms | {b['redis_connections_peak']} |"
        )
    return out
