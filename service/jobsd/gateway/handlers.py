"""The endpoints: decode the HTTP request, call `JobsApi`, render the documented JSON. No business rule here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobsd.api.base import JobsApi
from jobsd.errors import InvalidArgument
from jobsd.gateway import params, render
from jobsd.gateway.errors import documentation_for, error_response
from jobsd.gateway.metrics import GatewayMetrics
from jobsd.gateway.openapi import openapi_document, routed_paths, served_document
from jobsd.gateway.origin import PublicOrigin
from jobsd.gateway.sse import EventStreamOptions, ResumeCursor, resume_point, since_revision, stream_job_events
from jobsd_client import pb

__all__ = ["JobsRoutes"]

log = logging.getLogger("jobsd.gateway")

# Filters whose unknown values must match nothing (Tinybird answers an empty list, not a 400).
_MATCH_NOTHING_FIELDS = frozenset({"kind", "status"})

_ListRequest = TypeVar("_ListRequest", pb.ListJobsRequest, pb.ListJobsLogRequest)
_ListResponse = TypeVar("_ListResponse", pb.ListJobsResponse, pb.ListJobsLogResponse)


def _json(body: object) -> web.Response:
    """A JSON answer encoded by orjson (UTF-8 bytes in one C call; the gateway's GET paid most of its own time in
    `json.dumps` and the str -> bytes copy aiohttp's json_response makes)."""
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _token(request: web.Request) -> str | None:
    return params.bearer_token(request.query, request.headers.get("Authorization"))


class JobsRoutes:
    """The gateway's request handlers, bound to one `JobsApi`."""

    def __init__(
        self,
        api: JobsApi,
        *,
        origin: PublicOrigin,
        metrics: GatewayMetrics,
        closing: asyncio.Event,
        stream_options: EventStreamOptions,
    ) -> None:
        self._api = api
        self._origin = origin
        self._metrics = metrics
        self._closing = closing
        self._stream_options = stream_options
        self._openapi: dict[str, Any] | None = None

    def install(self, app: web.Application) -> None:
        router = app.router
        router.add_get("/v0/jobs", self.list_jobs, name="list_jobs")
        router.add_get("/v0/jobs/", self.list_jobs, name="list_jobs_slash")
        router.add_get("/v0/jobs/events", self.jobs_events, name="jobs_events")  # before /v0/jobs/{id}
        router.add_get("/v0/jobs/{id}", self.get_job, name="get_job")
        router.add_post("/v0/jobs/{id}/cancel", self.cancel_job, name="cancel_job")
        router.add_post("/v0/jobs/{id}/retry", self.retry_job, name="retry_job")
        router.add_get("/v0/jobs/{id}/events", self.job_events, name="job_events")
        router.add_get("/v0/jobs_log", self.jobs_log, name="jobs_log")
        router.add_get("/v0/workspace", self.workspace, name="workspace_v0")
        router.add_get("/v1/workspace", self.workspace, name="workspace_v1")
        router.add_get("/v0/kinds", self.kinds, name="kinds")
        router.add_get("/v0/regions", self.regions, name="regions")
        router.add_get("/openapi.json", self.openapi, name="openapi")
        router.add_get("/healthz", self.healthz, name="healthz")
        router.add_get("/readyz", self.readyz, name="readyz")
        router.add_get("/metrics", self.metrics, name="metrics")

    # ------------------------------------------------------------------ helpers

    def _base_url(self, request: web.Request) -> str:
        """Where links point: JOBSD_PUBLIC_URL, a trusted Host, else this gateway's own address (never an
        untrusted Host header)."""
        return self._origin.for_request(request)

    def _next_link(self, request: web.Request, page_token: str) -> str:
        # Every filter of the request, never its token: a link may be logged, shared or shown.
        kept = [(k, v) for k, v in request.query.items() if k not in ("page_token", "token")]
        return f"{self._base_url(request)}{request.path}?{urlencode([*kept, ('page_token', page_token)])}"

    @staticmethod
    async def _list_matching(
        call: Callable[[str | None, _ListRequest], Awaitable[_ListResponse]],
        token: str | None,
        request: _ListRequest,
        empty: _ListResponse,
    ) -> _ListResponse:
        """`call`, except that an unknown kind or status lists nothing instead of failing.

        The token is still checked: the same request without the unknown filter must succeed (one row asked),
        so a bad token gets its 403 rather than an empty list.
        """
        try:
            return await call(token, request)
        except InvalidArgument as exc:
            if exc.field not in _MATCH_NOTHING_FIELDS:
                raise
            rejected_field: Literal["kind", "status"] = "kind" if exc.field == "kind" else "status"
        probe = type(request)()
        probe.CopyFrom(request)
        probe.ClearField(rejected_field)
        probe.page_size = 1
        probe.page_token = ""
        await call(token, probe)
        return empty

    @staticmethod
    async def _drain_body(request: web.Request) -> None:
        # The POST endpoints take no body; reading it enforces the size limit on chunked uploads too.
        await request.read()

    # ---------------------------------------------------------------- endpoints

    async def list_jobs(self, request: web.Request) -> web.Response:
        listed = await self._list_matching(
            self._api.list_jobs, _token(request), params.list_jobs_request(request.query), pb.ListJobsResponse()
        )
        base = self._base_url(request)
        body: dict[str, Any] = {"jobs": [render.job_list_item(job, base) for job in listed.jobs]}
        if listed.next_page_token:
            body["next"] = self._next_link(request, listed.next_page_token)
        return _json(body)

    async def get_job(self, request: web.Request) -> web.Response:
        job = await self._api.get_job(_token(request), pb.GetJobRequest(job_id=request.match_info["id"]))
        return _json(render.job_detail(job))

    async def cancel_job(self, request: web.Request) -> web.Response:
        await self._drain_body(request)
        job = await self._api.cancel_job(_token(request), pb.CancelJobRequest(job_id=request.match_info["id"]))
        return _json(render.job_detail(job))

    async def retry_job(self, request: web.Request) -> web.Response:
        await self._drain_body(request)
        job = await self._api.retry_job(_token(request), pb.RetryJobRequest(job_id=request.match_info["id"]))
        return _json(render.job_detail(job))

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        watch = pb.WatchJobRequest(
            job_id=request.match_info["id"], since_revision=since_revision(request.headers, request.query)
        )
        events = self._api.watch_job(_token(request), watch)
        self._metrics.open_streams.inc()
        try:
            return await stream_job_events(
                request,
                events,
                render=render.job_event_detail,
                closing=self._closing,
                options=self._stream_options,
                documentation=documentation_for(request, 200),
            )
        finally:
            self._metrics.open_streams.dec()

    async def jobs_events(self, request: web.Request) -> web.StreamResponse:
        resume_from = resume_point(request.headers)
        watch = params.watch_jobs_request(request.query, resume_from)
        events = self._api.watch_jobs(_token(request), watch)
        base = self._base_url(request)
        self._metrics.open_streams.inc()
        try:
            return await stream_job_events(
                request,
                events,
                render=lambda job: render.job_list_event(job, base),
                closing=self._closing,
                options=self._stream_options,
                documentation=documentation_for(request, 200),
                event_id=ResumeCursor(resume_from),
            )
        finally:
            self._metrics.open_streams.dec()

    async def jobs_log(self, request: web.Request) -> web.Response:
        listed = await self._list_matching(
            self._api.list_jobs_log, _token(request), params.jobs_log_request(request.query), pb.ListJobsLogResponse()
        )
        rows = [render.log_entry_row(entry) for entry in listed.entries]
        body: dict[str, Any] = {
            "meta": [{"name": name, "type": kind} for name, kind in render.JOBS_LOG_COLUMNS],
            "data": rows,
            "rows": len(rows),
        }
        if listed.next_page_token:
            body["next"] = self._next_link(request, listed.next_page_token)
        return _json(body)

    async def workspace(self, request: web.Request) -> web.Response:
        workspace = await self._api.get_workspace(_token(request), pb.GetWorkspaceRequest())
        return web.json_response(render.workspace_info(workspace))

    async def kinds(self, request: web.Request) -> web.Response:
        listed = await self._api.list_kinds(_token(request), pb.ListKindsRequest())
        return web.json_response({"kinds": [render.kind_info(kind) for kind in listed.kinds]})

    async def regions(self, request: web.Request) -> web.Response:
        """The one region this gateway is. The `tinybird` CLI asks for it at start-up (public, as in Tinybird)."""
        base = self._base_url(request)
        region = {"name": "jobsd", "provider": "jobsd", "api_host": base, "host": base, "default_password": None}
        return web.json_response({"regions": [region]})

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            # Made on first use, when every route is mounted: the paths this application routes, no others.
            self._openapi = served_document(openapi_document(), routed_paths(request.app))
        return web.json_response(self._openapi)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            ready = await self._api.ready()
        except Exception as exc:  # a failing readiness probe is an answer ("not ready"), not a 500
            log.warning("readiness check failed: %r", exc)
            ready = False
        if not ready:
            return error_response(request, 503, "Not ready: the jobs service or its store cannot be reached")
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
