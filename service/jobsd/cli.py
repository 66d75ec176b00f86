"""`jobsd`: serve, token create, gateway (standalone REST), worker (built-in executors against a remote jobsd)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from jobsd.app import JobsdApp, check_listen, freeze_startup_objects
from jobsd.errors import InvalidArgument, JobsdError
from jobsd.log_config import configure_logging
from jobsd.settings import SETTINGS, Settings, add_arguments, settings_from, split_addr
from jobsd.store import store_shown
from jobsd_client._completion import add_completion_command, completion_script
from jobsd_client.signals import stop_on_signals

__all__ = ["main"]

_log = logging.getLogger("jobsd")
# Where `jobsd worker` keeps its data plane unless told: beside `jobsd serve`'s (.jobsd/dataplane), never in it.
WORKER_DATA_DIR = ".jobsd/worker"
_DEFAULT_STORE = Settings().store


def _exit_within(seconds: float) -> None:
    """A watchdog: unless the process has exited within `seconds`, it exits then (status 1) whatever still runs.

    The last line of defence of "SIGTERM always ends the process": a stop that hangs (a thread that does not
    return, so the interpreter cannot finish; a peer that never answers) must not keep a process half-alive until
    someone sends SIGKILL. Jobs it did not hand back are recovered when their leases lapse (a return each). A
    daemon thread: a process that exits in time takes it along."""

    def watch() -> None:
        time.sleep(seconds)
        _log.error("shutdown did not finish within %.1f s of the signal: exiting now", seconds)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    threading.Thread(target=watch, name="jobsd-shutdown-watchdog", daemon=True).start()


def _version() -> str:
    try:
        return f"jobsd {importlib.metadata.version('jobsd')}"
    except importlib.metadata.PackageNotFoundError:
        return "jobsd (version unknown: not installed)"


def _setting_help(name: str) -> str:
    """A flag's help made from its setting, as `jobsd serve --help` shows it: meaning, variable, default."""
    setting = next(setting for setting in SETTINGS if setting.name == name)
    return f"{setting.meaning} [{setting.env}; default: {setting.default_text}]".replace("%", "%%")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobsd", description="jobsd: the Jobs API as a service")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve gRPC (and the REST gateway) on the configured store")
    add_arguments(serve)
    serve.add_argument("--banner", action="store_true", help="print the addresses, the admin token and next steps")

    token = commands.add_parser("token", help="manage tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token and print it once")
    create.add_argument("--workspace", help="workspace name (omit with --all-workspaces)")
    create.add_argument("--all-workspaces", action="store_true", help="an internal service token for every workspace")
    create.add_argument("--scope", action="append", required=True, help="ADMIN, DATASOURCES:CREATE, JOBS:CREATE, ...")
    create.add_argument("--name", default="token")
    create.add_argument("--store", default=None, metavar="URI", help=_setting_help("store"))
    create.add_argument(
        "--create-workspace", action="store_true", help="create the workspace if it does not exist (else refused)"
    )

    gateway = commands.add_parser("gateway", help="run the REST gateway alone against a jobsd gRPC target")
    gateway.add_argument("--grpc-target", required=True, help="HOST:PORT of jobsd (or a load balancer)")
    gateway.add_argument("--http-addr", default=None, metavar="HOST:PORT", help=_setting_help("http_addr"))
    gateway.add_argument("--public-url", default=None, metavar="URL", help=_setting_help("public_url"))

    worker = commands.add_parser("worker", help="run the built-in executors against a jobsd gRPC target")
    worker.add_argument("--grpc-target", required=True, metavar="HOST:PORT", help="jobsd's gRPC address")
    worker.add_argument(
        "--token",
        default=os.environ.get("JOBSD_WORKER_TOKEN") or os.environ.get("JOBSD_SERVICE_TOKEN"),
        help="a token with JOBS:EXECUTE (env JOBSD_WORKER_TOKEN, else JOBSD_SERVICE_TOKEN)",
    )
    worker.add_argument(
        "--data-dir",
        default=None,
        help=f"its own DuckDB data plane, never one another process has open (env JOBSD_DATA_DIR; default "
        f"{WORKER_DATA_DIR}, beside `jobsd serve`'s .jobsd/)",
    )
    add_completion_command(commands, "jobsd")
    return parser


def _client_addr(addr: str) -> str:
    """The address a client on this host dials for a listen address (a wildcard host is dialled on loopback)."""
    host, port = split_addr("addr", addr)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _banner(settings: Settings, app: JobsdApp) -> str:
    token = settings.admin_token or "<your ADMIN token>"
    grpc_host = _client_addr(settings.grpc_addr).rsplit(":", 1)[0]
    target = f"{grpc_host}:{app.grpc_port}"
    http = None
    if app.http_port:
        http = f"http://{_client_addr(settings.http_addr).rsplit(':', 1)[0]}:{app.http_port}"
    sample = os.path.abspath("examples/events.csv")
    lines = [
        "",
        f"jobsd is serving gRPC on {target}" + (f" and REST on {http}" if http else ""),
        f"store: {store_shown(settings.store)}   executors: {'on' if settings.executors else 'off'}",
        f"admin token (workspace default): {token}",
    ]
    if settings.worker_token:
        lines.append(f"worker token (JOBS:EXECUTE, workspace default): {settings.worker_token}")
    if http:
        lines += ["", f"Dashboard: open {http}/ and paste the admin token; jobs then update live."]
    lines += [
        "",
        "Try it (in another terminal):",
        f"  export JOBSD_TOKEN={token} JOBSD_TARGET={target}" + (f" JOBSD_HTTP_TARGET={http}" if http else ""),
    ]
    if os.path.exists(sample) and settings.executors:
        lines += [
            f"  .venv/bin/jobsctl import file://{sample} --datasource events --watch",
            "  .venv/bin/jobsctl populate --pipe events_by_day --source events --datasource events_by_day \\",
            '      --sql "$(cat examples/events_by_day.sql)" --partition-by date --watch',
        ]
    lines += ["  .venv/bin/jobsctl ls"]
    if http:
        lines.append(f'  curl -H "Authorization: Bearer $JOBSD_TOKEN" {http}/v0/jobs')
    lines += ["", "Run a worker (README: Your own worker in five minutes):"]
    if settings.worker_token:
        lines.append(f"  export JOBSD_WORKER_TOKEN={settings.worker_token}")
    else:
        store = "" if settings.store == _DEFAULT_STORE else ' --store "$JOBSD_STORE"'
        lines.append(
            "  export JOBSD_WORKER_TOKEN=$(.venv/bin/jobsd token create --workspace default --scope JOBS:EXECUTE "
            f"--name worker{store})"
        )
    lines += [
        f"  .venv/bin/jobsd worker --grpc-target {target}    # the built-in kinds, data in {WORKER_DATA_DIR}/",
        "",
    ]
    return "\n".join(lines)


def _shutdown_notice(settings: Settings, running: list[tuple[str, str]]) -> str:
    """What a stop waits for, in one line: the running jobs (kind and short id) and the grace they get."""
    if not running:
        return "stopping: no running jobs to wait for"
    shown = ", ".join(f"{kind} {job_id[:8]}…" for job_id, kind in running[:3])
    more = f" and {len(running) - 3} more" if len(running) > 3 else ""
    jobs = "1 running job" if len(running) == 1 else f"{len(running)} running jobs"
    return (
        f"stopping: waiting up to {settings.grace_seconds:g} s for {jobs} ({shown}{more}) to finish; "
        "then they are released to the queue (JOBSD_GRACE_SECONDS)"
    )


def _announce_stop(settings: Settings, running: list[tuple[str, str]]) -> None:
    """The stop notice: a warning when jobs hold the stop up (the pause is theirs), else information."""
    _log.log(logging.WARNING if running else logging.INFO, _shutdown_notice(settings, running))


async def _serve(settings: Settings, banner: bool) -> int:
    app = JobsdApp(settings)
    try:
        await app.start()
    except BaseException:
        await app.stop()
        raise
    freeze_startup_objects()
    try:
        # The handlers first: a SIGTERM sent as soon as the banner is read stops the server gracefully too.
        with stop_on_signals() as stop:
            if banner:
                print(_banner(settings, app), flush=True)
            await stop.wait()
    finally:
        _exit_within(settings.grace_seconds + settings.shutdown_margin_seconds)
        _announce_stop(settings, app.executors.running_jobs() if app.executors else [])
        await app.stop()
    return 0


async def _token_create(args: argparse.Namespace) -> int:
    if bool(args.workspace) == bool(args.all_workspaces):
        print("error: give exactly one of --workspace NAME or --all-workspaces", file=sys.stderr)
        return 2
    settings = settings_from(os.environ, {"store": args.store})
    app = JobsdApp(settings)
    await app.store.open()
    try:
        secret = await app.create_token(
            None if args.all_workspaces else args.workspace,
            args.scope,
            args.name,
            create_workspace=args.create_workspace,
        )
    finally:
        await app.store.close()
    print(secret)
    return 0


async def _gateway(args: argparse.Namespace) -> int:
    from jobsd.gateway.standalone import run_standalone

    settings = settings_from(os.environ, {"http_addr": args.http_addr, "public_url": args.public_url})
    check_listen("REST", "JOBSD_HTTP_ADDR", settings.http_addr)
    with stop_on_signals() as stop:
        await run_standalone(settings, args.grpc_target, stop)
    return 0


async def _worker(args: argparse.Namespace) -> int:
    from jobsd.executors.runner import ExecutorRunner

    if not args.token:
        print("error: --token (or JOBSD_WORKER_TOKEN) is required: a token with JOBS:EXECUTE", file=sys.stderr)
        return 2
    settings = settings_from(os.environ, {"data_dir": args.data_dir})
    if not settings.data_dir:
        # Not the store's directory (`jobsd serve`'s data plane is there): a worker beside it needs its own.
        settings = settings.with_changes(data_dir=WORKER_DATA_DIR)
    runner = ExecutorRunner(settings, args.grpc_target, args.token)
    # The handlers before anything runs: a SIGTERM at any moment from here on is a graceful stop.
    # (Removed again before the stop, as in `serve`: a second signal then ends the process at once.)
    with stop_on_signals() as stop:
        await runner.start()
        signalled = asyncio.create_task(stop.wait())
        worker_ended = asyncio.create_task(runner.wait())
        try:
            await asyncio.wait({signalled, worker_ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (signalled, worker_ended):
                task.cancel()
            await asyncio.gather(signalled, worker_ended, return_exceptions=True)
    try:
        if stop.is_set():
            _announce_stop(settings, runner.running_jobs())
    finally:
        _exit_within(settings.grace_seconds + settings.shutdown_margin_seconds)
        await runner.stop()
    if runner.failure is not None:
        print(f"error: {runner.failure}", file=sys.stderr)
        return 1
    return 0


def _one_line(message: str) -> str:
    """A failure as one line: the first line, without a driver's topology dump, at most 400 characters."""
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    line, timed, rest = line.partition(", Timeout: ")
    waited = f" (gave up after {rest.split(',', 1)[0]})" if timed else ""
    line = line.partition(" (configured timeouts: ")[0] + waited
    return line if len(line) <= 400 else line[:399] + "…"


def _named(exc: JobsdError) -> str:
    """The error's text, a setting's field name (`store`) shown as its variable (`JOBSD_STORE`)."""
    if isinstance(exc, InvalidArgument) and exc.field:
        env = {setting.name: setting.env for setting in SETTINGS}.get(exc.field)
        if env is not None:
            return f"{env}: {getattr(exc, 'problem', exc.message)}"
    return str(exc)


def _log_settings(environ: Mapping[str, str], level: str) -> tuple[str, str]:
    """JOBSD_LOG_LEVEL (else `level`) and JOBSD_LOG_FORMAT as parsed settings, for the commands that read no other
    setting first."""
    log_format = ""
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw is not None and setting.parse is not None and setting.name in ("log_level", "log_format"):
            value = setting.parse(setting.env, raw)
            level, log_format = (value, log_format) if setting.name == "log_level" else (level, value)
    return level, log_format


def main(argv: Sequence[str] | None = None) -> int:
    """Run `jobsd`. A failure to start (a port in use, a data directory taken, a store out of reach, a bad
    setting) is one line on stderr naming the address or setting, and exit status 2: never a traceback."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "completion":
            sys.stdout.write(completion_script(_parser(), args.shell))
            return 0
        if args.command == "serve":
            flags = {k: v for k, v in vars(args).items() if k not in ("command", "banner")}
            settings = settings_from(os.environ, flags)
            configure_logging(settings.log_level, settings.log_format)
            return asyncio.run(_serve(settings, args.banner))
        # The long-running commands say at start that they run (as `serve` does); a one-shot command only warns.
        configure_logging(*_log_settings(os.environ, "WARNING" if args.command == "token" else "INFO"))
        if args.command == "token":
            return asyncio.run(_token_create(args))
        if args.command == "gateway":
            return asyncio.run(_gateway(args))
        return asyncio.run(_worker(args))
    except JobsdError as exc:
        print(f"error: {_one_line(_named(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file or directory the store or the data plane needs (permissions, a full disk, a missing parent).
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
