"""`servers.free_port`: ports for local servers and compose stacks, chosen where no outgoing connection can
take them before they are bound (below the kernel's ephemeral range), never the same one twice."""

from __future__ import annotations

import socket

import pytest

from baton import servers


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable():
    low, _high = servers.ephemeral_range()
    ports = [servers.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(servers.LOWEST_PORT <= port < low for port in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_or_handed_out_is_not_chosen(monkeypatch):
    given = servers.free_port()
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        other = spare.getsockname()[1]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, given, taken, other])
        monkeypatch.setattr(servers.random, "choice", lambda _candidates: next(draws))
        assert servers.free_port() == other


def test_reads_the_kernels_range_and_falls_back(tmp_path, monkeypatch):
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("40000\t50000\n")
    monkeypatch.setattr(servers, "EPHEMERAL_RANGE_FILE", ranges)
    assert servers.ephemeral_range() == (40000, 50000)
    monkeypatch.setattr(servers, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert servers.ephemeral_range() == (32768, 65535)


@pytest.mark.parametrize("low", [servers.LOWEST_PORT, servers.LOWEST_PORT + 10])
def test_a_range_too_small_falls_back_to_the_kernels_choice(monkeypatch, low):
    monkeypatch.setattr(servers, "ephemeral_range", lambda: (low, 60999))
    port = servers.free_port()
    assert port > 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
