"""The indexer and the MCP server (HTTP) as processes of the session's stack, started once when needed."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from baton import servers
from baton.dev import Stack, mcp_http_env


@dataclass
class Indexer:
    stack: Stack
    index_dir: Path
    handle: str = ""

    def start(self) -> None:
        self.handle = self.stack.start("indexer", {"BATON_INDEX_DIR": str(self.index_dir)})

    def stop(self) -> None:
        self.stack.kill(self.handle)


@pytest.fixture(scope="session")
def indexer(stack: Stack, tmp_path_factory) -> Indexer:
    """One indexer for the whole session: it owns consumer group `indexer` and its index folder."""
    proc = Indexer(stack, tmp_path_factory.mktemp("index"))
    proc.start()
    return proc


@dataclass
class McpHttp:
    url: str
    token: str
    handle: str


@pytest.fixture(scope="session")
def mcp_http(stack: Stack, indexer: Indexer) -> McpHttp:
    port = servers.free_port()
    token = secrets.token_hex(16)
    handle = stack.start("mcp", mcp_http_env(port, token))
    return McpHttp(f"http://127.0.0.1:{port}/mcp", token, handle)


@pytest.fixture(scope="session")
def a2a_agents(stack: Stack):
    """The tests' remote A2A agents (tests/a2a_agents.py), at the URL the workers were given."""
    from tests.a2a_agents import AgentsServer

    server = AgentsServer(stack.env["A2A_TEST_URL"]).start()
    yield server
    server.stop()


@dataclass
class Gateway:
    url: str
    token: str
    handle: str


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Gateway:
    """The A2A gateway, logged in as its own users, with small outputs inlined below 64 bytes."""
    port = servers.free_port()
    token = secrets.token_hex(16)
    handle = stack.start(
        "gateway",
        {
            "BATON_GATEWAY_HOST": "127.0.0.1",
            "BATON_GATEWAY_PORT": str(port),
            "BATON_A2A_TOKEN": token,
            "BATON_A2A_INLINE_BYTES": "64",
        },
    )
    return Gateway(f"http://127.0.0.1:{port}/", token, handle)


@dataclass
class ConsoleServer:
    url: str
    token: str
    handle: str


@pytest.fixture(scope="session")
def console(stack: Stack) -> ConsoleServer:
    """The web console, logged in to Redis and MinIO as its own users (baton-console)."""
    port = servers.free_port()
    token = secrets.token_hex(16)
    handle = stack.start(
        "console",
        {"BATON_CONSOLE_HOST": "127.0.0.1", "BATON_CONSOLE_PORT": str(port), "BATON_CONSOLE_TOKEN": token},
    )
    return ConsoleServer(f"http://127.0.0.1:{port}", token, handle)
