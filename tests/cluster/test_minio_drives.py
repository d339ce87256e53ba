"""Runs on an erasure-coded MinIO (one process, 4 drives, EC:2, as `baton dev up --cluster` starts it):
they complete, keep completing after a drive is destroyed mid-run, and a replaced drive is healed.

Its own Redis, MinIO and services (tests/stacks.py): the session's MinIO keeps all its drives. In the
cluster suite (`make test-cluster`, CI) with the MinIO nodes' tests: about 40 s, too long for the default.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from pathlib import Path

import pytest

from services.supervisor.runs import trigger_run_id
from tests.helpers import s3_client, wait_for_end
from tests.stacks import BRIEF, burst, own_servers_and_stack, stack_settings

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
RUNS = 8


@pytest.fixture(scope="module")
def erasure(tmp_path_factory):
    with own_servers_and_stack(tmp_path_factory.mktemp("erasure"), drives=4) as (minio, stack):
        yield minio, stack_settings(stack)


def object_meta(drive: str, bucket: str, key: str) -> Path:
    """Where MinIO keeps one object's metadata (and, for a small object, its data) on one drive."""
    return Path(drive) / bucket / key / "xl.meta"


def lose(drive: Path) -> None:
    """Destroy a drive for good: a file where its folder was, which MinIO cannot recreate (it recreates a
    removed folder on the next write) and where every read and write fails, as on a dead disk."""
    gone = drive.with_name(f"{drive.name}-lost")
    drive.rename(gone)  # at once: MinIO may be writing into it (rmtree races with those writes)
    drive.write_text("lost")
    shutil.rmtree(gone, ignore_errors=True)


async def test_runs_complete_on_four_drives_and_keep_completing_after_one_is_lost(erasure):
    minio, settings = erasure
    drives = [Path(d) for d in minio.extra["drives"]]
    assert len(drives) == 4
    whole = await burst(settings, RUNS)
    assert whole.completed == RUNS, whole.ends
    published = f"runs/{whole.run_ids[0]}/published/topic.md"
    assert all(object_meta(d, settings.bucket, published).exists() for d in drives), "one part per drive"

    async def lose_drive_two():
        await asyncio.sleep(0.3)  # the first stages are reading and writing
        lose(drives[1])

    during = await burst(settings, RUNS, during=lose_drive_two)
    assert during.completed == RUNS, during.ends
    after = await burst(settings, RUNS)
    assert after.completed == RUNS, after.ends
    written = f"runs/{after.run_ids[-1]}/published/topic.md"
    assert [object_meta(d, settings.bucket, written).exists() for d in drives] == [True, False, True, True]
    print(f"\n{RUNS} content-factory runs on 4 drives: {whole.seconds:.2f}s; a drive lost mid-burst: "
          f"{during.seconds:.2f}s; on the 3 left: {after.seconds:.2f}s")

    # Bucket notifications still reach the notifier: a brief dropped into briefs/ starts its run.
    name = f"briefs/lost-drive-{secrets.token_hex(4)}.md"
    put = s3_client(settings).put_object(Bucket=settings.bucket, Key=name, Body=BRIEF.read_bytes())
    events = await wait_for_end(settings, trigger_run_id(settings.bucket, name, put["VersionId"]), 60)
    assert events[-1].type == "run.completed", events[-1]

    # A new empty drive in the lost one's place: MinIO formats it and heals onto it what it missed.
    drives[1].unlink()
    drives[1].mkdir()
    deadline = time.monotonic() + 120
    while not object_meta(drives[1], settings.bucket, written).exists():
        assert time.monotonic() < deadline, f"drive {drives[1]} not healed in 120s"
        await asyncio.sleep(1)
    assert (drives[1] / ".minio.sys" / "format.json").exists()
    healed = await burst(settings, RUNS)
    assert healed.completed == RUNS, healed.ends
