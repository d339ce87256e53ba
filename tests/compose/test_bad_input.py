"""A bad password in .env stops the stack at `init`, by the variable's name, before any Baton service."""

from __future__ import annotations

import pytest

from tests.compose.conftest import Compose, require_engine

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]


def test_an_empty_password_fails_init_by_name_and_no_service_starts(tmp_path):
    require_engine()
    bad = Compose.create(tmp_path, prefix="baton-test-bad", BATON_WORKER_PASSWORD="")
    try:
        proc = bad("up", "-d", "--build", "--wait", "--wait-timeout", "180", check=False, timeout=900)
        assert proc.returncode != 0, "up --wait succeeded with an empty worker password"
        assert "BATON_WORKER_PASSWORD is empty" in bad.logs("init")
        running = {r["Service"] for r in bad.containers()}
        assert running <= {"redis", "minio"}, f"started half-configured: {sorted(running)}"
    finally:
        bad("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=300)


def test_a_changed_redis_admin_password_fails_init_by_name(tmp_path):
    require_engine()
    stack = Compose.create(tmp_path, prefix="baton-test-bad")
    try:
        # sets up the Redis volume with the first password
        stack("run", "--build", "--rm", "init", timeout=900)
        stack.env["BATON_REDIS_PASSWORD"] = "another-admin-password"
        (stack.root / ".env").write_text("".join(f"{k}={v}\n" for k, v in stack.env.items()))
        proc = stack("up", "-d", "--wait", "--wait-timeout", "180", check=False, timeout=900)
        assert proc.returncode != 0, "up --wait succeeded with the wrong Redis admin password"
        assert "BATON_REDIS_PASSWORD" in stack.logs("init")
        running = {r["Service"] for r in stack.containers()}
        assert running <= {"redis", "minio"}, f"started half-configured: {sorted(running)}"
    finally:
        stack("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=300)
