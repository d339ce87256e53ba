"""Least privilege: what each Baton service may do in Redis and in the bucket, and how it is applied.

Every service (and the `baton` CLI) has its own Redis ACL user and its own MinIO user, both named
`baton-<service>` and sharing one password. `baton init` creates them from `BATON_ACL_PASSWORDS`
(`apply`); `service_env` gives one service the environment that logs in as its user.

Redis: each user starts from nothing (`reset`, `-@all`, no keys, no channels). Its root permissions hold
only connection commands (PING, CLIENT SETINFO, SELECT, MULTI/EXEC where it uses transactions); everything
that touches a key is granted by a *selector*, `(~<keys> +<commands>)`, which allows those commands on those
keys only. So the worker may XADD to the results streams (`baton:{r<N>}:results`) but not to `baton:runs`,
and XREADGROUP its task streams but not the results; commands a Lua script runs are checked the same way.
Key globs treat `{` and `}` literally, so `baton:{*}:state` matches every run's state and nothing else.
Every key named here comes from `shared/streams.py` (or the helpers next to the code that uses it).

MinIO: one policy per user on the workspace bucket. Workers and the router read only `runs/*` (workers
also write there); the notifier has no MinIO user at all; the indexer reads everything; the MCP server
reads its readable prefixes and writes its writable ones plus run inputs and human responses; the
A2A gateway reads runs and writes run inputs and human responses; the web console reads runs (exact
versions) and writes run inputs and human responses; the
supervisor reads everything (it adopts inputs from anywhere) and writes `runs/*` and the workflows'
`publish_to` prefixes; the CLI reads and writes objects. Nobody but the admin may change the bucket's
configuration (versioning, notifications, policies) or delete objects.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from . import streams
from .errors import ConfigError

SERVICES = ("supervisor", "router", "worker", "notifier", "indexer", "mcp", "gateway", "console", "cli")
NO_STORAGE = frozenset({"notifier"})  # services that must not hold any S3 credentials


def username(service: str) -> str:
    """The Redis and MinIO user of one service (MinIO access keys are 3-20 characters)."""
    return f"baton-{service}"


# --- Redis -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """Commands a user may run on some keys (one ACL selector)."""

    why: str
    keys: tuple[str, ...]
    commands: tuple[str, ...]
    read_only: bool = False  # `%R~` (read the keys only) instead of `~` (read and write)

    def selector(self) -> str:
        prefix = "%R~" if self.read_only else "~"
        return "(" + " ".join([*(prefix + k for k in self.keys), *("+" + c for c in self.commands)]) + ")"


# What redis-py sends on connecting (CLIENT SETINFO; SELECT for a database other than 0; HELLO with RESP3),
# and PING, which FastStream's subscribers and health checks send. None of them touches a key.
CONNECTION = ("ping", "hello", "client|setinfo", "client|setname", "select", "wait", "role")
# What a cluster client asks every node to learn the slot map and the commands' key positions (no keys).
CLUSTER_TOPOLOGY = (
    "cluster|slots",
    "cluster|shards",
    "cluster|nodes",
    "cluster|info",
    "readonly",
    "command",
    "asking",  # follow an ASK redirection while a slot migrates (resharding)
)
TRANSACTIONS = ("multi", "exec", "discard", "unwatch")
# A consumer group member: create the group (MKSTREAM) on start-up, read, acknowledge, and the reclaimer's
# XAUTOCLAIM / XPENDING plus the heartbeat's XCLAIM ... JUSTID (shared/broker.py, shared/reclaim.py), and
# a retry's re-take of its entry if still its own (EVAL of XPENDING + XCLAIM: shared/broker.py `RETAKE`).
CONSUME = ("xgroup|create", "xreadgroup", "xack", "xautoclaim", "xclaim", "xpending", "eval")
# Why a delivery failed, kept for its dead letter: `baton:errors:<stream>:<group>` (shared/broker.py).
ERRORS = ("hset", "hget", "hdel", "expire")


def errors_keys(*subscriptions: tuple[str, str]) -> tuple[str, ...]:
    from .broker import errors_key

    return tuple(errors_key(stream, group) for stream, group in subscriptions)


def _consumer(why: str, *subscriptions: tuple[str, str]) -> list[Grant]:
    stream_keys = tuple(dict.fromkeys(stream for stream, _group in subscriptions))
    return [
        Grant(why, stream_keys, CONSUME),
        Grant("remember why a delivery failed (reclaimer)", errors_keys(*subscriptions), ERRORS),
    ]


def _partitions_grant() -> Grant:
    return Grant(
        "agree on the results partition count (shared/partitions.py)",
        (streams.SETTINGS,),
        ("hsetnx", "hget"),
    )


def _supervisor_grants() -> list[Grant]:
    group = streams.SUPERVISOR_GROUP
    return [
        _partitions_grant(),
        *_consumer(
            "consume runs, results, bucket changes and dead letters",
            (streams.RUNS, group),
            (streams.RESULTS_PATTERN, group),
            (streams.OBJECTS, group),
            (streams.DLQ, group),
        ),
        Grant(
            "assign tasks, fail tasks past their deadline, start triggered runs, record every step",
            (
                streams.ROUTE,
                streams.agent_stream("*"),
                streams.RESULTS_PATTERN,
                streams.RUNS,
                streams.run_events("*"),
                streams.DLQ,
            ),
            ("xadd",),
        ),
        # EVAL: a run's commit (services/supervisor/store.py) touches the run's own keys, and on one server
        # also the streams it sends tasks to, the timers and the run indexes; the outbox appends entries
        # with a script; timers are taken with one. The commands inside are checked again against the
        # grants for their own keys.
        Grant(
            "commit a run's step (with the tasks it sends and the indexes it moves, on one server); append "
            "entries (the outbox's script); take a due timer",
            (
                streams.run_state("*"),
                streams.run_events("*"),
                streams.DONE_PATTERN,
                streams.run_cancelled("*"),
                streams.ROUTE,
                streams.agent_stream("*"),
                streams.RESULTS_PATTERN,
                streams.RUNS,
                streams.DLQ,
                streams.TIMERS,
                streams.RUN_INDEX,
                streams.run_status_index("*"),
                streams.run_workflow_index("*"),
            ),
            ("eval",),
        ),
        Grant(
            "metrics: each stream's length and its groups' lag and pending counts, runs waiting (read when "
            "scraped, shared/metrics.py)",
            (*WORK_STREAMS, streams.agent_stream("*"), streams.DLQ, streams.RUNS_WAITING),
            ("exists", "xlen", "xinfo|groups", "zcard"),
        ),
        Grant(
            "run state, a few fields at a time",
            (streams.run_state("*"),),
            ("hget", "hmget", "hgetall", "hset", "hdel", "hkeys", "hscan", "expire"),
        ),
        Grant(
            "expire an ended run's keys (retention)",
            (streams.run_events("*"), streams.DONE_PATTERN, streams.run_cancelled("*")),
            ("expire",),
        ),
        Grant("make an ended run's done-marks exist, so they expire", (streams.DONE_PATTERN,), ("hsetnx",)),
        Grant(
            "the run index, by status and by workflow",
            (streams.RUN_INDEX, streams.run_status_index("*"), streams.run_workflow_index("*")),
            ("zadd", "zrem", "zremrangebyscore"),
        ),
        Grant("mark cancelled runs", (streams.run_cancelled("*"),), ("set",)),
        Grant(
            "the live replicas, who share the results partitions out (services/supervisor/shares.py)",
            (streams.SUPERVISORS,),
            ("eval", "time", "zadd", "zremrangebyscore", "zrange", "zrem"),
        ),
        Grant(
            "delayed retries and deadlines",
            (streams.TIMERS,),
            ("zadd", "zrangebyscore", "zrem", "zscore"),
        ),
        Grant("index of runs waiting for a person", (streams.RUNS_WAITING,), ("zadd", "zrem")),
        Grant(
            "at start, an empty waiting index is filled from the status index (shared/runs.index_waiting)",
            (streams.run_status_index("waiting_for_human"),),
            ("zrange",),
            read_only=True,
        ),
    ]


def _router_grants() -> list[Grant]:
    return [
        _partitions_grant(),
        *_consumer("consume tasks awaiting a route", (streams.ROUTE, streams.ROUTER_GROUP)),
        Grant(
            "hand tasks to agents, report routing failures, record the decision",
            (streams.agent_stream("*"), streams.RESULTS_PATTERN, streams.run_events("*"), streams.DLQ),
            ("xadd",),
        ),
        # EVAL: the outbox appends each stream's entries in one small script (shared/batch.py); its XADDs
        # are checked again against the grant above.
        Grant(
            "append them in order, in one pipeline (acknowledged after WAIT, if asked)",
            (streams.agent_stream("*"), streams.RESULTS_PATTERN, streams.run_events("*"), streams.DLQ),
            ("eval",),
        ),
        Grant(
            "decide each task's route once (a redelivery forwards to the same agent)",
            (streams.route_decision("*", "*", "*"),),
            ("get", "set"),
        ),
    ]


def _worker_grants() -> list[Grant]:
    agents = streams.agent_stream("*")
    return [
        _partitions_grant(),
        *_consumer("consume its agents' task streams (one group per agent)", (agents, "*")),
        # EVAL: the batched outbox appends a batch of entries, with the done-marks of the outcomes among
        # them, in one small script (shared/batch.py); the XADD and HSET inside it are checked again
        # against the grants for their own keys.
        Grant(
            "report outcomes and dead letters; starts and progress straight to the run's own stream",
            (streams.RESULTS_PATTERN, streams.DLQ, streams.run_events("*")),
            ("xadd",),
        ),
        Grant(
            "append outcomes together with their done-marks, atomically",
            (streams.RESULTS_PATTERN, streams.DLQ, streams.DONE_PATTERN, streams.run_events("*")),
            ("eval",),
        ),
        Grant("see whether a run was cancelled", (streams.run_cancelled("*"),), ("exists",), read_only=True),
        Grant(
            "remember which attempts' outcomes were sent and which entry owns each attempt, so neither a "
            "redelivery nor a second entry with the same work is done twice",
            (streams.DONE_PATTERN,),
            ("hexists", "hset", "hsetnx", "hget"),
        ),
    ]


def _notifier_grants() -> list[Grant]:
    return [
        Grant(
            "publish bucket changes and unreadable notifications", (streams.OBJECTS, streams.DLQ), ("xadd",)
        ),
        Grant("mark S3 events published (expiring marks)", (streams.OBJECTS_SEEN_PREFIX + "*",), ("set",)),
        # EVAL: the mark and the entry in one script (services/notifier/app.py); its SET and XADD are
        # checked again against the grants above.
        Grant(
            "publish each S3 event once, with its mark; append through the outbox",
            (streams.OBJECTS, streams.OBJECTS_SEEN_PREFIX + "*", streams.DLQ),
            ("eval",),
        ),
    ]


def _indexer_grants() -> list[Grant]:
    group = streams.INDEXER_GROUP
    return [
        *_consumer(
            "consume bucket changes and search requests", (streams.OBJECTS, group), (streams.SEARCH, group)
        ),
        Grant("answer searches (a list that expires)", (streams.search_reply("*"),), ("rpush", "expire")),
        # EVAL: bucket changes are consumed batched; the outbox appends dead letters in its small script
        # (shared/batch.py), whose XADD is checked again against this grant.
        Grant("dead letters", (streams.DLQ,), ("xadd", "eval")),
    ]


def _search_client() -> list[Grant]:
    return [
        Grant("ask the indexer", (streams.SEARCH,), ("xadd",)),
        Grant("wait for its answer", (streams.search_reply("*"),), ("blpop", "del")),
    ]


ANNOUNCE = Grant(
    "announce a person's response (its bucket notification can be lost: baton.client.announce)",
    (streams.OBJECTS,),
    ("xadd",),
)


def _mcp_grants() -> list[Grant]:
    return [
        Grant("submit runs", (streams.RUNS,), ("xadd",)),
        ANNOUNCE,
        *_search_client(),
        Grant("run status; a list's cores", (streams.run_state("*"),), ("hgetall", "hget"), read_only=True),
        Grant("run events", (streams.run_events("*"),), ("xrevrange",), read_only=True),
    ]


def _gateway_grants() -> list[Grant]:
    return [
        Grant("submit and cancel runs", (streams.RUNS,), ("xadd",)),
        ANNOUNCE,
        Grant("run status; a list's cores", (streams.run_state("*"),), ("hgetall", "hget"), read_only=True),
        Grant(
            "follow runs and read their status",
            (streams.run_events("*"),),
            ("xread", "xrange", "xrevrange"),
            read_only=True,
        ),
        Grant("its A2A tasks, kept across restarts", (streams.a2a_task("*"),), ("get", "set", "del")),
        Grant("list them", (streams.a2a_tasks("*"),), ("zadd", "zrevrange", "zrem", "zremrangebyscore")),
        Grant(
            "the tasks not started yet (a restart starts them)",
            (streams.a2a_starting("*"),),
            ("hset", "hget", "hdel", "hgetall"),
        ),
        Grant(
            "its lease, and the others' (theirs are left to them)",
            (streams.a2a_gateway("*"),),
            ("set", "exists", "del"),
        ),
    ]


WORK_STREAMS = (streams.RUNS, streams.ROUTE, streams.RESULTS_PATTERN, streams.OBJECTS)


def _console_grants() -> list[Grant]:
    agents = streams.agent_stream("*")
    return [
        Grant("submit and cancel runs", (streams.RUNS,), ("xadd",)),
        Grant(
            "run pages: the state whole, or only its core (the runs list)",
            (streams.run_state("*"),),
            ("hgetall", "hget"),
            read_only=True,
        ),
        Grant(
            "live timelines (blocking XREAD) and run pages",
            (streams.run_events("*"),),
            ("xread", "xrange", "xrevrange"),
            read_only=True,
        ),
        Grant(
            "the runs list, paged (by status or workflow too); the inbox",
            (
                streams.RUN_INDEX,
                streams.run_status_index("*"),
                streams.run_workflow_index("*"),
                streams.RUNS_WAITING,
            ),
            ("zrevrange", "zcard"),
            read_only=True,
        ),
        *_search_client(),
        Grant(
            "dead letters: count, list, show, replay (XADD back, then XDEL)",
            (streams.DLQ,),
            ("xlen", "xrange", "xrevrange", "xdel"),
        ),
        Grant("replay dead letters to the streams they came from", (*WORK_STREAMS, agents), ("xadd",)),
    ]


def _cli_grants() -> list[Grant]:
    agents = streams.agent_stream("*")
    return [
        Grant("submit and cancel runs", (streams.RUNS,), ("xadd",)),
        Grant(
            "follow runs and read their status",
            (streams.run_events("*"),),
            ("xread", "xrange", "xrevrange"),
            read_only=True,
        ),
        Grant("run status; a list's cores", (streams.run_state("*"),), ("hgetall", "hget"), read_only=True),
        Grant(
            "list runs",
            (streams.RUN_INDEX, streams.RUNS_WAITING),
            ("zrevrange", "zcard"),
            read_only=True,
        ),
        *_search_client(),
        Grant(
            "dead letters: count, list, show, replay (XADD back, then XDEL)",
            (streams.DLQ,),
            ("xlen", "xrange", "xrevrange", "xdel"),
        ),
        Grant("replay dead letters to the streams they came from", (*WORK_STREAMS, agents), ("xadd",)),
        Grant(
            "trim below what every group still needs; old dead letters; idle consumer names",
            (*WORK_STREAMS, agents, streams.DLQ),
            ("xinfo|groups", "xinfo|consumers", "xpending", "xtrim", "xgroup|delconsumer"),
        ),
    ]


_GRANTS = {
    "supervisor": _supervisor_grants,
    "router": _router_grants,
    "worker": _worker_grants,
    "notifier": _notifier_grants,
    "indexer": _indexer_grants,
    "mcp": _mcp_grants,
    "gateway": _gateway_grants,
    "console": _console_grants,
    "cli": _cli_grants,
}
# Root permissions beyond CONNECTION (commands without keys).
_ROOT = {
    "supervisor": TRANSACTIONS,
    "worker": TRANSACTIONS,  # outcome + done-mark in one MULTI/EXEC on the per-message path (BATON_BATCH=0)
    "indexer": TRANSACTIONS,
    # a dead letter's replay: XADD back and XDEL in one MULTI/EXEC; the one live reader's XREAD is re-armed
    # with a new page's stream by CLIENT UNBLOCK of its own connection (shared/live.py)
    "console": (*TRANSACTIONS, "client|id", "client|unblock"),
    # the same for the gateway's one live reader, which follows the runs of every A2A task in flight
    "gateway": ("client|id", "client|unblock"),
    "cli": (*TRANSACTIONS, "scan"),  # `baton trim` finds the agent streams with SCAN ... TYPE stream
}


def grants(service: str) -> list[Grant]:
    _check(service)
    return _GRANTS[service]()


def redis_rules(service: str) -> list[str]:
    """The `ACL SETUSER` rules of one service, without its password and without `on`."""
    root = [*CONNECTION, *CLUSTER_TOPOLOGY, *_ROOT.get(service, ())]
    return [
        "reset",
        "resetchannels",
        "-@all",
        *("+" + c for c in root),
        *(g.selector() for g in grants(service)),
    ]


def password_hash(password: str) -> str:
    """What Redis stores: the password is sent hashed (`#<sha256>`), never in clear."""
    return hashlib.sha256(password.encode()).hexdigest()


async def apply_redis(redis, passwords: Mapping[str, str], admin_password: str | None = None) -> list[str]:
    """Create or replace the users of `passwords`; returns warnings for the operator.

    With `admin_password` (the password the admin connection used as user `default`), the default user
    is made to require it: without a password on `default`, anyone reaching Redis has every right and
    the users below protect nothing. When the server has an ACL file, the users are saved to it.
    """
    warnings: list[str] = []
    for service, password in passwords.items():
        _check(service)
        rules = redis_rules(service)
        await redis.execute_command(
            "ACL", "SETUSER", username(service), *rules, "on", "#" + password_hash(password)
        )
    if admin_password:
        await redis.execute_command(
            "ACL", "SETUSER", "default", "on", "resetpass", "#" + password_hash(admin_password)
        )
    else:
        default = await redis.execute_command("ACL", "GETUSER", "default")
        if default and b"nopass" in _flags(default):
            warnings.append(
                "Redis user `default` has no password: anything that reaches Redis has every right. "
                "Connect `baton init` as redis://default:<password>@... to set one."
            )
    try:
        aclfile = (await redis.config_get("aclfile")).get("aclfile")
    except Exception:  # noqa: BLE001 - CONFIG may be denied on a managed Redis: then it persists users itself
        aclfile = None
    if aclfile:
        await redis.execute_command("ACL", "SAVE")
    else:
        warnings.append(
            "Redis has no ACL file: the users last until it restarts (run `baton init` again then)."
        )
    return warnings


def _flags(getuser: Any) -> list[bytes]:
    if isinstance(getuser, dict):
        return list(getuser.get(b"flags") or getuser.get("flags") or [])
    items = list(getuser)
    for i in range(0, len(items) - 1, 2):
        if items[i] in (b"flags", "flags"):
            return list(items[i + 1])
    return []


# --- MinIO ------------------------------------------------------------------------------------------

READ = ("s3:GetObject", "s3:GetObjectVersion")  # HEAD is GetObject; reading a version is GetObjectVersion
WRITE = ("s3:PutObject",)  # conditional writes (If-Match / If-None-Match) and copies need nothing more


def _objects(bucket: str, prefixes: Iterable[str]) -> list[str]:
    return [f"arn:aws:s3:::{bucket}/{p}*" for p in prefixes]


def _statement(actions: Iterable[str], resources: list[str], condition: dict | None = None) -> dict:
    statement: dict = {"Effect": "Allow", "Action": sorted(set(actions)), "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def _listing(bucket: str, prefixes: list[str]) -> dict:
    """ListBucket, limited to `prefixes` ([""] = the whole bucket)."""
    if "" in prefixes:
        return _statement(["s3:ListBucket"], [f"arn:aws:s3:::{bucket}"])
    condition = {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}}
    return _statement(["s3:ListBucket"], [f"arn:aws:s3:::{bucket}"], condition)


def s3_policy(
    service: str,
    bucket: str,
    *,
    publish_prefixes: Iterable[str] = (),
    mcp_read_prefixes: Iterable[str] = (),
    mcp_write_prefixes: Iterable[str] = (),
) -> dict | None:
    """The MinIO policy of one service on the workspace bucket; None: it gets no MinIO user."""
    _check(service)
    runs = "runs/"
    if service in NO_STORAGE:
        return None
    statements: list[dict]
    if service == "worker":  # reads its inputs and writes its outputs, both in the run's workspace
        statements = [_statement([*READ, *WRITE], _objects(bucket, [runs]))]
    elif service == "router":  # reads a request to classify it
        statements = [_statement(READ, _objects(bucket, [runs]))]
    elif service == "indexer":  # lists once at start-up, reads every text file
        statements = [_statement(READ, _objects(bucket, [""])), _listing(bucket, [""])]
    elif service == "supervisor":
        # Reads anything (inputs named anywhere in the bucket are adopted into the run, plans, verdicts,
        # responses); writes the run's workspace (adopted inputs, human requests) and trigger outputs.
        writes = [runs, *sorted({p for p in publish_prefixes if p and not p.startswith(runs)})]
        statements = [
            _statement(READ, _objects(bucket, [""])),
            _statement(WRITE, _objects(bucket, writes)),
            _listing(bucket, [""]),
        ]
    elif service == "mcp":
        reads = list(mcp_read_prefixes) or [""]
        # write_file's prefixes, submit_run's uploaded inputs, respond's answer files
        writes = [*mcp_write_prefixes, f"{runs}*/inputs/", f"{runs}*/human/responses/"]
        statements = [
            _statement(READ, _objects(bucket, reads)),
            _statement(WRITE, _objects(bucket, writes)),
            _listing(bucket, reads),
        ]
    elif service == "gateway":
        # reads the runs' outputs (and presigns them); writes uploaded inputs and people's answers
        statements = [
            _statement(READ, _objects(bucket, [runs])),
            _statement(WRITE, _objects(bucket, [f"{runs}*/inputs/", f"{runs}*/human/responses/"])),
        ]
    elif service == "console":
        # reads runs' files at exact versions (outputs, requests, inputs); writes what the CLI writes for a
        # run: uploaded inputs and people's answers
        statements = [
            _statement(READ, _objects(bucket, [runs])),
            _statement(WRITE, _objects(bucket, [f"{runs}*/inputs/", f"{runs}*/human/responses/"])),
        ]
    else:  # cli: a person's client reads and writes the workspace (submit, get, respond, drop a brief)
        statements = [_statement([*READ, *WRITE], _objects(bucket, [""])), _listing(bucket, [""])]
    return {"Version": "2012-10-17", "Statement": statements}


def minio_admin(endpoint_url: str, access_key: str, secret_key: str, region: str = ""):
    from minio import MinioAdmin
    from minio.credentials import StaticProvider

    parts = urlsplit(endpoint_url)
    return MinioAdmin(
        endpoint=parts.netloc,
        credentials=StaticProvider(access_key, secret_key),
        region=region,
        secure=parts.scheme == "https",
    )


def apply_minio(admin, policies: Mapping[str, dict | None], passwords: Mapping[str, str]) -> None:
    """Create or update each service's policy and user, and attach one to the other (idempotent)."""
    from minio.error import MinioAdminException

    for service, policy in policies.items():
        if policy is None:
            continue
        name = username(service)
        password = passwords[service]
        if len(password) < 8:
            raise ConfigError(f"the password of {service!r} is too short for MinIO (8 characters at least)")
        admin.policy_add(name, policy=policy)
        admin.user_add(name, password)
        try:
            admin.attach_policy([name], user=name)
        except MinioAdminException as exc:
            if "PolicyChangeAlreadyApplied" not in str(exc):
                raise


# --- applying and using ------------------------------------------------------------------------------


def publish_prefixes(workflows_path) -> list[str]:
    """The `publish_to` prefixes of the workflow file's triggers (the supervisor writes there)."""
    from .workflow import load_workflows

    workflows = load_workflows(workflows_path)
    return sorted({wf.trigger.publish_to for _name, wf in workflows.triggers() if wf.trigger.publish_to})


async def apply(settings, passwords: Mapping[str, str]) -> list[str]:
    """Create every user of `passwords` in Redis and MinIO with its rules; returns warnings."""
    import redis.asyncio as aioredis

    from .redisconn import all_nodes, cluster_parts, connect

    for service, password in passwords.items():
        _check(service)
        if not password:
            raise ConfigError(f"BATON_ACL_PASSWORDS: empty password for {service!r}")
    policies = {
        service: s3_policy(
            service,
            settings.bucket,
            publish_prefixes=publish_prefixes(settings.workflows) if service == "supervisor" else (),
            mcp_read_prefixes=settings.mcp_read_prefix_list,
            mcp_write_prefixes=settings.mcp_write_prefix_list,
        )
        for service in passwords
    }
    admin = minio_admin(
        settings.s3_endpoint_url, settings.s3_access_key, settings.s3_secret_key, settings.s3_region
    )
    await asyncio.to_thread(apply_minio, admin, policies, passwords)
    url = urlsplit(settings.redis_url)
    admin_password = (
        unquote(url.password) if url.password and (url.username or "default") == "default" else None
    )
    if settings.cluster:  # users are per node: every master and every replica gets them
        _seeds, auth = cluster_parts(settings.redis_url)
        admin_password = auth.get("password") if (auth.get("username") or "default") == "default" else None
        nodes = await all_nodes(settings.redis_url)
        warnings: list[str] = []
        for host, port in nodes:
            client = aioredis.Redis(host=host, port=port, **auth)
            try:
                for warning in await apply_redis(client, passwords, admin_password):
                    note = f"{warning} (node {host}:{port})"
                    warnings.append(note)
            finally:
                await client.aclose()
        return warnings
    client = connect(settings.redis_url)
    try:
        return await apply_redis(client, passwords, admin_password)
    finally:
        await client.aclose()


def with_user(redis_url: str, user: str, password: str) -> str:
    """`redis_url` logging in as `user` (whatever credentials it had are replaced)."""
    parts = urlsplit(redis_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def service_env(service: str, password: str, redis_url: str) -> dict[str, str]:
    """The environment that makes one service log in as its own users (REDIS_URL, S3 keys)."""
    _check(service)
    env = {"REDIS_URL": with_user(redis_url, username(service), password)}
    if service in NO_STORAGE:
        env.update(S3_ACCESS_KEY="", S3_SECRET_KEY="")
    else:
        env.update(S3_ACCESS_KEY=username(service), S3_SECRET_KEY=password)
    return env


def _check(service: str) -> None:
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r} for ACL users; known: {', '.join(SERVICES)}")
