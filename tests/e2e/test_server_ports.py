"""A server the tests or `baton dev up` start on ports `free_port` chose still starts when one is taken
before it binds (another process' connection took it: seen in CI), on new ports (baton/servers.py
`on_free_ports`)."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from baton import servers

pytestmark = pytest.mark.e2e


def _targets(root: Path) -> Path:
    path = root / "targets.json"
    path.write_text("[]")
    return path


# How each starts, and how many ports its first attempt asks `free_port` for.
STARTS = {
    "redis": (lambda root: servers.start_redis(root / "redis"), 1),
    "minio": (lambda root: servers.start_minio(root / "minio", "http://127.0.0.1:9/hook"), 2),
    "prometheus": (lambda root: servers.start_prometheus(root / "prometheus", _targets(root)), 1),
    "jaeger": (lambda root: servers.start_jaeger(root / "jaeger"), 5),
}


def _answers(server: servers.Server) -> bool:
    if server.name == "redis":
        with socket.create_connection(("127.0.0.1", server.extra["port"]), timeout=5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    path = {"minio": "/minio/health/ready", "prometheus": "-/ready", "jaeger": "api/services"}[server.name]
    with urllib.request.urlopen(server.url.rstrip("/") + "/" + path.lstrip("/"), timeout=5) as answer:
        return answer.status == 200


@pytest.mark.parametrize("name", STARTS)
def test_a_server_starts_on_new_ports_when_one_it_was_given_is_taken(name, tmp_path, monkeypatch):
    start, ports = STARTS[name]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    first = iter([taken.getsockname()[1]] * ports)  # every port of the first attempt: taken
    real = servers.free_port
    monkeypatch.setattr(servers, "free_port", lambda: next(first, None) or real())
    try:
        server = start(tmp_path)
    finally:
        taken.close()
    try:
        assert next(first, None) is None  # the first attempt was made on the taken ports
        assert server.proc.poll() is None and _answers(server)
    finally:
        server.stop()
