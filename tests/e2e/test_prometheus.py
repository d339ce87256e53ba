"""A real Prometheus (built from the Go module proxy, baton/servers.py) scraping every process of the
session's stack through the `file_sd_configs` file `baton dev up` writes: PromQL sums the workers' counters
to what the runs did."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
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


DASHBOARD = json.loads((ROOT / "observability" / "grafana" / "dashboards" / "baton.json").read_text())
# The dashboard's queries that a run of `content-factory` (three python stages, no model, no failure, no
# retry) leaves a series for. The others (failures, retries, reclaims, dead letters, model tokens and cost,
# FastStream's per-message path: by default only the indexer's searches take it)
# must parse and answer, with no series required: this run makes none of those.
AFTER_A_RUN = {
    'sum(rate(baton_runs_total{status="completed"}[1m]))',
    "max(baton_dlq_size)",
    "sum by (agent, outcome) (rate(baton_tasks_ended_total[1m]))",
    "sum by (status) (rate(baton_runs_total[1m]))",
    "max(baton_runs_waiting)",
    "histogram_quantile(0.5, sum by (le, agent) (rate(baton_task_duration_seconds_bucket[1m])))",
    "histogram_quantile(0.99, sum by (le, agent) (rate(baton_task_duration_seconds_bucket[1m])))",
    "histogram_quantile(0.99, sum by (le, agent) (rate(baton_task_queue_wait_seconds_bucket[1m])))",
    "histogram_quantile(0.99, sum by (le, kind) (rate(baton_supervisor_hop_seconds_bucket[1m])))",
    "max by (stream, group) (baton_stream_lag)",
    "max by (stream, group) (baton_stream_pending)",
    "sum by (stream, outcome) (rate(baton_messages_handled_total[1m]))",
    "histogram_quantile(0.99, sum by (le, method) (rate(baton_storage_request_seconds_bucket[1m])))",
}


def _answer(prometheus: servers.Server, promql: str) -> tuple[str, list]:
    """Prometheus's status for `promql` ("success", or its error type for a query it refuses) and series."""
    url = f"{prometheus.url}api/v1/query?query={urllib.parse.quote(promql)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400 bad_data: the expression does not parse
        body = json.loads(exc.read())
        return f"{body.get('errorType')}: {body.get('error')}", []
    return body["status"], body["data"]["result"]


async def test_every_dashboard_query_parses_and_answers_after_a_run(stack, settings, prometheus):
    exprs = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    assert AFTER_A_RUN <= set(exprs), AFTER_A_RUN - set(exprs)  # the list above follows the dashboard
    await asyncio.sleep(2.5)  # scrapes before the run: a rate needs two samples either side of a change
    _run_id, events = await run(settings, "content-factory", {"brief": BRIEF})
    assert events[-1].type == "run.completed"

    def answers(timeout: float = 30) -> dict[str, tuple[str, list]]:
        deadline = time.monotonic() + timeout
        while True:
            found = {expr: _answer(prometheus, expr) for expr in exprs}
            missing = [e for e in AFTER_A_RUN if not found[e][1]]
            if not missing or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    found = await asyncio.to_thread(answers)
    refused = {expr: status for expr, (status, _series) in found.items() if status != "success"}
    assert not refused, refused
    empty = sorted(expr for expr in AFTER_A_RUN if not found[expr][1])
    assert not empty, f"no series after a run for: {empty}"
