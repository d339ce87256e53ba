"""docker-compose.yml on a real engine: up --wait means ready, the host CLI runs a workflow, workers scale
and share a fan-out, and a killed worker or a restarted Redis or MinIO loses nothing.

The tests share one stack (the `compose` fixture) and run in file order: the breaking ones come last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import pytest
import redis.asyncio as aioredis

from baton import client
from shared import streams
from shared.broker import DATA_FIELD
from tests.compose.conftest import ROOT, Compose
from tests.helpers import of_type, wait_for_end

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1200)]  # the first test builds the image
BATON_SERVICES = {"notifier", "supervisor", "router", "worker", "indexer"}
BRIEF = ROOT / "examples" / "briefs" / "topic.md"


def sub(id_: str, instruction: str = "") -> dict:
    return {"id": id_, "agent": "maker", "instruction": instruction, "acceptance_criteria": "accept"}


def host(sender: str) -> str:
    """A worker's container: senders are `worker:<hostname>-<pid>`, and a hostname is the short id."""
    return sender.split(":", 1)[-1].rsplit("-", 1)[0]


async def raw_events(compose: Compose, run_id: str) -> list[dict]:
    r = aioredis.Redis.from_url(compose.admin_redis_url)
    try:
        entries = await r.xrange(streams.run_events(run_id))
    finally:
        await r.aclose()
    return [json.loads(fields[DATA_FIELD.encode()]) for _, fields in entries]


async def wait_started(compose: Compose, run_id: str, marker: str, timeout: float = 60) -> dict:
    """The first TaskStarted of a task whose id contains `marker`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in await raw_events(compose, run_id):
            if event["type"] == "task.started" and marker in event["task_id"]:
                return event
        await asyncio.sleep(0.2)
    raise AssertionError(f"no task {marker!r} of run {run_id} started in {timeout}s")


def wait_healthy(compose: Compose, service: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = compose.containers(service)
        if rows and all(r.get("Health") in ("healthy", "") and r["State"] == "running" for r in rows):
            return
        time.sleep(1)
    raise AssertionError(f"{service} not healthy after {timeout}s: {compose.containers(service)}")


def test_up_wait_returns_with_every_service_ready_on_one_image(compose):
    rows = {r["Service"]: r for r in compose.containers()}
    assert BATON_SERVICES | {"redis", "minio"} <= set(rows), rows
    assert "mcp" not in rows, "the MCP server is opt-in (profile mcp)"
    for name in BATON_SERVICES:
        assert rows[name]["Health"] == "healthy", rows[name]
    (init,) = compose.containers("init", all_=True)
    assert init["State"] == "exited" and init["ExitCode"] == 0, init
    ids = [r["ID"] for r in rows.values() if r["Service"] in BATON_SERVICES] + [init["ID"]]
    images = subprocess.run(["docker", "inspect", "--format", "{{.Image}}", *ids],
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(set(images)) == 1, f"Baton services run {len(set(images))} different images"


def test_content_factory_run_submitted_from_the_host_cli(compose):
    proc = compose.baton("submit", "content-factory", "--input", f"brief={BRIEF.relative_to(ROOT)}", "--wait",
                         "--json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed", (result, proc.stderr[-2000:])
    assert result["outputs"], result


def test_a_brief_dropped_with_boto3_starts_a_run(compose):
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{compose.env['MINIO_HOST_PORT']}",
        aws_access_key_id=compose.env["MINIO_ROOT_USER"],
        aws_secret_access_key=compose.env["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
    )
    topic = f"compose-{secrets.token_hex(4)}"
    s3.put_object(Bucket="baton", Key=f"briefs/{topic}.md", Body=BRIEF.read_bytes())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            article = s3.get_object(Bucket="baton", Key=f"published/{topic}.md")["Body"].read().decode()
            break
        except s3.exceptions.NoSuchKey:
            time.sleep(0.5)
    else:
        pytest.fail(f"no published/{topic}.md after 120s\n{compose.logs('notifier', 'supervisor')}")
    assert article.strip()


@pytest.mark.parametrize(("profile", "service", "variable"),
                         [("mcp", "mcp", "BATON_MCP_TOKEN"), ("a2a", "gateway", "BATON_A2A_TOKEN"),
                          ("console", "console", "BATON_CONSOLE_TOKEN")])
def test_without_its_token_an_opt_in_server_fails_up_wait_and_its_log_names_the_variable(
    compose, profile, service, variable
):
    proc = compose("--profile", profile, "up", "-d", "--wait", "--wait-timeout", "120", service, check=False,
                   timeout=300)
    assert proc.returncode != 0, f"up --wait succeeded with a {service} that cannot start"
    assert variable in compose.logs(service)
    compose("--profile", profile, "rm", "--stop", "--force", service)


def test_mcp_with_a_token_is_ready_and_checks_it(compose):
    token = secrets.token_hex(16)
    compose("--profile", "mcp", "up", "-d", "--wait", "--wait-timeout", "120", "mcp",
            env={"BATON_MCP_TOKEN": token})
    url = f"http://127.0.0.1:{compose.env['MCP_HOST_PORT']}/mcp"
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(url, body, {**headers, "Authorization": f"Bearer {token}"})
    with contextlib.suppress(urllib.error.HTTPError):  # no session yet: any answer but 401 will do
        urllib.request.urlopen(request, timeout=10)
    compose("--profile", "mcp", "rm", "--stop", "--force", "mcp")


def test_a2a_gateway_with_a_token_is_ready_and_checks_it(compose):
    token = secrets.token_hex(16)
    compose("--profile", "a2a", "up", "-d", "--wait", "--wait-timeout", "120", "gateway",
            env={"BATON_A2A_TOKEN": token})
    base = f"http://127.0.0.1:{compose.env['GATEWAY_HOST_PORT']}"
    with urllib.request.urlopen(f"{base}/", timeout=10) as listing:  # public: which agents there are
        assert "content-factory" in listing.read().decode()
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "none"}}).encode()
    headers = {"Content-Type": "application/json"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{base}/content-factory/", body, headers), timeout=10)
    assert refused.value.code == 401
    authorized = {**headers, "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"{base}/content-factory/", body, authorized)
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        assert exc.code != 401, "the gateway refused its own token"
    compose("--profile", "a2a", "rm", "--stop", "--force", "gateway")


def test_console_with_a_token_is_ready_and_checks_it(compose):
    token = secrets.token_hex(16)
    compose("--profile", "console", "up", "-d", "--wait", "--wait-timeout", "120", "console",
            env={"BATON_CONSOLE_TOKEN": token})
    runs = f"http://127.0.0.1:{compose.env['CONSOLE_HOST_PORT']}/runs?format=json"
    try:
        with urllib.request.urlopen(runs, timeout=10) as anonymous:
            assert "/login" in anonymous.geturl(), "the runs list answered without a login"
    except urllib.error.HTTPError as exc:
        assert exc.code in (401, 403), exc
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    request = urllib.request.Request(runs, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200 and "/login" not in answer.geturl()
    compose("--profile", "console", "rm", "--stop", "--force", "console")


def test_scaled_workers_share_a_hierarchical_fanout(compose):
    before = {r["Service"]: r["ID"] for r in compose.containers() if r["Service"] != "worker"}
    compose("up", "-d", "--wait", "--wait-timeout", "180", "--scale", "worker=4")
    after = {r["Service"]: r["ID"] for r in compose.containers() if r["Service"] != "worker"}
    assert after == before, "scaling the workers recreated other services"
    workers = compose.containers("worker")
    assert len(workers) == 4 and all(w["Health"] == "healthy" for w in workers), workers

    # `maker` runs one task at a time per worker process (concurrency: 1), so eight one-second subtasks
    # are spread over whichever workers are free.
    plan = [sub(f"s{i}", "sleep=1") for i in range(8)]
    cfg = compose.settings()
    run_id = asyncio.run(client.submit(cfg, "build", {}, {"plan": plan}))
    events = asyncio.run(wait_for_end(cfg, run_id, timeout=180))
    assert events[-1].type == "run.completed", events[-1]
    hosts = {host(e.sender) for e in of_type(events, "task.started") if ".sub." in e.task_id}
    assert hosts <= {w["ID"][:12] for w in workers}, (hosts, workers)
    assert len(hosts) >= 3, f"the fan-out ran on {sorted(hosts)} only"


def test_a_worker_killed_mid_task_and_the_run_still_completes(compose):
    cfg = compose.settings()
    run_id = asyncio.run(client.submit(cfg, "build", {}, {"plan": [sub("k", "sleep=8")]}))
    started = asyncio.run(wait_started(compose, run_id, ".sub.k."))
    victim = host(started["sender"])
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True, timeout=60)
    events = asyncio.run(wait_for_end(cfg, run_id, timeout=180))
    assert events[-1].type == "run.completed", events[-1]
    runs = [e for e in of_type(events, "task.started") if ".sub.k." in e.task_id]
    assert len(runs) >= 2 and runs[-1].sender != started["sender"], [e.sender for e in runs]


def test_redis_then_minio_restarted_mid_run_lose_nothing(compose):
    cfg = compose.settings()
    # Earlier runs: their records must survive the restarts (append-only file, ACL file on the volume).
    earlier = asyncio.run(client.list_runs(cfg, limit=50))
    runs = [asyncio.run(client.submit(cfg, "slow-pair", {}, {"sleep": "3"})) for _ in range(3)]
    plan = [sub(f"r{i}", "sleep=2") for i in range(4)]
    runs.append(asyncio.run(client.submit(cfg, "build", {}, {"plan": plan})))
    for run_id in runs:
        asyncio.run(wait_started(compose, run_id, "."))
    ended = [r for r in runs if "run.completed" in {e["type"] for e in asyncio.run(raw_events(compose, r))}]
    assert not ended, f"runs ended before the restarts, so nothing was in flight: {ended}"
    compose("restart", "redis", timeout=120)
    wait_healthy(compose, "redis")
    compose("restart", "minio", timeout=120)
    wait_healthy(compose, "minio")
    for run_id in runs:
        events = asyncio.run(wait_for_end(cfg, run_id, timeout=240))
        assert events[-1].type == "run.completed", (run_id, events[-1], compose.logs("supervisor", "worker"))
    after = {r["run_id"]: r for r in asyncio.run(client.list_runs(cfg, limit=50))}
    for record in earlier:
        assert record["run_id"] in after and after[record["run_id"]]["status"] == record["status"], record
    # and the stack still takes new work
    proc = compose.baton("submit", "content-factory", "--input", f"brief={BRIEF.relative_to(ROOT)}", "--wait",
                         "--json")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "completed"
