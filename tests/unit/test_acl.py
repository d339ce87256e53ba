"""The least-privilege rules themselves (shared/acl.py): what each user is granted, on paper.

The end-to-end proof is tests/e2e/test_least_privilege.py and the whole suite running under these users.
"""

from __future__ import annotations

import fnmatch
import json

import pytest

from shared import acl, streams
from shared.errors import ConfigError


def _grants(service: str) -> list[tuple[str, str]]:
    """(command, key) pairs a service may use."""
    return [(c, k) for g in acl.grants(service) for c in g.commands for k in g.keys]


def _may(service: str, command: str, key: str) -> bool:
    return any(c == command and fnmatch.fnmatchcase(key, k) for c, k in _grants(service))


def test_users_start_from_nothing_and_grant_keys_only_in_selectors() -> None:
    for service in acl.SERVICES:
        rules = acl.redis_rules(service)
        assert rules[:3] == ["reset", "resetchannels", "-@all"]
        root = [r for r in rules[3:] if not r.startswith("(")]
        assert all(r.startswith("+") and "@" not in r for r in root), (service, root)
        assert not any(r.startswith(("~", "%", "&", "allkeys", "allchannels", "allcommands")) for r in rules)
        for grant in acl.grants(service):
            assert grant.keys and grant.commands, (service, grant)
            assert all(k.startswith(("baton:", "{baton:")) for k in grant.keys), (service, grant)
            assert not any(c.startswith("@") or c in ("flushall", "keys", "config") for c in grant.commands)


def test_the_worker_reports_results_and_touches_nothing_of_the_supervisor() -> None:
    run = "r-1"
    assert _may("worker", "xadd", streams.results_stream(0))
    assert _may("worker", "xreadgroup", streams.agent_stream("writer"))
    assert _may("worker", "exists", streams.run_cancelled(run))
    for key in (streams.RUNS, streams.ROUTE, streams.OBJECTS, streams.agent_stream("writer"), streams.TIMERS):
        assert not _may("worker", "xadd", key), key
    for key in (streams.run_state(run), streams.TIMERS, streams.RUN_INDEX, streams.run_cancelled(run)):
        assert not any(fnmatch.fnmatchcase(key, k) for c, k in _grants("worker") if c != "exists"), key
    assert not _may("worker", "xreadgroup", streams.results_stream(0))
    assert not _may("worker", "hset", "baton:errors:baton:{r0}:results:supervisor")


def test_braces_in_key_patterns_are_literal() -> None:
    # Redis globs treat `{` and `}` as ordinary characters, as fnmatch does.
    assert fnmatch.fnmatchcase(streams.run_state("r-1"), streams.run_state("*"))
    assert not fnmatch.fnmatchcase(streams.run_events("r-1"), streams.run_state("*"))


def test_only_the_supervisor_writes_run_state_and_timers() -> None:
    for service in acl.SERVICES:
        expected = service == "supervisor"
        assert _may(service, "hset", streams.run_state("r")) == expected, service
        assert _may(service, "zadd", streams.TIMERS) == expected, service


def _actions(policy: dict, resource: str) -> set[str]:
    return {
        a
        for st in policy["Statement"]
        for a in st["Action"]
        if any(fnmatch.fnmatchcase(resource, r) for r in st["Resource"])
    }


def test_bucket_policies() -> None:
    bucket = "baton"
    obj = f"arn:aws:s3:::{bucket}/"
    worker = acl.s3_policy("worker", bucket)
    read_write = {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject"}
    assert _actions(worker, obj + "runs/r/drafts/a.md") == read_write
    assert _actions(worker, obj + "briefs/a.md") == set()
    assert _actions(worker, f"arn:aws:s3:::{bucket}") == set()  # no listing
    assert acl.s3_policy("notifier", bucket) is None
    router = acl.s3_policy("router", bucket)
    assert _actions(router, obj + "runs/r/inputs/a.md") == {"s3:GetObject", "s3:GetObjectVersion"}
    supervisor = acl.s3_policy("supervisor", bucket, publish_prefixes=["published/"])
    assert "s3:PutObject" in _actions(supervisor, obj + "published/a.md")
    assert "s3:PutObject" not in _actions(supervisor, obj + "shared/a.md")
    assert "s3:GetObject" in _actions(supervisor, obj + "briefs/a.md")
    mcp = acl.s3_policy("mcp", bucket, mcp_read_prefixes=["shared/"], mcp_write_prefixes=["shared/"])
    assert "s3:PutObject" in _actions(mcp, obj + "runs/r/inputs/a.md")
    assert "s3:PutObject" in _actions(mcp, obj + "runs/r/human/responses/x.json")
    assert "s3:PutObject" not in _actions(mcp, obj + "runs/r/drafts/a.md")
    assert _actions(mcp, obj + "briefs/a.md") == set()
    listing = [st for st in mcp["Statement"] if st["Action"] == ["s3:ListBucket"]]
    assert listing[0]["Condition"] == {"StringLike": {"s3:prefix": ["shared/*"]}}
    for service in acl.SERVICES:
        policy = acl.s3_policy(service, bucket) or {"Statement": []}
        actions = {a for st in policy["Statement"] for a in st["Action"]}
        assert actions <= {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:ListBucket"}, service
        json.dumps(policy)


def test_service_env_and_urls() -> None:
    env = acl.service_env("worker", "p@ss/w:rd", "redis://default:admin@127.0.0.1:6379/0")
    assert env == {
        "REDIS_URL": "redis://baton-worker:p%40ss%2Fw%3Ard@127.0.0.1:6379/0",
        "S3_ACCESS_KEY": "baton-worker",
        "S3_SECRET_KEY": "p@ss/w:rd",
    }
    assert acl.service_env("notifier", "x", "redis://h:1/0")["S3_ACCESS_KEY"] == ""
    with pytest.raises(ConfigError):
        acl.service_env("intruder", "x", "redis://h:1/0")
