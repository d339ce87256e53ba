"""Redis clients for one server or a Redis/Valkey Cluster, from one URL.

A cluster is named by `REDIS_CLUSTER_URL=redis://[user:password@]host:port[,host:port...]` (any node,
or several as seeds). Settings turn it into `redis-cluster://...` in `redis_url`, so every place that hands
a URL on (a service's own ACL user, a follower's client) keeps saying "cluster". `connect` returns a
`redis.asyncio.Redis` or a `redis.asyncio.cluster.RedisCluster`; both take the same commands, and every
atomic step Baton takes touches one hash slot (shared/streams.py).
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError, ResponseError

from .errors import ConfigError

try:
    import hiredis
except ImportError:  # (a dependency; without it commands are packed by redis-py, as before)
    hiredis = None

CLUSTER_SCHEMES = {"redis-cluster": "redis", "rediss-cluster": "rediss"}
WIDE = 64  # arguments from which `pack_wide`'s connections pack a command with hiredis


def as_cluster_url(url: str) -> str:
    """`redis://...` -> `redis-cluster://...` (a cluster URL stays as it is)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", *CLUSTER_SCHEMES):
        raise ConfigError(f"REDIS_CLUSTER_URL must start with redis:// or rediss://, got {url!r}")
    return url if scheme in CLUSTER_SCHEMES else f"{scheme}-cluster://{rest}"


def is_cluster(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def cluster_parts(url: str) -> tuple[list[tuple[str, int]], dict]:
    """A cluster URL -> ([(host, port)] seeds, client keyword arguments: credentials, TLS)."""
    scheme, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo, _, hosts = netloc.rpartition("@")
    seeds = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not item.strip():
            continue
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"cluster node {item!r} in REDIS_CLUSTER_URL is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    if not seeds:
        raise ConfigError("REDIS_CLUSTER_URL names no node")
    db = rest.split("/", 1)[1].split("?", 1)[0] if "/" in rest else ""
    if db not in ("", "0"):
        raise ConfigError(f"a Redis Cluster has database 0 only; REDIS_CLUSTER_URL asks for /{db}")
    kw: dict = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        kw["username"] = unquote(user) or None
        if has_password:
            kw["password"] = unquote(password)
    if CLUSTER_SCHEMES.get(scheme) == "rediss":
        kw["ssl"] = True
    return seeds, kw


_READ_OPTIONS = {"COUNT": 2, "BLOCK": 2, "NOACK": 1, "CLAIM": 2}  # XREAD[GROUP]'s options: their width


def stream_read_keys(command: str, args: tuple) -> list | None:
    """The streams an XREAD or XREADGROUP reads (`args` after the command's name), read from the command
    itself; None for any other command, or one whose options this does not know (the server is asked).

    redis-py's cluster client asks the server for the keys of a command whose keys can be anywhere
    (`movablekeys`: XREAD, XREADGROUP) with a COMMAND GETKEYS round trip, twice per command (measured:
    400 for 200 reads), so every consumer's read on a cluster cost three round trips."""
    name = command.upper() if isinstance(command, str) else command.decode().upper()
    if name not in ("XREAD", "XREADGROUP"):
        return None
    i = 3 if name == "XREADGROUP" else 0  # (GROUP <group> <consumer>)
    while i < len(args):
        word = args[i]
        word = (word.decode() if isinstance(word, bytes) else str(word)).upper()
        if word == "STREAMS":
            rest = args[i + 1 :]
            if not rest or len(rest) % 2:
                return None  # (malformed: the server's error says what is wrong)
            return list(rest[: len(rest) // 2])
        width = _READ_OPTIONS.get(word)
        if width is None:
            return None
        i += width
    return None


class StreamReadCluster(RedisCluster):
    """A cluster client that finds a stream read's slot from the command itself (`stream_read_keys`),
    not by asking the server: the consumers' client (FastStream's, shared/broker.py) and `BoundedCluster`."""

    async def _determine_slot(self, command, *args):
        keys = stream_read_keys(command, args)
        if not keys:
            return await super()._determine_slot(command, *args)
        slots = {self.keyslot(k) for k in keys}
        if len(slots) != 1:
            raise RedisClusterException(f"{command} - all keys must map to the same key slot")
        return slots.pop()


class BoundedCluster(StreamReadCluster):
    """A cluster client whose commands wait for one of `bound` slots (backpressure) instead of failing
    with MaxConnectionsError past the per-node pool, as redis-py's cluster pool does.

    Its first command runs alone: with redis-py 8.1, 32 commands at once on a fresh cluster client fail
    (`AttributeError: 'NoneType' object has no attribute 'writelines'`: connections being set up while the
    client initializes; 8 at once pass, and 128 pass once one command has completed)."""

    def __init__(self, *args, bound: int = 64, **kw) -> None:
        super().__init__(*args, **kw)
        self._gate = asyncio.Semaphore(bound)
        self._first = asyncio.Lock()
        self._warm = False

    async def execute_command(self, *args, **kw):
        if not self._warm:
            async with self._first:
                if not self._warm:
                    async with self._gate:
                        reply = await super().execute_command(*args, **kw)
                    self._warm = True
                    return reply
        async with self._gate:
            return await super().execute_command(*args, **kw)


POOL = 100  # connections a client's pool holds when the caller names no bound (redis-py's own default)
POOL_WAIT = 30  # seconds a command waits for one of them before it fails


def connect(
    url: str,
    *,
    max_connections: int | None = None,
    blocking: bool = True,
    wait: float | None = POOL_WAIT,
    **kw,
):
    """A client for `url`: `Redis` on a bounded pool (`max_connections`, default `POOL`), or a cluster
    client. With `blocking` (the default) a command that finds every connection busy waits up to `wait`
    seconds for one (None: as long as it takes): a burst of concurrent callers (the A2A gateway's task
    store at 2,000 tasks in flight) waits its turn instead of failing with redis-py's
    MaxConnectionsError."""
    if is_cluster(url):
        seeds, auth = cluster_parts(url)
        return BoundedCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in seeds],
            bound=max_connections or 64,
            # per node; the gate above bounds what is in flight (blocking reads hold a connection each)
            max_connections=max(4 * (max_connections or 64), 256),
            **auth,
            **kw,
        )
    pool_cls = aioredis.BlockingConnectionPool if blocking else aioredis.ConnectionPool
    extra = {"timeout": wait} if blocking else {}
    pool = pool_cls.from_url(url, max_connections=max_connections or POOL, **extra, **kw)
    return aioredis.Redis.from_pool(pool)


class _WidePacking:
    """Packs a command of more than `WIDE` arguments with hiredis's C packer. redis-py's asyncio connection
    packs in Python, about 1 us per argument: the console's one XREAD over 5,000 open pages' streams took
    6.2 ms of client CPU to send, 2.0 ms so (0.13 -> 0.10 ms over 50; a local Valkey)."""

    def pack_command(self, *args):
        wide = len(args) > WIDE and isinstance(args[0], str) and " " not in args[0]  # ("CLIENT ID": split)
        if wide and hiredis is not None:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:  # (an argument hiredis does not take: redis-py's own packer says what is wrong)
                pass
        return super().pack_command(*args)


def pack_wide(client: aioredis.Redis) -> aioredis.Redis:
    """`client`, its connections packing wide commands in C (`_WidePacking`); for a client whose commands
    grow with what it serves, like the console's live reader. One server only (a cluster's reads are
    per slot, a few keys each)."""
    pool = client.connection_pool
    base = pool.connection_class
    if not issubclass(base, _WidePacking):
        pool.connection_class = type(f"Wide{base.__name__}", (_WidePacking, base), {})
    return client


async def verify(url: str) -> None:
    """At start-up: a cluster URL must reach a cluster whose every slot is served. Raises ConfigError
    naming the node and the problem (a plain server, unassigned slots, an unreachable node)."""
    if not is_cluster(url):
        return
    seeds, auth = cluster_parts(url)
    for host, port in seeds:
        client = aioredis.Redis(host=host, port=port, socket_connect_timeout=5, socket_timeout=5, **auth)
        try:
            try:
                state = await client.execute_command("CLUSTER", "INFO")
            except ResponseError as exc:
                if "cluster support disabled" not in str(exc):
                    raise
                raise ConfigError(
                    f"REDIS_CLUSTER_URL: node {host}:{port} is a plain server, not in cluster mode "
                    "(use REDIS_URL for one server)"
                ) from exc
            state = state.decode() if isinstance(state, bytes) else str(state)
            fields = dict(line.split(":", 1) for line in state.split() if ":" in line)
            if fields.get("cluster_slots_assigned") != "16384":
                raise ConfigError(
                    f"REDIS_CLUSTER_URL: node {host}:{port} reports {fields.get('cluster_slots_assigned')} "
                    "of 16384 slots assigned (form the cluster first: python -m baton.cluster form)"
                )
            if fields.get("cluster_state") != "ok":
                raise ConfigError(
                    f"REDIS_CLUSTER_URL: node {host}:{port} says cluster_state:{fields.get('cluster_state')}"
                )
            return
        except AuthenticationError as exc:
            raise ConfigError(
                f"REDIS_CLUSTER_URL: node {host}:{port} refused the credentials: {exc}"
            ) from exc
        except (RedisError, OSError) as exc:
            last = ConfigError(f"REDIS_CLUSTER_URL: node {host}:{port} is unreachable: {exc}")
            continue
        finally:
            await client.aclose()
    raise last


async def all_nodes(url: str) -> list[tuple[str, int]]:
    """Every node of the cluster, masters and replicas (CLUSTER NODES from the first seed that answers):
    what is kept per node (ACL users, ACL logs) must be applied to each."""
    seeds, auth = cluster_parts(url)
    last: Exception | None = None
    for host, port in seeds:
        client = aioredis.Redis(host=host, port=port, socket_connect_timeout=5, socket_timeout=5, **auth)
        try:
            text = await client.execute_command("CLUSTER", "NODES")
        except (RedisError, OSError) as exc:
            last = exc
            continue
        finally:
            await client.aclose()
        text = text.decode() if isinstance(text, bytes) else str(text)
        found = []
        for line in text.splitlines():  # <id> <ip:port@cport[,hostname]> <flags> ...
            parts = line.split()
            if len(parts) < 3 or "fail" in parts[2] or "noaddr" in parts[2]:
                continue
            address = parts[1].split("@")[0]
            node_host, _, node_port = address.rpartition(":")
            found.append((node_host or host, int(node_port)))
        return sorted(set(found))
    raise ConfigError(f"REDIS_CLUSTER_URL: no seed node answers CLUSTER NODES: {last}")
