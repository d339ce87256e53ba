"""docker-compose.cluster.yml on a real engine: `up --wait` forms the Valkey cluster and the distributed
MinIO and starts every service on them; runs submitted from the host complete, and keep completing while
a MinIO node is killed (the services find the nodes left through the `minio` alias).

The host reaches Valkey at the nodes' own container addresses (what the cluster redirects to; Linux
routes to them) and S3 at node 1's published port.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from shared.settings import Settings
from tests.compose.conftest import ROOT, Compose, require_engine
from tests.stacks import burst

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]
CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
# Runs in each burst; more by hand to try the kill at size: BATON_TEST_CLUSTER_RUNS=80 (or 800).
RUNS = int(os.environ.get("BATON_TEST_CLUSTER_RUNS", "8"))
WAIT = 120 + RUNS  # seconds each run may take to end


@pytest.fixture(scope="module")
def cluster_compose(tmp_path_factory):
    require_engine()
    stack = Compose.create(tmp_path_factory.mktemp("compose-cluster"), prefix="baton-test-cluster")
    stack.files = (CLUSTER_FILE,)
    try:
        stack("up", "-d", "--build", "--wait", "--wait-timeout", "400", timeout=1500)
        yield stack
    finally:
        stack("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=300)
        print("\ncompose cluster timings:\n  " + "\n  ".join(stack.log))


def container_ip(compose: Compose, service: str) -> str:
    (row,) = compose.containers(service)
    proc = subprocess.run(["docker", "inspect", row["ID"]], capture_output=True, text=True, check=True)
    networks = json.loads(proc.stdout)[0]["NetworkSettings"]["Networks"]
    return next(iter(networks.values()))["IPAddress"]


def cli_settings(compose: Compose) -> Settings:
    """The host CLI's users (baton-cli) on the cluster, seeded with every node's container address."""
    password = compose.env["BATON_CLI_PASSWORD"]
    seeds = ",".join(f"{container_ip(compose, f'valkey-{i}')}:6379" for i in range(1, 7))
    return Settings(
        REDIS_CLUSTER_URL=f"redis://baton-cli:{password}@{seeds}",
        S3_ENDPOINT_URL=f"http://127.0.0.1:{compose.env['MINIO_HOST_PORT']}",
        S3_ACCESS_KEY="baton-cli",
        S3_SECRET_KEY=password,
        bucket="baton",
    )


def trouble(compose: Compose) -> str:
    """The services' warnings and errors (their JSON log lines), to say why a run did not complete."""
    lines = compose.logs("worker", "supervisor", "router", "notifier", tail=2000).splitlines()
    return "\n".join(line for line in lines if '"level": "warning"' in line or '"level": "error"' in line)


def test_cluster_stack_runs_workflows_and_survives_a_killed_minio_node(cluster_compose: Compose):
    running = {r["Service"] for r in cluster_compose.containers()}
    expected = {f"valkey-{i}" for i in range(1, 7)} | {f"minio-{i}" for i in range(1, 5)}
    assert expected | {"notifier", "supervisor", "router", "worker", "indexer"} <= running, running
    assert "cluster ok" in cluster_compose.logs("valkey-cluster")
    settings = cli_settings(cluster_compose)

    whole = asyncio.run(burst(settings, RUNS, WAIT))
    assert whole.completed == RUNS, f"{whole.failures()}\n{trouble(cluster_compose)}"

    async def kill_a_node():
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster_compose, "kill", "minio-3")

    during = asyncio.run(burst(settings, RUNS, WAIT, during=kill_a_node))
    assert during.completed == RUNS, f"{during.failures()}\n{trouble(cluster_compose)}"
    after = asyncio.run(burst(settings, RUNS, WAIT))
    assert after.completed == RUNS, f"{after.failures()}\n{trouble(cluster_compose)}"
    print(
        f"\n{RUNS} content-factory runs on the compose cluster: {whole.seconds:.2f}s; a MinIO node killed "
        f"mid-burst: {during.seconds:.2f}s; on the 3 left: {after.seconds:.2f}s"
    )
