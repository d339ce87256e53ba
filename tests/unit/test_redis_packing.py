"""`shared.redisconn.pack_wide`: a wide command packed in C is the same bytes redis-py would send."""

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from shared import streams
from shared.redisconn import WIDE, pack_wide, stream_read_keys


def connections():
    plain = aioredis.Redis.from_url("redis://localhost:1/0")
    wide = pack_wide(aioredis.Redis.from_url("redis://localhost:1/0"))
    pools = (plain.connection_pool, wide.connection_pool)
    return tuple(pool.connection_class(**pool.connection_kwargs) for pool in pools)


def test_a_wide_command_is_packed_in_c_to_the_same_bytes():
    plain, wide = connections()
    keys = [f"baton:{{r-{i}}}:events" for i in range(200)]
    command = ("XREAD", "COUNT", 500, "BLOCK", 15000, "STREAMS", *keys, *(["1700000000000-0"] * 200))
    assert type(wide).pack_command is not type(plain).pack_command
    assert b"".join(wide.pack_command(*command)) == b"".join(plain.pack_command(*command))
    assert len(wide.pack_command(*command)) == 1  # (hiredis: one buffer; redis-py: one per few args)
    multi = ("CLIENT LIST", *["x"] * WIDE)  # a two-word command is split as redis-py splits it
    assert b"".join(wide.pack_command(*multi)) == b"".join(plain.pack_command(*multi))


def test_an_argument_hiredis_refuses_gets_redis_pys_own_error():
    _plain, wide = connections()
    with pytest.raises(DataError, match="Invalid input of type: 'NoneType'"):
        wide.pack_command("HMGET", "k", *["f"] * WIDE, None)


def test_pack_wide_twice_changes_nothing_more():
    client = pack_wide(aioredis.Redis.from_url("redis://localhost:1/0"))
    cls = client.connection_pool.connection_class
    assert pack_wide(client).connection_pool.connection_class is cls


@pytest.mark.parametrize("value", ["1733050000000-0", "1733050000000", "0-0", "12-345"])
def test_a_stream_entry_id_is_digits_with_an_optional_sequence(value):
    assert streams.is_entry_id(value)


@pytest.mark.parametrize(
    "value", ["", "-", "1-", "-1", "1-2-3", "abc", "1733050000000-x", "²", "1 ", "+", "$"]
)
def test_anything_else_is_not_a_stream_entry_id(value):
    assert not streams.is_entry_id(value)


@pytest.mark.parametrize(
    ("command", "args", "keys"),
    [
        ("XREAD", ("STREAMS", "a", "0"), ["a"]),
        ("xread", (b"COUNT", 10, b"BLOCK", 5000, b"STREAMS", b"a", b"b", b"0", b"$"), [b"a", b"b"]),
        ("XREADGROUP", ("GROUP", "streams", "c", "NOACK", "STREAMS", "s{x}", ">"), ["s{x}"]),
        ("XREADGROUP", ("GROUP", "g", "c", "COUNT", 1, "CLAIM", 100, "STREAMS", "k", ">"), ["k"]),
        (b"XREADGROUP", (b"GROUP", b"g", b"c", b"BLOCK", 0, b"streams", b"k", b">"), [b"k"]),
        ("XREAD", ("STREAMS", "a", "b", "0"), None),  # (odd: the server says what is wrong)
        ("XREAD", ("FUTURE", 1, "STREAMS", "a", "0"), None),  # (an option not known here: ask)
        ("XREAD", ("COUNT", 1), None),
        ("GET", ("STREAMS",), None),
    ],
)
def test_a_stream_reads_keys_are_read_from_the_command(command, args, keys):
    """A group named `streams` is not taken for the keyword; what is not understood is left to the server."""
    assert stream_read_keys(command, args) == keys
