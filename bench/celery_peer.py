"""The Celery + Redis peer (runs in the peers' own virtual environment, `.venv-peers`; never imports jobsd).

    python -m bench.celery_peer worker  --broker URL --pool solo|threads --concurrency 32
    python -m bench.celery_peer produce --broker URL --jobs 3000 [--ids-out FILE]
    python -m bench.celery_peer flower  --broker URL --port P

Configuration, and why it is Celery's fair best for the same job as jobsd's no-op (bench/README.md, "Peers"):
results are stored in Redis (jobsd stores every job's outcome), task events are on (jobsd publishes every change
to watchers; Flower needs them), `task_acks_late` with `worker_prefetch_multiplier` high enough to keep the
worker fed (a task whose worker dies is delivered again, as a jobsd job whose worker dies is requeued), and the
producer sends the whole batch as one `group` and waits with `join_native` (results over Redis pub/sub, no
polling): the fastest way Celery offers to send many tasks and learn they are done.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from celery import Celery, group

app = Celery("bench_peer")


def configure(broker: str, *, prefetch: int = 64, acks_late: bool = True) -> None:
    app.conf.update(
        broker_url=broker,
        result_backend=broker,
        task_acks_late=acks_late,
        worker_prefetch_multiplier=prefetch,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_ignore_result=False,
        result_expires=48 * 3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
    )


configure(os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0"))


@app.task(name="bench.noop")
def noop() -> None:
    """The no-op job: what both systems run, so the figure is the systems' own cost per job."""
    return None


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def produce(jobs: int, ids_out: str | None) -> dict[str, float]:
    # Connect first (not timed): the producer is a running service, not a process started per batch.
    app.connection_for_write().ensure_connection()
    app.backend.client.ping()
    cpu0, t0 = _cpu(), time.perf_counter()
    result = group(noop.s() for _ in range(jobs)).apply_async()
    result.join_native(timeout=600)
    seconds = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    if ids_out:
        with open(ids_out, "w") as out:
            out.write("\n".join(r.id for r in result.results))
    return {"jobs": jobs, "seconds": seconds, "producer_cpu": cpu}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.celery_peer")
    parser.add_argument("role", choices=("worker", "produce", "flower"))
    parser.add_argument("--broker", required=True)
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--acks-late", choices=("on", "off"), default="on")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--ids-out", default=None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    configure(args.broker, prefetch=args.prefetch, acks_late=args.acks_late == "on")
    if args.role == "produce":
        print(json.dumps(produce(args.jobs, args.ids_out)), flush=True)
    elif args.role == "worker":
        app.worker_main(
            [
                "worker",
                f"--pool={args.pool}",
                f"--concurrency={args.concurrency}",
                "--events",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"bench@{os.getpid()}",
            ]
        )
    else:
        app.start(["flower", f"--port={args.port}", "--address=127.0.0.1", "--max_tasks=20000", "--logging=warning"])


if __name__ == "__main__":
    main(sys.argv[1:])
