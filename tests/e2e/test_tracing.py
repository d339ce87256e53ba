"""Traces end to end: a real Jaeger (built from the Go module proxy, baton/servers.py) receives OTLP from
every service of a stack and from the CLI; a hierarchical run with a model agent (the local Gemma server)
and a task that fails once is read back through Jaeger's query API.

The stack has its own MinIO, whose bucket events reach this stack's notifier: the notifier continues the
trace from the `traceparent` the writer put in the object's metadata.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from baton import servers
from baton.client import init_workspace
from baton.dev import Stack, local_env, settings_kwargs
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "tests" / "tracing-workflows.yaml"
BRIEF = ROOT / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    server = servers.start_jaeger(tmp_path_factory.mktemp("jaeger"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traced_stack(real_servers, llm_server, jaeger, tmp_path_factory):
    root = tmp_path_factory.mktemp("traced-stack")
    notifier_port, token = servers.free_port(), secrets.token_hex(16)
    minio = servers.start_minio(root / "minio", f"http://127.0.0.1:{notifier_port}/minio/events", token)
    parts = urlsplit(real_servers.redis_url)
    redis_url = urlunsplit(parts._replace(path=f"/{(int(parts.path.strip('/') or 0) + 9) % 16}"))
    env = local_env(redis_url, minio.url, WORKFLOWS, notifier_port, token)
    env.update(
        BATON_BUCKET="baton-traced",
        BATON_CWD=str(ROOT),
        BATON_TEST_LLM_URL=llm_server.base_url,
        BATON_TEST_LLM_MODEL=llm_server.model,
        OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.extra["otlp"],
        OTEL_BSP_SCHEDULE_DELAY="200",  # export within a fifth of a second (the default is 5 s)
    )
    asyncio.run(init_workspace(Settings(**settings_kwargs(env))))
    stack = Stack(root, env)
    try:
        for name in ("notifier", "supervisor", "router", "worker"):
            stack.start(name)
        yield stack
    finally:
        stack.stop_all()
        minio.stop()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _traces_of_run(jaeger, service: str, run_id: str) -> list[dict]:
    tags = urllib.parse.quote(json.dumps({"baton.run_id": run_id}))
    return _get(f"{jaeger.url}api/traces?service={service}&tags={tags}&limit=50&lookback=1h")["data"] or []


def _tags(span: dict) -> dict:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def _wait_for_trace(jaeger, run_id: str, ready, timeout: float = 60) -> dict:
    """The run's whole trace, once `ready(trace)` holds (spans arrive in batches from every process)."""
    deadline, trace = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        found = _traces_of_run(jaeger, "baton-supervisor", run_id)
        if found:
            trace = _get(f"{jaeger.url}api/traces/{found[0]['traceID']}")["data"][0]
            if ready(trace):
                return trace
        time.sleep(0.5)
    seen = trace and [
        (s["operationName"], trace["processes"][s["processID"]]["serviceName"]) for s in trace["spans"]
    ]
    raise AssertionError(f"no complete trace of run {run_id} in Jaeger after {timeout}s; last: {seen}")


def test_a_hierarchical_run_with_a_model_is_one_trace_across_the_services(traced_stack, jaeger):
    env = {**traced_stack.env, "PATH": str(Path(sys.executable).parent)}
    submitted = subprocess.run(
        [str(Path(sys.executable).parent / "baton"), "submit", "traced-build", "--input", f"brief={BRIEF}",
         "--wait", "--json"],
        env=env, capture_output=True, text=True, timeout=170, cwd=ROOT,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    outcome = json.loads(submitted.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "completed", outcome
    run_id = outcome["run_id"]

    def complete(trace: dict) -> bool:
        """Every expected span is there, and every span's parent too: services export in their own
        batches (every few seconds), so a child can reach Jaeger before its parent does."""
        names = {s["operationName"] for s in trace["spans"]}
        ids = {s["spanID"] for s in trace["spans"]}
        parents = {
            r["spanID"] for s in trace["spans"] for r in s.get("references", []) if r["refType"] == "CHILD_OF"
        }
        wanted = {"run submit", "baton:agent:joiner process", f"chat {env['BATON_TEST_LLM_MODEL']}"}
        return wanted <= names and parents <= ids

    trace = _wait_for_trace(jaeger, run_id, complete)
    spans = {s["spanID"]: s for s in trace["spans"]}
    service = {sid: trace["processes"][s["processID"]]["serviceName"] for sid, s in spans.items()}

    # One trace: every service's spans of this run are in it, and in no other trace.
    for name in ("baton-cli", "baton-supervisor", "baton-worker"):
        assert {t["traceID"] for t in _traces_of_run(jaeger, name, run_id)} == {trace["traceID"]}, name
    assert {"baton-cli", "baton-supervisor", "baton-worker", "baton-notifier"} <= set(service.values())

    # Parent/child: one root (the CLI's submission); every other span's parent is in the trace.
    def parent(span: dict) -> str | None:
        refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
        return refs[0]["spanID"] if refs else None

    roots = [s for s in spans.values() if parent(s) is None]
    assert [(s["operationName"], service[s["spanID"]]) for s in roots] == [("run submit", "baton-cli")]
    orphans = [s["operationName"] for s in spans.values() if parent(s) is not None and parent(s) not in spans]
    assert not orphans, orphans

    def chain(span: dict) -> list[str]:
        names = []
        while span is not None:
            names.append(span["operationName"])
            span = spans.get(parent(span))
        return names

    # The model call sits in the summariser's task, which a supervisor decision assigned, down from the root.
    model_span = next(s for s in spans.values() if s["operationName"].startswith("chat "))
    path = chain(model_span)
    assert path[1:3] == ["task run", "baton:agent:summariser process"], path
    assert "supervisor decide" in path and path[-1] == "run submit", path
    waits = [s for s in spans.values() if s["operationName"] == "task queue wait"]
    assert waits and all(spans[parent(w)]["operationName"].startswith("baton:agent:") for w in waits)
    reads = [s for s in spans.values() if s["operationName"] == "S3.GetObject"]
    writes = [s for s in spans.values() if s["operationName"] == "S3.PutObject"]
    assert reads and writes
    notified = [s for s in spans.values() if s["operationName"] == "notifier notify"]
    assert notified and all(spans[parent(s)]["operationName"] == "S3.PutObject" for s in notified)

    # GenAI semantic conventions on the model span, with the cost from the agent's price table.
    tags = _tags(model_span)
    assert tags["gen_ai.system"] == "openai" and tags["gen_ai.operation.name"] == "chat"
    assert tags["gen_ai.request.model"] == env["BATON_TEST_LLM_MODEL"]
    assert tags["gen_ai.usage.input_tokens"] > 0 and tags["gen_ai.usage.output_tokens"] > 0
    assert tags["gen_ai.usage.cost"] > 0
    assert service[model_span["spanID"]] == "baton-worker"

    # The failed first attempt of `flaky` is an error span; its retry is not.
    flaky = {
        _tags(s)["baton.attempt"]: _tags(s)
        for s in spans.values()
        if s["operationName"] == "baton:agent:flaky process"
    }
    assert flaky[1].get("otel.status_code") == "ERROR" and flaky[1].get("error") is True, flaky[1]
    assert "simulated transient fault" in flaky[1].get("otel.status_description", "")
    assert flaky[2].get("otel.status_code") != "ERROR", flaky[2]
