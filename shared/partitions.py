"""The results partition count every service that reads or writes outcomes must share
(`BATON_RESULT_PARTITIONS`), recorded once per deployment in `baton:settings`."""

from __future__ import annotations

from shared import streams
from shared.errors import ConfigError
from shared.settings import Settings


async def agree_on_partitions(redis, settings: Settings) -> None:
    """Refuse to start with another `BATON_RESULT_PARTITIONS` than the deployment's. A worker with another
    count would send outcomes where no supervisor reads them (or mark them done under other keys), and
    its runs would stall without a word. The count is recorded in `baton:settings` by `baton init`, or
    else by the first such service to start."""
    mine = str(settings.result_partitions)
    await redis.hsetnx(streams.SETTINGS, "result_partitions", mine)
    theirs = await redis.hget(streams.SETTINGS, "result_partitions")
    theirs = theirs.decode() if isinstance(theirs, bytes) else theirs
    if theirs != mine:
        raise ConfigError(
            f"BATON_RESULT_PARTITIONS is {mine} here, but this deployment's services use {theirs} (recorded "
            f"in {streams.SETTINGS}): every service that reads or writes outcomes must use the same count. "
            "To change it, stop every service with no run in flight and run `baton init` with the new value."
        )


async def record_partitions(redis, settings: Settings) -> None:
    """`baton init`: this count is the deployment's from now on (services check it as they start)."""
    await redis.hset(streams.SETTINGS, "result_partitions", str(settings.result_partitions))
