"""Scenario `tracing`: what OpenTelemetry tracing costs (shared/telemetry.py), off and on.

Off is the default (no OTLP endpoint set); `on`, every service sends its spans over OTLP/HTTP to a real
Jaeger (baton/servers.py) started for the scenario, every trace sampled (the SDK's default sampler);
`on-10%`, the same with head sampling of one trace in ten (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
`OTEL_TRACES_SAMPLER_ARG=0.1`). Each variant is measured `rounds` times, in turn, so that a noisy neighbour
skews them alike; the figure per variant is the median.

- single hop: scenario 1 (one worker process, the batched path, N no-op tasks): tasks/s and worker CPU per
  task. Each task carries a `traceparent` as a traced supervisor would send it (sampled, or for `on-10%`
  one in ten sampled): per sampled task the worker makes its consumer span, the queue wait and the run.
- whole runs: scenario 6's burst (Baton only): runs of a 3-stage no-op workflow published at once through
  the full stack (notifier, supervisor, router, workers); runs/s and supervisor CPU per run.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

from baton import servers
from bench import runs as whole_runs
from bench import throughput


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get("ok") and r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def _overhead(off: float | None, on: float | None, higher_is_better: bool) -> float | None:
    if not off or on is None:
        return None
    change = (off / on - 1) if higher_is_better else (on / off - 1)
    return round(change * 100, 1)


VARIANTS = ("off", "on", "on-10%")


def _traceparent(sampled_every: int):
    """Task i's context: a trace per task, sampled for one task in `sampled_every` (the upstream's call,
    which a parent-based sampler follows)."""

    def of(i: int) -> str:
        flags = "01" if i % sampled_every == 0 else "00"
        return f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-{flags}"

    return of


def scenario(
    env: throughput.Env, srv: whole_runs.Servers, work: Path, n: int, runs: int, rounds: int
) -> dict:
    jaeger = servers.start_jaeger(work / "jaeger")
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.extra["otlp"]}
    sampled = {**otlp, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    setups = {  # variant: (service environment, the hop's task contexts)
        "off": ({}, None),
        "on": (otlp, _traceparent(1)),
        "on-10%": (sampled, _traceparent(10)),
    }
    hop: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    burst: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    try:
        for i in range(rounds):
            for variant, (extra, contexts) in setups.items():
                print(f"- tracing {variant}, round {i + 1}: single hop, {n} tasks", flush=True)
                hop[variant].append(throughput.baton(env, n, 1, f"trace-{variant}-{i}", extra, contexts))
        for i in range(rounds):
            for variant, (extra, _contexts) in setups.items():
                print(f"- tracing {variant}, round {i + 1}: burst of {runs} runs", flush=True)
                burst[variant].append(_burst(srv, runs, extra, f"{variant}-{i}"))
        spans = _span_count(jaeger)
    finally:
        jaeger.stop()
    result: dict = {"rounds": rounds, "hop_tasks": n, "burst_runs": runs, "spans_in_jaeger": spans}
    for name, rows, keys in (
        ("hop", hop, (("tasks_per_s", True), ("consumer_cpu_us_per_task", False))),
        ("runs", burst, (("runs_per_s", True), ("supervisor_cpu_ms_per_run", False), ("stack_cpu_s", False))),
    ):
        section: dict = {"rows": rows}
        for key, higher_is_better in keys:
            off = _median(rows["off"], key)
            section[key] = {"off": off}
            for variant in VARIANTS[1:]:
                on = _median(rows[variant], key)
                section[key][variant] = on
                section[key][f"{variant} cost_percent"] = _overhead(off, on, higher_is_better)
        result[name] = section
    result["ok"] = all(r.get("ok") for rows in (hop, burst) for v in rows.values() for r in v)
    return result


def _burst(srv: whole_runs.Servers, n: int, extra: dict, label: str) -> dict:
    stack = srv.stack  # the burst starts its own stack: give it the variant's environment

    def traced_stack(name: str, **kw):
        return stack(f"{name}-{label}", extra=extra, **kw)

    srv.stack = traced_stack  # type: ignore[method-assign]
    try:
        return whole_runs.baton_burst(srv, n, workers=2, timeout=60 + n / 40)
    finally:
        srv.stack = stack  # type: ignore[method-assign]


def _span_count(jaeger: servers.Server) -> dict:
    """Spans Jaeger holds per service (a check that the `on` rows really exported)."""
    import json
    import urllib.request

    def get(path: str):
        with urllib.request.urlopen(f"{jaeger.url}{path}", timeout=30) as r:
            return json.loads(r.read())["data"] or []

    counts = {}
    for service in get("api/services"):
        traces = get(f"api/traces?service={service}&limit=200&lookback=1h")
        counts[service] = sum(len(t["spans"]) for t in traces)
    return {"sampled_traces_per_service_limit": 200, "spans": counts}


def table(result: dict) -> list[str]:
    rounds = result["rounds"]
    lines = [f"tracing off vs on (median of {rounds} alternating rounds; cost = slower or more CPU, in %)"]
    for name, label in (("hop", "single hop"), ("runs", "whole runs (burst)")):
        for key, value in result[name].items():
            if key == "rows":
                continue
            cells = "  ".join(
                f"{v} {value[v]!s:>9} ({value[f'{v} cost_percent']!s:>6} %)" for v in VARIANTS[1:]
            )
            lines.append(f"  {label:<19} {key:<26} off {value['off']!s:>9}  {cells}")
    return lines
