"""`baton dev up --trace`: a local Jaeger, every service (and the CLI) sending it spans, the addresses
printed; `baton down` stops Jaeger too. Its own stack in a temporary folder (its own Redis and MinIO)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BATON = str(Path(sys.executable).parent / "baton")
WORKFLOWS = str(ROOT / "examples" / "workflows.yaml")
pytestmark = pytest.mark.e2e


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_dev_up_trace_prints_jaeger_and_metrics_and_a_run_is_traced(tmp_path):
    own = ("REDIS_URL", "S3_", "OTEL_", "BATON_")  # the stack's own settings, not the caller's
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    up = subprocess.run(
        [BATON, "dev", "up", "--trace", "--workers", "1", "--workflows", WORKFLOWS],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        traces = re.search(r"^# traces: (http://127\.0\.0\.1:\d+/)$", up.stderr, re.M)
        assert traces, up.stderr
        metrics = dict(re.findall(r"^# metrics: (\S+) (http://\S+/metrics)$", up.stderr, re.M))
        assert {h.rsplit("-", 1)[0] for h in metrics} >= {"notifier", "supervisor", "router", "worker"}
        for handle, url in metrics.items():
            assert "baton_service_info" in _get(url), handle
        assert "export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:" in up.stdout

        submitted = subprocess.run(
            [BATON, "submit", "content-factory", "--input", f"brief={ROOT / 'examples/briefs/topic.md'}",
             "--wait", "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        run_id = json.loads(submitted.stdout.strip().splitlines()[-1])["run_id"]
        tags = urllib.request.quote(json.dumps({"baton.run_id": run_id}))
        want = {"baton-cli", "baton-supervisor", "baton-worker"}
        deadline, services = time.monotonic() + 30, set()
        while time.monotonic() < deadline and not want <= services:
            time.sleep(1)  # the services export every 5 s (the SDK's default)
            found = json.loads(_get(f"{traces.group(1)}api/traces?service=baton-cli&tags={tags}"))["data"]
            if found:
                trace = json.loads(_get(f"{traces.group(1)}api/traces/{found[0]['traceID']}"))["data"][0]
                services = {p["serviceName"] for p in trace["processes"].values()}
        assert want <= services, services
    finally:
        down = subprocess.run([BATON, "dev", "down"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "jaeger" in down.stderr, down.stderr
