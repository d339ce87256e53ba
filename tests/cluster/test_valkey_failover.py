"""Baton on a real Valkey cluster (3 masters + 3 replicas on loopback) while its nodes fail.

Run by `make test-cluster` (BATON_TEST_SERVERS=cluster): the session's services run on the cluster with
4 results partitions and BATON_REDIS_WAIT_REPLICAS=1. These tests change the cluster (a master is killed
and comes back as a replica; every node restarts), so they run after the pattern tests in that target.
Figures go to tests/artifacts/cluster/ for the README.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from baton import client
from shared import streams
from shared.broker import encode
from shared.events import RunSubmitted
from shared.redisconn import cluster_parts, connect

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "cluster"
ENDED = {"completed", "failed", "cancelled"}


def _save(name: str, figures: dict) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


async def _statuses(r, run_ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(run_ids), 500):
        chunk = run_ids[i : i + 500]
        async with r.pipeline(transaction=False) as pipe:
            for run_id in chunk:
                pipe.hget(streams.run_state(run_id), "core")
            raws = await pipe.execute()
        out.update({rid: json.loads(raw)["status"] for rid, raw in zip(chunk, raws, strict=True) if raw})
    return out


async def _submit(r, run_ids: list[str]) -> None:
    async with r.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.xadd(streams.RUNS, encode(RunSubmitted(run_id=run_id, workflow="relay")))
        await pipe.execute()


async def _until_ended(r, run_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            statuses = await _statuses(r, run_ids)
        except Exception:  # noqa: BLE001 - the cluster is failing over: ask again
            await asyncio.sleep(0.5)
            continue
        if len(statuses) == len(run_ids) and all(s in ENDED for s in statuses.values()):
            break
        await asyncio.sleep(0.5)
    return statuses


async def _why_stuck(r, statuses: dict[str, str], run_ids: list[str], partitions: int, show: int = 3) -> str:
    """For a failed assertion: a few runs that did not end (their state and last events), and every
    consumer group's pending count and lag, so a CI log says where the runs stopped."""
    stuck = [rid for rid in run_ids if statuses.get(rid) not in ENDED][:show]
    lines = []
    try:
        for run_id in stuck:
            state = await r.hgetall(streams.run_state(run_id))
            tail = await r.xrevrange(streams.run_events(run_id), count=3)
            fields = {k.decode(): v.decode()[:300] for k, v in state.items()}
            lines.append(f"{run_id}: state {fields}; last events {[f for _i, f in tail]}")
            done = await r.hgetall(streams.run_done(run_id, partitions))
            lines.append(f"  done-marks {done}")
            for name in (streams.agent_stream("noop"), streams.results_of(run_id, partitions)):
                found = [(i, f) for i, f in await r.xrange(name) if run_id.encode() in f[b"__data__"]]
                lines.append(f"  in {name}: {[(i, f[b'__data__'][-300:]) for i, f in found]}")
                found_ids = [i for i, _f in found]
                if found_ids:
                    group = "noop" if "agent" in name else streams.SUPERVISOR_GROUP
                    rows = await r.xpending_range(name, group, found_ids[0], found_ids[-1], 10)
                    lines.append(f"  pending there: {rows}")
        names = [streams.RUNS, streams.OBJECTS, *(streams.results_stream(p) for p in range(16))]
        async for key in r.scan_iter(match="baton:agent:*", _type="stream"):
            names.append(key.decode())
        for name in names:
            if not await r.exists(name):
                continue
            for group in await r.xinfo_groups(name):
                name_of = group["name"].decode()
                lines.append(f"{name} group {name_of}: pending {group['pending']}, lag {group.get('lag')}")
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        lines.append(f"(diagnostics cut short: {exc!r})")
    return "\n".join(lines)


def _count(statuses: dict[str, str], run_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run_id in run_ids:
        status = statuses.get(run_id, "never seen")
        counts[status] = counts.get(status, 0) + 1
    return counts


def _admin(local, index: int) -> aioredis.Redis:
    host, port = local.addresses[index]
    return aioredis.Redis(host=host, port=port, password=local.password, socket_timeout=5)


async def _role(local, index: int) -> tuple[str, str | None]:
    """(master|slave, the master's address for a replica)."""
    r = _admin(local, index)
    try:
        info = await r.info("replication")
    finally:
        await r.aclose()
    if info["role"] == "master":
        return "master", None
    return "slave", f"{info['master_host']}:{info['master_port']}"


async def _wait(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception as exc:  # noqa: BLE001 - a node still starting
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s (last error: {last})")


async def _replica_of(local, master: int) -> int:
    address = "{}:{}".format(*local.addresses[master])
    for i in range(len(local.nodes)):
        if i != master and i not in local.down and (await _role(local, i)) == ("slave", address):
            return i
    raise AssertionError(f"node {address} has no replica")


async def _healthy(local) -> bool:
    """Every node up, cluster_state ok on each, every replica's link to its master up."""
    for i in range(len(local.nodes)):
        r = _admin(local, i)
        try:
            state = (await r.execute_command("CLUSTER", "INFO")).decode()
            if "cluster_state:ok" not in state:
                return False
            info = await r.info("replication")
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        finally:
            await r.aclose()
    return True


@pytest.mark.timeout(600)
def _key_on(r, node, prefix: str) -> str:
    """A key whose slot `node` serves."""
    for i in range(100_000):
        key = f"{prefix}:{{{i}}}"
        if r.nodes_manager.get_node_from_slot(r.keyslot(key)).name == node.name:
            return key
    raise AssertionError("no key found on the node")


async def _probe(host: str, port: int, password: str, key: str, wait: bool, acked: list, stop) -> None:
    """Append to `key` on one master as fast as it answers, keeping the ids it acknowledged (with `wait`:
    only once WAIT 1 confirmed a replica has them), until the master dies or `stop` is set."""
    r = aioredis.Redis(host=host, port=port, password=password, socket_timeout=5)
    try:
        while not stop.is_set():
            async with r.pipeline(transaction=False) as pipe:
                for _ in range(20):
                    pipe.xadd(key, {"v": "x"})
                if wait:
                    pipe.execute_command("WAIT", 1, 2000)
                replies = await pipe.execute()
            if wait and replies[-1] < 1:
                continue  # not confirmed: not counted as acknowledged
            acked.extend(replies[:20])
    except Exception:  # noqa: BLE001 - the master died: the probe ends
        pass
    finally:
        await r.aclose()


@pytest.mark.timeout(600)
async def test_a_master_killed_during_a_burst_is_replaced_by_its_replica_and_every_run_ends(
    settings, stack, local_cluster
):
    r = connect(settings.redis_url)
    run_ids = [f"failover-{i}-{client.new_run_id()}" for i in range(1000)]
    try:
        await r.initialize()
        # the master that holds `baton:runs` (and the supervisor's group on it): the hottest one
        node = r.nodes_manager.get_node_from_slot(r.keyslot(streams.RUNS))
        victim = local_cluster.addresses.index((node.host, node.port))
        replica = await _replica_of(local_cluster, victim)
        # What asynchronous replication can lose: two probes append to the victim as fast as it answers,
        # one trusting its replies, one only after WAIT 1; after the failover, count what each lost.
        stop = asyncio.Event()
        acked: dict[bool, list] = {False: [], True: []}
        keys = {w: _key_on(r, node, f"probe-{'wait' if w else 'plain'}") for w in (False, True)}
        probes = [
            asyncio.create_task(
                _probe(node.host, node.port, local_cluster.password, keys[w], w, acked[w], stop)
            )
            for w in (False, True)
        ]
        started = time.monotonic()
        await _submit(r, run_ids)

        async def some_completed() -> bool:
            return sum(s == "completed" for s in (await _statuses(r, run_ids)).values()) >= 100

        await _wait(some_completed, "100 runs completed before the kill", 120)
        done_before = sum(s == "completed" for s in (await _statuses(r, run_ids)).values())
        local_cluster.kill(victim)
        killed_at = time.monotonic()

        async def promoted() -> bool:
            return (await _role(local_cluster, replica))[0] == "master"

        await _wait(promoted, f"replica node {replica} promoted", 60)
        promoted_after = time.monotonic() - killed_at
        stop.set()
        await asyncio.gather(*probes)
        lost = {}
        for w in (False, True):
            kept = {entry_id for entry_id, _f in await r.xrange(keys[w])}
            lost[w] = sum(1 for entry_id in acked[w] if entry_id not in kept)
        statuses = await _until_ended(r, run_ids, 240)
        ended_after = time.monotonic() - started
        ended = all(statuses.get(rid) in ENDED for rid in run_ids)
        partitions = int(stack.env["BATON_RESULT_PARTITIONS"])
        why = "" if ended else await _why_stuck(r, statuses, run_ids, partitions)
    finally:
        await r.aclose()
    counts = _count(statuses, run_ids)
    _save(
        "master-killed",
        {
            "runs": len(run_ids),
            "completed_before_kill": done_before,
            "promoted_after_s": round(promoted_after, 2),
            "all_ended_after_s": round(ended_after, 2),
            "statuses": counts,
            "wait_replicas": int(stack.env.get("BATON_REDIS_WAIT_REPLICAS", "0")),
            "probe_acked_lost": {
                "plain": [lost[False], len(acked[False])],
                "wait_1": [lost[True], len(acked[True])],
            },
        },
    )
    assert acked[True] and lost[True] == 0, f"WAIT 1 confirmed {len(acked[True])} appends; {lost[True]} lost"
    assert set(counts) <= ENDED, f"{counts}\n{why}"  # none still running, none never seen
    failed = {rid: s for rid, s in statuses.items() if s != "completed"}
    assert not failed, f"{len(failed)} runs did not complete: {counts}"

    # the killed master comes back as a replica of the node that took over
    local_cluster.restart(victim)
    address = "{}:{}".format(*local_cluster.addresses[replica])

    async def rejoined() -> bool:
        return await _role(local_cluster, victim) == ("slave", address) and await _healthy(local_cluster)

    await _wait(rejoined, "the old master rejoined as a replica", 60)


@pytest.mark.timeout(900)
async def test_a_rolling_restart_of_every_node_loses_no_run(settings, stack, local_cluster):
    """Each node in turn: a master hands over to its replica first (CLUSTER FAILOVER, no write lost),
    then the node is stopped, started again on its AOF and nodes.conf, and waited for until it is synced.
    Runs keep arriving throughout; every one completes."""
    for index in sorted(local_cluster.down):  # (one a failed test left killed: this test is about restarts)
        local_cluster.restart(index)
    await _wait(lambda: _healthy(local_cluster), "cluster healthy before the restart", 60)
    r = connect(settings.redis_url)
    run_ids: list[str] = []
    stop = asyncio.Event()

    async def feed() -> None:
        while not stop.is_set():
            wave = [f"rolling-{len(run_ids) + i}-{client.new_run_id()}" for i in range(20)]
            try:
                await _submit(r, wave)
                run_ids.extend(wave)
            except Exception:  # noqa: BLE001 - a submission refused mid-failover is not a run
                pass
            await asyncio.sleep(0.5)

    feeder = asyncio.create_task(feed())
    timings = []
    try:
        for index in range(len(local_cluster.nodes)):
            began = time.monotonic()
            if (await _role(local_cluster, index))[0] == "master":
                replica = await _replica_of(local_cluster, index)
                takeover = _admin(local_cluster, replica)
                try:
                    await takeover.execute_command("CLUSTER", "FAILOVER")
                finally:
                    await takeover.aclose()

                async def handed_over(replica=replica) -> bool:
                    return (await _role(local_cluster, replica))[0] == "master"

                await _wait(handed_over, f"node {replica} took over from node {index}", 60)
            local_cluster.nodes[index].stop()
            local_cluster.restart(index)
            await _wait(lambda: _healthy(local_cluster), f"node {index} back and synced", 90)
            timings.append(round(time.monotonic() - began, 2))
        stop.set()
        await feeder
        statuses = await _until_ended(r, run_ids, 180)
    finally:
        stop.set()
        await feeder
        await r.aclose()
    counts = _count(statuses, run_ids)
    _save("rolling-restart", {"runs": len(run_ids), "seconds_per_node": timings, "statuses": counts})
    assert len(run_ids) > 100, "runs must keep arriving during the restart"
    assert counts == {"completed": len(run_ids)}, counts


async def _command_calls(local, names: tuple[str, ...]) -> dict[str, int]:
    """Calls of each command (INFO commandstats) summed over the cluster's nodes that answer."""
    calls = dict.fromkeys(names, 0)
    for index in range(len(local.addresses)):
        if index in local.down:
            continue
        r = _admin(local, index)
        try:
            stats = await r.info("commandstats")
        finally:
            await r.aclose()
        for name in names:
            calls[name] += stats.get(f"cmdstat_{name}", {}).get("calls", 0)
    return calls


async def test_stream_reads_find_their_slot_without_asking_the_server(settings, stack, local_cluster):
    """redis-py's cluster client asks the server for an XREAD's or XREADGROUP's keys (COMMAND GETKEYS)
    twice per read. Baton's clients read them from the command: its own (`connect`: the batched
    consumers, the live reader, followers), FastStream's (the per-message consumers), and the services
    while runs go through them. No node is asked for a command's keys."""
    from faststream.redis import StreamSub

    from shared.broker import broker_class, broker_target

    names = ("command|getkeys", "xreadgroup", "xread")
    r = connect(settings.redis_url)
    stream = f"test:getkeys:{client.new_run_id()}"
    run_ids = [f"getkeys-{i}-{client.new_run_id()}" for i in range(20)]
    got: list[str] = []
    target, connection = broker_target(settings)
    broker = broker_class(settings)(target, **connection)

    sub = StreamSub(stream, group="g", consumer="c", max_records=10, polling_interval=100)

    @broker.subscriber(stream=sub)
    async def handle(body: str) -> None:
        got.append(body)

    async def all_five() -> bool:
        return len(got) == 5

    try:
        before = await _command_calls(local_cluster, names)
        await _submit(r, run_ids)
        statuses = await _until_ended(r, run_ids, 60)
        await r.xadd(stream, {"x": "1"})
        await r.xread({stream: "0"}, count=10)  # (the live reader's and the followers' client)
        await r.xgroup_create(stream, "g2", id="0")
        await r.xreadgroup("g2", "c", {stream: ">"}, count=10)
        async with broker:
            await broker.start()
            for i in range(5):
                await broker.publish(str(i), stream=stream)
            await _wait(all_five, "FastStream's consumer got all 5", 30)
        after = await _command_calls(local_cluster, names)
    finally:
        await r.delete(stream)
        await r.aclose()
    assert _count(statuses, run_ids) == {"completed": len(run_ids)}
    grew = {name: after[name] - before[name] for name in names}
    assert grew["xreadgroup"] > len(run_ids) and grew["xread"] >= 1, grew  # (they did read, on the cluster)
    assert grew["command|getkeys"] == 0, grew


async def test_a_bad_cluster_url_fails_at_start_naming_the_node(real_servers, local_cluster, tmp_path):
    """A plain server given as a cluster, a node that never answers: each a clear error before any
    consumer starts (shared.redisconn.verify, called by every service at start-up)."""
    from baton import servers
    from shared.errors import ConfigError
    from shared.redisconn import as_cluster_url, verify

    plain = servers.start_redis(tmp_path / "plain", password="pw")
    try:
        port = plain.extra["port"]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} is a plain server"):
            await verify(as_cluster_url(f"redis://default:pw@127.0.0.1:{port}"))
    finally:
        plain.stop()
    dead = servers.free_port()
    with pytest.raises(ConfigError, match=f"127.0.0.1:{dead} is unreachable"):
        await verify(as_cluster_url(f"redis://127.0.0.1:{dead}"))
    from baton.cluster import _start_node

    lone = _start_node(tmp_path / "unformed", None, "pw", appendonly=False)  # cluster mode, no slots yet
    try:
        port = lone.extra["port"]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} reports 0 of 16384 slots assigned"):
            await verify(as_cluster_url(f"redis://default:pw@127.0.0.1:{port}"))
    finally:
        lone.stop()
    _seeds, auth = cluster_parts(as_cluster_url(local_cluster.url))
    with pytest.raises(ConfigError, match="refused the credentials"):
        await verify(as_cluster_url(local_cluster.url.replace(auth["password"], "wrong")))


@pytest.mark.timeout(300)
def test_dev_up_cluster_runs_the_services_on_a_cluster_and_dev_down_stops_every_node(tmp_path):
    """`baton dev up --cluster`: 6 Valkey nodes formed into a cluster, every service on it unchanged; a
    content-factory run completes from the CLI; `baton dev down` stops every process it started."""
    import os
    import subprocess
    import sys

    from baton import servers as baton_servers

    root = Path(__file__).resolve().parent.parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    for name in ("REDIS_URL", "S3_ENDPOINT_URL", "BATON_TEST_SERVERS"):
        env.pop(name, None)
    baton = [sys.executable, "-m", "baton.cli"]
    up = subprocess.run(
        [*baton, "dev", "up", "--cluster", "--workflows", str(root / "examples" / "workflows.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    state = tmp_path / ".baton" / "dev" / "state.json"
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines() if "=" in line
        )
        assert exports["REDIS_URL"].startswith("redis-cluster://baton-cli:")
        assert len(exports["REDIS_URL"].rsplit("@", 1)[1].split(",")) == 6
        pids = json.loads(state.read_text())["pids"]
        assert sum(h.startswith("redis-") for h in pids) == 6
        run = subprocess.run(
            [
                *baton,
                "submit",
                "content-factory",
                "--input",
                f"brief={root / 'examples' / 'briefs' / 'topic.md'}",
                "--wait",
            ],
            cwd=tmp_path,
            env={**env, **exports},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0 and "run completed" in run.stdout + run.stderr, run.stderr[-3000:]
    finally:
        pids = json.loads(state.read_text())["pids"] if state.exists() else {}
        down = subprocess.run([*baton, "dev", "down"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert pids and not [h for h, pid in pids.items() if baton_servers._alive(pid)]


async def test_the_consoles_live_pages_follow_runs_in_different_slots(settings, stack, local_cluster):
    """On a cluster the console's hub reads each hash slot apart (one XREAD cannot span slots): three
    pages on three runs each get their own run's events, every one once, in order."""
    import re

    import structlog

    from services.console import live
    from tests.helpers import wait_for_end

    control = connect(settings.redis_url)
    hub = live.Hub(settings.redis_url, control, structlog.get_logger())
    hub.start()
    try:
        run_ids = [client.new_run_id() for _ in range(3)]
        assert len({r.keyslot(streams.run_events(x)) for r in [control] for x in run_ids}) == 3

        async def page(run_id: str) -> str:
            return "".join([chunk async for chunk in hub.sse(run_id)])

        pages = [asyncio.create_task(page(run_id)) for run_id in run_ids]
        await asyncio.sleep(0.5)  # the pages are open before their runs start
        await _submit(control, run_ids)
        texts = await asyncio.wait_for(asyncio.gather(*pages), 60)
        for run_id, text in zip(run_ids, texts, strict=True):
            events = await wait_for_end(settings, run_id)
            assert events[-1].type == "run.completed"
            entries = [e.decode() for e, _ in await control.xrange(streams.run_events(run_id))]
            assert re.findall(r"^id: (\S+)$", text, re.M) == entries
    finally:
        await hub.close()
        await control.aclose()
