"""The `baton` command as a person or script uses it, the plain-XADD wire format, conditional writes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from shared import streams
from shared.errors import (
    ObjectMissingError,
    ObjectTooLargeError,
    PreconditionFailedError,
    StoreUnavailableError,
    is_transient,
)
from shared.redisconn import connect
from shared.storage import Storage
from tests.helpers import cli_env, wait_for_end

ROOT = Path(__file__).resolve().parents[2]
BRIEF = ROOT / "examples" / "briefs" / "topic.md"
pytestmark = pytest.mark.e2e


def baton(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_submit_wait_json_then_get_downloads_the_outputs(settings, tmp_path):
    done = baton(settings, "submit", "content-factory", "--input", f"brief={BRIEF}", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert result["outputs"]["article"].startswith(
        f"s3://baton/runs/{result['run_id']}/published/topic.md?versionId="
    )
    got = baton(settings, "get", result["run_id"], "--out", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "topic.md").read_text().startswith("---\ntitle: Event-driven agent teams")
    watched = baton(settings, "watch", result["run_id"])
    assert watched.returncode == 0
    assert "seo completed" in watched.stderr and "run completed" in watched.stderr


SUBMIT_AND_MEASURE = """
import asyncio, json, resource, sys
from pathlib import Path
from baton import client
from shared.settings import Settings
run_id = asyncio.run(client.submit(Settings(), "trespass", {"big": Path(sys.argv[1])}))
print(json.dumps({"run_id": run_id, "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


async def _submit_and_measure(settings, path: Path) -> dict:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SUBMIT_AND_MEASURE, str(path)],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_a_large_input_is_sent_from_disk_not_read_whole(settings, tmp_path):
    """`baton submit` sends each input a chunk at a time: the process' peak memory with a 512 MiB input is
    within 64 MiB of its peak with a 1 KiB one (it read the whole file into memory before). Measured against
    the small one, as a process' baseline differs between machines (184 MB here, 276 MB on CI's)."""
    size = 512 * 2**20
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"x" * 1024)
    with big.open("wb") as f:
        f.truncate(size)
    baseline = await _submit_and_measure(settings, small)
    result = await _submit_and_measure(settings, big)
    async with Storage.connect(settings) as storage:
        stored = await storage.head(f"runs/{result['run_id']}/inputs/big.bin")
    assert stored is not None and stored.size == size
    grew = (result["max_rss_kb"] - baseline["max_rss_kb"]) * 1024
    assert grew < 64 * 2**20, f"peak memory {grew:,} bytes over a 1 KiB submit's ({baseline}, {result})"


async def test_an_agent_streams_a_large_input_and_writes_a_large_output_from_a_file(settings, tmp_path):
    """`ctx.open` reads an input a chunk at a time and `ctx.write` sends a file from disk: 256 MiB goes
    through the agent (tests.agents:stream_copy) byte for byte, its worker's peak memory growing by far
    less than that."""
    import hashlib

    from tests.helpers import run

    size = 256 * 2**20
    block = os.urandom(2**20)
    data = tmp_path / "data.bin"
    digest = hashlib.sha256()
    with data.open("wb") as f:
        for i in range(size // len(block)):
            chunk = block[i % 7 :] + block[: i % 7]  # (no two blocks alike)
            digest.update(chunk)
            f.write(chunk)
    _run_id, events = await run(settings, "stream-copy", {"data": data}, timeout=180)
    assert events[-1].type == "run.completed", events[-1]
    outputs = events[-1].outputs
    assert outputs["copy"].size == size
    async with Storage.connect(settings) as storage:
        report = json.loads(await storage.get(outputs["report"]))
    assert report["sha256"] == digest.hexdigest()
    assert report["peak_growth_kb"] * 1024 < size / 2, report


async def test_the_start_of_an_object_is_read_alone_and_a_copy_never_holds_it_whole(settings):
    """`get_start` reads an exact version's first bytes (all of a shorter one, none of an empty one);
    `copy_new` of 64 MiB allocates a fraction of it in this process (tracemalloc) and copies it exactly."""
    import tracemalloc

    from shared.storage import COPY_IN_MEMORY

    async with Storage.connect(settings) as storage:
        small = await storage.put("runs/start/inputs/small.txt", b"0123456789")
        assert await storage.get_start(small, 4) == b"0123"
        assert await storage.get_start(small, 1000) == b"0123456789"
        empty = await storage.put("runs/start/inputs/empty.txt", b"")
        assert await storage.get_start(empty, 4) == b""
        newer = await storage.put("runs/start/inputs/small.txt", b"abcdefghij")
        assert await storage.get_start(small, 4) == b"0123"  # (the version asked for, not the newest)
        assert await storage.get_start(newer, 4) == b"abcd"

        big = await storage.put("runs/start/work/big.bin", os.urandom(2**20) * 64)
        tracemalloc.start()
        try:
            copied = await storage.copy_new(big, "runs/start/published/big.bin")
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert copied.size == big.size and copied.etag == big.etag  # (one PUT each: the MD5 of the bytes)
        assert peak < COPY_IN_MEMORY + 16 * 2**20, f"{peak:,} bytes at peak"
        again = await storage.copy_new(big, "runs/start/published/big.bin")
        assert again.version_id == copied.version_id  # (create-only: no second version)


async def test_a_write_past_what_one_put_takes_is_refused_before_a_byte_is_sent(settings, tmp_path):
    from shared.storage import MAX_PUT

    huge = tmp_path / "huge.bin"
    with huge.open("wb") as f:
        f.truncate(MAX_PUT + 1)  # (sparse: nothing is written to disk)
    async with Storage.connect(settings) as storage:
        with huge.open("rb") as body, pytest.raises(ObjectTooLargeError, match=r"5,368,709,121 bytes is"):
            await storage.put("runs/too-big/inputs/huge.bin", body, if_none_match=True)
        assert await storage.head("runs/too-big/inputs/huge.bin") is None


def test_submit_exits_non_zero_when_the_run_fails(settings):
    done = baton(settings, "submit", "trespass", "--wait", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "failed"


def test_bad_cli_input_is_a_clear_error(settings):
    done = baton(settings, "submit", "content-factory", "--input", "brief")
    assert done.returncode != 0 and "expected NAME=LOCAL_PATH" in done.stderr
    done = baton(settings, "submit", "content-factory", "--input", "brief=/no/such/file.md")
    assert done.returncode != 0 and "no such file" in done.stderr


async def test_dlq_replay_all_of_one_stream_reports_progress_and_a_summary(settings):
    import uuid

    from shared.broker import encode
    from shared.events import DeadLetter, TaskAssigned

    target = f"baton:agent:cli-dlq-{uuid.uuid4().hex[:8]}"
    task = TaskAssigned(run_id="r-cli-dlq", task_id="t1", workflow="w", agent="x", output_prefix="runs/x/")
    good = DeadLetter(stream=target, service="test", reason="was failing", raw=task.model_dump_json())
    bad = DeadLetter(stream=target, service="test", reason="bad", raw="{not json")
    r = connect(settings.redis_url)
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(600):
            pipe.xadd(streams.DLQ, encode(bad if i % 8 == 0 else good))
        ids = [i.decode() for i in await pipe.execute()]
        done = baton(settings, "dlq", "replay", "--all", "--stream", target)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 600 and {line.split(":")[0] for line in lines} == set(ids)
        assert "(500 handled, 437 replayed;" in done.stderr  # progress, every page
        assert "(replayed 525 dead letters, kept 75)" in done.stderr
        assert await r.xlen(target) == 525
        again = baton(settings, "dlq", "replay", "--all", "--stream", target)
        assert again.stdout.count(": kept: still invalid") == 75
        assert "(replayed 0 dead letters, kept 75)" in again.stderr
        kept = ids[::8]  # the 75 still invalid, now the newest letters
        page = baton(settings, "dlq", "list", "--count", "50")
        assert [line.split()[0] for line in page.stdout.splitlines()] == list(reversed(kept))[:50]
        assert "dead letters in all; older ones: --before " in page.stderr
        older = page.stderr.split("--before ")[1].split(")")[0]
        nxt = baton(settings, "dlq", "list", "--count", "50", "--before", older)
        assert [line.split()[0] for line in nxt.stdout.splitlines()][:25] == list(reversed(kept))[50:]
        bad = baton(settings, "dlq", "list", "--before", "yesterday")
        assert bad.returncode != 0 and "is not a stream entry id" in bad.stderr
        wrong = baton(settings, "dlq", "replay", ids[0], "--all")
        assert wrong.returncode != 0 and "not both" in wrong.stderr
        wrong = baton(settings, "dlq", "replay", "--stream", target)
        assert wrong.returncode != 0 and "--stream needs --all" in wrong.stderr
    finally:
        await r.delete(target)
        await r.xdel(streams.DLQ, *ids)
        await r.aclose()


async def test_a_run_submitted_with_a_plain_xadd_completes(settings):
    """The documented wire format, written by hand as another language would."""
    async with Storage.connect(settings) as storage:
        ref = await storage.put("incoming/plain.md", BRIEF.read_bytes(), content_type="text/markdown")
    run_id = f"r-plain-xadd-{ref.version_id[:8]}"
    payload = (
        '{"type": "run.submitted", "run_id": "RUN", "workflow": "content-factory", '
        '"inputs": {"brief": {"bucket": "BUCKET", "key": "incoming/plain.md", "version_id": "VERSION"}}}'
    )
    payload = (
        payload.replace("RUN", run_id).replace("BUCKET", settings.bucket).replace("VERSION", ref.version_id)
    )
    r = connect(settings.redis_url)
    try:
        await r.xadd(streams.RUNS, {"__data__": payload})
    finally:
        await r.aclose()
    events = await wait_for_end(settings, run_id)
    assert events[-1].type == "run.completed", events[-1]
    assert events[-1].outputs["article"].key.endswith("/published/plain.md")


# A body in memory is written through obstore, a file through aiobotocore (shared/storage.py): both
# must keep the same promises.
BODIES = {"in memory": lambda data: data, "from a file": io.BytesIO}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_conditional_writes_refuse_stale_and_existing_objects(settings, body):
    key = f"runs/r-cond-{uuid.uuid4().hex[:8]}/doc.md"
    async with Storage.connect(settings) as storage:
        first = await storage.put(key, body(b"one"), if_none_match=True)
        with pytest.raises(PreconditionFailedError, match="already exists"):
            await storage.put(key, body(b"again"), if_none_match=True)
        second = await storage.put(key, body(b"two"), if_match=first.etag)
        with pytest.raises(PreconditionFailedError, match="changed since etag"):
            await storage.put(key, body(b"lost update"), if_match=first.etag)
        assert await storage.get(second) == b"two"
        assert await storage.get(first) == b"one"  # versioned: the old version is still readable
        assert first.version_id and second.version_id and first.version_id != second.version_id
        assert (await storage.head(key)) == second


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_a_write_keeps_its_content_type_and_metadata(settings, body):
    key = f"runs/r-meta-{uuid.uuid4().hex[:8]}/notes.md"
    async with Storage.connect(settings) as storage:
        ref = await storage.put(
            key, body(b"# notes"), content_type="text/markdown", metadata={"lease": "w-1"}
        )
        assert ref.size == 7 and ref.content_type == "text/markdown"
        head = await storage.client.head_object(Bucket=storage.bucket, Key=key, VersionId=ref.version_id)
        assert head["ContentType"] == "text/markdown" and head["Metadata"] == {"lease": "w-1"}
        assert head["ETag"].strip('"') == ref.etag


async def _read_whole(storage: Storage, ref, max_bytes=None) -> bytes:
    return await storage.get(ref, max_bytes)


async def _read_chunks(storage: Storage, ref, max_bytes=None) -> bytes:
    async with storage.open(ref, max_bytes) as reader:
        return b"".join([chunk async for chunk in reader.chunks(4)])


READS = {"whole": _read_whole, "a chunk at a time": _read_chunks}
# Reads of the workspace bucket go through obstore; of another bucket (a ref a person gave), aiobotocore.
CLIENTS = {
    "obstore": lambda storage: storage,
    "aiobotocore": lambda storage: Storage(storage.client, storage.bucket),
}


@pytest.mark.parametrize("client", CLIENTS.values(), ids=CLIENTS.keys())
@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
async def test_a_read_is_of_exactly_the_version_referenced_or_fails_by_name(settings, read, client):
    key = f"runs/r-read-{uuid.uuid4().hex[:8]}/doc.md"
    async with Storage.connect(settings) as connected:
        storage = client(connected)
        first = await storage.put(key, b"first")
        second = await storage.put(key, b"second version", content_type="text/markdown")
        assert await read(storage, first) == b"first" and await read(storage, second) == b"second version"
        current = second.model_copy(update={"version_id": None})  # an etag alone: the current version
        assert await read(storage, current) == b"second version"
        async with storage.open(current) as reader:  # which version it is, and what it is
            assert reader.ref == second and reader.size == 14
        stale = first.model_copy(update={"version_id": None})  # its etag no longer the current one
        with pytest.raises(ObjectMissingError, match="etag"):
            await read(storage, stale)
        for ref in (
            first.model_copy(update={"key": key + ".gone"}),
            first.model_copy(update={"version_id": "00000000-0000-0000-0000-000000000000"}),
            first.model_copy(update={"version_id": "not-a-version"}),  # MinIO: InvalidArgument
        ):
            with pytest.raises(ObjectMissingError, match="does not exist"):
                await read(storage, ref)
        with pytest.raises(ObjectTooLargeError, match="14 bytes, more than the 10 read here"):
            await read(storage, second, 10)
        removed = await connected.client.delete_object(Bucket=settings.bucket, Key=key)
        marker = first.model_copy(update={"version_id": removed["VersionId"], "etag": None})
        for ref in (marker, marker.model_copy(update={"version_id": None})):  # MinIO: MethodNotAllowed, 404
            with pytest.raises(ObjectMissingError, match="does not exist"):
                await read(storage, ref)


async def test_a_write_to_a_store_that_is_down_fails_soon_as_a_transient_fault(settings):
    """Past the client's few retries (seconds, not obstore's default 3 minutes), a fault the caller's own
    retries take over (shared/errors.is_transient)."""
    down = settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"})
    async with Storage.connect(down) as storage:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="write to 'runs/r-down/x.md' failed") as info:
            await storage.put("runs/r-down/x.md", b"x")
    assert is_transient(info.value) and time.monotonic() - started < 20


# A short-lived process that reads an object a chunk at a time on the standard library's loop, then exits.
READ_AND_EXIT = """
import asyncio
from shared.settings import Settings
from shared.storage import Storage

async def main():
    async with Storage.connect(Settings()) as storage:
        ref = await storage.put("runs/r-exit/a.md", b"a line\\n" * 100)
        async with storage.open(ref) as reader:
            print(sum([len(chunk) async for chunk in reader.chunks()]))

asyncio.run(main())
"""
EXITS = 24  # one exit in 9 aborted before the exit hook: all 24 passing by chance is under 6 %


async def test_a_process_exits_cleanly_right_after_reading_through_obstore(settings):
    """obstore hands a result back from its own thread; at exit that thread must not be left asking for
    the GIL (`baton get` died of SIGABRT after writing its files: shared/storage's exit hook)."""
    env = {**cli_env(settings), "PYTHONPATH": str(ROOT)}
    gate = asyncio.Semaphore(4)

    async def read_and_exit() -> tuple[int | None, bytes, bytes]:
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", READ_AND_EXIT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            out, err = await proc.communicate()
            return proc.returncode, out, err

    ends = await asyncio.gather(*(read_and_exit() for _ in range(EXITS)))
    assert [(code, out, err[-300:]) for code, out, err in ends if code != 0] == []
    assert {out for _, out, _ in ends} == {b"700\n"}


# Whether the exit hook was registered by a process that made the bucket's clients on the loop named.
HOOKED_ON = """
import asyncio, sys
import uvloop
from shared import storage
from shared.settings import Settings

async def main():
    async with storage.Storage.connect(Settings()) as s:
        await s.put("runs/r-exit/b.md", b"b")

(uvloop.run if sys.argv[1] == "uvloop" else asyncio.run)(main())
print(storage._hold_exit_for_store_threads.cache_info().currsize)
"""


@pytest.mark.parametrize(("loop", "hooked"), [("uvloop", b"0\n"), ("asyncio", b"1\n")])
def test_only_a_process_on_the_standard_loop_waits_at_exit_for_obstores_threads(settings, loop, hooked):
    """uvloop wakes itself without letting the GIL go, so a command on it (the CLI's, the services') exits
    without the exit hook's wait; on the standard loop the hook is there."""
    env = {**cli_env(settings), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", HOOKED_ON, loop], env=env, capture_output=True, timeout=60, check=True
    )
    assert done.stdout == hooked


async def test_follow_yields_an_event_recorded_twice_once(settings):
    """A supervisor that dies before acknowledging re-records the redelivered event (same event id):
    `baton watch` (client.follow) shows it once."""
    from baton import client
    from shared.broker import encode
    from shared.events import RunCompleted, RunStarted, TaskStarted

    run_id = "r-recorded-twice"
    started = TaskStarted(run_id=run_id, task_id=f"{run_id}.0.x", agent="x")
    stream = streams.run_events(run_id)
    r = connect(settings.redis_url)
    try:
        await r.delete(stream)
        for event in (
            RunStarted(run_id=run_id, workflow="w", pattern="sequential"),
            started,
            started,  # the second record, after a redelivery
            RunCompleted(run_id=run_id),
        ):
            await r.xadd(stream, encode(event))
        seen = [e async for e in client.follow(settings, run_id, block_ms=200)]
    finally:
        await r.delete(stream)
        await r.aclose()
    assert [e.type for e in seen] == ["run.started", "task.started", "run.completed"]
