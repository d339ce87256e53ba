"""Resharding: a slot migrated from one master to another while Baton writes to it.

During a migration the old master answers ASK for a key it no longer has (a new one included): the client
must send it to the node ASK names, after ASKING. The outbox (every write of the supervisor, the batched
workers, the router and the notifier) follows it at once; then, once the slot has moved, MOVED. The slot
ends up on the other master, as after a real `valkey-cli --cluster reshard`.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from shared.batch import Outbox
from shared.events import TaskProgress
from shared.redisconn import as_cluster_url, connect

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def _event(n: int) -> TaskProgress:
    return TaskProgress(
        run_id="reshard", task_id="reshard.0", agent="test", message=f"entry {n}", sender="test"
    )


async def test_the_outbox_follows_a_slot_while_it_migrates_and_after(local_cluster):
    password = local_cluster.password
    seeds = local_cluster.addresses
    tag = f"reshard-{uuid.uuid4().hex[:8]}"
    old_key, new_key = f"{{{tag}}}:old", f"{{{tag}}}:new"  # one slot
    with redis.RedisCluster(host=seeds[0][0], port=seeds[0][1], password=password) as rc:
        slot = rc.keyslot(old_key)
        source = rc.nodes_manager.get_node_from_slot(slot)
        masters = rc.get_primaries()
        target = next(n for n in masters if n.name != source.name)

    def node(n) -> redis.Redis:
        return redis.Redis(host=n.host, port=n.port, password=password)

    def finish_migration(src: redis.Redis, dst: redis.Redis, dst_id: str) -> None:
        """Every key of the slot to the target, then the slot (target, source, then the other masters)."""
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command(
                "MIGRATE", target.host, target.port, "", 0, 5000, "AUTH", password, "KEYS", *keys
            )
        for n in (target, source, *(m for m in masters if m.name not in (target.name, source.name))):
            with node(n) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    with node(source) as src, node(target) as dst:
        src_id = src.execute_command("CLUSTER", "MYID").decode()
        dst_id = dst.execute_command("CLUSTER", "MYID").decode()
        # keys earlier tests left in the same slot (a random tag's slot is not always empty: CI once had 2)
        others = src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        src.xadd(old_key, {"__data__": b"before"})
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        client = connect(as_cluster_url(local_cluster.url), socket_timeout=None)
        outbox = Outbox(client)
        finished = False
        try:
            # The slot is migrating: the old key is still on the source, the new one goes to the target
            ids = [await outbox.send(new_key, _event(1)), await outbox.send(old_key, _event(2))]
            assert all(isinstance(i, bytes) for i in ids), ids
            # (the source answers ASK for a key it does not have: of the two, it counts only the old one)
            assert src.exists(old_key)
            assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == others + 1
            with dst.pipeline(transaction=False) as pipe:
                pipe.execute_command("ASKING")
                pipe.xlen(new_key)
                assert pipe.execute()[1] == 1

            finish_migration(src, dst, dst_id)  # MOVED from now on
            finished = True
            await outbox.send(old_key, _event(3))
            assert dst.xlen(old_key) == 3 and dst.xlen(new_key) == 1
            assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        finally:
            await outbox.drain()
            await client.aclose()
            if not finished:  # (a failed test still leaves the cluster with one owner for the slot)
                finish_migration(src, dst, dst_id)
