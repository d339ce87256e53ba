"""All configuration, read once from the environment (no scattered os.getenv)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_consumer() -> str:
    # Unique per process so that two replicas never share a pending list by accident.
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Settings for every service and the CLI. Environment names are given per field."""

    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore", populate_by_name=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "BATON_REDIS_URL"),
        description="Redis (or Valkey) URL for the streams and run state.",
    )
    redis_cluster_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_CLUSTER_URL", "BATON_REDIS_CLUSTER_URL"),
        description="A Redis/Valkey Cluster instead of one server: redis://[user:password@]host:port"
        "[,host:port...] (any nodes, as seeds). Wins over REDIS_URL.",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        description="After each batch of writes (run commits, tasks, outcomes, acknowledgements), WAIT until "
        "this many replicas have them before going on: a master's failover then loses no acknowledged step. "
        "0: Redis' asynchronous replication (a failover may lose the last milliseconds of writes).",
    )
    redis_one_slot: bool = Field(
        False,
        description="Supervisor: keep each run's commit in the run's own hash slot, as on a cluster (always "
        "so there), with the tasks and indexes it causes written after it. On one server a commit writes "
        "them in the same script (a round trip and about a quarter of the supervisor's Python calls fewer "
        "per hop); set this for a Redis behind a proxy that spreads keys over several servers.",
    )
    result_partitions: int = Field(
        1,
        ge=1,
        le=1024,
        description="Outcome streams (`baton:{r<N>}:results`); a run's outcomes and its workers' done-marks "
        "share one partition's hash slot. More spreads them over a cluster's shards, and over supervisor "
        "replicas: each partition is read by one live replica (with 1, a second replica stands by). Every "
        "service must agree (one with another count than `baton:settings` records refuses to start): "
        "change it only with no run in flight, then run `baton init`.",
    )
    s3_endpoint_url: str = Field(
        "http://127.0.0.1:9000",
        validation_alias=AliasChoices("S3_ENDPOINT_URL", "BATON_S3_ENDPOINT_URL"),
        description="S3 endpoint (MinIO or any S3-compatible store).",
    )
    s3_access_key: str = Field(
        "minioadmin", validation_alias=AliasChoices("S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_key: str = Field(
        "minioadmin", validation_alias=AliasChoices("S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    s3_region: str = Field("us-east-1", validation_alias=AliasChoices("S3_REGION", "AWS_REGION"))
    bucket: str = Field("baton", description="The shared workspace bucket.")
    workflows: Path = Field(
        Path("examples/workflows.yaml"), description="Workflow file: agents and workflows."
    )
    consumer: str = Field(default_factory=_default_consumer, description="Consumer name in its groups.")
    agents: str = Field(
        "", description="Comma-separated agents a worker hosts; empty hosts every python agent."
    )
    max_records: int = Field(1, ge=1, description="Messages one consumer reads per XREADGROUP.")
    batch: int = Field(
        100,
        ge=0,
        description="Worker: tasks one agent's consumer reads per XREADGROUP and runs concurrently (at most "
        "this many in flight), their events written in one pipeline and acknowledged together. "
        "Supervisor: runs and results read and handled the same way (one run's events in order). "
        "0 = one FastStream handler call per message, reading `max_records` at a time.",
    )
    state_cache: int = Field(
        10_000,
        ge=0,
        description="Supervisor: active runs whose last committed state it keeps parsed in memory, so the "
        "next hop skips reading and parsing it (each commit still checks the revision in Redis); about "
        "10 KB each. 0 = off.",
    )
    max_event_bytes: int = Field(
        64 * 1024, ge=1024, description="Larger events are refused: content travels by reference."
    )
    reclaim_idle_ms: int = Field(
        30_000, ge=100, description="A message pending this long without a heartbeat is redelivered."
    )
    max_deliveries: int = Field(5, ge=1, description="Deliveries before a failing message is dead-lettered.")
    retention_days: float = Field(
        7.0, gt=0, description="An ended run's state, events and marks are kept this long, then expire."
    )
    redis_max_connections: int = Field(
        64, ge=4, description="Connections one process opens at most; past it, callers wait (backpressure)."
    )
    handler_timeout_s: float = Field(
        900.0,
        ge=0,
        description="Most seconds one handler may run on one message (an agent's own `time_limit` wins for "
        "its tasks). Past it the handler is cancelled: a task fails as retryable, another message is left "
        "for the reclaimer. 0: no limit.",
    )
    storage_slow_s: float = Field(
        5.0,
        ge=0,
        description="A request to the store still unanswered this many seconds on (plus one per 10 MB of a "
        "body sent) is logged as a warning, `storage_waiting`, again at each doubling, and `storage_slow` "
        "when it ends. 0: not watched.",
    )
    ready_file: Path | None = Field(
        None, description="Touched once the service is ready (health checks, `baton dev up`)."
    )
    log_format: str = Field("json", pattern="^(json|console)$")
    log_level: str = Field("INFO")
    notifier_host: str = Field("127.0.0.1", description="Where the notifier's webhook listens.")
    notifier_port: int = Field(9911, description="Port of the notifier's webhook.")
    webhook_token: str = Field("", description="Bearer token MinIO must send to the notifier.")
    index_dir: Path = Field(
        Path(".baton/index"), description="Folder of the indexer's full-text index (SQLite FTS5 file)."
    )
    index_max_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Text objects larger than this are not indexed."
    )
    search_timeout: float = Field(5.0, gt=0, description="Seconds a client waits for the indexer's answer.")
    mcp_transport: str = Field("stdio", pattern="^(stdio|http)$", description="MCP server transport.")
    mcp_host: str = Field("127.0.0.1", description="Where the MCP server's streamable HTTP listens.")
    mcp_port: int = Field(9912, description="Port of the MCP server's streamable HTTP endpoint.")
    mcp_token: str = Field(
        "", description="Bearer token MCP clients must send over HTTP; required unless on loopback."
    )
    mcp_read_prefixes: str = Field(
        "", description="Comma-separated key prefixes MCP clients may list, read and search; empty: all."
    )
    mcp_write_prefixes: str = Field(
        "shared/,briefs/", description="Comma-separated key prefixes MCP clients may write with write_file."
    )
    mcp_max_read_bytes: int = Field(
        1024 * 1024, ge=1, description="Largest object the MCP read_file tool returns."
    )
    gateway_host: str = Field("127.0.0.1", description="Where the A2A gateway listens.")
    gateway_port: int = Field(9913, description="Port of the A2A gateway.")
    gateway_url: str = Field(
        "", description="The A2A gateway's public base URL, for its cards; empty: http://HOST:PORT/."
    )
    a2a_token: str = Field(
        "", description="Bearer token A2A clients must send to the gateway; required unless on loopback."
    )
    a2a_inline_bytes: int = Field(
        256 * 1024, ge=0, description="Gateway: outputs up to this size go back as bytes, larger as URLs."
    )
    a2a_max_starting: int = Field(
        32,
        ge=1,
        description="Gateway: A2A tasks it starts at once (inputs uploaded, run published); more wait "
        "their turn, so a burst of thousands is taken in order instead of starving every one of them.",
    )
    a2a_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="Gateway: how long a replica's lease lasts unless renewed (every sixth of it). Tasks "
        "waiting their turn on a replica whose lease lapsed (stopped, or stalled that long) are started by "
        "another; checked every half lease.",
    )
    a2a_fetch_hosts: str = Field(
        "",
        description="Where A2A file URLs may point besides public addresses and the store's own endpoint: "
        "the gateway's file parts, and a `kind: a2a` agent's artifacts (whose own origin is allowed too). "
        "Comma-separated host names, addresses or networks like 10.0.0.0/8; `*`: anywhere. Otherwise an A2A "
        "client or remote agent cannot make Baton read its loopback or private network.",
    )
    console_host: str = Field("127.0.0.1", description="Where the web console listens.")
    console_port: int = Field(9914, description="Port of the web console.")
    console_token: str = Field(
        "", description="The token people log in to the console with (also a bearer token for scripts)."
    )
    console_page_size: int = Field(50, ge=1, le=500, description="Console: runs per page of the runs list.")
    otlp_endpoint: str = Field(
        "",
        validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT",
        description="OTLP/HTTP base URL traces go to (`/v1/traces` is appended); empty: tracing off.",
    )
    otlp_traces_endpoint: str = Field(
        "", validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", description="OTLP/HTTP traces URL, whole."
    )
    otel_sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")
    otel_traces_exporter: str = Field("otlp", validation_alias="OTEL_TRACES_EXPORTER")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of this process's Prometheus `/metrics`; unset: none."
    )
    metrics_host: str = Field("127.0.0.1", description="Where `/metrics` listens.")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="The services' event loop: uvloop (libuv; less CPU per event for every service) or the "
        "standard library's asyncio loop.",
    )
    faults: str = Field(
        "",
        description="Tests only: fault points to arm, `<point>=exit|raise[*N]`, comma-separated "
        "(shared/faults.py). Empty in production.",
    )
    acl_passwords: dict[str, str] = Field(
        default_factory=dict,
        description="`baton init`: JSON object of service -> password (supervisor, router, worker, notifier, "
        "indexer, mcp, gateway, console, cli). Each gets a Redis ACL user and a MinIO user `baton-<service>` "
        "allowed only what it needs (shared/acl.py); empty: no users are created.",
    )

    @model_validator(mode="after")
    def _cluster(self) -> Settings:
        if self.redis_cluster_url:
            from .redisconn import as_cluster_url

            self.redis_url = as_cluster_url(self.redis_cluster_url)
            self.redis_cluster_url = None  # the URL lives in redis_url from here on, marked as a cluster's
        return self

    @property
    def cluster(self) -> bool:
        """Whether Redis is a cluster (REDIS_CLUSTER_URL, or a `redis-cluster://` REDIS_URL)."""
        return self.redis_url.startswith(("redis-cluster://", "rediss-cluster://"))

    @property
    def heartbeat_s(self) -> float:
        """How often a consumer resets the idle time of the entries it is handling."""
        return max(self.reclaim_idle_ms / 3000, 0.2)

    @property
    def tracing(self) -> bool:
        """Whether spans are recorded and exported (shared/telemetry.py)."""
        endpoint = self.otlp_traces_endpoint or self.otlp_endpoint
        return bool(endpoint) and not self.otel_sdk_disabled and self.otel_traces_exporter != "none"

    @property
    def otlp_traces_url(self) -> str:
        return self.otlp_traces_endpoint or f"{self.otlp_endpoint.rstrip('/')}/v1/traces"

    @property
    def agent_list(self) -> list[str]:
        return [a.strip() for a in self.agents.split(",") if a.strip()]

    @property
    def mcp_read_prefix_list(self) -> list[str]:
        return _prefixes(self.mcp_read_prefixes)

    @property
    def mcp_write_prefix_list(self) -> list[str]:
        return _prefixes(self.mcp_write_prefixes)


def _prefixes(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def env_names() -> set[str]:
    """Every environment variable the settings class reads (used to check docker-compose.yml)."""
    names: set[str] = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(c) for c in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names
