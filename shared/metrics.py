"""Prometheus metrics: every service process serves its own `/metrics` (prometheus-client).

Several processes of one service (`baton dev up --workers 4`, compose replicas) each expose their own
counters on their own port, and Prometheus adds them up (`sum by (agent) (rate(...))`). That is the
model Prometheus is built for: it works the same across containers and hosts, where prometheus-client's
multiprocess mode would need a shared directory on one host, cleaned of dead processes' files, and
loses live gauges. A counter restarting at 0 with its process is what `rate()` expects.

Stream gauges (consumer-group lag and pending count, stream lengths, DLQ size, runs waiting) are read from
Redis when scraped, by the supervisor only (`StreamCollector`): every replica reports the same values, so
take `max` of them, not `sum`.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from . import streams

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

TASKS_STARTED = Counter("baton_tasks_started", "Tasks a worker started, by agent.", ["agent"])
TASKS_ENDED = Counter(
    "baton_tasks_ended", "Task outcomes a worker reported, by agent and outcome.", ["agent", "outcome"]
)
TASK_SECONDS = Histogram(
    "baton_task_duration_seconds", "Time an agent ran on a task.", ["agent"], buckets=LATENCY
)
QUEUE_WAIT = Histogram(
    "baton_task_queue_wait_seconds",
    "Time from a task's assignment to its start by a worker.",
    ["agent"],
    buckets=LATENCY,
)
STORAGE_SECONDS = Histogram(
    "baton_storage_request_seconds",
    "Time a request to the store took (to its headers, for a read), by S3 method.",
    ["method"],
    buckets=LATENCY,
)
STORAGE_SLOW = Counter(
    "baton_storage_slow_requests",
    "Requests to the store that went past BATON_STORAGE_SLOW_S, by S3 method.",
    ["method"],
)
RUNS = Counter("baton_runs", "Runs the supervisor moved to a status (started, completed, ...).", ["status"])
HOP = Histogram(
    "baton_supervisor_hop_seconds",
    "From an event's creation to the end of the supervisor's decision on it (kind: runs, results, objects).",
    ["kind"],
    buckets=LATENCY,
)
RECLAIMED = Counter("baton_reclaimed", "Entries the reclaimer took over from an idle consumer.", ["stream"])
RETRIES = Counter("baton_handler_retries", "In-process retries of a handler after a transient fault.")
TASK_RETRIES = Counter("baton_task_retries", "Task attempts after the first, assigned by the supervisor.")
DEAD_LETTERED = Counter("baton_dead_lettered", "Entries this process sent to the DLQ, by stream.", ["stream"])
TOKENS = Counter(
    "baton_model_tokens",
    "Model tokens, by agent, model and direction (input, output).",
    ["agent", "model", "direction"],
)
COST = Counter(
    "baton_model_cost", "Model cost from the agents' price tables, by agent and model.", ["agent", "model"]
)
MODEL_CALLS = Counter("baton_model_calls", "Model calls, by agent and model.", ["agent", "model"])
ROUTES = Counter(
    "baton_routes",
    "Tasks the router decided, by the agent chosen (`human`: a person; `none`: no route) and by what "
    "decided (`rules`, the classifier agent, `input`).",
    ["agent", "decided_by"],
)
HANDLED = Counter(
    "baton_messages_handled",
    "Stream entries a service's batched consumers handled, by stream and outcome (`ok`: acknowledged; "
    "`error`: left pending for the reclaimer; `dead_lettered`).",
    ["stream", "outcome"],
)
UP = Gauge("baton_service_info", "This process: its service and consumer name.", ["service", "consumer"])
PARTITIONS_READ = Gauge(
    "baton_supervisor_partitions_read",
    "Results partitions this supervisor replica reads (0: it stands by; services/supervisor/shares.py).",
)

_served: dict[str, int] = {}


def serve(service: str, settings) -> int | None:
    """Start this process's `/metrics` (a thread) if `settings.metrics_port` is set; returns the port."""
    if settings.metrics_port is None:
        return None
    if "port" in _served:
        return _served["port"]
    server, _thread = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    _served["port"] = server.server_port
    UP.labels(service, settings.consumer).set(1)
    return _served["port"]


def since(created_at: datetime) -> float:
    return max(time.time() - created_at.timestamp(), 0.0)


def task_started(agent: str, assigned_at: datetime) -> None:
    TASKS_STARTED.labels(agent).inc()
    QUEUE_WAIT.labels(agent).observe(since(assigned_at))


def task_ended(agent: str, outcome, seconds: float) -> None:
    """`outcome`: the event the worker reports (completed, failed, or a question for a person)."""
    if outcome.type == "task.failed":
        kind = "retryable" if getattr(outcome, "retryable", False) else "failed"
    else:  # task.completed -> completed, task.input_required -> input_required
        kind = outcome.type.removeprefix("task.")
    TASKS_ENDED.labels(agent, kind).inc()
    TASK_SECONDS.labels(agent).observe(seconds)


def run_committed(status: str, created: bool, was_waiting: bool, retried: bool = False) -> None:
    """A supervisor commit: counts a run's start, its end, its pauses, and task retries."""
    if created:
        RUNS.labels("started").inc()
    if status in ("completed", "failed", "cancelled") or (status == "waiting_for_human" and not was_waiting):
        RUNS.labels(status).inc()
    if retried:
        TASK_RETRIES.inc()


def hop(kind: str, event) -> None:
    created = getattr(event, "created_at", None)
    if created is not None:
        HOP.labels(kind).observe(since(created))


def model_usage(agent: str, model: str, input_tokens: int, output_tokens: int, cost: float | None) -> None:
    MODEL_CALLS.labels(agent, model).inc()
    TOKENS.labels(agent, model, "input").inc(input_tokens)
    TOKENS.labels(agent, model, "output").inc(output_tokens)
    if cost:
        COST.labels(agent, model).inc(cost)


class StreamCollector:
    """Gauges read from Redis at scrape time: per stream and group its lag and pending count, each
    stream's length (the DLQ's is its size), and the runs waiting for a person."""

    def __init__(self, redis_url: str, more_streams: list[str]) -> None:
        # Synchronous: prometheus-client collects in its HTTP server's thread, not on the event loop.
        self.redis = _sync_client(redis_url)
        self.streams = [streams.RUNS, streams.ROUTE, streams.OBJECTS, streams.DLQ, *more_streams]
        self._lock = threading.Lock()

    def collect(self):
        lag = GaugeMetricFamily(
            "baton_stream_lag", "Entries a consumer group has not read yet.", labels=["stream", "group"]
        )
        pending = GaugeMetricFamily(
            "baton_stream_pending",
            "Entries read by a group and not acknowledged.",
            labels=["stream", "group"],
        )
        length = GaugeMetricFamily("baton_stream_length", "Entries in a stream.", labels=["stream"])
        dlq = GaugeMetricFamily("baton_dlq_size", "Dead letters in baton:dlq.")
        waiting = GaugeMetricFamily("baton_runs_waiting", "Runs waiting for a person.")
        with self._lock:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for name in self.streams:
                    pipe.exists(name)
                found = pipe.execute(raise_on_error=False)
                present = [n for n, e in zip(self.streams, found, strict=True) if e == 1]
                pipe = self.redis.pipeline(transaction=False)
                for name in present:
                    pipe.xinfo_groups(name)
                    pipe.xlen(name)
                pipe.zcard(streams.RUNS_WAITING)
                replies = pipe.execute(raise_on_error=False)
            except Exception:  # noqa: BLE001 - Redis away: no gauges this scrape, the counters still serve
                return
        for i, name in enumerate(present):
            groups, size = replies[2 * i], replies[2 * i + 1]
            if isinstance(size, int):
                length.add_metric([name], size)
                if name == streams.DLQ:
                    dlq.add_metric([], size)
            for group in groups if isinstance(groups, list) else ():
                gname = group["name"].decode() if isinstance(group["name"], bytes) else str(group["name"])
                pending.add_metric([name, gname], group.get("pending") or 0)
                if group.get("lag") is not None:
                    lag.add_metric([name, gname], group["lag"])
        if isinstance(replies[-1], int):
            waiting.add_metric([], replies[-1])
        yield from (lag, pending, length, dlq, waiting)


def _sync_client(url: str):
    """A blocking client for one server or a cluster (the stream keys live in different slots: a cluster
    pipeline sends each command to its node)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    from .redisconn import cluster_parts, is_cluster

    if is_cluster(url):
        seeds, auth = cluster_parts(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in seeds],
            socket_timeout=5,
            socket_connect_timeout=5,
            **auth,
        )
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def collect_streams(redis_url: str, more_streams: list[str]) -> StreamCollector:
    """Register the stream gauges: the fixed streams plus `more_streams` (results partitions, agents)."""
    collector = StreamCollector(redis_url, more_streams)
    REGISTRY.register(collector)
    return collector
