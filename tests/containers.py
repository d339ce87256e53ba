"""Redis and MinIO in containers for the end-to-end tests (testcontainers), on the images docker-compose.yml
names (real ones, or `make images-offline` stand-ins).

`BATON_TEST_SERVERS=containers` (`make test-containers`) runs the whole suite this way; otherwise they are
the fallback when no local binaries exist. The services still run on the host, so MinIO reaches the
notifier through the bridge's gateway (`host.docker.internal`), and the notifier listens on every
interface (its webhook token still guards it).
"""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import yaml

from baton import servers

ROOT = Path(__file__).resolve().parent.parent
NOTIFIER_HOST = "0.0.0.0"  # noqa: S104 - the MinIO container must reach the notifier on the host
# testcontainers' reaper (Ryuk) is one more image to pull, which no registry serves here; every container
# started below is stopped by the session's own teardown instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def enabled() -> bool:
    return os.environ.get("BATON_TEST_SERVERS") == "containers"


def compose_image(service: str) -> str:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service]["image"]


def _host() -> str:
    # The engine runs on this machine (a local socket): its published ports are on loopback. testcontainers
    # would pick the bridge's gateway when it believes it runs inside a container.
    return os.environ.get("TC_HOST", "127.0.0.1")


def _wait(check, what: str, container, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet (refused, reset, LOADING...)
            pass
        time.sleep(0.2)
    logs = b"".join(container.get_logs()).decode(errors="replace")[-2000:]
    raise servers.ServerError(f"{what} container not ready after {timeout}s\n{logs}")


def start_redis(password: str) -> tuple[str, callable]:
    """Redis (or the Valkey stand-in) with `password` for user `default`; (url, stop)."""
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(compose_image("redis"))
        .with_command(f"redis-server --requirepass {password} --save ''")
        .with_exposed_ports(6379)
    )
    container.start()
    try:
        url = f"redis://default:{password}@{_host()}:{container.get_exposed_port(6379)}/0"
        import redis

        _wait(lambda: redis.Redis.from_url(url, socket_timeout=1).ping(), "redis", container)
    except BaseException:
        container.stop()
        raise
    return url, container.stop


def start_minio(notifier_port: int, token: str) -> tuple[str, callable]:
    """MinIO with the two webhook targets of baton/servers.py, posting to the notifier on the host."""
    from testcontainers.core.container import DockerContainer

    endpoint = f"http://host.docker.internal:{notifier_port}/minio/events"
    container = (
        DockerContainer(compose_image("minio"))
        .with_command("server /data")
        .with_exposed_ports(9000)
        .with_kwargs(extra_hosts={"host.docker.internal": "host-gateway"})
    )
    for key, value in {
        "MINIO_ROOT_USER": servers.MINIO_USER,
        "MINIO_ROOT_PASSWORD": servers.MINIO_PASSWORD,
        f"MINIO_NOTIFY_WEBHOOK_ENABLE_{servers.WEBHOOK_TARGET}": "on",
        f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{servers.WEBHOOK_TARGET}": endpoint,
        f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{servers.WEBHOOK_TARGET}": "/tmp/events",
        f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{servers.WEBHOOK_TARGET}": token,
        f"MINIO_NOTIFY_WEBHOOK_ENABLE_{servers.FAST_WEBHOOK_TARGET}": "on",
        f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{servers.FAST_WEBHOOK_TARGET}": endpoint,
        f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{servers.FAST_WEBHOOK_TARGET}": token,
    }.items():
        container.with_env(key, value)
    container.start()
    try:
        url = f"http://{_host()}:{container.get_exposed_port(9000)}"

        def live() -> bool:
            with urllib.request.urlopen(f"{url}/minio/health/live", timeout=1) as reply:
                return reply.status == 200

        _wait(live, "minio", container)
    except BaseException:
        container.stop()
        raise
    return url, container.stop
