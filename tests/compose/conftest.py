"""The compose stack on a real Docker engine: docker-compose.yml as a user runs it (plus the test agents),
under its own project name and host ports, taken down with its volumes at the end.

Skipped when no Docker engine and Compose v2 answer, unless BATON_REQUIRE_DOCKER=1 (`make test-compose`,
CI), which turns that into a failure. Without an image registry, `make images-offline` first.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from baton import servers
from shared import acl
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
FILES = (ROOT / "docker-compose.yml", ROOT / "tests" / "compose" / "docker-compose.test.yml")
BATON = str(Path(sys.executable).parent / "baton")
# The classic builder: Debian's docker.io has no buildx, and BuildKit without it fails.
DOCKER_ENV = {"DOCKER_BUILDKIT": "0"}
IMAGE_LABEL = "org.opencontainers.image.title=baton"  # set by the Dockerfile


def engine_problem() -> str | None:
    """Why the compose tests cannot run here, or None."""
    if not shutil.which("docker"):
        return "no docker CLI on PATH"
    for argv, what in ((["docker", "info"], "no Docker engine answers"),
                       (["docker", "compose", "version"], "no Compose v2 (docker compose version)")):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return f"{what} ({' '.join(argv)} timed out)"
        if proc.returncode != 0:
            return f"{what} ({' '.join(argv)}: {(proc.stderr or proc.stdout).strip()[-200:]})"
    return None


def require_engine() -> None:
    problem = engine_problem()
    if problem is None:
        return
    hint = "; `scripts/docker-engine.sh start` installs and starts one (root)"
    if os.environ.get("BATON_REQUIRE_DOCKER") == "1":
        pytest.fail(f"BATON_REQUIRE_DOCKER=1 but {problem}{hint}", pytrace=False)
    pytest.skip(f"compose tests: {problem}{hint}")


@dataclass
class Compose:
    """One compose project: its name, its .env, and the admin/CLI credentials in it."""

    project: str
    root: Path
    env: dict[str, str]
    files: tuple[Path, ...] = FILES
    log: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, prefix: str = "baton-test", **overrides: str) -> Compose:
        env = {
            "REDIS_HOST_PORT": str(servers.free_port()),
            "MINIO_HOST_PORT": str(servers.free_port()),
            "MINIO_CONSOLE_HOST_PORT": str(servers.free_port()),
            "MCP_HOST_PORT": str(servers.free_port()),
            "MODEL_HOST_PORT": str(servers.free_port()),
            "GATEWAY_HOST_PORT": str(servers.free_port()),
            "CONSOLE_HOST_PORT": str(servers.free_port()),
            "BATON_REDIS_PASSWORD": secrets.token_hex(12),
            "MINIO_ROOT_USER": "baton-root",
            "MINIO_ROOT_PASSWORD": secrets.token_hex(12),
            "BATON_WEBHOOK_TOKEN": secrets.token_hex(12),
            **{f"BATON_{s.upper()}_PASSWORD": secrets.token_hex(12) for s in acl.SERVICES},
            **overrides,
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        return cls(f"{prefix}-{secrets.token_hex(4)}", root, env)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        argv = ["docker", "compose", "--project-name", self.project, "--project-directory", str(ROOT),
                "--env-file", str(self.root / ".env")]
        for f in self.files:
            argv += ["-f", str(f)]
        argv += args
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, **DOCKER_ENV, **(env or {})}, cwd=ROOT)
        self.log.append(f"{' '.join(args[:4])}: {time.monotonic() - started:.1f}s (exit {proc.returncode})")
        if check and proc.returncode != 0:
            # The services' logs first, what compose said last: CI shows the tail of the output.
            raise AssertionError(
                f"--- logs:\n{self.logs()}\n--- docker compose {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def logs(self, *services: str, tail: int = 40) -> str:
        argv = ["docker", "compose", "--project-name", self.project, "logs", "--no-color",
                "--tail", str(tail), *services]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
        return (proc.stdout + proc.stderr)[-6000:]

    def containers(self, service: str | None = None, all_: bool = False) -> list[dict]:
        proc = self("ps", "--format", "json", *(["--all"] if all_ else []), *([service] if service else []))
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        return sorted(rows, key=lambda r: r["Name"])

    def cli_env(self) -> dict[str, str]:
        """The host CLI's environment: it logs in as its own users, `baton-cli`."""
        password = self.env["BATON_CLI_PASSWORD"]
        return {
            **os.environ,
            "REDIS_URL": f"redis://baton-cli:{password}@127.0.0.1:{self.env['REDIS_HOST_PORT']}/0",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{self.env['MINIO_HOST_PORT']}",
            "S3_ACCESS_KEY": "baton-cli",
            "S3_SECRET_KEY": password,
            "BATON_BUCKET": "baton",
            "BATON_LOG_FORMAT": "console",
        }

    def settings(self) -> Settings:
        """The host CLI's settings, for the client API (`baton.client`)."""
        env = self.cli_env()
        return Settings(REDIS_URL=env["REDIS_URL"], S3_ENDPOINT_URL=env["S3_ENDPOINT_URL"],
                        S3_ACCESS_KEY=env["S3_ACCESS_KEY"], S3_SECRET_KEY=env["S3_SECRET_KEY"],
                        bucket="baton")

    @property
    def admin_redis_url(self) -> str:
        return f"redis://default:{self.env['BATON_REDIS_PASSWORD']}@127.0.0.1:{self.env['REDIS_HOST_PORT']}/0"

    def baton(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([BATON, *args], capture_output=True, text=True, timeout=timeout, check=False,
                              env=self.cli_env(), cwd=ROOT)
        assert proc.returncode == 0, f"baton {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        return proc


@pytest.fixture(scope="session")
def compose(tmp_path_factory):
    """The whole stack, built and up (`up -d --build --wait`); `down -v` at the end, whatever happened."""
    require_engine()
    stack = Compose.create(tmp_path_factory.mktemp("compose"))
    try:
        stack("up", "-d", "--build", "--wait", "--wait-timeout", "300", timeout=1200)
        yield stack
    finally:
        profiles = ("--profile", "mcp", "--profile", "a2a", "--profile", "console")
        stack(*profiles, "down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=300)
        # Each code change leaves the previous baton:local untagged; drop those (never one in use).
        subprocess.run(["docker", "image", "prune", "--force", "--filter", f"label={IMAGE_LABEL}"],
                       capture_output=True, timeout=120, check=False)
        print("\ncompose timings:\n  " + "\n  ".join(stack.log))
