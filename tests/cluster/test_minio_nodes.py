"""Baton on distributed MinIO: 4 nodes (containers, one drive each, EC:2), the services on this host.
A node killed mid-burst (`docker kill`) costs no run: reads and writes keep their quorum (3 of 4 drives),
bucket notifications still arrive, and the node rejoins when it is back.

The services talk to node 1; node 3 is the one killed. A client's entry node going down is a load
balancer's job (or DNS over every node, as docker-compose.cluster.yml does): see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from baton import servers
from services.supervisor.runs import trigger_run_id
from tests.cluster.minio_nodes import minio_nodes, wait_cluster
from tests.helpers import s3_client, wait_for_end
from tests.stacks import BRIEF, burst, own_stack, stack_settings

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]
RUNS = 8
KILLED = 2  # node 3 of 4; the services' endpoint is node 1


@pytest.fixture(scope="module")
def cluster(docker_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("minio-nodes")
    port, token = servers.free_port(), secrets.token_hex(16)
    redis = servers.start_redis(tmp / "redis", password=secrets.token_urlsafe(16))
    try:
        with minio_nodes(port, token) as nodes:
            # MinIO posts from its containers to the host's bridge address: the notifier listens there too
            with own_stack(tmp / "stack", redis.url, nodes.urls[0], port, token, "0.0.0.0") as stack:  # noqa: S104
                yield nodes, stack_settings(stack)
    finally:
        redis.stop()


async def test_runs_complete_when_a_minio_node_is_killed_mid_run(cluster):
    nodes, settings = cluster
    assert "4 drives online, 0 drives offline" in nodes.admin_info()
    whole = await burst(settings, RUNS)
    assert whole.completed == RUNS, whole.ends

    async def kill_a_node():
        await asyncio.sleep(0.3)  # the first stages are reading and writing
        nodes.kill(KILLED)

    during = await burst(settings, RUNS, during=kill_a_node)
    assert during.completed == RUNS, during.ends
    assert "1 node offline, 3 drives online, 1 drive offline" in nodes.admin_info()
    after = await burst(settings, RUNS)
    assert after.completed == RUNS, after.ends
    print(f"\n{RUNS} content-factory runs on 4 MinIO nodes: {whole.seconds:.2f}s; a node killed mid-burst: "
          f"{during.seconds:.2f}s; on the 3 left: {after.seconds:.2f}s")

    # Bucket notifications still reach the notifier from the nodes left.
    name = f"briefs/lost-node-{secrets.token_hex(4)}.md"
    put = s3_client(settings).put_object(Bucket=settings.bucket, Key=name, Body=BRIEF.read_bytes())
    events = await wait_for_end(settings, trigger_run_id(settings.bucket, name, put["VersionId"]), 60)
    assert events[-1].type == "run.completed", events[-1]

    # The node comes back with its drive: it rejoins, and runs go on over all four.
    nodes.start(KILLED)
    await asyncio.to_thread(wait_cluster, nodes.urls[KILLED])
    back = await burst(settings, RUNS)
    assert back.completed == RUNS, back.ends
    assert "4 drives online, 0 drives offline" in nodes.admin_info(via=KILLED)
