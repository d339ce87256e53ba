"""`/metrics` on every service process of the session's stack, parsed with prometheus-client's own parser:
the counters move as the runs did, summed over the processes of a service (two batched workers, one on
FastStream's per-message path)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from shared import streams
from tests.helpers import Samples, run, scrape, total

ROOT = Path(__file__).resolve().parents[2]
BRIEF = ROOT / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e


def scrape_all(stack) -> dict[str, Samples]:
    return {handle: scrape(stack.metrics[handle]) for handle in stack.procs}


async def test_every_process_serves_metrics_and_the_counters_follow_the_runs(stack, settings):
    before = await asyncio.to_thread(scrape_all, stack)
    runs = await asyncio.gather(
        *(run(settings, "content-factory", {"brief": BRIEF}) for _ in range(6)),
        run(settings, "per-message"),
        run(settings, "support", params={"text": "where is my parcel?"}),
    )
    assert [events[-1].type for _run_id, events in runs] == ["run.completed"] * 8
    after = await asyncio.to_thread(scrape_all, stack)

    def moved(name: str, service: str | None = None, **labels) -> float:
        return total(after, name, service, **labels) - total(before, name, service, **labels)

    services = Counter(handle.rsplit("-", 1)[0] for handle in after)
    assert {"notifier", "supervisor", "router", "worker"} <= set(services) and services["worker"] >= 3
    for handle, samples in after.items():  # each process says which service it is
        info = [labels for (name, labels), _v in samples.items() if name == "baton_service_info"]
        assert info and dict(info[0])["service"] == handle.rsplit("-", 1)[0], handle

    # Tasks, by agent and outcome, summed over the worker processes (batched and per-message paths).
    for agent in ("outliner", "writer", "seo"):
        assert moved("baton_tasks_started_total", "worker", agent=agent) == 6, agent
        assert moved("baton_tasks_ended_total", "worker", agent=agent, outcome="completed") == 6, agent
        assert moved("baton_task_duration_seconds_count", "worker", agent=agent) == 6, agent
        assert moved("baton_task_queue_wait_seconds_count", "worker", agent=agent) == 6, agent
    assert moved("baton_tasks_ended_total", "worker", agent="permsg", outcome="completed") == 2
    assert moved("baton_tasks_ended_total", "worker", agent="shipping", outcome="completed") == 1
    # (only these runs' agents: a task of an earlier test's run, cancelled while it ran, may end meanwhile)
    for agent in ("outliner", "writer", "seo", "permsg", "shipping"):
        assert moved("baton_tasks_ended_total", "worker", agent=agent, outcome="failed") == 0, agent
    # FastStream's own Prometheus middleware on the per-message path (the permsg worker); the batched
    # consumers' own count of what they handled (each outliner task, summed over the workers).
    assert moved("baton_routes_total", "router") >= 1  # the support request (batched: no faststream_*)
    assert moved("faststream_received_processed_messages_total", "worker", handler="baton:agent:permsg") == 2
    handled = dict(stream="baton:agent:outliner", outcome="ok")
    assert moved("baton_messages_handled_total", "worker", **handled) == 6
    assert moved("baton_messages_handled_total", "router", stream="baton:route", outcome="ok") >= 1
    assert moved("baton_messages_handled_total", "supervisor", stream="baton:runs", outcome="ok") >= 8

    # Runs by status and the supervisor's hop latency.
    assert moved("baton_runs_total", "supervisor", status="started") == 8
    assert moved("baton_runs_total", "supervisor", status="completed") == 8
    assert moved("baton_supervisor_hop_seconds_count", "supervisor", kind="runs") >= 8
    assert moved("baton_supervisor_hop_seconds_count", "supervisor", kind="results") >= 6 * 3 + 3

    # Stream gauges, read from Redis by the supervisor when scraped: nothing left behind by the runs.
    gauge = {
        (name, labels): value
        for handle, samples in after.items()
        if handle.startswith("supervisor-")
        for (name, labels), value in samples.items()
    }
    outliner = frozenset({("stream", "baton:agent:outliner"), ("group", "outliner")})
    assert gauge[("baton_stream_lag", outliner)] == 0
    results = frozenset({("stream", streams.results_stream(0)), ("group", "supervisor")})
    assert ("baton_stream_pending", results) in gauge
    assert ("baton_dlq_size", frozenset()) in gauge
    assert ("baton_runs_waiting", frozenset()) in gauge
