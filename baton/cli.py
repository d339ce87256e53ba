"""The `baton` command: submit runs, watch them, fetch results, and run everything locally."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import typer
from botocore.exceptions import ClientError, EndpointConnectionError
from pydantic_settings import SettingsError
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from baton import client, dev, servers
from shared import acl, streams, telemetry
from shared.errors import BatonError
from shared.events import Event, Usage
from shared.logging import configure_logging
from shared.service import run as run_until_done
from shared.settings import Settings

app = typer.Typer(
    help="Baton: event-driven delegation for teams of AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
dev_app = typer.Typer(help="Run Baton locally without Docker.", no_args_is_help=True)
servers_app = typer.Typer(help="Local Redis and MinIO binaries.", no_args_is_help=True)
app.add_typer(dev_app, name="dev")
app.add_typer(servers_app, name="servers")

DEV_ROOT = Path(".baton/dev")
T = TypeVar("T")


def settings(admin: bool = False) -> Settings:
    """Settings from the environment; without REDIS_URL, those of a running `baton dev up` stack (its
    CLI user, or with `admin` its admin credentials)."""
    saved = dev.saved_env(DEV_ROOT, admin=admin) if "REDIS_URL" not in os.environ else None
    found = Settings(**dev.settings_kwargs(saved)) if saved else Settings()
    telemetry.setup("cli", found)  # a submission is the root span of its run's trace
    # Warnings (a store slow to answer: shared/storage.py) to stderr, readable; stdout stays the output
    configure_logging("cli", fmt="console", level="WARNING")
    return found


def _run(
    command: Callable[..., Coroutine[Any, Any, T]], *args: Any, cfg: Settings | None = None, **kwargs: Any
) -> T:
    """`command(cfg, ...)` to its end (`cfg`: `settings()` unless given), on the event loop the settings
    name (`BATON_EVENT_LOOP`: uvloop unless set otherwise, as in the services)."""
    cfg = cfg or settings()
    return run_until_done(command(cfg, *args, **kwargs), cfg)


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _parse_inputs(values: list[str]) -> dict[str, Path]:
    inputs = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            fail(f"--input {value!r}: expected NAME=LOCAL_PATH")
        inputs[name] = Path(path)
    return inputs


def describe_usage(usage: Usage) -> str:
    """`1.23s`, plus model tokens and cost when there are any: `1.23s, 812+96 tokens, cost 0.000180`."""
    text = f"{usage.seconds:.2f}s"
    if usage.prompt_tokens or usage.completion_tokens:
        text += f", {usage.prompt_tokens}+{usage.completion_tokens} tokens"
    if usage.cost is not None:
        text += f", cost {usage.cost:.6f}"
    return text


def describe(event: Event) -> str:
    """One line per event for a person following a run."""
    t = event.created_at.strftime("%H:%M:%S")
    match event.type:
        case "run.started":
            return f"{t} run started: {event.workflow} ({event.pattern}: {' -> '.join(event.stages)})"
        case "task.assigned":
            who = event.agent or (f"intent {event.intent}" if event.intent else "the router")
            retry = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            tail = event.task_id.removeprefix(f"{event.run_id}.")
            label = f"stage {event.stage + 1}" if tail[:1].isdigit() else tail
            return f"{t} {label}: assigned to {who}{retry}"
        case "route.decided":
            why = f": {event.reason}" if event.reason else ""
            sure = f"confidence {event.confidence:.2f}"
            return f"{t}   routed to {event.agent} by {event.classifier} ({sure}){why}"
        case "task.started":
            return f"{t}   {event.agent} started on {event.sender}"
        case "task.progress":
            pct = f" {event.percent:.0f}%" if event.percent is not None else ""
            return f"{t}   {event.agent}{pct} {event.message}"
        case "task.completed":
            outs = ", ".join(r.key.rsplit("/", 1)[-1] for r in event.outputs.values())
            return f"{t}   {event.agent} completed in {describe_usage(event.usage)} -> {outs}"
        case "task.failed":
            kind = "retryable" if event.retryable else "permanent"
            return f"{t}   {event.agent or 'task'} failed ({kind}): {event.error}"
        case "task.input_required":
            return f"{t}   {event.agent} asks a person: {event.question}"
        case "review.verdict":
            verdict = "accepted" if event.accepted else f"rejected: {event.feedback}"
            return f"{t}   review of {event.subtask} by {event.agent}: {verdict}"
        case "human.requested":
            answer = f"baton respond {event.run_id} --approve|--reject"
            return f"{t} waiting for a person: {event.question}\n    answer: {answer}"
        case "human.received":
            return f"{t} a person {'approved' if event.approved else 'rejected'}: {event.text}"
        case "run.completed":
            outs = "\n".join(f"    {n}: {r.uri()}" for n, r in event.outputs.items())
            why = f" ({event.ended_by})" if event.ended_by else ""
            return f"{t} run completed{why}; total {describe_usage(event.usage)}\n{outs}"
        case "run.failed":
            return f"{t} run failed: {event.reason}"
        case "run.cancelled":
            return f"{t} run cancelled: {event.reason}"
    return f"{t} {event.type}"


async def _follow(cfg: Settings, run_id: str, quiet: bool) -> Event | None:
    last = None
    async for event in client.follow(cfg, run_id):
        last = event
        if not quiet:
            typer.echo(describe(event), err=True)
    return last


@app.command()
def submit(
    workflow: str,
    input: Annotated[list[str], typer.Option("--input", "-i", help="NAME=LOCAL_PATH; repeatable")] = [],  # noqa: B006
    param: Annotated[list[str], typer.Option("--param", "-p", help="KEY=VALUE; repeatable")] = [],  # noqa: B006
    wait: bool = typer.Option(False, "--wait", help="Follow the run to its end."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Upload inputs, publish the run, print its id (and with --wait, follow it to the end)."""
    cfg = settings()
    params = dict(p.partition("=")[::2] for p in param)
    try:
        run_id = _run(client.submit, workflow, _parse_inputs(input), params, cfg=cfg)
    except BatonError as exc:
        fail(str(exc))
    if not wait:
        typer.echo(json.dumps({"run_id": run_id, "status": "submitted"}) if as_json else run_id)
        return
    if not as_json:
        typer.echo(run_id)
    final = _run(_follow, run_id, quiet=as_json, cfg=cfg)
    status = client.END_STATUS.get(final.type if final else "", "unknown")
    if as_json:
        out = {"run_id": run_id, "status": status, "outputs": {}}
        if final is not None and final.type == "run.completed":
            out["outputs"] = {n: r.uri() for n, r in final.outputs.items()}
            out["usage"] = final.usage.model_dump()
        if final is not None and final.type in ("run.failed", "run.cancelled"):
            out["reason"] = final.reason
        typer.echo(json.dumps(out))
    raise typer.Exit(0 if status == "completed" else 1)


@app.command()
def watch(run_id: str) -> None:
    """Follow a run live from its event stream until it ends."""
    final = _run(_follow, run_id, quiet=False)
    raise typer.Exit(0 if final is not None and final.type == "run.completed" else 1)


@app.command()
def get(run_id: str, out: Path = typer.Option(Path("."), "--out", help="Directory to write into.")) -> None:
    """Download a finished run's outputs."""
    try:
        written = _run(client.download, run_id, out)
    except BatonError as exc:
        fail(str(exc))
    for name, path in written.items():
        typer.echo(f"{name}: {path}")


@app.command()
def respond(
    run_id: str,
    approve: bool = typer.Option(True, "--approve/--reject", help="Approve (default) or reject."),
    text: str = typer.Option("", "--text", "-t", help="A note for the run."),
    file: Path | None = typer.Option(None, "--file", "-f", help="A file to attach to the answer."),
) -> None:
    """Answer a run that is waiting for a person."""
    try:
        ref = _run(client.respond, run_id, approve, text, file)
    except BatonError as exc:
        fail(str(exc))
    typer.echo(f"{'approved' if approve else 'rejected'}: {ref.uri()}")


@app.command("runs")
def runs_(
    waiting: bool = typer.Option(False, "--waiting", help="Only runs waiting for a person."),
    limit: int = typer.Option(20, help="How many recent runs."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List recent runs, or those waiting for a person with what each asks."""
    rows = _run(client.list_runs, waiting, limit)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no runs waiting for a person" if waiting else "no runs", err=True)
    elif len(rows) == limit:
        listed = _run(client.count_runs, waiting)
        if listed > limit:
            what = "the waiting index" if waiting else "the run index"
            typer.echo(f"(the newest {limit} of {listed:,} in {what}: --limit N for more)", err=True)
    for r in rows:
        line = f"{r['run_id']}  {r['workflow']:<20} {r['status']:<18} {r['created_at'][:19]}"
        if r["question"]:
            answer = f"baton respond {r['run_id']} --approve|--reject"
            line += f"\n    asks: {r['question']}\n    see:  {r['request']}\n    answer: {answer}"
        elif r["reason"]:
            line += f"\n    {r['reason']}"
        typer.echo(line)


@app.command()
def search(
    query: str,
    prefix: str = typer.Option("", "--prefix", help="Only keys starting with this prefix."),
    limit: int = typer.Option(10, "--limit", min=1, max=100, help="Most hits shown."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as a JSON list."),
) -> None:
    """Full-text search of the workspace's text files, best first (asks the indexer)."""
    try:
        hits = _run(client.search, query, prefix=prefix, limit=limit)
    except BatonError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps([h.model_dump() for h in hits]))
        return
    if not hits:
        typer.echo("no matches", err=True)
    for h in hits:
        snippet = " ".join(h.snippet.split())
        typer.echo(f"{h.score:8.3f}  {h.key}  (version {h.version_id or '-'})\n          {snippet}")


@app.command()
def cancel(
    run_id: str, reason: str = typer.Option("cancelled by a user", help="Recorded in the run.")
) -> None:
    """Stop a run: queued tasks are dropped, running ones stop at their next checkpoint."""
    _run(client.cancel, run_id, reason)
    typer.echo(f"cancellation of {run_id} requested; `baton watch {run_id}` shows when it ends", err=True)


@app.command("trim")
def trim_() -> None:
    """Trim the work streams below the oldest entry any consumer group still needs (never unacked work);
    drop dead letters and idle consumer names older than BATON_RETENTION_DAYS."""
    for stream, removed in _run(client.trim).items():
        typer.echo(f"{stream}: {removed} removed")


dlq_app = typer.Typer(
    help="The dead-letter stream: what could not be handled, and why.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    count: int = typer.Option(50, min=1, help="How many, newest first."),
    before: str | None = typer.Option(None, help="Only letters older than this entry id (the next page)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List dead letters: id, stream, reason."""
    if before is not None and not streams.is_entry_id(before):
        fail(f"--before {before!r} is not a stream entry id (like 1733050000000-0)")
    cfg = settings()
    letters = _run(client.dlq_list, count, before, cfg=cfg)
    if as_json:
        typer.echo(json.dumps([{"id": i, **d.model_dump(mode="json")} for i, d in letters]))
        return
    for entry_id, letter in letters:
        typer.echo(f"{entry_id}  {letter.stream:<24} {letter.service:<10} {letter.reason[:100]}")
    if not letters:
        typer.echo("no older dead letters" if before else "the dead-letter stream is empty", err=True)
    elif len(letters) == count:
        total = _run(client.dlq_length, cfg=cfg)
        typer.echo(f"({total:,} dead letters in all; older ones: --before {letters[-1][0]})", err=True)


@dlq_app.command("show")
def dlq_show(entry_id: str) -> None:
    """Show one dead letter in full, with its raw payload."""
    try:
        letter = _run(client.dlq_show, entry_id)
    except BatonError as exc:
        fail(str(exc))
    typer.echo(json.dumps(letter.model_dump(mode="json"), indent=2))


@dlq_app.command("replay")
def dlq_replay(
    entry_ids: Annotated[list[str] | None, typer.Argument(help="Entry ids; none with --all.")] = None,
    all_: bool = typer.Option(False, "--all", help="Replay every dead letter there is when it starts."),
    stream: str | None = typer.Option(None, help="With --all: only the letters read from this stream."),
) -> None:
    """Validate dead letters again and put the valid ones back on their stream; the rest stay."""
    if stream is not None and not all_:
        fail("--stream needs --all")
    if not entry_ids and not all_:
        fail("name dead-letter ids, or --all")
    if entry_ids and all_:
        fail("name dead-letter ids, or --all [--stream S], not both")
    _run(_replay, None if all_ else list(entry_ids), stream)


async def _replay(cfg: Settings, entry_ids: list[str] | None, stream: str | None) -> None:
    """One line per dead letter as it is handled; with --all, a count on stderr as it goes."""
    total = await client.dlq_length(cfg) if entry_ids is None else None  # (--all's progress line)
    done = replayed = 0
    async for entry_id, what in client.dlq_replay_iter(cfg, entry_ids, stream):
        typer.echo(f"{entry_id}: {what}")
        done += 1
        replayed += what.startswith("replayed")
        if entry_ids is None and done % client.DLQ_PAGE == 0:
            at_start = f"{total:,} dead letters at the start"
            typer.echo(f"({done:,} handled, {replayed:,} replayed; {at_start})", err=True)
    if entry_ids is None:
        summary = f"(replayed {replayed:,} dead letters, kept {done - replayed:,})"
        typer.echo(summary if done else "no dead letters" + (f" from {stream}" if stream else ""), err=True)


@app.command()
def init(notifications: bool = typer.Option(True, help="Route bucket events to the notifier.")) -> None:
    """Create the workspace bucket with versioning and its notification target (idempotent).

    With BATON_ACL_PASSWORDS (a JSON object of service -> password), also create each service's Redis ACL
    user and MinIO user, allowed only what that service needs. Needs admin credentials for both.
    """
    try:
        cfg = settings(admin=True)
    except SettingsError as exc:
        if "acl_passwords" not in str(exc):
            raise
        raw = os.environ.get("BATON_ACL_PASSWORDS", "")
        found = {m["service"]: m["password"] for m in _PASSWORD_ENTRY.finditer(raw)}
        fail("BATON_ACL_PASSWORDS is not a JSON object of service -> password. " + (
            "; ".join(password_problems(found)) or "In docker compose it is built from the "
            "BATON_<SERVICE>_PASSWORD variables in .env (letters, digits, - and _ only)."))
    if problems := password_problems(cfg.acl_passwords):
        fail("; ".join(problems))
    try:
        warnings = _run(client.init_workspace, notifications, cfg=cfg)
    except AuthenticationError as exc:
        fail(f"Redis refused the admin login in REDIS_URL ({exc}). In docker compose that password is "
             "BATON_REDIS_PASSWORD in .env, and it must be the one this Redis volume was first set up with.")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            raise
        fail(f"the S3 endpoint refused the admin credentials S3_ACCESS_KEY / S3_SECRET_KEY ({code}). "
             "In docker compose they are MINIO_ROOT_USER / MINIO_ROOT_PASSWORD in .env.")
    for warning in warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    users = f"; users for {', '.join(sorted(cfg.acl_passwords))}" if cfg.acl_passwords else ""
    typer.echo(f"bucket {cfg.bucket} ready{users}")


# A service's password goes into REDIS_URL and JSON as it is, and is a MinIO secret key (8-40 characters).
_PASSWORD = re.compile(r"[A-Za-z0-9_-]{8,40}")
# Entries of a BATON_ACL_PASSWORDS that is not valid JSON (a quote inside a password), to name the culprit.
_PASSWORD_ENTRY = re.compile(
    rf'"(?P<service>{"|".join(acl.SERVICES)})"\s*:\s*"(?P<password>.*?)"\s*[,}}]', re.S
)


def password_problems(passwords: dict[str, str]) -> list[str]:
    """What is wrong with `BATON_ACL_PASSWORDS`, each naming the .env variable docker-compose.yml fills it
    from (`BATON_<SERVICE>_PASSWORD`)."""
    problems = []
    for service, password in passwords.items():
        variable = f"BATON_{service.upper()}_PASSWORD"
        if not password:
            problems.append(f"{variable} is empty: set a password for the {service} users")
        elif not _PASSWORD.fullmatch(password):
            problems.append(
                f"{variable} must be 8-40 letters, digits, - or _ (it goes into REDIS_URL as it is; "
                f"got {len(password)} characters)"
            )
    return problems


@dev_app.command("up")
def dev_up(
    workflows: Path = typer.Option(Path("examples/workflows.yaml"), help="Workflow file."),
    workers: int = typer.Option(2, min=1, help="Worker processes."),
    cluster: bool = typer.Option(
        False,
        "--cluster",
        help="A Valkey cluster (3 masters + 3 replicas) and a 4-drive MinIO instead of one of each.",
    ),
    trace: bool = typer.Option(False, "--trace", help="Also a local Jaeger; every service sends it traces."),
) -> None:
    """Start local Redis, MinIO and every service in the background; print the client environment."""
    try:
        env = dev.up(DEV_ROOT, workflows, workers, cluster=cluster, trace=trace)
    except (servers.ServerError, BatonError) as exc:
        fail(str(exc))
    typer.echo(f"# Baton is up; logs in {DEV_ROOT / 'logs'}. Stop with: baton dev down", err=True)
    if env.get("BATON_MCP_PORT"):
        typer.echo(
            f"# MCP (streamable HTTP): http://127.0.0.1:{env['BATON_MCP_PORT']}/mcp "
            f"with header 'Authorization: Bearer {env['BATON_MCP_TOKEN']}'",
            err=True,
        )
    if env.get("BATON_GATEWAY_PORT"):
        typer.echo(
            f"# A2A: http://127.0.0.1:{env['BATON_GATEWAY_PORT']}/ token {env['BATON_A2A_TOKEN']}", err=True
        )
    if env.get("BATON_CONSOLE_PORT"):
        typer.echo(
            f"# console: http://127.0.0.1:{env['BATON_CONSOLE_PORT']}/ token {env['BATON_CONSOLE_TOKEN']}",
            err=True,
        )
    for handle, url in dev.metrics_urls(DEV_ROOT).items():
        typer.echo(f"# metrics: {handle} {url}", err=True)
    if env.get("BATON_TRACES_URL"):
        typer.echo(f"# traces: {env['BATON_TRACES_URL']}", err=True)
    for key in (
        "REDIS_URL",
        "S3_ENDPOINT_URL",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
        "BATON_BUCKET",
        "BATON_WORKFLOWS",
        "BATON_RESULT_PARTITIONS",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ):
        if env.get(key):
            typer.echo(f"export {key}={env[key]}")


@dev_app.command("down")
def dev_down() -> None:
    """Stop everything `baton dev up` started."""
    stopped = dev.down(DEV_ROOT)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running", err=True)


@dev_app.command("env")
def dev_env(
    admin: bool = typer.Option(False, "--admin", help="The admin credentials instead of the CLI's users."),
) -> None:
    """Print the client environment of the running local stack (logging in as the CLI's users)."""
    env = dev.saved_env(DEV_ROOT, admin=admin)
    if env is None:
        fail("no local stack is running (baton dev up)")
    for key in ("REDIS_URL", "S3_ENDPOINT_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "BATON_BUCKET"):
        typer.echo(f"export {key}={env[key]}")
    if "BATON_RESULT_PARTITIONS" in env:  # (a cluster's)
        typer.echo(f"export BATON_RESULT_PARTITIONS={env['BATON_RESULT_PARTITIONS']}")


@servers_app.command("install")
def servers_install() -> None:
    """Make sure a Redis-compatible server, MinIO, Jaeger and Prometheus are available (each built once)."""
    try:
        typer.echo(f"redis: {servers.redis_binary()}")
        typer.echo(f"minio: {servers.minio_binary(build=True)}")
        typer.echo(f"jaeger: {servers.jaeger_binary(build=True)}")
        typer.echo(f"prometheus: {servers.prometheus_binary(build=True)}")
    except servers.ServerError as exc:
        fail(str(exc))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"))


def main() -> None:
    try:
        app()
    except BatonError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    except RedisConnectionError as exc:
        typer.secho(
            f"error: cannot reach Redis at {_redacted(settings().redis_url)} ({exc}). "
            "Is Baton running? Start it with `baton dev up` or set REDIS_URL.",
            fg="red",
            err=True,
        )
        sys.exit(2)
    except EndpointConnectionError as exc:
        typer.secho(
            f"error: cannot reach the S3 endpoint {settings().s3_endpoint_url} ({exc}). "
            "Start it with `baton dev up` or set S3_ENDPOINT_URL.",
            fg="red",
            err=True,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
