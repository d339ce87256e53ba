"""A real Prometheus (built from the Go module proxy, baton/servers.py) scraping every process of the
session's stack through the `file_sd_configs` file `baton dev up` writes: PromQL sums the workers' counters
to what the runs did."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from baton import servers
from baton.dev import write_scrape_targets
from tests.helpers import run

ROOT = Path(__file__).resolve().parents[2]
BRIEF = ROOT / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e


def _query(prometheus: servers.Server, promql: str) -> dict[str, float]:
    url = f"{prometheus.url}api/v1/query?query={urllib.parse.quote(promql)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        data = json.loads(response.read())["data"]["result"]
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in data}


def _targets_up(prometheus: servers.Server) -> list[str]:
    with urllib.request.urlopen(f"{prometheus.url}api/v1/targets", timeout=10) as response:
        active = json.loads(response.read())["data"]["activeTargets"]
    return [t["labels"]["process"] for t in active if t["health"] == "up"]


@pytest.fixture
def prometheus(stack, tmp_path):
    targets = tmp_path / "targets.json"
    write_scrape_targets(targets, {h: stack.metrics[h] for h in stack.procs})
    server = servers.start_prometheus(tmp_path / "prometheus", targets)
    yield server
    server.stop()


async def test_prometheus_scrapes_every_process_and_sums_the_workers(stack, settings, prometheus):
    completed = 'sum by (agent) (baton_tasks_ended_total{outcome="completed", agent=~"outliner|writer|seo"})'

    def settled(want: dict | None = None, timeout: float = 30) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(_targets_up(prometheus)) == set(stack.procs):
                found = _query(prometheus, completed)
                if want is None or found == want:
                    return found
            time.sleep(0.5)
        up, found = _targets_up(prometheus), _query(prometheus, completed)
        raise AssertionError(f"targets up {up}; {completed} = {found}")

    await asyncio.sleep(2.5)  # two scrapes of every target: the counters' values before the runs
    before = await asyncio.to_thread(settled)
    runs = await asyncio.gather(*(run(settings, "content-factory", {"brief": BRIEF}) for _ in range(3)))
    assert all(events[-1].type == "run.completed" for _run_id, events in runs)
    want = {
        json.dumps({"agent": agent}): before.get(json.dumps({"agent": agent}), 0.0) + 3
        for agent in ("outliner", "writer", "seo")
    }
    await asyncio.to_thread(settled, want)
    workers = _query(prometheus, 'count(baton_service_info{service="worker"})')
    assert list(workers.values()) == [len([h for h in stack.procs if h.startswith("worker-")])]
    lag = _query(prometheus, 'max(baton_stream_lag{stream="baton:agent:outliner", group="outliner"})')
    assert list(lag.values()) == [0.0]
