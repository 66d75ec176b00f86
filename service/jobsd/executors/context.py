"""What an executor needs from the job it runs: the worker SDK's `JobContext`, as a structural type.

Executors depend on this Protocol rather than on `jobsd_client.worker.JobContext`, so they run unchanged under the
SDK's Worker and under a plain test double. `JobInput` reads the fields every executor needs out of the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Unpack

from jobsd.errors import InvalidArgument
from jobsd.executors.dataplane import validate_datasource_name
from jobsd.executors.errors import ExecutionFailed
from jobsd_client import pb
from jobsd_client.worker import ReportFigures

__all__ = ["ExecutionContext", "JobInput"]


class ExecutionContext(Protocol):
    @property
    def job(self) -> pb.Job: ...

    @property
    def params(self) -> dict[str, Any]: ...

    @property
    def datasource(self) -> dict[str, Any]: ...

    @property
    def cancel_requested(self) -> bool: ...

    async def wait_cancel_requested(self) -> None: ...

    def report(self, **figures: Unpack[ReportFigures]) -> None: ...

    async def flush(self) -> None: ...


@dataclass(frozen=True, slots=True)
class JobInput:
    job_id: str
    workspace: str
    datasource_name: str | None
    mode: str
    url: str
    query_sql: str
    params: Mapping[str, Any]

    @classmethod
    def of(cls, ctx: ExecutionContext) -> JobInput:
        job = ctx.job
        name = ctx.datasource.get("name") or job.datasource_ref.name or None
        return cls(
            job_id=job.id,
            workspace=job.workspace_id,
            datasource_name=str(name) if name else None,
            mode=(job.mode if job.HasField("mode") else "").strip().lower(),
            url=(job.url if job.HasField("url") else "").strip(),
            query_sql=(job.query_sql if job.HasField("query_sql") else "").strip(),
            params=ctx.params,
        )

    def require_datasource(self) -> str:
        """The target data source's name, checked (names are identifiers: letters, digits, underscores)."""
        if not self.datasource_name:
            raise ExecutionFailed('The job names no data source: set datasource {"name": ...}')
        try:
            return validate_datasource_name(self.datasource_name, "datasource.name")
        except InvalidArgument as error:
            raise ExecutionFailed(str(error)) from None

    def text_param(self, name: str, *, required: bool = False, fallback: str = "") -> str:
        """A string param (or `fallback`); ExecutionFailed names it when it is required and absent."""
        value = self.params.get(name)
        if value is None or value == "":
            if required and not fallback:
                raise ExecutionFailed(f"The job needs params.{name}")
            return fallback
        if not isinstance(value, str):
            raise ExecutionFailed(f"params.{name} must be a string, got {type(value).__name__}")
        return value
