"""The MCP server: the shared workspace and runs as tools, for any MCP-capable agent or assistant.

Tools: list_files, read_file, write_file, search_files, submit_run, run_status, respond. Writes obey the
same rules as agents' writes (key validation, allowed prefixes, conditional writes): a write that lost a
race is not applied and returns the version that won. Transports: stdio (a desktop client spawns
`python -m services.mcp --transport stdio`) and streamable HTTP at `/mcp` (bearer token
`BATON_MCP_TOKEN`; without one the server only listens on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hmac
import ipaddress
import mimetypes
import os
import posixpath
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import uvicorn
from botocore.exceptions import ClientError
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from baton import client
from shared import metrics, telemetry, waits
from shared.errors import (
    BatonError,
    KeyValidationError,
    ObjectMissingError,
    ObjectTooLargeError,
    PreconditionFailedError,
)
from shared.events import ID_PATTERN, ObjectRef, utcnow
from shared.logging import configure_logging
from shared.search import SearchHit, request_search
from shared.service import Resources, loop_name, mark_ready, run
from shared.settings import Settings
from shared.workspace import normalize_prefix, run_prefix, validate_key

SERVICE = "mcp"
HTTP_PATH = "/mcp"
MAX_LIST = 1000
_RUN_ID = re.compile(ID_PATTERN)

INSTRUCTIONS = """\
Baton's shared workspace: a versioned S3 bucket that a team of agents reads and writes, plus its runs.
Files are addressed by key (e.g. `shared/notes.md`); every write creates a new version. To change a file
safely, read it, then write with `if_match` set to the etag you read: if someone else wrote in between,
nothing is overwritten and you get their version back to merge with. Without `if_match` a write only
creates a new file. `search_files` finds text files by content. `submit_run` starts a workflow;
`run_status` follows it; when a run waits for a person (status `waiting_for_human`), `respond` answers.
"""


class FileInfo(BaseModel):
    key: str
    size: int | None = None
    etag: str | None = None
    last_modified: datetime | None = None


class FileList(BaseModel):
    prefix: str
    files: list[FileInfo] = Field(default_factory=list)
    folders: list[str] = Field(default_factory=list, description="Sub-prefixes, when not recursive.")
    truncated: bool = Field(False, description="More files exist than were returned.")


class FileContent(BaseModel):
    key: str
    version_id: str | None = Field(None, description="The version read; pass it to read_file again.")
    etag: str | None = Field(None, description="Pass as `if_match` to write_file to replace this version.")
    size: int | None = None
    content_type: str | None = None
    encoding: Literal["text", "base64"] = "text"
    content: str = Field(description="The file's text, or base64 for a binary file.")


class WriteResult(BaseModel):
    written: bool = Field(description="False when the write lost a race: see `current`.")
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    message: str = ""
    current: FileContent | None = Field(
        None, description="When not written: the version that is there now (merge, then retry with its etag)."
    )


class SearchResults(BaseModel):
    query: str
    hits: list[SearchHit] = Field(default_factory=list)


class InlineInput(BaseModel):
    """An input given as text, uploaded into the run's workspace."""

    content: str = Field(description="The input's text.")
    filename: str | None = Field(None, description="File name in the run's inputs/ (default: <name>.md).")
    content_type: str | None = None


class SubmittedRun(BaseModel):
    run_id: str
    workflow: str
    status: str = "submitted"
    inputs: dict[str, ObjectRef] = Field(default_factory=dict)


class RunStatus(BaseModel):
    run_id: str
    status: str = Field(description="submitted, running, waiting_for_human, completed, failed or cancelled.")
    workflow: str | None = None
    pattern: str | None = None
    reason: str | None = Field(None, description="Why the run failed or was cancelled, when it was.")
    outputs: dict[str, ObjectRef] = Field(default_factory=dict, description="Output files, by name.")
    waiting: dict[str, Any] | None = Field(None, description="What the run asks of a person, if it waits.")
    events: list[dict[str, Any]] = Field(
        default_factory=list, description="The run's last events, oldest first."
    )


class Responded(BaseModel):
    run_id: str
    decision: Literal["approve", "reject"]
    key: str = Field(description="The response file written.")
    version_id: str | None = None
    run_status: str


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BatonMCP:
    """The tools, bound to one workspace; `open()` connects to S3 and Redis for the server's lifetime."""

    def __init__(self, settings: Settings, log) -> None:
        self.settings = settings
        self.log = log
        self.res = Resources(settings)
        self.read_prefixes = [normalize_prefix(p) for p in settings.mcp_read_prefix_list]
        self.write_prefixes = [normalize_prefix(p) for p in settings.mcp_write_prefix_list]
        self.mcp = MCPServer(
            "baton",
            title="Baton workspace",
            instructions=INSTRUCTIONS,
            version="0.1.0",
            log_level="WARNING",
        )
        for tool in (
            self.list_files,
            self.read_file,
            self.write_file,
            self.search_files,
            self.submit_run,
            self.run_status,
            self.respond,
        ):
            self.mcp.add_tool(tool)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[BatonMCP]:
        await self.res.open(storage=True)
        # its socket outlasts a search's BLPOP (redis-py's default of 5 s would race the wait)
        self.res.redis = waits.client(self.settings.redis_url, block=self.settings.search_timeout)
        self.res.stack.push_async_callback(self.res.redis.aclose)
        try:
            yield self
        finally:
            await self.res.close()

    # --- permissions -------------------------------------------------------------------------------

    def _readable(self, key: str) -> bool:
        return not self.read_prefixes or any(key.startswith(p) for p in self.read_prefixes)

    def _check_read(self, key: str) -> str:
        try:
            validate_key(key)
        except KeyValidationError as exc:
            raise ToolError(str(exc)) from exc
        if not self._readable(key):
            raise ToolError(f"key {key!r} is outside the readable prefixes {self.read_prefixes}")
        return key

    def _check_write(self, key: str) -> str:
        try:
            validate_key(key)
        except KeyValidationError as exc:
            self.log.warning("mcp_write_refused", key=key, reason=str(exc))
            raise ToolError(f"write to {key!r} refused: {exc}") from exc
        if not any(key.startswith(p) for p in self.write_prefixes):
            reason = f"outside the writable prefixes {self.write_prefixes}"
            self.log.warning("mcp_write_refused", key=key, reason=reason)
            raise ToolError(f"write to {key!r} refused: {reason}")
        return key

    @staticmethod
    def _check_run_id(run_id: str) -> str:
        if not _RUN_ID.match(run_id):
            raise ToolError(f"run id {run_id!r} is not valid (expected {ID_PATTERN})")
        return run_id

    # --- tools -------------------------------------------------------------------------------------

    async def list_files(self, prefix: str = "", recursive: bool = True, limit: int = 200) -> FileList:
        """List files in the workspace under a key prefix (e.g. `shared/` or `runs/<run_id>/`).

        With recursive=false, files directly under the prefix and its sub-folders are listed instead.
        At most `limit` files (up to 1000); `truncated` says whether there are more.
        """
        if prefix:
            try:
                validate_key(prefix.rstrip("/") or "x")
            except KeyValidationError as exc:
                raise ToolError(str(exc)) from exc
        if self._readable(prefix):
            targets = [prefix]
        else:
            targets = [p for p in self.read_prefixes if p.startswith(prefix)]
            if not targets:
                raise ToolError(f"prefix {prefix!r} is outside the readable prefixes {self.read_prefixes}")
        limit = max(1, min(limit, MAX_LIST))
        result = FileList(prefix=prefix)
        s3 = self.res.storage.client
        for target in targets:
            kwargs: dict[str, Any] = {"Bucket": self.settings.bucket, "Prefix": target}
            if not recursive:
                kwargs["Delimiter"] = "/"
            async for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
                result.folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                for item in page.get("Contents", []):
                    if len(result.files) >= limit:
                        result.truncated = True
                        break
                    result.files.append(
                        FileInfo(
                            key=item["Key"],
                            size=item.get("Size"),
                            etag=(item.get("ETag") or "").strip('"') or None,
                            last_modified=item.get("LastModified"),
                        )
                    )
                if result.truncated:
                    break
        return result

    async def read_file(self, key: str, version: str | None = None) -> FileContent:
        """Read a file: its latest version, or the exact `version` (a version id from another tool).

        Returns the text (base64 for a binary file) with the version id and etag that were read.
        """
        self._check_read(key)
        content = await self._read(key, version)
        if content is None:
            raise ToolError(f"no file {key!r}" + (f" at version {version!r}" if version else ""))
        return content

    async def _read(self, key: str, version: str | None = None) -> FileContent | None:
        """The key's current version, or exactly `version`; None if there is no such file."""
        limit = self.settings.mcp_max_read_bytes
        wanted = ObjectRef(bucket=self.settings.bucket, key=key, version_id=version or None)
        try:
            async with self.res.storage.open(wanted, limit) as reader:
                data, read = await reader.read(), reader.ref
        except ObjectMissingError:
            return None
        except ObjectTooLargeError as exc:
            raise ToolError(
                f"{key!r} is {exc.size} bytes, over the {limit}-byte limit of read_file; search it with "
                "search_files instead"
            ) from None
        try:
            text, encoding = data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(data).decode(), "base64"
        return FileContent(
            key=key,
            version_id=read.version_id,
            etag=read.etag,
            size=len(data),
            content_type=read.content_type,
            encoding=encoding,
            content=text,
        )

    async def write_file(
        self, key: str, content: str, if_match: str | None = None, content_type: str | None = None
    ) -> WriteResult:
        """Write a text file, never silently overwriting someone else's version.

        To replace a file, pass `if_match` = the etag you read (read_file). Without it the write only
        creates a new file. If the file changed (or exists) meanwhile, nothing is written: `written` is
        false and `current` holds the version that is there now. Keys must lie under the writable prefixes.
        """
        self._check_write(key)
        data = content.encode()
        ctype = content_type or _guess_type(key)
        try:
            ref = await self.res.storage.put(
                key, data, content_type=ctype, if_match=if_match or None, if_none_match=not if_match
            )
        except PreconditionFailedError as exc:
            return await self._lost(key, str(exc))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return await self._lost(key, f"write to {key!r} refused: the object no longer exists")
            raise
        self.log.info("mcp_file_written", key=key, version=ref.version_id)
        return WriteResult(
            written=True,
            key=key,
            version_id=ref.version_id,
            etag=ref.etag,
            size=ref.size,
            message="written",
        )

    async def _lost(self, key: str, message: str) -> WriteResult:
        current = await self._read(key) if self._readable(key) else None
        self.log.info("mcp_write_conflict", key=key, current=current.version_id if current else None)
        return WriteResult(written=False, key=key, message=message, current=current)

    async def search_files(self, query: str, prefix: str = "", limit: int = 10) -> SearchResults:
        """Full-text search over the workspace's text files (markdown, text, JSON, CSV), best first.

        Query: words (all must match), "quoted phrases", `word*` for a prefix, `a OR b`. Each hit has the
        key, the indexed version id, a snippet with matches in **bold**, and a score.
        """
        try:
            hits = await request_search(
                self.res.redis,
                query,
                prefix=prefix,
                prefixes=self.read_prefixes,
                limit=max(1, min(limit, 100)),
                timeout=self.settings.search_timeout,
                sender=SERVICE,
            )
        except BatonError as exc:
            raise ToolError(str(exc)) from exc
        return SearchResults(query=query, hits=hits)

    async def submit_run(
        self,
        workflow: str,
        inputs: dict[str, str | InlineInput] | None = None,
        params: dict[str, Any] | None = None,
    ) -> SubmittedRun:
        """Start a run of a workflow; returns its run id (follow it with run_status).

        `inputs` maps each input name to either the key of a file in the workspace (its current version
        is used) or {"content": "...", "filename": "brief.md"} to upload as the run's input.
        """
        known = _known_workflows(self.settings)
        if known is not None and workflow not in known:
            raise ToolError(f"unknown workflow {workflow!r}; known: {sorted(known)}")
        run_id = client.new_run_id()
        refs: dict[str, ObjectRef] = {}
        for name, value in (inputs or {}).items():
            if isinstance(value, str):
                self._check_read(value)
                head = await self.res.storage.head(value)
                if head is None:
                    raise ToolError(f"input {name!r}: no file {value!r}")
                refs[name] = head
                continue
            filename = posixpath.basename(value.filename or f"{name}.md")
            key = f"{run_prefix(run_id)}inputs/{filename}"
            try:
                refs[name] = await self.res.storage.put(
                    key,
                    value.content.encode(),
                    content_type=value.content_type or _guess_type(filename),
                    if_none_match=True,
                )
            except (KeyValidationError, PreconditionFailedError) as exc:
                raise ToolError(f"input {name!r}: {exc}") from exc
        await client.publish_run(
            self.settings,
            run_id,
            workflow,
            refs,
            params,
            sender=SERVICE,
            redis=self.res.redis,
            storage=self.res.storage,
        )
        self.log.info("mcp_run_submitted", submitted_run=run_id, workflow=workflow)
        return SubmittedRun(run_id=run_id, workflow=workflow, inputs=refs)

    async def run_status(self, run_id: str, events: int = 20) -> RunStatus:
        """Where a run stands: status, output files (with versions), what it waits for, last events."""
        self._check_run_id(run_id)
        try:
            last = max(0, min(events, 200))
            status = await client.run_status(self.settings, run_id, last=last, redis=self.res.redis)
        except BatonError as exc:
            raise ToolError(str(exc)) from exc
        return RunStatus(**status)

    async def respond(
        self, run_id: str, decision: Literal["approve", "reject"], text: str | None = None
    ) -> Responded:
        """Answer a run that waits for a person (status waiting_for_human): approve or reject, with text.

        Writes the response file under runs/<run_id>/human/responses/; the run resumes when it lands.
        Refused when the run is not waiting for a person (the answer would be ignored).
        """
        self._check_run_id(run_id)
        try:
            status = await client.ensure_waiting(self.settings, run_id, redis=self.res.redis)
        except BatonError as exc:
            raise ToolError(str(exc)) from exc
        body = {
            "decision": decision,
            "text": text or "",
            "sender": SERVICE,
            "responded_at": utcnow().isoformat(),
        }
        ref = await client.write_response(
            self.res.storage, self.settings, run_id, body, sender=SERVICE, redis=self.res.redis
        )
        self.log.info("mcp_responded", responded_run=run_id, decision=decision, key=ref.key)
        return Responded(
            run_id=run_id,
            decision=decision,
            key=ref.key,
            version_id=ref.version_id,
            run_status=status["status"],
        )


def _guess_type(key: str) -> str:
    if key.endswith((".md", ".markdown")):
        return "text/markdown; charset=utf-8"
    guessed = mimetypes.guess_type(key)[0] or "text/plain"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


def _known_workflows(settings: Settings) -> frozenset[str] | None:
    """Workflow names from the workflow file, or None when this server has no readable file. Parsed again
    only when the file changes (its size or modification time): parsing it on every `submit_run` was a
    quarter of the server's CPU with 100 sessions at once."""
    try:
        found = os.stat(settings.workflows)
    except OSError:
        return None
    return _workflow_names(str(settings.workflows), found.st_mtime_ns, found.st_size)


@functools.lru_cache(maxsize=4)
def _workflow_names(path: str, mtime_ns: int, size: int) -> frozenset[str] | None:
    try:
        from shared.workflow import load_workflows

        return frozenset(load_workflows(path).workflows)
    except Exception:
        return None


class BearerAuth:
    """ASGI middleware: every HTTP request but `/health` must carry `Authorization: Bearer <token>`."""

    def __init__(self, app, token: str, log) -> None:
        self.app, self.token, self.log = app, token.encode(), log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if scope.get("path") == "/health":
                return await _plain(send, 200, b"ok")
            if self.token:
                header = dict(scope.get("headers") or []).get(b"authorization", b"")
                given = header[7:].strip() if header[:7].lower() == b"bearer " else b""
                if not hmac.compare_digest(given, self.token):
                    self.log.warning("mcp_unauthorized", client=str(scope.get("client")))
                    return await _plain(send, 401, b"unauthorized", [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


async def _plain(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """uvicorn's server, with an event set once it listens (uvicorn itself only sets a flag)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


def create_app(settings: Settings | None = None) -> BatonMCP:
    settings = settings or Settings()
    log = configure_logging(SERVICE, settings.log_format, settings.log_level)
    telemetry.setup(SERVICE, settings)
    metrics.serve(SERVICE, settings)
    return BatonMCP(settings, log)


async def serve(settings: Settings) -> None:
    server = create_app(settings)
    log = server.log
    if settings.mcp_transport == "http" and not settings.mcp_token and not is_loopback(settings.mcp_host):
        log.error(
            "mcp_refused_to_start",
            reason=f"streamable HTTP on {settings.mcp_host} needs a bearer token: set BATON_MCP_TOKEN "
            "(or listen on 127.0.0.1)",
        )
        raise SystemExit(2)
    async with server.open():
        if settings.mcp_transport == "stdio":
            mark_ready(settings)
            log.info("service_ready", event_loop=loop_name(), transport="stdio")
            await server.mcp.run_stdio_async()
            return
        app = BearerAuth(server.mcp.streamable_http_app(host=settings.mcp_host), settings.mcp_token, log)
        config = uvicorn.Config(
            app,
            host=settings.mcp_host,
            port=settings.mcp_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        http = _Server(config)
        task = asyncio.create_task(http.serve())
        ready = asyncio.create_task(http.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if http.started:
            mark_ready(settings)
            log.info(
                "service_ready",
                event_loop=loop_name(),
                transport="http",
                url=f"http://{settings.mcp_host}:{settings.mcp_port}{HTTP_PATH}",
                auth="bearer" if settings.mcp_token else "none (loopback)",
            )
        await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.mcp", description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["stdio", "http"], help="default: BATON_MCP_TRANSPORT")
    parser.add_argument("--host", help="HTTP listen address (default: BATON_MCP_HOST)")
    parser.add_argument("--port", type=int, help="HTTP port (default: BATON_MCP_PORT)")
    args = parser.parse_args(argv)
    overrides = {"mcp_transport": args.transport, "mcp_host": args.host, "mcp_port": args.port}
    settings = Settings()
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    run(serve(settings), settings)
