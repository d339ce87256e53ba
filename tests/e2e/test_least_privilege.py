"""Least privilege, on the session's real Redis and MinIO: each service's own users (shared/acl.py) may do
what that service needs and nothing else. The services of the session stack run as these users, so the
rest of the suite shows they may do enough; here, that they may do no more."""

from __future__ import annotations

import contextlib
import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
from botocore.exceptions import ClientError, NoCredentialsError
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from baton import client
from baton.dev import settings_kwargs
from shared import acl, streams
from shared.broker import encode, errors_key
from shared.errors import AccessDeniedError
from shared.events import TaskProgress
from shared.redisconn import connect
from shared.settings import Settings
from shared.storage import Storage
from tests.conftest import PROBE, acl_refusals
from tests.helpers import post_webhook, wait_for_end

RESULTS = streams.results_stream(0)  # (one results partition: the default)

pytestmark = pytest.mark.e2e


def _settings(stack, service: str) -> Settings:
    return Settings(**settings_kwargs(stack.service_env(service)))


@contextlib.asynccontextmanager
async def _redis(stack, service: str):
    """A connection as `service`'s Redis user, named PROBE so that its refusals count as provoked."""
    r = aioredis.Redis.from_url(stack.credentials[service]["REDIS_URL"], client_name=PROBE)
    try:
        yield r
    finally:
        await r.aclose()


async def _refused(call) -> None:
    """`call` is refused by the ACL: NOPERM at the top level, or inside a script or a transaction."""
    with pytest.raises(ResponseError) as info:
        await call
    refused = isinstance(info.value, NoPermissionError) or "no permissions" in str(info.value).lower()
    assert refused, info.value


def _denied(exc: BaseException) -> bool:
    if isinstance(exc, NoCredentialsError | AccessDeniedError):  # (a write of bytes: through obstore)
        return True
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "403",
    )


async def _s3_denied(call) -> None:
    with pytest.raises((ClientError, NoCredentialsError, AccessDeniedError)) as info:
        await call
    assert _denied(info.value), info.value


def _key(prefix: str, suffix: str = ".md") -> str:
    return f"{prefix}lp-{uuid.uuid4().hex[:12]}{suffix}"


async def test_each_service_runs_as_its_own_users(stack, settings):
    assert set(stack.credentials) == set(acl.SERVICES)
    for service, creds in stack.credentials.items():
        assert creds["REDIS_URL"].startswith(f"redis://{acl.username(service)}:")
        expected = "" if service == "notifier" else acl.username(service)
        assert creds["S3_ACCESS_KEY"] == expected
    r = connect(settings.redis_url)
    try:
        users = {c["user"] for c in await r.client_list()}
    finally:
        await r.aclose()
    # (the notifier connects at its first webhook)
    assert {f"baton-{s}" for s in ("supervisor", "router", "worker")} <= users, users
    parts = urlsplit(settings.redis_url)
    if parts.password:  # the admin needs its password: a connection without one may do nothing
        bare = aioredis.Redis.from_url(urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])))
        try:
            with pytest.raises(RedisError, match="(?i)noauth|authenticat"):
                await bare.get(streams.run_state("x"))
        finally:
            await bare.aclose()


async def test_a_worker_reports_results_but_cannot_touch_the_supervisors_keys(stack):
    run_id = f"lp-{uuid.uuid4().hex[:12]}"
    progress = TaskProgress(run_id=run_id, task_id=f"{run_id}.0.x", agent="x", message="checking the ACL")
    async with _redis(stack, "worker") as r:
        assert await r.xadd(RESULTS, encode(progress))  # its one way to talk to the supervisor
        assert await r.exists(streams.run_cancelled(run_id)) == 0  # may see whether a run was cancelled
        await _refused(r.xadd(streams.RUNS, encode(progress)))
        await _refused(r.xadd(streams.ROUTE, encode(progress)))
        await _refused(r.xadd(streams.OBJECTS, encode(progress)))
        await _refused(r.hgetall(streams.run_state(run_id)))
        await _refused(r.hset(streams.run_state(run_id), "core", "{}"))
        await _refused(r.zadd(streams.TIMERS, {"x": 1}))
        await _refused(r.zrange(streams.TIMERS, 0, -1))
        await _refused(r.set(streams.run_cancelled(run_id), "1"))  # read only
        await _refused(r.zadd(streams.RUN_INDEX, {run_id: 1}))
        # nor read or steal others' messages, nor forge a task for another agent
        await _refused(r.xrange(RESULTS))
        await _refused(r.xreadgroup(streams.SUPERVISOR_GROUP, "thief", {RESULTS: ">"}, count=1))
        await _refused(r.xgroup_create(RESULTS, "thief", id="$"))
        await _refused(r.xrange(streams.DLQ))
        await _refused(r.hset(errors_key(RESULTS, streams.SUPERVISOR_GROUP), "1-0", "x"))
        # a script runs with the same rights
        script = "return redis.call('XADD', KEYS[1], '*', '__data__', ARGV[1])"
        await _refused(r.eval(script, 1, streams.RUNS, "{}"))
        await _refused(r.eval("return redis.call('SET', KEYS[1], 'x')", 1, RESULTS))
        # and nothing administrative
        await _refused(r.keys("*"))
        await _refused(r.flushall())
        await _refused(r.config_get("*"))
        await _refused(r.execute_command("ACL", "SETUSER", "baton-worker", "+@all"))
        await _refused(r.publish("anything", "x"))


async def test_a_worker_reads_and_writes_runs_only(stack, settings):
    run_key = _key("runs/lp-run/outputs/", ".txt")
    outside = _key("shared/")
    async with Storage.connect(settings) as admin:
        hidden = await admin.put(outside, b"not for workers")
    async with Storage.connect(_settings(stack, "worker")) as worker:
        ref = await worker.put(run_key, b"a worker's output", if_none_match=True)
        assert await worker.get(ref) == b"a worker's output"
        assert (await worker.head(run_key)).version_id == ref.version_id
        assert await worker.head("runs/lp-run/outputs/missing.txt") is None  # a 404, not a denial
        await _s3_denied(worker.get(hidden))
        await _s3_denied(worker.client.get_object(Bucket=settings.bucket, Key=_key("briefs/")))
        await _s3_denied(worker.put(_key("briefs/"), b"would start a run"))
        await _s3_denied(worker.put(_key("published/"), b"x"))
        await _s3_denied(worker.client.list_objects_v2(Bucket=settings.bucket))
        await _s3_denied(worker.client.list_objects_v2(Bucket=settings.bucket, Prefix="runs/"))
        await _s3_denied(worker.copy(hidden, _key("runs/lp-run/inputs/")))  # no reading through a copy
        await _s3_denied(worker.client.delete_object(Bucket=settings.bucket, Key=run_key))
        await _s3_denied(worker.client.get_bucket_notification_configuration(Bucket=settings.bucket))
        await _s3_denied(
            worker.client.put_bucket_versioning(
                Bucket=settings.bucket, VersioningConfiguration={"Status": "Suspended"}
            )
        )


async def test_the_notifier_has_no_storage_credentials_and_publishes_only(stack, settings):
    env = stack.service_env("notifier")
    assert env["S3_ACCESS_KEY"] == "" and env["S3_SECRET_KEY"] == ""
    async with Storage.connect(settings) as admin:
        ref = await admin.put(_key("shared/"), b"x")
    async with Storage.connect(_settings(stack, "notifier")) as notifier:
        await _s3_denied(notifier.get(ref))
        await _s3_denied(notifier.client.list_objects_v2(Bucket=settings.bucket))
    async with _redis(stack, "notifier") as r:
        await _refused(r.xrange(streams.OBJECTS))
        await _refused(r.xadd(streams.RUNS, {"__data__": "{}"}))
        await _refused(r.xadd(RESULTS, {"__data__": "{}"}))
        await _refused(r.hgetall(streams.run_state("x")))
        await _refused(r.get(streams.OBJECTS_SEEN_PREFIX + "x"))  # marks are set and deleted, never read


async def test_the_webhook_without_minios_token_is_refused_and_logged(stack, real_servers):
    url = f"http://127.0.0.1:{real_servers.notifier_port}/minio/events"
    (handle,) = [h for h in stack.procs if h.startswith("notifier-")]
    before = stack.log_path(handle).read_bytes().count(b"webhook_unauthorized")
    assert post_webhook(url, b'{"Records": []}', None) == 401
    assert post_webhook(url, b'{"Records": []}', "not-the-token") == 401
    assert post_webhook(url, b'{"Records": []}', real_servers.webhook_token) == 200
    assert stack.log_path(handle).read_bytes().count(b"webhook_unauthorized") == before + 2


async def test_the_mcp_server_writes_only_its_prefixes_run_inputs_and_responses(stack, settings):
    async with Storage.connect(_settings(stack, "mcp")) as mcp:
        for prefix in settings.mcp_write_prefix_list:
            ref = await mcp.put(_key(prefix), b"shared notes", if_none_match=True)
            assert await mcp.get(ref) == b"shared notes"
        await mcp.put(_key("runs/lp-mcp/inputs/"), b"an uploaded input", if_none_match=True)
        await _s3_denied(mcp.put(_key("outside/"), b"x"))
        await _s3_denied(mcp.put(_key("published/"), b"x"))
        await _s3_denied(mcp.put(_key("runs/lp-mcp/drafts/"), b"an agent's output"))
        await _s3_denied(mcp.client.delete_object(Bucket=settings.bucket, Key=_key("shared/")))
    async with _redis(stack, "mcp") as r:
        assert await r.hgetall(streams.run_state("lp-none")) == {}  # run_status
        await _refused(r.hset(streams.run_state("lp-none"), "core", "{}"))
        await _refused(r.xadd(streams.ROUTE, {"__data__": "{}"}))
        await _refused(r.xadd(RESULTS, {"__data__": "{}"}))
        await _refused(r.xrange(streams.DLQ))


async def test_the_a2a_gateway_writes_only_run_inputs_and_responses_and_reads_only_runs(stack, settings):
    async with Storage.connect(_settings(stack, "gateway")) as gateway:
        ref = await gateway.put(_key("runs/lp-gw/inputs/"), b"an uploaded input", if_none_match=True)
        assert await gateway.get(ref) == b"an uploaded input"
        await gateway.put(_key("runs/lp-gw/human/responses/"), b"{}", if_none_match=True)
        await _s3_denied(gateway.put(_key("runs/lp-gw/drafts/"), b"an agent's output"))
        await _s3_denied(gateway.put(_key("shared/"), b"x"))
        await _s3_denied(gateway.client.get_object(Bucket=settings.bucket, Key=_key("shared/")))
    async with _redis(stack, "gateway") as r:
        assert await r.hgetall(streams.run_state("lp-none")) == {}  # run status
        assert await r.xrevrange(streams.run_events("lp-none")) == []  # follow a run
        assert await r.xrange(streams.run_events("lp-none"), count=10) == []  # a task's run: its history
        assert await r.xread({streams.run_events("lp-none"): "0"}, block=1) == []  # ... then live
        assert await r.client_unblock(await r.client_id()) == 0  # its one live reader re-armed
        assert await r.hset(streams.a2a_starting("lp-wf"), "lp-task", "gw-1") == 1  # a task waiting its turn
        assert await r.hget(streams.a2a_starting("lp-wf"), "lp-task") == b"gw-1"  # still its own to start?
        assert await r.hgetall(streams.a2a_starting("lp-wf")) == {b"lp-task": b"gw-1"}  # (a restart)
        assert await r.hdel(streams.a2a_starting("lp-wf"), "lp-task") == 1
        assert await r.set(streams.a2a_gateway("gw-1"), "1", ex=30)  # its lease
        assert await r.exists(streams.a2a_gateway("gw-2")) == 0  # another's
        assert await r.delete(streams.a2a_gateway("gw-1")) == 1
        await _refused(r.sadd(streams.a2a_tasks("lp-wf"), "lp-task"))  # (only its own set)
        await _refused(r.client_kill_filter(_id=await r.client_id()))
        await _refused(r.hset(streams.run_state("lp-none"), "core", "{}"))
        await _refused(r.xadd(streams.ROUTE, {"__data__": "{}"}))
        await _refused(r.xadd(RESULTS, {"__data__": "{}"}))


async def test_the_console_reads_runs_and_writes_only_run_inputs_and_responses(stack, settings):
    async with Storage.connect(settings) as admin:
        hidden = await admin.put(_key("shared/"), b"not for the console")
    async with Storage.connect(_settings(stack, "console")) as console:
        ref = await console.put(_key("runs/lp-console/inputs/"), b"an uploaded input", if_none_match=True)
        assert await console.get(ref) == b"an uploaded input"
        await console.put(_key("runs/lp-console/human/responses/"), b"{}", if_none_match=True)
        await _s3_denied(console.put(_key("runs/lp-console/drafts/"), b"an agent's output"))
        await _s3_denied(console.put(_key("shared/"), b"x"))
        await _s3_denied(console.get(hidden))
        await _s3_denied(console.client.list_objects_v2(Bucket=settings.bucket))
        await _s3_denied(console.client.delete_object(Bucket=settings.bucket, Key=ref.key))
    async with _redis(stack, "console") as r:
        assert await r.hgetall(streams.run_state("lp-none")) == {}
        assert await r.hget(streams.run_state("lp-none"), "core") is None  # the runs list reads cores
        assert await r.xread({streams.run_events("lp-none"): "0"}, block=1) == []  # the live timeline
        assert isinstance(await r.zrevrange(streams.RUN_INDEX, 0, 9), list)
        assert isinstance(await r.zrevrange(streams.RUNS_WAITING, 0, 49), list)  # the inbox, a page
        assert isinstance(await r.xrevrange(streams.DLQ, count=1), list)
        assert isinstance(await r.xlen(streams.DLQ), int)  # "the newest 50 of N"
        await _refused(r.hset(streams.run_state("lp-none"), "core", "{}"))
        await _refused(r.xadd(streams.run_events("lp-none"), {"__data__": "{}"}))
        await _refused(r.xadd(RESULTS + "x", {"__data__": "{}"}))
        await _refused(r.zadd(streams.RUN_INDEX, {"x": 1}))
        await _refused(r.zrem(streams.RUNS_WAITING, "x"))
        await _refused(r.xreadgroup(streams.SUPERVISOR_GROUP, "thief", {streams.RUNS: ">"}, count=1))
        await _refused(r.keys("*"))
        await _refused(r.set(streams.run_cancelled("lp-none"), "1"))
        # its one live reader is re-armed by CLIENT UNBLOCK; no other CLIENT subcommand
        assert await r.client_unblock(await r.client_id()) == 0
        await _refused(r.client_kill_filter(_id=await r.client_id()))
        await _refused(r.client_list())


async def test_router_indexer_and_supervisor_are_limited_too(stack, settings):
    async with _redis(stack, "router") as r:
        await _refused(r.hgetall(streams.run_state("x")))
        await _refused(r.xadd(streams.RUNS, {"__data__": "{}"}))
        await _refused(r.zadd(streams.TIMERS, {"x": 1}))
    async with _redis(stack, "indexer") as r:
        await _refused(r.xadd(streams.OBJECTS, {"__data__": "{}"}))  # reads bucket changes, never makes them
        await _refused(r.xadd(streams.RUNS, {"__data__": "{}"}))
        await _refused(r.hgetall(streams.run_state("x")))
    async with _redis(stack, "supervisor") as r:
        await _refused(r.execute_command("ACL", "SETUSER", "baton-supervisor", "+@all"))
        await _refused(r.flushall())
        await _refused(r.config_set("appendonly", "no"))
        await _refused(r.keys("*"))
        await _refused(r.xack(streams.agent_stream("x"), "x", "0-1"))  # sends tasks, never takes them
    async with Storage.connect(settings) as admin:
        ref = await admin.put(_key("shared/"), b"x")
    async with Storage.connect(_settings(stack, "router")) as router:
        await _s3_denied(router.get(ref))
        await _s3_denied(router.put(_key("runs/lp-router/"), b"x"))
    async with Storage.connect(_settings(stack, "indexer")) as indexer:
        assert await indexer.get(ref) == b"x"  # it indexes every text file
        await _s3_denied(indexer.put(_key("shared/"), b"x"))
    async with Storage.connect(_settings(stack, "supervisor")) as supervisor:
        assert await supervisor.get(ref) == b"x"  # it adopts inputs from anywhere
        await _s3_denied(supervisor.put(_key("shared/"), b"x"))
        await _s3_denied(supervisor.client.delete_object(Bucket=settings.bucket, Key=ref.key))
        await _s3_denied(
            supervisor.client.put_bucket_notification_configuration(
                Bucket=settings.bucket, NotificationConfiguration={}
            )
        )


async def test_the_cli_user_runs_a_workflow_and_the_operator_commands(stack, tmp_path):
    cli = _settings(stack, "cli")
    brief = tmp_path / "brief.md"
    brief.write_text("# Least privilege\n\nEach service its own users.\n")
    run_id = await client.submit(cli, "content-factory", {"brief": brief})
    events = await wait_for_end(cli, run_id)
    assert events[-1].type == "run.completed", events[-1]
    assert await client.download(cli, run_id, tmp_path / "out")
    assert any(r["run_id"] == run_id for r in await client.list_runs(cli))
    assert (await client.run_status(cli, run_id))["status"] == "completed"
    await client.dlq_list(cli, 5)
    assert isinstance(await client.dlq_length(cli), int)
    assert isinstance(await client.trim(cli), dict)
    async with _redis(stack, "cli") as r:
        await _refused(r.hset(streams.run_state(run_id), "core", "{}"))
        await _refused(r.xreadgroup(streams.SUPERVISOR_GROUP, "thief", {streams.RUNS: ">"}, count=1))
        await _refused(r.zadd(streams.TIMERS, {"x": 1}))
        await _refused(r.flushall())
    async with Storage.connect(cli) as storage:
        await _s3_denied(storage.client.delete_object(Bucket=cli.bucket, Key=_key("shared/")))


async def test_no_service_was_refused_anything(stack):
    # The services' own refusals (not the ones provoked above) would mean a missing grant; some are only
    # logged as warnings (a heartbeat, a reclaim sweep), so Redis's record is checked.
    assert await acl_refusals(stack.env["REDIS_URL"]) == []


def test_the_rules_are_the_ones_redis_holds(stack, settings):
    import redis

    r = redis.Redis.from_url(settings.redis_url)
    try:
        for service in acl.SERVICES:
            user = r.acl_getuser(acl.username(service))
            assert user and user["enabled"], service
            assert user["keys"] == [] and "+@all" not in json.dumps(user["commands"]), (service, user)
    finally:
        r.close()
