"""A large object read a chunk at a time by a slow consumer (a console download, `baton get` over a slow
link) is read to its end, however long it takes: only a stall ends a request to the store. obstore's own
default ended every request 30 s after it started, body included.

In the cluster suite (`make test-cluster`, CI) since it takes over 30 s; on a MinIO of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from baton import servers
from shared.settings import Settings
from shared.storage import CLIENT_TIMEOUTS, Storage

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
SIZE = 32 << 20
CHUNK = 1 << 20


def test_a_read_slower_than_thirty_seconds_is_read_to_its_end(tmp_path):
    srv = servers.start_minio(tmp_path / "minio", "http://127.0.0.1:9/unused")
    try:
        settings = Settings(
            S3_ENDPOINT_URL=srv.url,
            S3_ACCESS_KEY=servers.MINIO_USER,
            S3_SECRET_KEY=servers.MINIO_PASSWORD,
            bucket="slow-reads",
        )
        body = os.urandom(SIZE)
        pace = 33 / SIZE  # seconds a byte: the read lasts ~33 s, past obstore's default limit

        async def read_slowly():
            async with Storage.connect(settings) as store:
                await store.client.create_bucket(Bucket=settings.bucket)
                ref = await store.put("big.bin", body)
                digest, read, started = hashlib.sha256(), 0, time.monotonic()
                async with store.open(ref) as reader:
                    async for chunk in reader.chunks(CHUNK):
                        digest.update(chunk)
                        read += len(chunk)
                        await asyncio.sleep(max(0.0, started + read * pace - time.monotonic()))
                return digest.hexdigest(), time.monotonic() - started

        digest, seconds = asyncio.run(read_slowly())
        assert seconds > 30, seconds  # (what the read proves)
        assert digest == hashlib.sha256(body).hexdigest()
        assert CLIENT_TIMEOUTS["read_timeout"].total_seconds() > 30  # above MinIO's wait on a dead drive
    finally:
        srv.stop()
