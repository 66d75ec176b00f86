"""`jobsd`: serve, token create, gateway (standalone REST), worker (built-in executors against a remote jobsd)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

from jobsd.app import JobsdApp
from jobsd.errors import JobsdError
from jobsd.log_config import configure_logging
from jobsd.settings import Settings, add_arguments, settings_from
from jobsd_client.signals import stop_on_signals, until_signalled

__all__ = ["main"]

_log = logging.getLogger("jobsd")


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobsd", description="jobsd: the Jobs API as a service")
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
    create.add_argument("--store", default=None, help="(env JOBSD_STORE)")

    gateway = commands.add_parser("gateway", help="run the REST gateway alone against a jobsd gRPC target")
    gateway.add_argument("--grpc-target", required=True, help="HOST:PORT of jobsd (or a load balancer)")
    gateway.add_argument("--http-addr", default=None, help="(env JOBSD_HTTP_ADDR)")
    gateway.add_argument("--public-url", default=None, help="(env JOBSD_PUBLIC_URL)")

    worker = commands.add_parser("worker", help="run the built-in executors against a jobsd gRPC target")
    worker.add_argument("--grpc-target", required=True)
    worker.add_argument(
        "--token", default=os.environ.get("JOBSD_WORKER_TOKEN") or os.environ.get("JOBSD_SERVICE_TOKEN")
    )
    worker.add_argument("--data-dir", default=None, help="(env JOBSD_DATA_DIR)")
    return parser


def _banner(settings: Settings, app: JobsdApp) -> str:
    token = settings.admin_token or "<your ADMIN token>"
    http = f"http://127.0.0.1:{app.http_port}" if app.http_port else None
    sample = os.path.abspath("examples/events.csv")
    lines = [
        "",
        f"jobsd is serving gRPC on 127.0.0.1:{app.grpc_port}" + (f" and REST on {http}" if http else ""),
        f"store: {settings.store}   executors: {'on' if settings.executors else 'off'}",
        f"admin token (workspace default): {token}",
    ]
    if http:
        lines += ["", f"Dashboard: open {http}/ and paste the admin token; jobs then update live."]
    lines += [
        "",
        "Try it (in another terminal):",
        f"  export JOBSD_TOKEN={token}",
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
    lines.append("")
    return "\n".join(lines)


async def _serve(settings: Settings, banner: bool) -> int:
    app = JobsdApp(settings)
    try:
        await app.start()
    except BaseException:
        await app.stop()
        raise
    if banner:
        print(_banner(settings, app), flush=True)
    try:
        await until_signalled()
    finally:
        _exit_within(settings.grace_seconds + settings.shutdown_margin_seconds)
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
        secret = await app.create_token(None if args.all_workspaces else args.workspace, args.scope, args.name)
    finally:
        await app.store.close()
    print(secret)
    return 0


async def _gateway(args: argparse.Namespace) -> int:
    from jobsd.gateway.standalone import run_standalone

    settings = settings_from(os.environ, {"http_addr": args.http_addr, "public_url": args.public_url})
    with stop_on_signals() as stop:
        await run_standalone(settings, args.grpc_target, stop)
    return 0


async def _worker(args: argparse.Namespace) -> int:
    from jobsd.executors.runner import ExecutorRunner

    if not args.token:
        print("error: --token (or JOBSD_WORKER_TOKEN) is required: a token with JOBS:EXECUTE", file=sys.stderr)
        return 2
    settings = settings_from(os.environ, {"data_dir": args.data_dir})
    runner = ExecutorRunner(settings, args.grpc_target, args.token)
    await runner.start()
    signalled = asyncio.create_task(until_signalled())
    worker_ended = asyncio.create_task(runner.wait())
    try:
        await asyncio.wait({signalled, worker_ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (signalled, worker_ended):
            task.cancel()
        await asyncio.gather(signalled, worker_ended, return_exceptions=True)
        _exit_within(settings.grace_seconds + settings.shutdown_margin_seconds)
        await runner.stop()
    if runner.failure is not None:
        print(f"error: {runner.failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            flags = {k: v for k, v in vars(args).items() if k not in ("command", "banner")}
            settings = settings_from(os.environ, flags)
            configure_logging(settings.log_level)
            return asyncio.run(_serve(settings, args.banner))
        configure_logging(os.environ.get("JOBSD_LOG_LEVEL", "WARNING"))
        if args.command == "token":
            return asyncio.run(_token_create(args))
        if args.command == "gateway":
            return asyncio.run(_gateway(args))
        return asyncio.run(_worker(args))
    except JobsdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
