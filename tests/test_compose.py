"""docker-compose.yml and the Dockerfile agree with the code: no Docker engine needed."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

from baton.cli import app as cli_app
from baton.servers import FAST_WEBHOOK_TARGET, WEBHOOK_TARGET
from services.notifier.app import WEBHOOK_PATH
from shared import acl
from shared.settings import env_names

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the anchors and `<<:` merge keys
SERVICES: dict[str, dict] = COMPOSE["services"]


BATON_IMAGE = "baton:local"
BATON_SERVICES = sorted(name for name, svc in SERVICES.items() if svc.get("image") == BATON_IMAGE)
LONG_RUNNING = [name for name in BATON_SERVICES if name != "init"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _dockerfile_instructions(keyword: str) -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    return [
        line.split(None, 1)[1] for line in text.splitlines() if line.strip().upper().startswith(keyword + " ")
    ]


def _check_command(argv: list[str]) -> None:
    if argv[:2] == ["python", "-m"]:
        module = argv[2]
        assert module.startswith("services."), f"{argv}: not a Baton service"
        found = importlib.util.find_spec(module) and importlib.util.find_spec(f"{module}.__main__")
        assert found, f"{argv}: no {module}.__main__"
    elif argv[0] == "baton":
        group = typer.main.get_command(cli_app)
        assert argv[1] in group.commands, f"{argv}: no such baton command (have {sorted(group.commands)})"
    else:
        pytest.fail(f"{argv}: expected `python -m services.<name>` or `baton <command>`")


def test_compose_file_matches_the_compose_schema() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_obsolete_version_key() -> None:
    assert "version" not in COMPOSE


def test_one_service_builds_the_image_every_baton_service_runs() -> None:
    assert {"init", "notifier", "supervisor", "router", "worker", "indexer", "mcp"} <= set(BATON_SERVICES)
    builders = [name for name, svc in SERVICES.items() if svc.get("build")]
    assert builders == ["init"], f"built by {builders}: each build makes its own image id"
    build = SERVICES["init"]["build"]
    assert build["context"] == "." and "PYTHON_IMAGE" in build["args"]
    for name in LONG_RUNNING:
        assert SERVICES[name].get("pull_policy") == "never", f"{name}: {BATON_IMAGE} is built, not pulled"
        assert SERVICES[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_dockerfile_base_image_is_a_build_argument() -> None:
    (base,) = _dockerfile_instructions("FROM")
    (arg,) = [a for a in _dockerfile_instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert base == "${PYTHON_IMAGE}"
    default = arg.split("=", 1)[1]
    assert _default(SERVICES["init"]["build"]["args"]["PYTHON_IMAGE"]) == default


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_health_check_means_ready(name: str) -> None:
    """Each service touches its ready file once its groups are joined (and its HTTP listens): on a tmpfs,
    so a restarted container is not healthy before it is ready again."""
    service = SERVICES[name]
    ready = _env(service)["BATON_READY_FILE"]
    assert Path(ready).parent.as_posix() in service.get("tmpfs", []), f"{name}: ready file not on a tmpfs"
    test = " ".join(service["healthcheck"]["test"])
    assert ready in test, f"{name}: the health check does not read {ready}"
    for http, port_env in (("notifier", "BATON_NOTIFIER_PORT"), ("gateway", "BATON_GATEWAY_PORT"),
                           ("console", "BATON_CONSOLE_PORT")):
        if name == http:
            port = _env(service)[port_env]
            assert f"127.0.0.1:{port}/health" in test, f"{name}: ready when its HTTP answers"


def test_offline_images_are_the_ones_compose_and_the_dockerfile_name() -> None:
    script = (ROOT / "scripts" / "images-offline.sh").read_text()
    (arg,) = [a for a in _dockerfile_instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    for image in (SERVICES["redis"]["image"], SERVICES["minio"]["image"], arg.split("=", 1)[1]):
        assert f"={image}\n" in script, f"scripts/images-offline.sh builds no stand-in for {image}"


@pytest.mark.parametrize("name", BATON_SERVICES)
def test_service_command_exists(name: str) -> None:
    command = SERVICES[name].get("command")
    assert command, f"{name}: no command"
    _check_command(_argv(command))


def test_dockerfile_default_command_exists() -> None:
    (cmd,) = _dockerfile_instructions("CMD")
    _check_command(json.loads(cmd))


@pytest.mark.parametrize("name", BATON_SERVICES)
def test_service_env_is_read_by_settings(name: str) -> None:
    env = _env(SERVICES[name])
    dead = sorted(set(env) - env_names())
    assert not dead, f"{name}: environment variables that Settings never reads: {dead}"
    # Replicas must get distinct consumer names (the default hostname-pid), so never fix one here.
    assert "BATON_CONSUMER" not in env


def test_minio_webhook_reaches_the_notifier() -> None:
    minio, notifier = _env(SERVICES["minio"]), _env(SERVICES["notifier"])
    targets = {
        k.removeprefix("MINIO_NOTIFY_WEBHOOK_ENABLE_")
        for k in minio
        if k.startswith("MINIO_NOTIFY_WEBHOOK_ENABLE_")
    }
    assert targets == {WEBHOOK_TARGET, FAST_WEBHOOK_TARGET}, "target ids make the ARNs `baton init` sets"
    for target in targets:
        endpoint = urlsplit(minio[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target}"])
        assert endpoint.hostname == "notifier"
        assert endpoint.port == int(notifier["BATON_NOTIFIER_PORT"])
        assert endpoint.path == WEBHOOK_PATH
        assert minio[f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{target}"] == notifier["BATON_WEBHOOK_TOKEN"]
    assert notifier["BATON_NOTIFIER_HOST"] == "0.0.0.0"
    assert minio.get(f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{WEBHOOK_TARGET}"), "events must survive a restart"
    assert not minio.get(f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{FAST_WEBHOOK_TARGET}"), "it posts at once"


def test_indexer_keeps_its_index_on_a_volume_and_mcp_needs_a_token() -> None:
    indexer, mcp = SERVICES["indexer"], SERVICES["mcp"]
    index_dir = _env(indexer)["BATON_INDEX_DIR"]
    assert any(str(v).endswith(f":{index_dir}") for v in indexer.get("volumes", []))
    env = _env(mcp)
    assert env["BATON_MCP_TRANSPORT"] == "http" and env["BATON_MCP_HOST"] == "0.0.0.0"
    assert env["BATON_MCP_TOKEN"] == "${BATON_MCP_TOKEN:-}", "no default token: it must be set in .env"
    for name, profile, token in (("mcp", "mcp", "BATON_MCP_TOKEN"), ("gateway", "a2a", "BATON_A2A_TOKEN"),
                                 ("console", "console", "BATON_CONSOLE_TOKEN")):
        service = SERVICES[name]
        assert service["profiles"] == [profile], f"{name} is opt-in: without a token it cannot start"
        assert service["restart"].startswith("on-failure:"), f"{name}: a refusal must fail `up --wait`"
        assert _env(service)[token] == f"${{{token}:-}}", f"{name}: no default token, it must be set in .env"
    assert any(str(p).endswith(f":{env['BATON_MCP_PORT']}") for p in mcp.get("ports", []))


def test_worker_is_scalable() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")


def test_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = set()
    for args in _dockerfile_instructions("COPY"):
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        copied.update(s.rstrip("/") for s in sources)
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.split(".")[0].rstrip("*") for p in include}
    assert packages, "no packages named in pyproject.toml"
    missing = sorted(packages - copied)
    assert not missing, f"Dockerfile does not copy {missing}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied


def _default(value: str) -> str:
    """A value as compose resolves it when no variable is set: each `${VAR:-default}` (or `${VAR-default}`)
    is its default."""
    return re.sub(r"\$\{[A-Za-z0-9_]+:?-([^}]*)\}", r"\1", value)


def test_each_service_logs_in_as_its_own_least_privilege_users() -> None:
    init = _env(SERVICES["init"])
    passwords = json.loads(_default(init["BATON_ACL_PASSWORDS"]))
    assert set(passwords) == set(acl.SERVICES), "init creates a user for every service and the CLI"
    admin = urlsplit(_default(init["REDIS_URL"]))
    assert admin.username == "default" and admin.password
    assert _default(_env(SERVICES["redis"])["REDISCLI_AUTH"]) == admin.password
    assert "--aclfile" in " ".join(_argv(SERVICES["redis"]["command"])), "users must survive a restart"
    for name in BATON_SERVICES:
        if name == "init":
            continue
        env = _env(SERVICES[name])
        url = urlsplit(env["REDIS_URL"])
        assert url.username == acl.username(name), f"{name}: REDIS_URL logs in as {url.username}"
        secret = re.search(r"\$\{[^}]+\}", env["REDIS_URL"]).group(0)  # the same variable for both
        if name in acl.NO_STORAGE:
            assert env["S3_ACCESS_KEY"] == env["S3_SECRET_KEY"] == "", f"{name} must hold no S3 credentials"
        else:
            assert env["S3_ACCESS_KEY"] == acl.username(name)
            assert env["S3_SECRET_KEY"] == secret
        assert _default(secret) == passwords[name], f"{name}: its password is not the one init sets"
        assert f'"{name}": "{secret}"' in init["BATON_ACL_PASSWORDS"]
        held = " ".join(env.values())
        assert "MINIO_ROOT" not in held and "BATON_REDIS_PASSWORD" not in held, f"{name}: admin credentials"
        assert ("BATON_WEBHOOK_TOKEN" in env) == (name == "notifier")
