"""`InOrder`: one key's calls one at a time, in the order they were made."""

import asyncio

from shared.batch import InOrder


async def test_one_keys_calls_run_one_at_a_time_in_order_while_other_keys_go_on():
    in_order, seen = InOrder(), []

    async def call(key, i, pause):
        async def body():
            seen.append((key, i, "in"))
            await asyncio.sleep(pause)
            seen.append((key, i, "out"))

        await in_order.run(key, body)

    await asyncio.gather(call("a", 1, 0.03), call("a", 2, 0.0), call("b", 1, 0.0), call("a", 3, 0.0))
    a = [s for s in seen if s[0] == "a"]
    assert a == [("a", i, step) for i in (1, 2, 3) for step in ("in", "out")]
    assert seen.index(("b", 1, "out")) < seen.index(("a", 1, "out"))  # b did not wait for a
    assert not in_order._locks  # (nothing left behind per key)


async def test_a_cancelled_call_lets_the_next_one_run():
    in_order, seen = InOrder(), []

    async def stuck():
        await asyncio.sleep(10)

    async def after():
        seen.append("after")

    first = asyncio.create_task(in_order.run("k", stuck))
    second = asyncio.create_task(in_order.run("k", after))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.wait_for(second, 1)
    assert seen == ["after"] and not in_order._locks
