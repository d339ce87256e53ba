"""Fetching a file URL someone else named, without letting them reach our network: the A2A gateway's
file parts (an A2A client names the URL) and a `kind: a2a` agent's artifacts (the remote agent does).

Unchecked, whoever names the URL could make us read our loopback, our private network or a cloud metadata
address (169.254.169.254) and get the answer back as a run's input or output: server-side request
forgery. So every connection a fetch makes (the first, and each redirect's) goes to an address the policy
allows, checked when it connects: the host is resolved once, each address checked, and the connection
made to a checked address, so a name that resolves to a public address for a check and to a private one
for the connect (DNS rebinding) gains nothing.

Allowed: public addresses (`ipaddress`' `is_global`, with IPv4 embedded in IPv6, 6to4, Teredo and NAT64
addresses judged by their IPv4); the origins the caller names (host and port: the store's own endpoint,
`BATON_S3_ENDPOINT_URL`, for presigned URLs of the same MinIO; for an agent's artifacts, the remote
agent's own URL, which the operator chose); and what `BATON_A2A_FETCH_HOSTS` names: host names (whatever
they resolve to), addresses, networks (`10.0.0.0/8`), or `*` for any address. The fetch connects
directly: HTTP(S)_PROXY is not used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import tempfile
from typing import BinaryIO
from urllib.parse import urlsplit

import httpcore
import httpx

from shared.errors import BatonError
from shared.storage import COPY_IN_MEMORY, MAX_PUT

SETTING = "BATON_A2A_FETCH_HOSTS"
MAX_REDIRECTS = 5
# Idle connections kept for the next request (httpx's own default), each for less than the usual servers'
# keep-alive (uvicorn's and Node's 5 s), so that a reused connection is not one the server is closing.
KEEPALIVE_CONNECTIONS = 20
KEEPALIVE_S = 2.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(BatonError):
    """A file URL that cannot be fetched (refused by the policy, unreachable or an HTTP error)."""


class TooLarge(FetchError):
    """The answer is over what the fetch takes."""


class Refused(FetchError):
    """A connection the policy does not allow (raised where the fetch connects, the URL added by `fetch`)."""


def _judged(addr: Address) -> Address:
    """The address to judge: the IPv4 one an IPv6 address carries (mapped, 6to4, Teredo, NAT64), or itself."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if inner is None and addr in _NAT64:
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None:
            return inner
    return addr


def is_public(addr: Address) -> bool:
    """Globally routable, judging an IPv6 address that carries an IPv4 one by that address
    (`::ffff:127.0.0.1` is loopback)."""
    return _judged(addr).is_global


def _kind(addr: Address) -> str:
    addr = _judged(addr)
    for kind in ("loopback", "link-local", "private", "multicast", "unspecified", "reserved"):
        if getattr(addr, f"is_{kind.replace('-', '_')}"):
            return kind
    return "non-public"


def _origin(url: str | None) -> tuple[str, int] | None:
    parts = urlsplit(url or "")
    if not parts.hostname:
        return None
    return parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)


class Policy:
    """Which addresses a fetch may connect to (the module's docstring); `allow` is the setting's value,
    `origins` the URLs whose host and port are allowed by name, each under a label for messages."""

    def __init__(self, allow: str = "", origins: dict[str, str | None] | None = None) -> None:
        self.any = False
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in allow.split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item == "*":
                self.any = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = item.rstrip(".")  # a fully qualified name's trailing dot
            if "/" in name or ":" in name or not all(part for part in name.split(".")):
                raise ValueError(
                    f"{SETTING}: {raw.strip()!r} is neither a host name, an address nor a network "
                    "(like 10.0.0.0/8); separate entries with commas"
                )
            self.names.add(name)
        self.origins: dict[tuple[str, int], str] = {}  # (host, port) -> its label
        for label, url in (origins or {}).items():
            if (origin := _origin(url)) is not None:
                self.origins[origin] = label

    def named(self, host: str, port: int) -> bool:
        """Allowed by name, whatever the name resolves to."""
        host = host.lower().strip("[]").rstrip(".")
        return self.any or host in self.names or (host, port) in self.origins

    def allows(self, addr: Address) -> bool:
        return is_public(addr) or any(addr in net for net in self.networks)

    def refusal(self, host: str, addrs: list[Address]) -> str:
        if [str(a) for a in addrs] == [host.strip("[]")]:
            what = f"{host} is a {_kind(addrs[0])} address"
        else:
            what = f"{host} resolves to " + ", ".join(f"{a} ({_kind(a)})" for a in addrs)
        origins = "".join(f", {label} ({h}:{p})" for (h, p), label in self.origins.items())
        return f"{what}: files are fetched only from public addresses{origins} and what {SETTING} names"


class _Guard(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to the addresses `policy` allows (to the checked address
    itself: TLS still verifies the URL's host name, which httpcore sends as SNI)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        kw = {"timeout": timeout, "local_address": local_address, "socket_options": socket_options}
        if self.policy.named(host, port):
            return await self.backend.connect_tcp(host, port, **kw)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from exc
        addrs = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        allowed = [a for a in addrs if self.policy.allows(a)]
        if not allowed:
            raise Refused(self.policy.refusal(host, addrs))
        last: Exception | None = None
        for addr in allowed:  # each address in the resolver's order, as a plain connect would try them
            try:
                return await self.backend.connect_tcp(str(addr), port, **kw)
            except httpcore.ConnectError as exc:
                last = exc
        raise last  # type: ignore[misc]

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise Refused("a file URL cannot name a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


def client(
    policy: Policy,
    timeout: float | httpx.Timeout = 30,
    *,
    headers: dict[str, str] | None = None,
    follow_redirects: bool = True,
) -> httpx.AsyncClient:
    """An HTTP client whose every connection passes `policy`, following up to `MAX_REDIRECTS` redirects
    (each checked as it connects) unless told not to. httpx 0.28 takes no network backend, so its
    transport's connection pool is built here with ours (httpx is pinned; tests/unit/test_fetch.py fails if
    this stops applying). Its connections are not capped (httpcore's pool would allow 10 at once, and a
    remote agent's task holds one for as long as it streams): what uses the client bounds them (a worker
    runs at most an agent's `concurrency` tasks at once)."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=None,
        max_keepalive_connections=KEEPALIVE_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_S,
        network_backend=_Guard(policy),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        headers=headers,
        follow_redirects=follow_redirects,
        max_redirects=MAX_REDIRECTS,
    )


class Fetcher:
    """Fetches file URLs through one client (its TLS context and connection pool built once, on first use:
    a worker serving many remote agents builds none for those that never name one), every connection
    checked against `policy`. `client()` is that client, for other requests (a remote agent's messages).
    Closed with `aclose()`."""

    def __init__(
        self,
        policy: Policy,
        timeout: float | httpx.Timeout = 30,
        *,
        headers: dict[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.options = {"headers": headers, "follow_redirects": follow_redirects}
        self.http: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self.http is None:
            self.http = client(self.policy, self.timeout, **self.options)
        return self.http

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    async def fetch(self, url: str, limit: int = MAX_PUT) -> BinaryIO:
        """`url`'s body, fetched a chunk at a time into a file (in memory up to `COPY_IN_MEMORY`), so a
        large file is never held whole; one past `limit` bytes (default: what a write takes, `MAX_PUT`) is
        refused as it arrives (`TooLarge`)."""
        if not url.startswith(("http://", "https://")):
            raise FetchError(f"file URL {url!r}: only http(s) URLs are fetched")
        spool = tempfile.SpooledTemporaryFile(max_size=COPY_IN_MEMORY)
        try:
            async with self.client().stream("GET", url) as resp:
                if resp.status_code >= 300:
                    raise FetchError(f"file URL {url!r} answered HTTP {resp.status_code}")
                async for chunk in resp.aiter_bytes(1 << 20):
                    if spool.tell() + len(chunk) > limit:
                        raise TooLarge(f"file URL {url!r}: over the {limit:,} bytes taken")
                    spool.write(chunk)
        except Refused as exc:  # on the URL's own host or a redirect's: the message names which
            spool.close()
            raise Refused(f"file URL {url!r}: {exc}") from exc
        except httpx.HTTPError as exc:
            spool.close()
            raise FetchError(f"file URL {url!r} could not be fetched: {exc}") from exc
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool
