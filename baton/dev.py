"""Run Baton without Docker: local servers plus every service as a background process.

The same commands and settings as docker-compose.yml: `python -m services.<name>` with the environment
that `Settings` reads. Used by `baton dev up/down`, `make demo` and the end-to-end tests.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from baton import servers
from baton.client import init_workspace
from shared import acl
from shared.service import run as run_until_done
from shared.settings import Settings

SERVICES = ("notifier", "supervisor", "router", "worker", "indexer", "mcp", "gateway", "console")


def service_command(name: str) -> list[str]:
    return [sys.executable, "-m", f"services.{name}"]


@dataclass
class Stack:
    """Background service processes sharing one environment; each logs to its own file.

    `credentials` (service -> REDIS_URL and S3 keys, from `acl_credentials`) make each service log in as
    its own least-privilege users; a service without an entry runs with `env`'s (admin) credentials.
    """

    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    counter: int = 0
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # handle -> its /metrics URL

    def service_env(self, service: str) -> dict[str, str]:
        """The environment one service runs with (without the per-process consumer name and ready file)."""
        return {**self.env, **self.credentials.get(service, {})}

    def start(self, service: str, extra: dict[str, str] | None = None, wait: bool = True) -> str:
        """Start one service process; returns its handle name (e.g. `worker-2`)."""
        self.counter += 1
        handle = f"{service}-{self.counter}"
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{handle}.log"
        ready = self.ready_path(handle)
        ready.unlink(missing_ok=True)
        env = {
            **os.environ,
            **self.service_env(service),
            "BATON_CONSUMER": handle,
            "BATON_READY_FILE": str(ready),
            "BATON_METRICS_PORT": str(servers.free_port()),  # each process its own /metrics
            **(extra or {}),
        }
        self.metrics[handle] = f"http://127.0.0.1:{env['BATON_METRICS_PORT']}/metrics"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                service_command(service),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.env.get("BATON_CWD") or None,
            )
        self.procs[handle] = proc
        if wait:
            self.wait_ready(handle)
        return handle

    def log_path(self, handle: str) -> Path:
        return self.root / "logs" / f"{handle}.log"

    def ready_path(self, handle: str) -> Path:
        return self.root / "ready" / handle

    def wait_ready(self, handle: str, timeout: float = 60) -> None:
        proc, path = self.procs[handle], self.log_path(handle)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_path(handle).exists():  # every service touches it once it is ready
                return
            if proc.poll() is not None:
                raise servers.ServerError(
                    f"{handle} exited with code {proc.returncode}:\n{path.read_text()[-3000:]}"
                )
            time.sleep(0.05)
        raise servers.ServerError(f"{handle} not ready after {timeout}s:\n{path.read_text()[-3000:]}")

    def kill(self, handle: str, hard: bool = False) -> None:
        proc = self.procs.pop(handle)
        if hard:
            proc.kill()
            proc.wait(10)
        else:
            servers.stop_pid(proc.pid, 10, proc)

    def stop_all(self) -> None:
        for handle in list(self.procs):
            self.kill(handle)


def local_env(redis_url: str, s3_url: str, workflows: Path, notifier_port: int, token: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "S3_ENDPOINT_URL": s3_url,
        "S3_ACCESS_KEY": servers.MINIO_USER,
        "S3_SECRET_KEY": servers.MINIO_PASSWORD,
        "BATON_BUCKET": "baton",
        "BATON_WORKFLOWS": str(workflows.resolve()),
        "BATON_NOTIFIER_PORT": str(notifier_port),
        "BATON_WEBHOOK_TOKEN": token,
        "BATON_LOG_FORMAT": "json",
    }


def acl_credentials(env: dict[str, str], passwords: dict[str, str]) -> dict[str, dict[str, str]]:
    """Per service, the REDIS_URL and S3 keys of its own users (see shared/acl.py)."""
    return {service: acl.service_env(service, pw, env["REDIS_URL"]) for service, pw in passwords.items()}


def new_passwords() -> dict[str, str]:
    """A fresh password for each service's users (URL-safe: they go into REDIS_URL as they are)."""
    return {service: secrets.token_urlsafe(24) for service in acl.SERVICES}


def load_secrets(root: Path) -> dict:
    """The local stack's secrets (`root`/secrets.json, 0600): made once, reused by every `up`.

    `redis`: the admin (user `default`) password; `minio`: MinIO's root password; `services`: each
    service's password for its Redis and MinIO users.
    """
    path = root / "secrets.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    fresh = {
        "redis": data.get("redis") or secrets.token_urlsafe(24),
        "minio": data.get("minio") or secrets.token_urlsafe(24),
        "services": {**new_passwords(), **data.get("services", {})},
    }
    if fresh != data:
        servers.write_private(path, json.dumps(fresh, indent=2))
    return fresh


def mcp_http_env(port: int, token: str) -> dict[str, str]:
    """The MCP server's settings for streamable HTTP on loopback at `port`, with bearer `token`."""
    return {
        "BATON_MCP_TRANSPORT": "http",
        "BATON_MCP_HOST": "127.0.0.1",
        "BATON_MCP_PORT": str(port),
        "BATON_MCP_TOKEN": token,
    }


def up(
    root: Path, workflows: Path, workers: int = 2, cluster: bool = False, trace: bool = False
) -> dict[str, str]:
    """Start Redis, MinIO and every service in the background; return the client environment. With
    `trace`, also a local Jaeger, and every service (and the CLI) sends it its spans.

    With `cluster`: a Valkey cluster of 3 masters with a replica each (baton.cluster), the services on it
    with 4 results partitions, waiting for a replica after each batch of writes; MinIO on 4 drives.

    Each service logs in as its own Redis and MinIO users (shared/acl.py); the client environment is the
    CLI's users. The admin credentials and every password stay in `root` (state.json, secrets.json).
    """
    state_file = root / "state.json"
    if state_file.exists():
        raise servers.ServerError(
            f"a dev stack is already recorded in {state_file}; run `baton dev down` first"
        )
    root.mkdir(parents=True, exist_ok=True)
    Settings(workflows=workflows)  # fail fast on bad settings
    from shared.workflow import load_workflows

    load_workflows(workflows)  # fail fast, with the file's errors, before starting anything
    notifier_port = servers.free_port()
    token = secrets.token_hex(16)
    pids: dict[str, int] = {}  # in start order: stopped in reverse on a failure
    keys = load_secrets(root)
    passwords = keys["services"]
    try:
        if cluster:
            from baton.cluster import start_local
            from shared.redisconn import as_cluster_url

            local = start_local(root / "cluster", password=keys["redis"])
            for i, node in enumerate(local.nodes):
                pids[f"redis-{i}"] = node.pid
            redis_url = as_cluster_url(local.url)
        else:
            redis = servers.start_redis(root / "redis", appendonly=True, password=keys["redis"])
            pids["redis"] = redis.pid
            redis_url = redis.url
        minio = servers.start_minio(
            root / "minio",
            f"http://127.0.0.1:{notifier_port}/minio/events",
            token,
            root_password=keys["minio"],
            drives=4 if cluster else 1,  # erasure-coded: survives a lost drive
        )
        pids["minio"] = minio.pid
        env = local_env(redis_url, minio.url, workflows, notifier_port, token)
        env["S3_SECRET_KEY"] = keys["minio"]
        if cluster:
            env["BATON_RESULT_PARTITIONS"] = "4"
            env["BATON_REDIS_WAIT_REPLICAS"] = "1"
        if trace:
            jaeger = servers.start_jaeger(root / "jaeger")
            pids["jaeger"] = jaeger.pid
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = jaeger.extra["otlp"]
            env["BATON_TRACES_URL"] = jaeger.url
        cfg = Settings(**settings_kwargs(env), acl_passwords=passwords)
        run_until_done(init_workspace(cfg), cfg)
        stack = Stack(root, env, credentials=acl_credentials(env, passwords))

        def launch(service: str, extra: dict[str, str] | None = None) -> None:
            handle = stack.start(service, extra)
            pids[handle] = stack.procs[handle].pid

        for service in ("notifier", "supervisor", "router", *["worker"] * workers):
            launch(service)
        env["BATON_INDEX_DIR"] = str((root / "index").resolve())
        launch("indexer")
        env["BATON_MCP_PORT"] = str(servers.free_port())
        env["BATON_MCP_TOKEN"] = secrets.token_hex(16)
        # streamable HTTP on loopback; desktop clients spawn their own over stdio
        launch("mcp", {"BATON_MCP_TRANSPORT": "http", "BATON_MCP_HOST": "127.0.0.1"})
        env["BATON_GATEWAY_PORT"] = str(servers.free_port())
        env["BATON_A2A_TOKEN"] = secrets.token_hex(16)
        launch("gateway", {"BATON_GATEWAY_HOST": "127.0.0.1"})  # A2A agents: one per workflow
        env["BATON_CONSOLE_PORT"] = str(servers.free_port())
        env["BATON_CONSOLE_TOKEN"] = secrets.token_hex(16)
        launch("console", {"BATON_CONSOLE_HOST": "127.0.0.1"})  # the web console, for people
    except BaseException:
        for pid in reversed(pids.values()):
            servers.stop_pid(pid)
        raise
    client_env = stack.service_env("cli")
    state = {"pids": pids, "env": client_env, "admin_env": env, "metrics": stack.metrics}
    servers.write_private(state_file, json.dumps(state, indent=2))
    write_scrape_targets(root / "prometheus-targets.json", stack.metrics)
    return client_env


def write_scrape_targets(path: Path, metrics: dict[str, str]) -> None:
    """A Prometheus `file_sd_configs` file: one target per service process, labelled with its service."""
    targets = [
        {"targets": [url.split("/")[2]], "labels": {"service": handle.rsplit("-", 1)[0], "process": handle}}
        for handle, url in metrics.items()
    ]
    path.write_text(json.dumps(targets, indent=2))


def metrics_urls(root: Path) -> dict[str, str]:
    """The running local stack's /metrics URLs, by process."""
    state_file = root / "state.json"
    return json.loads(state_file.read_text()).get("metrics", {}) if state_file.exists() else {}


def settings_kwargs(env: dict[str, str]) -> dict:
    kwargs = {
        "REDIS_URL": env["REDIS_URL"],
        "S3_ENDPOINT_URL": env["S3_ENDPOINT_URL"],
        "S3_ACCESS_KEY": env["S3_ACCESS_KEY"],
        "S3_SECRET_KEY": env["S3_SECRET_KEY"],
        "bucket": env["BATON_BUCKET"],
    }
    if env.get("BATON_WORKFLOWS"):  # `init` reads the triggers' publish_to prefixes from it
        kwargs["workflows"] = env["BATON_WORKFLOWS"]
    if env.get("BATON_RESULT_PARTITIONS"):  # `init` records it: services with another count refuse to start
        kwargs["result_partitions"] = int(env["BATON_RESULT_PARTITIONS"])
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):  # `baton dev up --trace`: the CLI's submissions too
        kwargs["OTEL_EXPORTER_OTLP_ENDPOINT"] = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    return kwargs


def down(root: Path) -> list[str]:
    """Stop everything `up` started, services first, by PID."""
    state_file = root / "state.json"
    if not state_file.exists():
        return []
    pids: dict[str, int] = json.loads(state_file.read_text())["pids"]
    # services first, then MinIO, Redis; Jaeger last, so the spans they send on the way out still arrive
    servers_last = [h for h in pids if h in ("minio", "jaeger") or h.startswith("redis")]
    order = [h for h in pids if h not in servers_last] + sorted(
        servers_last, key=lambda h: (h == "jaeger", h != "minio")
    )
    stopped = []
    for handle in order:
        if handle in pids:
            servers.stop_pid(pids[handle])
            stopped.append(handle)
    state_file.unlink()
    return stopped


def saved_env(root: Path, admin: bool = False) -> dict[str, str] | None:
    """The running local stack's client environment (the CLI's users), or with `admin` its admin one."""
    state_file = root / "state.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return state.get("admin_env", state["env"]) if admin else state["env"]
