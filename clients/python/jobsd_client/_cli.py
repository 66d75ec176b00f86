"""`jobsctl`: the human CLI for jobsd.

    jobsctl ls --status working
    jobsctl import https://example.com/events.csv --datasource events
    jobsctl watch <job id>                 (ids may be shortened: the first 8+ characters of one job's id)
    jobsctl ls --follow                    (a live table of the jobs, over WatchJobs)
    jobsctl datasource create events --schema "date DateTime, user_id Int64" --engine-sorting-key date
    jobsctl datasource ls

Target and token come from `--target`/`--token` or `JOBSD_TARGET`/`JOBSD_TOKEN`; the `datasource` commands talk to
the REST gateway instead, at `--http-target` or `JOBSD_HTTP_TARGET` (default http://127.0.0.1:8080). `--json` on
any command prints the job(s), or the gateway's data-source JSON, instead of text. Failures print
`error: <message>` on stderr and exit 1 (usage mistakes exit 2, as argparse conventionally does); `watch` also exits
1 when the job ends in error or cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO, TypeVar

from google.protobuf.message import Message

from jobsd_client import pb
from jobsd_client._completion import add_completion_command, completion_script
from jobsd_client._datasources import DEFAULT_HTTP_TARGET, DataSourcesClient, DataSourcesError
from jobsd_client._render import (
    ProgressClock,
    datasource_text,
    datasources_table,
    details_text,
    follow_header,
    follow_row,
    follow_table,
    jobs_table,
    kinds_table,
    log_table,
    progress_line,
)
from jobsd_client.async_client import AsyncJobsClient
from jobsd_client.convert import STATUS_NAMES, TERMINAL_STATUSES, message_to_dict, status_name
from jobsd_client.errors import JobsdClientError, NotFound, Unauthenticated, Unavailable
from jobsd_client.events import EventType

__all__ = ["DEFAULT_HTTP_TARGET", "DEFAULT_TARGET", "CliError", "build_parser", "main"]

DEFAULT_TARGET = "127.0.0.1:50051"
_MODES = ("append", "replace")
_FORMATS = ("csv", "ndjson")


class CliError(Exception):
    """A failure to report as `error: <message>` (exit 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def _iso_datetime(value: str) -> datetime:
    """ISO 8601 as the REST API takes it: `Z`, offsets and date-only accepted; naive means UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ISO 8601 date {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"images\": 4}'")
    return parsed


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _connection_options(*, in_subcommand: bool) -> _Parser:
    # The same options are accepted before and after the command; in the subcommand they default to SUPPRESS
    # so that a value given before the command is not overwritten by the subcommand's default.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if in_subcommand else value

    options = _Parser(add_help=False)
    options.add_argument("--target", default=default(None), help=f"HOST:PORT (env JOBSD_TARGET; {DEFAULT_TARGET})")
    options.add_argument(
        "--http-target",
        default=default(None),
        metavar="URL",
        help=f"the REST gateway, for `datasource` (env JOBSD_HTTP_TARGET; {DEFAULT_HTTP_TARGET})",
    )
    options.add_argument("--token", default=default(None), help="bearer token (env JOBSD_TOKEN)")
    options.add_argument(
        "--workspace",
        default=default(None),
        help="workspace id, for tokens that span every workspace (env JOBSD_WORKSPACE)",
    )
    options.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of text")
    options.add_argument("--timeout", type=float, default=default(30.0), help="seconds per call (default 30)")
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jobsctl",
        description="Look at, create, cancel and follow jobsd jobs.",
        parents=[_connection_options(in_subcommand=False)],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_connection_options(in_subcommand=True)]

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=common)

    ls = command("ls", "list jobs of the last 48 hours, newest first")
    ls.add_argument("--kind", help="import, populateview, copy, query, delete_data, sink, or a declared kind")
    ls.add_argument("--status", choices=STATUS_NAMES)
    ls.add_argument("--pipe-id")
    ls.add_argument("--pipe-name")
    ls.add_argument("--created-after", type=_iso_datetime, help="ISO 8601, inclusive (e.g. 2026-01-31T12:00:00Z)")
    ls.add_argument("--created-before", type=_iso_datetime, help="ISO 8601, inclusive")
    ls.add_argument("--limit", type=_positive_int, default=100, help="at most this many jobs (default 100)")
    ls.add_argument(
        "--follow",
        action="store_true",
        help="keep watching: a live table of the jobs that have not ended, and every change (WatchJobs)",
    )

    job_id_help = "the job's id, or the first 8 or more characters of it (as `watch` prints it)"
    for name, help_text in (
        ("details", "show everything about a job"),
        ("cancel", "cancel a job (waiting: at once; working: the worker stops at its next heartbeat)"),
        ("retry", "create a new job with the parameters of a failed or cancelled one"),
    ):
        command(name, help_text).add_argument("job_id", metavar="JOB_ID", help=job_id_help)
    _details_options(commands.choices["details"])

    watch = command("watch", "follow a job until it ends (a live progress bar on a terminal)")
    watch.add_argument("job_id", metavar="JOB_ID", help=job_id_help)

    log = command("log", "the jobs_log archive: one row per status change")
    log.add_argument("--job-id", help=job_id_help)
    log.add_argument("--kind")
    log.add_argument("--status", choices=STATUS_NAMES)
    log.add_argument("--limit", type=_positive_int, default=100)

    command("workspace", "show the token's workspace and scopes")
    command("kinds", "the kinds of job the server accepts, with their rules")

    def creating(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = command(name, help_text)
        sub.add_argument("--idempotency-key", help="a retried create with the same key returns the same job")
        sub.add_argument("--watch", action="store_true", help="follow the new job until it ends")
        return sub

    imp = creating("import", "import a CSV or NDJSON file from a URL into a data source")
    imp.add_argument("url", metavar="URL", help="http(s):// or file:// URL")
    imp.add_argument("--datasource", required=True, metavar="NAME")
    imp.add_argument("--mode", choices=_MODES, default="append")
    imp.add_argument("--format", choices=_FORMATS, help="default: guessed from the URL, else from the first line")
    imp.add_argument("--delimiter", metavar="CHAR", help="CSV delimiter (default: guessed from the header)")

    populate = creating("populate", "populate a data source from a materialized node, partition by partition")
    populate.add_argument("--pipe", required=True, metavar="NAME", help="the pipe (materialized node) name")
    populate.add_argument("--datasource", required=True, metavar="TARGET")
    populate.add_argument("--sql", required=True, help="the node's SQL")
    populate.add_argument("--source", metavar="SRC", help="the data source the SQL reads")
    populate.add_argument("--partition-by", metavar="EXPR", help="expression splitting the source into partitions")

    copy = creating("copy", "run SQL and write its result into a data source")
    copy.add_argument("--sql", required=True)
    copy.add_argument("--datasource", required=True, metavar="TARGET")
    copy.add_argument("--mode", choices=_MODES, default="append")
    copy.add_argument("--pipe", metavar="NAME", help="the copy pipe name, if any")

    query = creating("query", "run SQL in the background and keep its result")
    query.add_argument("--sql", required=True)

    create = creating("create", "create a job of any kind the server accepts (see `jobsctl kinds`)")
    create.add_argument("kind", metavar="KIND")
    create.add_argument("--params", type=_json_object, default=None, metavar="JSON", help="e.g. '{\"images\": 4}'")
    create.add_argument("--datasource", metavar="NAME", help="the data source the job writes (if its kind needs one)")
    create.add_argument("--pipe", metavar="NAME", help="the pipe name, if any")

    datasource = command("datasource", "create, list and show data sources (over the REST gateway)")
    actions = datasource.add_subparsers(dest="datasource_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help_text, description=help_text, parents=common)

    ds_create = action("create", "create an empty data source with a schema")
    ds_create.add_argument("name", metavar="NAME")
    ds_create.add_argument(
        "--schema", required=True, help='columns as "name Type, ...", e.g. "date DateTime, user_id Int64, event String"'
    )
    ds_create.add_argument("--engine-sorting-key", metavar="EXPR", help='e.g. "date, user_id"')
    ds_create.add_argument("--engine-partition-key", metavar="EXPR", help='e.g. "toYear(date)"')
    ds_create.add_argument("--description")
    action("ls", "list the workspace's data sources with their rows and bytes")
    action("show", "show a data source: id, engine, statistics, columns").add_argument("name", metavar="NAME")

    token = command("token", "tokens are created on the server host (see `jobsd token create`)")
    token.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    _add_conventions(parser, commands)
    return parser


def _details_options(details: argparse.ArgumentParser) -> None:
    details.add_argument(
        "--queries", action="store_true", help="list every query (default: a count by status and the failed ones)"
    )


def _add_conventions(parser: argparse.ArgumentParser, commands: Any) -> None:
    """`--version` and `completion bash|zsh`: what every CLI is expected to have."""
    parser.add_argument("--version", action="version", version=f"jobsctl {_version()}")
    add_completion_command(commands, "jobsctl")


def _version() -> str:
    try:
        return f"{importlib.metadata.version('jobsd-client')} (jobsd-client)"
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: jobsd-client is not installed)"


def _completion(args: argparse.Namespace, out: TextIO) -> int:
    out.write(completion_script(build_parser(), args.shell))
    return 0


# ------------------------------------------------------------------ output


_T = TypeVar("_T")


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _job_json(job: Message) -> dict[str, Any]:
    return message_to_dict(job)


def _print_listing(
    out: TextIO,
    args: argparse.Namespace,
    key: str,
    rows: Sequence[_T],
    as_json: Callable[[_T], Any],
    table: Callable[[Sequence[_T]], str],
    nothing: str,
) -> None:
    """A listing command's answer: `{key: [rows]}` with --json, else the table, or "No NOTHING found."."""
    if args.json:
        _print_json({key: [as_json(row) for row in rows]}, out)
    elif rows:
        out.write(table(rows) + "\n")
    else:
        out.write(f"No {nothing} found.\n")


def _listed_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filters `ls` and `ls --follow` share, as the client's keywords."""
    return {
        "kind": args.kind,
        "status": args.status,
        "pipe_id": args.pipe_id,
        "pipe_name": args.pipe_name,
        "workspace_id": args.workspace,
    }


def _created(job: pb.Job, args: argparse.Namespace, out: TextIO, what: str = "created") -> None:
    if args.json:
        _print_json(_job_json(job), out)
        return
    out.write(f"Job {job.id} ({job.kind}) {what}: {status_name(job.status)}\n")
    if not getattr(args, "watch", False):
        out.write(f"Follow it with: jobsctl watch {job.id}\n")


# ------------------------------------------------------------------ commands

_Command = Callable[[AsyncJobsClient, argparse.Namespace, TextIO], Awaitable[int]]


async def _ls(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.follow:
        return await _ls_follow(client, args, out)
    jobs = [
        job
        async for job in client.iter_jobs(
            **_listed_filters(args),
            created_after=args.created_after,
            created_before=args.created_before,
            limit=args.limit,
        )
    ]
    _print_listing(out, args, "jobs", jobs, _job_json, jobs_table, "jobs")
    return 0


async def _ls_follow(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    """`ls --follow`: the jobs that have not ended, then every change, until Ctrl-C.

    On a terminal the table is redrawn in place (newest first, as many as fit); into a pipe or file the table is
    printed once the opening snapshot is complete, then one row per change (`--json`: one event per line).
    """
    if args.created_after or args.created_before:
        raise CliError("--follow shows live changes: --created-after and --created-before do not apply to it")
    live = out.isatty() and not args.json
    jobs: dict[str, pb.Job] = {}
    synced = False
    async for event in _with_ticks(
        client.watch_jobs(**_listed_filters(args)),
        1.0 if live else None,
    ):
        changed: pb.Job | None = None
        if event is not None:
            if args.json:
                out.write(json.dumps(message_to_dict(event.message)) + "\n")
                out.flush()
                continue
            if event.type is EventType.SYNCED:
                synced = True
            elif event.has_job:
                known = jobs.get(event.job.id)
                if known is None or event.job.revision > known.revision:
                    changed = jobs[event.job.id] = event.job
                    if len(jobs) > args.limit:  # forget the oldest beyond --limit
                        del jobs[min(jobs.values(), key=lambda job: (job.created_at.ToMicroseconds(), job.id)).id]
            if not synced:
                continue
            if not live and event.type is EventType.SYNCED:
                out.write(follow_header() + "\n")
                for job in sorted(jobs.values(), key=lambda job: job.created_at.ToMicroseconds()):
                    out.write(follow_row(job) + "\n")
            elif not live and changed is not None:
                out.write(follow_row(changed) + "\n")
        if live and synced:
            size = shutil.get_terminal_size((100, 24))
            title = f"jobs of the last 48 h that have not ended, and every change  {datetime.now(UTC):%H:%M:%S} UTC"
            body = follow_table(list(jobs.values()), size.lines - 2)
            out.write("\x1b[H\x1b[2J" + title[: size.columns - 1] + "\n" + body + "\n")
        out.flush()
    raise CliError("the server ended the watch")


async def _with_ticks(events: AsyncIterator[_T], every: float | None) -> AsyncIterator[_T | None]:
    """`events`, and None whenever `every` seconds pass without one (a live display's clock keeps moving)."""
    if every is None:
        async for event in events:
            yield event
        return
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put((True, event))
        except BaseException as exc:  # handed to the reader, which raises it
            await queue.put((False, exc))
            return
        await queue.put((False, None))

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                # Not wait_for, which on Python 3.11 can lose a cancellation (see worker._WorkerStream._ask).
                async with asyncio.timeout(every):
                    more, item = await queue.get()
            except TimeoutError:
                yield None
                continue
            if more:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _details(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    job = await client.get_job(args.job_id)
    if args.json:
        _print_json(_job_json(job), out)
    else:
        out.write(details_text(job, all_queries=args.queries) + "\n")
    return 0


async def _cancel(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    job = await client.cancel_job(args.job_id)
    if args.json:
        _print_json(_job_json(job), out)
    elif job.status == pb.JOB_STATUS_CANCELLING:
        out.write(f"Job {job.id}: cancelling (its worker stops at its next heartbeat)\n")
    else:
        out.write(f"Job {job.id}: {status_name(job.status)}\n")
    return 0


async def _retry(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    job = await client.retry_job(args.job_id)
    _created(job, args, out, what=f"created as a retry of {args.job_id}")
    return 0


async def _follow(client: AsyncJobsClient, job_id: str, args: argparse.Namespace, out: TextIO) -> int:
    """Stream the job's events until it ends; exit status 0 only if it ended `done`."""
    live = out.isatty() and not args.json
    ascii_only = (getattr(out, "encoding", None) or "ascii").lower().replace("-", "") not in ("utf8", "utf16")
    last_line = ""
    job: pb.Job | None = None
    clock = ProgressClock()
    # On a terminal the line is redrawn every second between events too, so its elapsed time keeps moving.
    async for event in _with_ticks(client.follow_job(job_id), 1.0 if live else None):
        if event is not None:
            if not event.has_job:
                continue
            job = event.job
            if args.json:
                out.write(json.dumps(message_to_dict(event.message)) + "\n")
                out.flush()
                continue
            clock.update(job, datetime.now(UTC))
        if job is None:
            continue
        width = shutil.get_terminal_size((100, 24)).columns - 1 if live else 200
        line = progress_line(job, width, ascii_only=ascii_only, timing=clock.text(job, datetime.now(UTC)))
        if line == last_line:
            continue
        last_line = line
        # On a terminal the line is redrawn in place; into a pipe or file every change is its own line.
        out.write(f"\r{line}\x1b[K" if live else line + "\n")
        out.flush()
    if live and last_line:
        out.write("\n")
    if job is None or job.status not in TERMINAL_STATUSES:
        raise CliError(f"the watch of job {job_id} ended before the job did")
    if job.status == pb.JOB_STATUS_DONE:
        if not args.json:
            out.write(f"Job {job.id} done\n")
        return 0
    reason = f": {job.error}" if job.HasField("error") else ""
    raise CliError(f"job {job.id} ended {status_name(job.status)}{reason}")


async def _watch(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    return await _follow(client, args.job_id, args, out)


async def _log(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    entries: list[pb.JobLogEntry] = []
    page_token: str | None = None
    while len(entries) < args.limit:
        page = await client.list_jobs_log(
            job_id=args.job_id,
            kind=args.kind,
            status=args.status,
            workspace_id=args.workspace,
            page_size=min(100, args.limit - len(entries)),
            page_token=page_token,
        )
        entries.extend(page.entries)
        page_token = page.next_page_token
        if not page_token:
            break
    _print_listing(out, args, "entries", entries, message_to_dict, log_table, "log entries")
    return 0


async def _workspace(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    workspace = await client.get_workspace()
    if args.json:
        _print_json(message_to_dict(workspace), out)
    else:
        out.write(f"workspace:  {workspace.name} ({workspace.id})\n")
        out.write(f"token:      {workspace.token_name}\n")
        out.write(f"scopes:     {', '.join(workspace.scopes)}\n")
    return 0


async def _kinds(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    kinds = await client.list_kinds()
    if args.json:
        _print_json({"kinds": [message_to_dict(kind) for kind in kinds]}, out)
    else:
        out.write(kinds_table(kinds) + "\n")
    return 0


async def _create(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO, **fields: Any) -> int:
    job = await client.create_job(workspace_id=args.workspace, idempotency_key=args.idempotency_key, **fields)
    _created(job, args, out)
    if args.watch:
        return await _follow(client, job.id, args, out)
    return 0


async def _import(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    params = {"format": args.format} if args.format else {}
    if args.delimiter:
        params["dialect_delimiter"] = args.delimiter
    return await _create(
        client,
        args,
        out,
        kind="import",
        url=args.url,
        datasource={"name": args.datasource},
        mode=args.mode,
        params=params or None,
    )


async def _populate(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    params: dict[str, Any] = {"sql": args.sql}
    if args.source:
        params["source"] = args.source
    if args.partition_by:
        params["partition_by"] = args.partition_by
    return await _create(
        client, args, out, kind="populateview", pipe_name=args.pipe, datasource={"name": args.datasource}, params=params
    )


async def _copy(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    return await _create(
        client,
        args,
        out,
        kind="copy",
        query_sql=args.sql,
        params={"sql": args.sql},
        datasource={"name": args.datasource},
        mode=args.mode,
        pipe_name=args.pipe,
    )


async def _query(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    return await _create(client, args, out, kind="query", query_sql=args.sql, params={"sql": args.sql})


async def _create_any(client: AsyncJobsClient, args: argparse.Namespace, out: TextIO) -> int:
    return await _create(
        client,
        args,
        out,
        kind=args.kind,
        params=args.params,
        datasource={"name": args.datasource} if args.datasource else None,
        pipe_name=args.pipe,
    )


_COMMANDS: dict[str, _Command] = {
    "ls": _ls,
    "details": _details,
    "cancel": _cancel,
    "retry": _retry,
    "watch": _watch,
    "log": _log,
    "workspace": _workspace,
    "import": _import,
    "populate": _populate,
    "copy": _copy,
    "query": _query,
    "create": _create_any,
    "kinds": _kinds,
}


# ------------------------------------------------------------------ data sources (REST)


def _datasource(client: DataSourcesClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.datasource_command == "create":
        created = client.create(
            args.name,
            args.schema,
            sorting_key=args.engine_sorting_key,
            partition_key=args.engine_partition_key,
            description=args.description,
        )
        if args.json:
            _print_json(created, out)
        else:
            out.write(f"Data source {created.get('name', args.name)} created ({created.get('id', '-')})\n")
        return 0
    if args.datasource_command == "ls":
        _print_listing(out, args, "datasources", client.list(), dict, datasources_table, "data sources")
        return 0
    source = client.get(args.name)
    if args.json:
        _print_json(source, out)
    else:
        out.write(datasource_text(source) + "\n")
    return 0


def _describe_rest(exc: DataSourcesError) -> str:
    if exc.status in (401, 403) and exc.message == "invalid authentication token":
        return f"{exc.message} (check --token or JOBSD_TOKEN)"
    return exc.message


# ------------------------------------------------------------------ entry point


def _describe(exc: JobsdClientError, target: str) -> str:
    if exc.field == "target" and not isinstance(exc, Unavailable):
        return f"--target (JOBSD_TARGET): {exc.message.removeprefix('target: ')}"
    if isinstance(exc, Unavailable):
        return f"cannot reach jobsd at {target}: {exc.message}"
    if isinstance(exc, Unauthenticated):
        return f"{exc.message} (check --token or JOBSD_TOKEN)"
    return exc.message + _short_id_hint(exc)


_NOT_FOUND_ID = re.compile(r'^Job with id "([0-9a-fA-F-]{1,7})" not found$')


def _short_id_hint(exc: JobsdClientError) -> str:
    """What to add when an id not found is a prefix too short to stand for a job (fewer than 8 characters)."""
    if isinstance(exc, NotFound) and _NOT_FOUND_ID.match(exc.message):
        return " (a shortened id needs at least 8 characters)"
    return ""


async def _run(args: argparse.Namespace, target: str, token: str, out: TextIO) -> int:
    async with AsyncJobsClient(target, token, timeout=args.timeout) as client:
        return await _COMMANDS[args.command](client, args, out)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, environ: dict[str, str] | None = None) -> int:
    """Run jobsctl; returns the exit status (the console script passes it to sys.exit)."""
    out = out or sys.stdout
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    if args.command == "completion":
        return _completion(args, out)
    if args.command == "token":
        sys.stderr.write(
            "error: tokens are created on the server host, where the store is: "
            "jobsd token create --workspace W --scope S [--scope S ...]\n"
        )
        return 1
    target = args.target or env.get("JOBSD_TARGET") or DEFAULT_TARGET
    token = args.token or env.get("JOBSD_TOKEN") or ""
    args.workspace = args.workspace or env.get("JOBSD_WORKSPACE") or None
    if not token:
        sys.stderr.write("error: no token: pass --token or set JOBSD_TOKEN\n")
        return 1
    try:
        if args.command == "datasource":
            http_target = args.http_target or env.get("JOBSD_HTTP_TARGET") or DEFAULT_HTTP_TARGET
            rest = DataSourcesClient(http_target, token, workspace_id=args.workspace, timeout=args.timeout)
            return _datasource(rest, args, out)
        return asyncio.run(_run(args, target, token, out))
    except DataSourcesError as exc:
        sys.stderr.write(f"error: {_describe_rest(exc)}\n")
    except JobsdClientError as exc:
        sys.stderr.write(f"error: {_describe(exc, target)}\n")
    except CliError as exc:
        sys.stderr.write(f"error: {exc}\n")
    except KeyboardInterrupt:
        sys.stderr.write("\nerror: interrupted\n")
        return 130
    except BrokenPipeError:
        # `jobsctl ls | head`: the reader left; not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
