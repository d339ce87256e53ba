"""docker-compose.cluster.yml agrees with the code and with docker-compose.yml: no Docker engine needed.

Its real run (`up --wait`, runs, a MinIO node killed) is tests/cluster/test_compose_cluster.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from baton.cluster import parse_nodes
from shared import acl
from shared.redisconn import cluster_parts
from shared.settings import env_names
from tests.test_compose import SERVICES as SINGLE
from tests.test_compose import _argv, _check_command, _default, _env

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
COMPOSE = yaml.safe_load(CLUSTER_FILE.read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
VALKEY = sorted(n for n in SERVICES if re.fullmatch(r"valkey-\d+", n))
MINIO = sorted(n for n in SERVICES if re.fullmatch(r"minio-\d+", n))
BATON = sorted(n for n, s in SERVICES.items() if s.get("image") == "baton:local")
LONG_RUNNING = [n for n in BATON if n not in ("init", "valkey-cluster")]


def test_cluster_file_matches_the_compose_schema() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(CLUSTER_FILE)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docker_compose_config_accepts_it() -> None:
    """Compose's own reading (interpolation, merge keys, depends_on targets): the CLI only, no engine."""
    if not shutil.which("docker"):
        pytest.skip("no docker CLI on PATH (the schema test above still checks the file)")
    proc = subprocess.run(["docker", "compose", "-f", str(CLUSTER_FILE), "config", "--quiet"],
                          capture_output=True, text=True, check=False, timeout=60, cwd=ROOT)
    if proc.returncode != 0 and "is not a docker command" in proc.stderr:
        pytest.skip("no Compose v2 plugin (docker compose)")
    assert proc.returncode == 0, proc.stderr


def test_six_valkey_nodes_form_three_masters_with_a_replica_each() -> None:
    assert VALKEY == [f"valkey-{i}" for i in range(1, 7)]
    for name in VALKEY:
        argv = " ".join(_argv(SERVICES[name]["command"]))
        for flag in ("--cluster-enabled yes", "--aclfile /data/users.acl", "--appendonly yes", "masterauth"):
            assert flag in argv, f"{name}: no {flag!r}"
        assert any(str(v).endswith(":/data") for v in SERVICES[name]["volumes"]), f"{name}: no volume"
    form = SERVICES["valkey-cluster"]
    argv = _argv(form["command"])
    assert argv[:4] == ["python", "-m", "baton.cluster", "form"]
    nodes = [a for a in argv if ":" in a]
    assert parse_nodes(nodes) == [(n, 6379) for n in VALKEY], "every node, masters first"
    replicas = int(argv[argv.index("--replicas") + 1])
    assert len(nodes) // (replicas + 1) == 3
    assert set(form["depends_on"]) == set(VALKEY)
    assert all(d["condition"] == "service_healthy" for d in form["depends_on"].values())
    assert _env(form)["REDIS_PASSWORD"] == _env(SERVICES["valkey-1"])["REDISCLI_AUTH"]


def test_four_minio_nodes_name_each_other_and_share_one_alias() -> None:
    assert MINIO == [f"minio-{i}" for i in range(1, 5)]
    for name in MINIO:
        minio = SERVICES[name]
        argv = _argv(minio["command"])
        assert argv[:2] == ["server", "http://minio-{1...4}:9000/data"], f"{name}: {argv}"
        assert minio["networks"]["default"]["aliases"] == ["minio"]
        # The same webhook targets, tokens and synchronous events as the single MinIO of docker-compose.yml,
        # and a wait on a dead peer's drive far below the services' S3 client's patience (a 60 s stall)
        env = _env(minio)
        assert env.pop("MINIO_DRIVE_MAX_TIMEOUT") == "${MINIO_DRIVE_MAX_TIMEOUT:-10s}", name
        assert env == _env(SINGLE["minio"]), f"{name}: its environment differs from the single one"
        assert any(str(v).endswith(":/data") for v in minio["volumes"])
        assert any(str(v).endswith(":/events") for v in minio["volumes"]), "events wait on their own volume"
    for name in BATON:
        if name != "valkey-cluster":
            assert urlsplit(_env(SERVICES[name])["S3_ENDPOINT_URL"]).hostname == "minio", name


def test_one_service_builds_the_image_and_every_service_waits_for_init() -> None:
    builders = [name for name, svc in SERVICES.items() if svc.get("build")]
    assert builders == ["valkey-cluster"], f"built by {builders}: each build makes its own image id"
    init = SERVICES["init"]["depends_on"]
    assert init["valkey-cluster"]["condition"] == "service_completed_successfully"
    assert {n for n in init if n.startswith("minio-")} == set(MINIO)
    for name in LONG_RUNNING:
        assert SERVICES[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", ["notifier", "supervisor", "router", "worker", "indexer"])
def test_services_run_as_in_the_single_node_file(name: str) -> None:
    cluster, single = SERVICES[name], SINGLE[name]
    assert cluster["command"] == single["command"]
    _check_command(_argv(cluster["command"]))
    assert cluster["healthcheck"] == single["healthcheck"]
    env, single_env = _env(cluster), _env(single)
    assert "REDIS_URL" not in env
    assert {k: v for k, v in env.items() if k != "REDIS_CLUSTER_URL"} == {
        k: v for k, v in single_env.items() if k != "REDIS_URL"
    }, f"{name}: settings other than Redis differ from docker-compose.yml"


@pytest.mark.parametrize("name", ["init", "notifier", "supervisor", "router", "worker", "indexer"])
def test_each_service_reaches_every_valkey_node_as_its_own_user(name: str) -> None:
    env = _env(SERVICES[name])
    assert not sorted(set(env) - env_names()), f"{name}: variables Settings never reads"
    url = _default(env["REDIS_CLUSTER_URL"])
    seeds, kw = cluster_parts(url)
    assert seeds == [(n, 6379) for n in VALKEY], f"{name}: not every node is a seed"
    single = urlsplit(_default(_env(SINGLE[name])["REDIS_URL"]))
    assert (kw["username"], kw["password"]) == (single.username, single.password)
    if name != "init":
        assert kw["username"] == acl.username(name)
