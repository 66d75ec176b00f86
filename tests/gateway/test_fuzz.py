"""Schemathesis against the served `/openapi.json`: no 5xx, and every response conforms to the document.

Bounded (a fixed number of examples per operation, derandomised so a run is reproducible) and run against a
store seeded with jobs of every kind and state, so list responses carry real items. Schemathesis' HTTP calls are
blocking, so they run in a worker thread while the event loop serves them.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode

from jobsd_client import pb

from .support import Gateway

_EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}


async def _seed(gw: Gateway) -> dict[str, list[str]]:
    """Jobs of every kind; ids grouped by what may be done with them without waiting on a stream."""
    terminal = [
        (await gw.run("import", progress=pb.ProgressUpdate(statistics=pb.Statistics(bytes=5, row_count=1)))).id,
        (await gw.run("copy", progress=pb.ProgressUpdate(processed_data=pb.ProcessedData(read_rows=3)))).id,
        (await gw.run("query")).id,
        (await gw.run("delete_data")).id,
        (await gw.run("sink")).id,
        (await gw.cancelled("import")).id,
    ]
    await gw.create("import")
    failed = await gw.finish(await gw.claim("import"), status=pb.JOB_STATUS_ERROR, error="boom")
    terminal.append(failed.id)
    gw.clock.advance(timedelta(seconds=1))
    populate = await gw.create("populateview")
    claim = await gw.claim("populateview")
    await gw.heartbeat(claim, pb.ProgressUpdate(queries=[pb.QueryProgress(query_id="q1", status="done")]))
    waiting = [(await gw.create(kind)).id for kind in ("import", "copy", "sink")]
    return {"terminal": terminal, "live": [populate.id, *waiting]}


def _fuzz(document: dict[str, Any], base: str, token: str, ids: dict[str, list[str]]) -> list[str]:
    """Every operation, generated and with the seeded ids; returns the failures (empty when all is well)."""
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []

    def check(case: Any) -> None:
        response = case.call(base_url=base, headers=headers, timeout=30)
        # A schema-valid page_token or job id can still be one this server never issued: 400/404 are correct.
        case.validate_response(response, excluded_checks=[positive_data_acceptance], headers=headers)

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid
        operation = result.ok()
        if operation.path == "/v0/jobs/events":
            continue  # the live list stream stays open until the client leaves: tests/gateway/test_jobs_events.py
        for mode, examples in _EXAMPLES.items():

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def generated(case: Any) -> None:
                check(case)

            try:
                generated()
            except Unsatisfiable:
                pass  # no parameters to break: nothing negative to send
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis reports a FailureGroup
                failures.append(f"{operation.label} ({mode.value}): {exc}")
        if "{id}" not in operation.path:
            continue
        # Streams of live jobs stay open until the job ends; only finished jobs are streamed here.
        usable = ids["terminal"] if operation.path.endswith("/events") else ids["terminal"] + ids["live"]
        for job_id in usable:
            try:
                check(operation.Case(path_parameters={"id": job_id}))
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} with {job_id}: {exc}")
    return failures


@pytest.mark.timeout(600)
async def test_fuzzing_finds_no_server_error_and_no_response_outside_the_schema(gw: Gateway) -> None:
    ids = await _seed(gw)
    served = await gw.get("/openapi.json", anonymous=True)

    failures = await asyncio.to_thread(_fuzz, served.body, gw.base, gw.admin, ids)

    assert not failures, "\n\n".join(failures)
