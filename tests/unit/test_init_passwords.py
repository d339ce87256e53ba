"""`baton init` names the .env variable behind a password it cannot use, before it touches anything."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from baton.cli import app, password_problems
from shared import acl

GOOD = {service: f"{service}-pw-0123" for service in acl.SERVICES}


def test_good_passwords_pass() -> None:
    assert password_problems(GOOD) == []


@pytest.mark.parametrize(
    ("password", "says"),
    [("", "BATON_WORKER_PASSWORD is empty"), ("p@ss:word/1", "BATON_WORKER_PASSWORD must be 8-40"),
     ("short", "BATON_WORKER_PASSWORD must be 8-40")],
)
def test_a_bad_password_is_named_by_its_variable(password: str, says: str) -> None:
    (problem,) = password_problems({**GOOD, "worker": password})
    assert problem.startswith(says)
    if password:
        assert password not in problem, "the message must not echo the password"


def _init(monkeypatch, raw: str):
    monkeypatch.setenv("REDIS_URL", "redis://default:x@127.0.0.1:1/0")  # never reached
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("BATON_ACL_PASSWORDS", raw)
    return CliRunner().invoke(app, ["init"])


def test_init_refuses_an_empty_password_before_connecting(monkeypatch) -> None:
    result = _init(monkeypatch, json.dumps({**GOOD, "mcp": ""}))
    assert result.exit_code == 1
    assert "BATON_MCP_PASSWORD is empty" in result.output


def test_init_names_the_password_that_broke_the_json(monkeypatch) -> None:
    raw = "{" + ", ".join(f'"{k}": "{v}"' for k, v in {**GOOD, "router": 'ab"cdefghij'}.items()) + "}"
    result = _init(monkeypatch, raw)
    assert result.exit_code == 1
    assert "BATON_ROUTER_PASSWORD must be 8-40" in result.output
