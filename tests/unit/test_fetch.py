"""Where a file URL someone else names may be fetched from (shared/fetch.py: the A2A gateway's file parts,
a `kind: a2a` agent's artifacts), over real sockets: HTTP servers on loopback addresses stand in for a
private network the one naming the URL should not reach."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import os
import subprocess
import sys
import threading

import pytest

from shared.fetch import Fetcher, FetchError, Policy, TooLarge, is_public

BODY = os.urandom(3 * 2**20 + 17)  # a few chunks


async def fetch(url: str, policy: Policy):
    """One URL through a Fetcher of its own (the gateway keeps one for all)."""
    async with contextlib.aclosing(Fetcher(policy)) as fetcher:
        return await fetcher.fetch(url)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/to/"):  # /to/<host:port>/<path>: a redirect there
            self.send_response(302)
            self.send_header("Location", "http://" + self.path[len("/to/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def servers():
    """Two HTTP servers: on 127.0.0.2 and on 127.0.0.1 (each its own loopback address)."""
    out, running = {}, []
    for host in ("127.0.0.2", "127.0.0.1"):
        srv = http.server.ThreadingHTTPServer((host, 0), _Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        running.append(srv)
        out[host] = f"{host}:{srv.server_address[1]}"
    yield out
    for srv in running:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "::1", "fd00::1", "0.0.0.0",
     "::ffff:127.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1"],
)  # fmt: skip
def test_loopback_private_link_local_and_ipv4_carried_in_ipv6_are_not_public(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_are(address):
    assert is_public(ipaddress.ip_address(address))


async def test_a_private_address_is_refused_naming_what_it_is_and_the_setting(servers):
    with pytest.raises(FetchError) as refused:
        await fetch(f"http://{servers['127.0.0.2']}/file", Policy())
    assert "127.0.0.2 is a loopback address" in str(refused.value)
    assert "BATON_A2A_FETCH_HOSTS" in str(refused.value)
    with pytest.raises(FetchError, match=r"localhost resolves to 127\.0\.0\.1 \(loopback\)"):
        await fetch(f"http://localhost:{servers['127.0.0.1'].split(':')[1]}/file", Policy())
    with pytest.raises(FetchError, match="link-local"):  # a cloud's metadata address: refused, not tried
        await fetch("http://169.254.169.254/latest/meta-data/", Policy())


@pytest.mark.parametrize("allow", ["127.0.0.2", "127.0.0.0/30", "*"])
async def test_what_the_setting_names_is_fetched_whole(servers, allow):
    with await fetch(f"http://{servers['127.0.0.2']}/file", Policy(allow)) as got:
        assert got.read() == BODY


async def test_a_host_name_in_the_setting_is_fetched_whatever_it_resolves_to(servers):
    port = servers["127.0.0.1"].split(":")[1]
    with await fetch(f"http://LocalHost:{port}/file", Policy("localhost")) as got:
        assert got.read() == BODY


async def test_the_stores_own_origin_is_allowed_and_only_that_port(servers):
    host, port = servers["127.0.0.1"].split(":")
    with await fetch(f"http://{host}:{port}/file", Policy("", {"the store": f"http://{host}:{port}"})) as got:
        assert got.read() == BODY
    with pytest.raises(FetchError, match="loopback"):
        await fetch(f"http://{host}:{port}/file", Policy("", {"the store": f"http://{host}:{int(port) + 1}"}))


async def test_each_redirect_is_checked_where_it_connects(servers):
    """An allowed host cannot hand the fetch on to one the policy refuses; a redirect to an allowed one is
    followed."""
    allowed, other = servers["127.0.0.2"], servers["127.0.0.1"]
    with pytest.raises(FetchError) as refused:
        await fetch(f"http://{allowed}/to/{other}/file", Policy("127.0.0.2"))
    assert f"http://{allowed}/to/{other}/file" in str(refused.value)
    assert "127.0.0.1 is a loopback address" in str(refused.value)
    with await fetch(f"http://{allowed}/to/{allowed}/file", Policy("127.0.0.2")) as got:
        assert got.read() == BODY


async def test_one_fetcher_serves_many_urls_and_still_checks_each_host(servers):
    """The gateway's one client: an allowed host's file twice (the second on its pooled connection), a
    refused host refused between, and the allowed one served after it."""
    async with contextlib.aclosing(Fetcher(Policy("127.0.0.2"))) as fetcher:
        for url in [f"http://{servers['127.0.0.2']}/file"] * 2:
            with await fetcher.fetch(url) as got:
                assert got.read() == BODY
        with pytest.raises(FetchError, match="loopback"):
            await fetcher.fetch(f"http://{servers['127.0.0.1']}/file")
        with await fetcher.fetch(f"http://{servers['127.0.0.2']}/file") as got:
            assert got.read() == BODY


async def test_an_origin_added_for_an_agent_is_allowed_and_named_in_refusals(servers):
    """The worker's policy for a remote agent: the store's origin and the agent's own; a URL elsewhere on
    the same machine is refused naming both."""
    host, port = servers["127.0.0.1"].split(":")
    base = Policy("", {"the store": "http://127.0.0.1:9"})
    agent = Policy("", {"the store": "http://127.0.0.1:9", "the agent": f"http://{host}:{port}/reviewer/"})
    with await fetch(f"http://{host}:{port}/file", agent) as got:
        assert got.read() == BODY
    with pytest.raises(FetchError, match=r"the store \(127\.0\.0\.1:9\), the agent \(127\.0\.0\.1:\d+\)"):
        await fetch(f"http://{servers['127.0.0.2']}/file", agent)
    with pytest.raises(FetchError, match="loopback"):  # without the agent's origin: refused
        await fetch(f"http://{host}:{port}/file", base)


async def test_a_body_past_the_limit_is_refused_as_it_arrives(servers):
    async with contextlib.aclosing(Fetcher(Policy("*"))) as fetcher:
        with pytest.raises(TooLarge, match="over the 1,048,576 bytes taken"):
            await fetcher.fetch(f"http://{servers['127.0.0.2']}/file", limit=2**20)


def test_a_malformed_setting_names_the_entry():
    with pytest.raises(ValueError, match=r"BATON_A2A_FETCH_HOSTS: 'files/x' is neither"):
        Policy("10.0.0.0/8, files/x")
    assert Policy(" 10.0.0.0/8 , , Files.Example. ").names == {"files.example"}


def test_the_gateway_refuses_to_start_with_a_malformed_setting():
    env = {**os.environ, "BATON_A2A_FETCH_HOSTS": "10.0.0.0/33", "BATON_METRICS_PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway", "--port", "0"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    out = (done.stdout + done.stderr).decode()
    assert "gateway_refused_to_start" in out and "'10.0.0.0/33' is neither" in out, out
