"""Run Baton without Docker: local servers plus every service as a background process.

The same commands and settings as docker-compose.yml: `python -m services.<name>` with the environment
that `Settings` reads. Used by `baton dev up/down`, `make demo` and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
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
from shared.settings import Settings

SERVICES = ("notifier", "supervisor", "router", "worker")


def service_command(name: str) -> list[str]:
    return [sys.executable, "-m", f"services.{name}"]


@dataclass
class Stack:
    """Background service processes sharing one environment; each logs to its own file."""

    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    counter: int = 0

    def start(self, service: str, extra: dict[str, str] | None = None, wait: bool = True) -> str:
        """Start one service process; returns its handle name (e.g. `worker-2`)."""
        self.counter += 1
        handle = f"{service}-{self.counter}"
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{handle}.log"
        env = {**os.environ, **self.env, "BATON_CONSUMER": handle, **(extra or {})}
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

    def wait_ready(self, handle: str, timeout: float = 60) -> None:
        proc, path = self.procs[handle], self.log_path(handle)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and b'"service_ready"' in path.read_bytes():
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


def up(root: Path, workflows: Path, workers: int = 2) -> dict[str, str]:
    """Start Redis, MinIO and every service in the background; return the client environment."""
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
    pids: dict[str, int] = {}
    started: list[int] = []
    try:
        redis = servers.start_redis(root / "redis", appendonly=True)
        started.append(redis.pid)
        pids["redis"] = redis.pid
        minio = servers.start_minio(root / "minio", f"http://127.0.0.1:{notifier_port}/minio/events", token)
        started.append(minio.pid)
        pids["minio"] = minio.pid
        env = local_env(redis.url, minio.url, workflows, notifier_port, token)
        asyncio.run(init_workspace(Settings(**settings_kwargs(env))))
        stack = Stack(root, env)
        for service in ("notifier", "supervisor", "router"):
            handle = stack.start(service)
            pids[handle] = stack.procs[handle].pid
            started.append(stack.procs[handle].pid)
        for _ in range(workers):
            handle = stack.start("worker")
            pids[handle] = stack.procs[handle].pid
            started.append(stack.procs[handle].pid)
    except BaseException:
        for pid in reversed(started):
            servers.stop_pid(pid)
        raise
    state_file.write_text(json.dumps({"pids": pids, "env": env}, indent=2))
    return env


def settings_kwargs(env: dict[str, str]) -> dict:
    return {
        "REDIS_URL": env["REDIS_URL"],
        "S3_ENDPOINT_URL": env["S3_ENDPOINT_URL"],
        "S3_ACCESS_KEY": env["S3_ACCESS_KEY"],
        "S3_SECRET_KEY": env["S3_SECRET_KEY"],
        "bucket": env["BATON_BUCKET"],
    }


def down(root: Path) -> list[str]:
    """Stop everything `up` started, services first, by PID."""
    state_file = root / "state.json"
    if not state_file.exists():
        return []
    pids: dict[str, int] = json.loads(state_file.read_text())["pids"]
    order = [h for h in pids if h not in ("redis", "minio")] + ["minio", "redis"]
    stopped = []
    for handle in order:
        if handle in pids:
            servers.stop_pid(pids[handle])
            stopped.append(handle)
    state_file.unlink()
    return stopped


def saved_env(root: Path) -> dict[str, str] | None:
    state_file = root / "state.json"
    return json.loads(state_file.read_text())["env"] if state_file.exists() else None
