"""The workspace store: plain S3 (MinIO, AWS or any compatible server) through obstore for reads and for
writes of bodies held in memory, and aiobotocore for the rest.

Reads take an `ObjectRef` and return exactly that version; writes can be conditional (If-Match on an
ETag, or If-None-Match: * to refuse overwriting), so no agent silently overwrites another's work.

Why two clients: aiobotocore spends about 1.1 ms of CPU on one small PUT or GET (its request pipeline:
signing, event hooks, parsing; measured alone, whatever its checksum and validation settings), obstore
(Rust's `object_store`) about 0.3 ms a PUT and 0.5 a GET, and a burst of agents that read and write is
bounded by that CPU on the workers' cores. What obstore does not do as we need it stays on aiobotocore: a
file streamed from disk in one PUT (obstore would upload it in parts, which take no condition), ranged
reads, copies, lists, presigned URLs, the bucket's set-up.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import mimetypes
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO

import obstore
import structlog
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError
from obstore import exceptions as obstore_errors
from obstore.store import S3Store

from . import metrics, telemetry
from .errors import (
    AccessDeniedError,
    ObjectMissingError,
    ObjectTooLargeError,
    PreconditionFailedError,
    StoreUnavailableError,
)
from .events import ObjectRef
from .settings import Settings
from .workspace import validate_key

log = structlog.get_logger()

# A body sent is allowed this many bytes a second on top of `storage_slow_s` before its write counts as slow:
# a large file's upload takes its time without the store being at fault.
SLOW_BYTES_PER_S = 10_000_000


class _Watch:
    """One request to the store, timed into `baton_storage_request_seconds`. Past `slow` seconds still
    unanswered, a warning (`storage_waiting`, again at each doubling: 5, 10, 20 s...), and another when it
    ends (`storage_slow`, counted in `baton_storage_slow_requests`). Both carry the caller's log context: the
    run and task a stalled store holds up. (After a MinIO node's death every write waits on its drive for a
    while, tens of seconds; without this the services logged nothing in that time.)"""

    __slots__ = ("key", "method", "slow", "started", "timer")

    def __init__(self, method: str, key: str, slow: float, size: int | None = None) -> None:
        self.method, self.key, self.timer = method, key, None
        self.slow = slow + (size or 0) / SLOW_BYTES_PER_S if slow else 0.0

    def __enter__(self) -> _Watch:
        self.started = time.monotonic()
        if self.slow:
            self.timer = asyncio.get_running_loop().call_later(self.slow, self._waiting, self.slow)
        return self

    def _waiting(self, waited: float) -> None:
        log.warning("storage_waiting", method=self.method, key=self.key, waited_s=round(waited, 1))
        self.timer = asyncio.get_running_loop().call_later(waited, self._waiting, 2 * waited)

    def __exit__(self, exc_type, exc, tb) -> None:
        took = time.monotonic() - self.started
        if self.timer is not None:
            self.timer.cancel()
        _seconds(self.method).observe(took)
        if self.slow and took >= self.slow:
            metrics.STORAGE_SLOW.labels(self.method).inc()
            outcome = "ok" if exc is None else f"{type(exc).__name__}: {_first_line(exc)}"
            log.warning(
                "storage_slow", method=self.method, key=self.key, took_s=round(took, 2), outcome=outcome
            )


@functools.cache
def _seconds(method: str):
    return metrics.STORAGE_SECONDS.labels(method)


def _strip(etag: str | None) -> str | None:
    return etag.strip('"') if etag else etag


# S3 codes for a missing object or version (HEAD has no body, so only "404"/"NotFound"; MinIO answers an
# unknown version id with InvalidArgument).
# (S3 answers a read of a delete marker's version with MethodNotAllowed: no object is there)
MISSING = frozenset({"NoSuchKey", "NoSuchVersion", "NotFound", "404", "InvalidArgument", "MethodNotAllowed"})


def is_missing(exc: ClientError) -> bool:
    """The one not-found check: the object, or the version asked for, does not exist."""
    return _code(exc) in MISSING


MAX_PUT = 5 * 1024**3  # bytes one PUT may carry (S3's limit; MinIO's too)
COPY_IN_MEMORY = 8 * 2**20  # bytes `copy_new` holds in memory; a larger object passes through a file


def in_memory(data: bytes | BinaryIO) -> bool:
    return isinstance(data, bytes | bytearray | memoryview)


def body_size(data: bytes | BinaryIO) -> int:
    """Bytes a write will send: all of `data`, or a file's bytes from where it stands to its end."""
    if in_memory(data):
        return len(data)
    here = data.tell()
    end = data.seek(0, os.SEEK_END)
    data.seek(here)
    return end - here


@dataclass
class _Put:
    """One write's request, whichever client sends it."""

    key: str
    data: bytes | BinaryIO
    content_type: str
    if_match: str | None
    if_none_match: bool
    metadata: dict[str, str]

    @property
    def streamed(self) -> bool:
        """A file, sent a chunk at a time (aiobotocore); bytes in memory go through obstore."""
        return not in_memory(self.data)

    def refused(self) -> str:
        """What a refused condition means, for `PreconditionFailedError`."""
        if self.if_match:
            return f"write to {self.key!r} refused: the object changed since etag {self.if_match!r} was read"
        return f"write to {self.key!r} refused: the object already exists"


@dataclass
class Reader:
    """One object version being read (`Storage.open`): `read()` it whole, or a chunk at a time."""

    size: int
    body: Any  # what the client returned: obstore's GetResult (`_FastReader`), or aiobotocore's body
    ref: ObjectRef | None = None  # the version being read (its id, etag, size and content type)

    async def read(self) -> bytes:
        raise NotImplementedError

    def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        raise NotImplementedError


class _FastReader(Reader):
    async def read(self) -> bytes:
        try:
            return bytes(await self.body.bytes_async())
        except obstore_errors.BaseError as exc:
            raise StoreUnavailableError(f"read of {self.ref.uri()} failed: {_first_line(exc)}") from exc

    async def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.body.stream(min_chunk_size=size):
                yield bytes(chunk)
        except obstore_errors.BaseError as exc:
            raise StoreUnavailableError(f"read of {self.ref.uri()} failed: {_first_line(exc)}") from exc


class _BotoReader(Reader):
    async def read(self) -> bytes:
        return await self.body.read()

    async def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        while chunk := await self.body.read(size):
            yield chunk


# obstore's own retries of a failed request (a refused connection, a 5xx): a few, within seconds, as
# aiobotocore's (5 attempts); past them it fails as `StoreUnavailableError`, a transient fault the
# caller's own retries take over (obstore's default would keep trying for 3 minutes).
FAST_RETRIES = {
    "max_retries": 4,
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2},
    "retry_timeout": timedelta(seconds=20),
}


# obstore's timeouts. Its default ends any request 30 s after it starts, body included: a large object read a
# chunk at a time by a slow consumer (a console download, `baton get` over a slow link) broke at 30 s. Only a
# stall ends a request here: no byte for `read_timeout`. That is longer than a MinIO node waits on a dead
# peer's drive (`MINIO_DRIVE_MAX_TIMEOUT`, 30 s by default) before completing a write without it, so such a
# write completes instead of failing. The overall limit is a backstop for a stream that never ends.
CLIENT_TIMEOUTS = {
    "connect_timeout": timedelta(seconds=5),
    "read_timeout": timedelta(seconds=60),
    "timeout": timedelta(hours=24),
}


# How long the exit hook below lets obstore's threads have the GIL: far more than one handing back a
# result needs (microseconds), so a loaded machine's scheduling delay is covered.
EXIT_GRACE = 0.05


@functools.cache
def _hold_exit_for_store_threads() -> None:
    """Registered once, with the first obstore client: at exit, give obstore's threads the GIL a moment.

    obstore hands each result back from one of its (tokio) threads by calling the event loop's
    `call_soon_threadsafe`. The standard library's loop wakes itself with a socket send, which lets the
    GIL go: the main thread can take the result, finish and begin finalising before that thread takes the
    GIL back, and a thread that asks for the GIL during finalisation is ended by `pthread_exit`, which
    aborts a Rust thread (SIGABRT: `baton get` died so after writing its files, about 1 exit in 9 here).
    Exit hooks run before finalisation, so sleeping in one lets such a thread leave Python first. uvloop
    (the services' and the CLI's loop) keeps the GIL while it wakes itself, so it has no such window: the
    hook is registered only for a client made on another loop (`BATON_EVENT_LOOP=asyncio`, the tests'
    loops), and a command on uvloop exits without the wait."""
    atexit.register(time.sleep, EXIT_GRACE)


def _on_uvloop() -> bool:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # (no loop yet: the client's first call may run on any)
        return False
    return type(loop).__module__.startswith("uvloop")


def fast_store(settings: Settings) -> S3Store:
    """The obstore client for the bucket (path-style, as aiobotocore's): its reads, and writes of bodies in
    memory."""
    if not _on_uvloop():
        _hold_exit_for_store_threads()
    return S3Store(
        settings.bucket,
        endpoint=settings.s3_endpoint_url,
        access_key_id=settings.s3_access_key,
        secret_access_key=settings.s3_secret_key,
        region=settings.s3_region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": settings.s3_endpoint_url.startswith("http://"), **CLIENT_TIMEOUTS},
        retry_config=FAST_RETRIES,
    )


class Storage:
    """Async access to one bucket."""

    def __init__(
        self,
        client,
        bucket: str,
        fast: S3Store | None = None,
        slow: float = Settings.model_fields["storage_slow_s"].default,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.fast = fast  # obstore: reads, writes of bodies in memory (None: all through `client`)
        self.slow = slow  # seconds past which a request is logged as slow (`_Watch`; 0: not watched)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, settings: Settings) -> AsyncIterator[Storage]:
        session = get_session()
        async with session.create_client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            region_name=settings.s3_region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=32,
            ),
        ) as client:
            yield cls(client, settings.bucket, fast_store(settings), settings.storage_slow_s)

    async def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        content_type: str = "application/octet-stream",
        if_match: str | None = None,
        if_none_match: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> ObjectRef:
        """Write an object; with `if_match`/`if_none_match` the write only happens if nobody raced us.

        `data` is bytes, or a seekable binary file read from where it stands to its end: sent a chunk at a
        time, so a large file is never held in memory (one PUT: S3 takes up to 5 GiB so; larger is refused
        before a byte is sent)."""
        validate_key(key)
        size = body_size(data)
        if size > MAX_PUT:
            raise ObjectTooLargeError(
                f"{key}: {size:,} bytes is more than one write takes ({MAX_PUT:,} bytes, S3's limit)", size
            )
        with _span("PutObject", self.bucket, key, size=size):
            traceparent = telemetry.current_traceparent()
            if traceparent:  # read back by the notifier from the bucket's event: the trace goes on
                metadata = {**(metadata or {}), "traceparent": traceparent}
            put = _Put(key, data, content_type, if_match, if_none_match, metadata or {})
            with _Watch("PutObject", key, self.slow, size):
                if self.fast is not None and not put.streamed:
                    version_id, etag = await self._put_in_memory(put)
                else:
                    version_id, etag = await self._put_stream(put)
        return ObjectRef(
            bucket=self.bucket,
            key=key,
            version_id=version_id,
            etag=_strip(etag),
            size=size,
            content_type=content_type,
        )

    async def _put_in_memory(self, put: _Put) -> tuple[str | None, str | None]:
        """One PUT through obstore: If-None-Match: * (`create`) or If-Match on the etag (`update`)."""
        if put.if_none_match:
            mode = "create"
        elif put.if_match:
            mode = {"e_tag": f'"{_strip(put.if_match)}"'}
        else:
            mode = "overwrite"
        try:
            result = await obstore.put_async(
                self.fast,
                put.key,
                put.data,
                attributes={"Content-Type": put.content_type, **put.metadata},  # others: user metadata
                mode=mode,
                use_multipart=False,
            )
        except (obstore_errors.PreconditionError, obstore_errors.AlreadyExistsError) as exc:
            raise PreconditionFailedError(put.refused()) from exc
        except (obstore_errors.PermissionDeniedError, obstore_errors.UnauthenticatedError) as exc:
            raise AccessDeniedError(f"write to {put.key!r} refused by the store: {_first_line(exc)}") from exc
        except obstore_errors.BaseError as exc:  # a refused connection, a 5xx: past obstore's retries
            raise StoreUnavailableError(f"write to {put.key!r} failed: {_first_line(exc)}") from exc
        return result.get("version"), result.get("e_tag")

    async def _put_stream(self, put: _Put) -> tuple[str | None, str | None]:
        """One PUT through aiobotocore, the body read a chunk at a time (a file)."""
        kwargs: dict = {}
        if put.if_match:
            kwargs["IfMatch"] = f'"{_strip(put.if_match)}"'
        if put.if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            resp = await self.client.put_object(
                Bucket=self.bucket,
                Key=put.key,
                Body=put.data,
                ContentType=put.content_type,
                Metadata=put.metadata,
                **kwargs,
            )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise PreconditionFailedError(put.refused()) from exc
            raise
        return resp.get("VersionId"), resp.get("ETag")

    async def get(self, ref: ObjectRef, max_bytes: int | None = None) -> bytes:
        """Read exactly the referenced version; a missing object or changed etag is a permanent error, and
        so is one larger than `max_bytes` (refused before its body is read)."""
        async with self.open(ref, max_bytes) as reader:
            return await reader.read()

    async def _fast_get(self, ref: ObjectRef):
        """GetObject of exactly `ref`'s version (or, without one, its etag) through obstore, its body not yet
        read; errors as `_get_object`'s."""
        validate_key(ref.key)
        options: dict = {}
        if ref.version_id:
            options["version"] = ref.version_id
        elif ref.etag:
            options["if_match"] = f'"{ref.etag}"'
        try:
            return await obstore.get_async(self.fast, ref.key, options=options)
        except (obstore_errors.NotFoundError, FileNotFoundError) as exc:
            raise ObjectMissingError(f"object {ref.uri()} does not exist") from exc
        except obstore_errors.PreconditionError as exc:
            raise ObjectMissingError(_changed(ref)) from exc
        except (obstore_errors.PermissionDeniedError, obstore_errors.UnauthenticatedError) as exc:
            raise AccessDeniedError(f"read of {ref.uri()} refused by the store: {_first_line(exc)}") from exc
        except obstore_errors.BaseError as exc:
            # MinIO's answers to a malformed version id, and to a version that is a delete marker
            if any(f"<Code>{code}</Code>" in str(exc) for code in ("InvalidArgument", "MethodNotAllowed")):
                raise ObjectMissingError(f"object {ref.uri()} does not exist") from exc
            raise StoreUnavailableError(f"read of {ref.uri()} failed: {_first_line(exc)}") from exc

    @contextlib.asynccontextmanager
    async def open(self, ref: ObjectRef, max_bytes: int | None = None) -> AsyncIterator[Reader]:
        """Exactly the referenced version, open for reading whole (`Reader.read`) or a chunk at a time
        (`Reader.chunks`: a large object need not be held in memory). Errors as `get`, raised before any
        byte is read. A ref with neither version nor etag opens the key's current version (`Reader.ref`
        says which it is)."""
        with _span("GetObject", ref.bucket, ref.key, version=ref.version_id) as span:
            async with self._reader(ref) as reader:
                _check_size(ref, reader.size, max_bytes)
                telemetry.set_attributes(span, baton__s3__size=reader.size)
                yield reader

    @contextlib.asynccontextmanager
    async def _reader(self, ref: ObjectRef) -> AsyncIterator[Reader]:
        """The version's headers read, its body not yet: through obstore in this bucket, else through
        aiobotocore (its body closed on the way out)."""
        if self.fast is not None and ref.bucket == self.bucket:
            with _Watch("GetObject", ref.key, self.slow):
                result = await self._fast_get(ref)
            meta = result.meta
            read = ObjectRef(
                bucket=ref.bucket,
                key=ref.key,
                version_id=meta.get("version"),
                etag=_strip(meta.get("e_tag")),
                size=meta["size"],
                content_type=result.attributes.get("Content-Type"),
            )
            _check_etag(ref, read.etag)
            yield _FastReader(read.size, result, read)
            return
        with _Watch("GetObject", ref.key, self.slow):
            resp = await self._get_object(ref)
        async with resp["Body"] as body:
            read = ObjectRef(
                bucket=ref.bucket,
                key=ref.key,
                version_id=resp.get("VersionId"),
                etag=_strip(resp.get("ETag")),
                size=resp.get("ContentLength") or 0,
                content_type=resp.get("ContentType"),
            )
            yield _BotoReader(read.size, body, read)

    async def get_start(self, ref: ObjectRef, size: int) -> bytes:
        """The first `size` bytes of exactly the referenced version (all of a shorter one): one ranged GET,
        so a large object is not read to look at its beginning."""
        with _span("GetObject", ref.bucket, ref.key, version=ref.version_id):
            try:
                with _Watch("GetObject", ref.key, self.slow):
                    resp = await self._get_object(ref, Range=f"bytes=0-{size - 1}")
            except ClientError as exc:
                if _code(exc) == "InvalidRange":  # (an empty object has no first byte)
                    return b""
                raise
            async with resp["Body"] as body:
                return await body.read()

    async def _get_object(self, ref: ObjectRef, **extra) -> dict:
        """GetObject of exactly `ref`'s version (or, without one, its etag): a missing object, version or
        etag is ObjectMissingError, raised before any byte is read."""
        validate_key(ref.key)
        kwargs: dict = dict(extra)
        if ref.version_id:
            kwargs["VersionId"] = ref.version_id
        elif ref.etag:
            kwargs["IfMatch"] = f'"{ref.etag}"'
        try:
            resp = await self.client.get_object(Bucket=ref.bucket, Key=ref.key, **kwargs)
        except ClientError as exc:
            if is_missing(exc):
                raise ObjectMissingError(f"object {ref.uri()} does not exist") from exc
            if _code(exc) in ("PreconditionFailed", "412"):
                raise ObjectMissingError(_changed(ref)) from exc
            raise
        try:
            _check_etag(ref, _strip(resp.get("ETag")))
        except ObjectMissingError:
            async with resp["Body"]:  # (closed on the way out)
                raise
        return resp

    async def presign(self, ref: ObjectRef, expires: int = 3600) -> str:
        """A URL that reads exactly this version without credentials, for `expires` seconds (signed with
        this client's keys, so it reads only what this service may read)."""
        validate_key(ref.key)
        params = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            params["VersionId"] = ref.version_id
        return await self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)

    async def put_once(
        self, key: str, data: bytes | BinaryIO, *, content_type: str = "application/octet-stream"
    ) -> ObjectRef:
        """Write `key` only if nothing is there; if something is (a first attempt's write), that object.
        What a retried submission uses, so a second attempt neither overwrites nor fails."""
        try:
            return await self.put(key, data, content_type=content_type, if_none_match=True)
        except PreconditionFailedError:
            return await self._there(key)

    async def head(self, key: str) -> ObjectRef | None:
        try:
            with _Watch("HeadObject", key, self.slow):
                resp = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return ObjectRef(
            bucket=self.bucket,
            key=key,
            version_id=resp.get("VersionId"),
            etag=_strip(resp.get("ETag")),
            size=resp.get("ContentLength"),
            content_type=resp.get("ContentType"),
        )

    async def copy_new(self, ref: ObjectRef, dest_key: str) -> ObjectRef:
        """Copy one exact version to `dest_key` unless an object is there already; returns what is there.
        Create-only even when two copies race: a GET, then a PUT with If-None-Match (MinIO ignores
        If-None-Match on CopyObject, and two racing copies made two versions), so the bytes pass through
        this process: up to `COPY_IN_MEMORY` in memory, larger ones a chunk at a time through a file on
        disk, never whole in memory (the supervisor copies a run's outputs to where the workflow publishes
        them, and a collaboration's seed). A small object is not looked for first (a HEAD, which costs
        about as much as the copy): one there already refuses the PUT."""
        if ref.size is None or ref.size > COPY_IN_MEMORY:
            existing = await self.head(dest_key)
            if existing is not None:
                return existing
        kind = ref.content_type or mimetypes.guess_type(dest_key)[0] or "application/octet-stream"
        with tempfile.SpooledTemporaryFile(max_size=COPY_IN_MEMORY) as spool:
            async with self.open(ref) as reader:
                if reader.size <= COPY_IN_MEMORY:
                    body: bytes | BinaryIO = await reader.read()  # (a PUT from memory: through obstore)
                else:
                    async for chunk in reader.chunks():
                        spool.write(chunk)
                    spool.seek(0)
                    body = spool
            try:
                return await self.put(dest_key, body, content_type=kind, if_none_match=True)
            except PreconditionFailedError:  # another copy landed first: that one is the copy
                return await self._there(dest_key)

    async def _there(self, key: str) -> ObjectRef:
        """The object a create-only write found at `key` (refused, so one is there, unless since deleted)."""
        existing = await self.head(key)
        if existing is None:
            raise PreconditionFailedError(f"{key!r} was there when written, and is gone now")
        return existing

    async def copy(self, ref: ObjectRef, dest_key: str) -> ObjectRef:
        """Server-side copy of one exact version to another key."""
        validate_key(dest_key)
        source = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            source["VersionId"] = ref.version_id
        try:
            with _Watch("CopyObject", dest_key, self.slow, ref.size):
                resp = await self.client.copy_object(Bucket=self.bucket, Key=dest_key, CopySource=source)
        except ClientError as exc:  # anything else (MinIO restarting, a 503) is transient: raised as is
            if is_missing(exc):
                raise ObjectMissingError(f"object {ref.uri()} does not exist") from exc
            raise
        return ObjectRef(
            bucket=self.bucket,
            key=dest_key,
            version_id=resp.get("VersionId"),
            etag=_strip(resp.get("CopyObjectResult", {}).get("ETag")),
            size=ref.size,
            content_type=ref.content_type,
        )

    async def list(self, prefix: str) -> list[ObjectRef]:
        refs: list[ObjectRef] = []
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                refs.append(
                    ObjectRef(
                        bucket=self.bucket, key=item["Key"], etag=_strip(item["ETag"]), size=item["Size"]
                    )
                )
        return refs

    async def ensure_bucket(self) -> None:
        """Create the bucket if needed and turn versioning on (refs name exact versions)."""
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            with contextlib.suppress(ClientError):
                await self.client.create_bucket(Bucket=self.bucket)
        await self.client.put_bucket_versioning(
            Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
        )

    async def enable_notifications(self, queue_arn: str, *more_arns: str) -> None:
        """Send every create/remove event of the bucket to notification targets (MinIO: the webhooks)."""
        arns = [queue_arn, *more_arns]
        await self.client.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "Id": "baton-notifier" if i == 0 else f"baton-notifier-{i + 1}",
                        "QueueArn": arn,
                        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    }
                    for i, arn in enumerate(arns)
                ]
            },
        )


def _span(method: str, bucket: str, key: str, size: int | None = None, version: str | None = None):
    """A client span per S3 call, named and tagged as OpenTelemetry's botocore instrumentation does."""
    return telemetry.span(
        f"S3.{method}",
        kind="client",
        rpc__system="aws-api",
        rpc__service="S3",
        rpc__method=method,
        aws__s3__bucket=bucket,
        aws__s3__key=key,
        baton__s3__size=size,
        baton__s3__version_id=version,
    )


def _check_etag(ref: ObjectRef, etag: str | None) -> None:
    """A read asked for `ref`'s etag (a version's, or the current object's) and got `etag`."""
    if ref.etag and etag and etag != ref.etag:
        raise ObjectMissingError(f"object {ref.uri()} has etag {etag!r}, expected {ref.etag!r}")


def _check_size(ref: ObjectRef, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ObjectTooLargeError(
            f"object {ref.uri()} is {size:,} bytes, more than the {max_bytes:,} read here", size
        )


def _changed(ref: ObjectRef) -> str:
    return f"object {ref.uri()} changed: its etag is no longer {ref.etag!r}"


def _first_line(exc: BaseException) -> str:
    """obstore's messages carry the whole request's debug dump after their first line."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _code(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
