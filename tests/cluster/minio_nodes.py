"""Distributed MinIO for the cluster tests: N nodes (one drive each, one erasure set) as containers of the
compose file's MinIO image on a Docker network of their own, posting bucket events to a notifier on this
host through the bridge's gateway (`host.docker.internal`), as tests/containers.py does for one node.

Removed with their volumes and network when done, whatever happened.
"""

from __future__ import annotations

import contextlib
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from baton import servers
from tests.containers import compose_image

LABEL = "org.baton.test=minio-nodes"


@dataclass
class MinioNodes:
    """The nodes' containers (docker SDK objects) and each node's S3 URL on this host's loopback."""

    containers: list
    urls: list[str]
    network: object
    log: list[str] = field(default_factory=list)

    def kill(self, index: int) -> None:
        """SIGKILL one node (`docker kill`): no shutdown, as a crashed host."""
        self.containers[index].kill()

    def start(self, index: int) -> None:
        self.containers[index].start()
        self.containers[index].reload()
        self.urls[index] = _url(self.containers[index])

    def admin_info(self, via: int = 0) -> str:
        """`mc admin info` as node `via` sees the cluster (its last line counts drives online/offline)."""
        node = self.containers[via]
        alias = f"mc alias set here http://127.0.0.1:9000 {servers.MINIO_USER} {servers.MINIO_PASSWORD}"
        node.exec_run(["sh", "-c", f"{alias} >/dev/null"])
        return node.exec_run(["mc", "admin", "info", "here"]).output.decode(errors="replace")


def _url(container) -> str:
    container.reload()
    return f"http://127.0.0.1:{container.ports['9000/tcp'][0]['HostPort']}"


def _ready(url: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def wait_cluster(url: str, timeout: float = 90) -> None:
    """Until the node at `url` has write quorum (`/minio/health/cluster` answers 200)."""
    deadline = time.monotonic() + timeout
    while not _ready(url, "/minio/health/cluster"):
        if time.monotonic() > deadline:
            raise servers.ServerError(f"MinIO at {url}: no write quorum after {timeout}s")
        time.sleep(0.5)


@contextlib.contextmanager
def minio_nodes(notifier_port: int, token: str, count: int = 4) -> Iterator[MinioNodes]:
    import docker

    client = docker.from_env()
    prefix = f"baton-minio-{secrets.token_hex(3)}"
    endpoint = f"http://host.docker.internal:{notifier_port}/minio/events"
    env = {
        "MINIO_ROOT_USER": servers.MINIO_USER,
        "MINIO_ROOT_PASSWORD": servers.MINIO_PASSWORD,
        "MINIO_API_SYNC_EVENTS": "on",
        f"MINIO_NOTIFY_WEBHOOK_ENABLE_{servers.WEBHOOK_TARGET}": "on",
        f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{servers.WEBHOOK_TARGET}": endpoint,
        f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{servers.WEBHOOK_TARGET}": "/events",
        f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{servers.WEBHOOK_TARGET}": token,
        f"MINIO_NOTIFY_WEBHOOK_ENABLE_{servers.FAST_WEBHOOK_TARGET}": "on",
        f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{servers.FAST_WEBHOOK_TARGET}": endpoint,
        f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{servers.FAST_WEBHOOK_TARGET}": token,
    }
    network = client.networks.create(prefix, driver="bridge", labels={"org.baton.test": "minio-nodes"})
    containers: list = []
    try:
        for i in range(1, count + 1):
            containers.append(
                client.containers.run(
                    compose_image("minio"),
                    # every node names all of them: MinIO's own expansion, one drive (a volume) per node
                    ["server", f"http://{prefix}-{{1...{count}}}/data"],
                    name=f"{prefix}-{i}",
                    hostname=f"{prefix}-{i}",
                    network=network.name,
                    environment=env,
                    ports={"9000/tcp": ("127.0.0.1", None)},
                    extra_hosts={"host.docker.internal": "host-gateway"},
                    labels={"org.baton.test": "minio-nodes"},
                    detach=True,
                )
            )
        urls = [_url(c) for c in containers]
        for url in urls:
            wait_cluster(url)
        yield MinioNodes(containers, urls, network)
    finally:
        for container in containers:
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
        with contextlib.suppress(Exception):
            network.remove()
        client.close()
