"""The OpenAPI 3 document of exactly the gateway's endpoints (served at `/openapi.json`).

`openapi_document()` describes every endpoint the gateway can serve; the handler serves the paths the running
application routes (the `/v0/datasources` ones only where the executors' data plane is mounted), and a test
checks the two against each other route by route.

Schemas are strict (required keys, `additionalProperties: false`, timestamp pattern, status enum) so that a
schema-driven fuzzer catches any response that drifts from what the renderers promise.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["openapi_document", "routed_paths", "served_document"]

Schema = dict[str, Any]

_TIMESTAMP: Schema = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$",
    "description": "UTC, `YYYY-MM-DD HH:MM:SS.ffffff`",
}
_STATUS: Schema = {"type": "string", "enum": ["waiting", "working", "cancelling", "done", "error", "cancelled"]}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _int() -> Schema:
    return {"type": "integer"}


def _str() -> Schema:
    return {"type": "string"}


def _closed(properties: dict[str, Schema], required: list[str] | None = None, description: str | None = None) -> Schema:
    """An object of exactly these properties (`additionalProperties: false`); `required`: the keys it must have
    (all of them unless said)."""
    schema: Schema = {"type": "object"}
    if description is not None:
        schema["description"] = description
    schema.update(
        required=list(properties) if required is None else required, properties=properties, additionalProperties=False
    )
    return schema


_LIST_ITEM_REQUIRED = ["id", "kind", "status", "created_at", "updated_at", "is_cancellable", "job_url", "datasource"]
_LIST_ITEM_PROPERTIES: dict[str, Schema] = {
    "id": _str(),
    "kind": _str(),
    "status": _STATUS,
    "created_at": _TIMESTAMP,
    "updated_at": _TIMESTAMP,
    "is_cancellable": {"type": "boolean"},
    "job_url": _str(),
    "datasource": _nullable(_ref("DataSourceRef")),
    "pipe_id": _str(),
    "pipe_name": _str(),
}

_SCHEMAS: dict[str, Schema] = {
    "Error": _closed(
        {
            "error": _str(),
            "detail": {
                "type": "string",
                "description": "Why, where the documented message is only the start of jobsd's (e.g. a cancel "
                "refusal: the job's status and its kind's rule)",
            },
            "documentation": _str(),
        },
        required=["error", "documentation"],
    ),
    "DataSourceRef": _closed({"id": _str(), "name": _str()}),
    "DataSource": {
        "type": "object",
        "required": ["id", "name"],
        "properties": {"id": _str(), "name": _str()},
        "additionalProperties": True,
        "description": (
            "The full data-source object: as the executor reported it after the job ran (result.datasource), "
            "else as the job was created with."
        ),
    },
    "JobListItem": _closed(_LIST_ITEM_PROPERTIES, required=_LIST_ITEM_REQUIRED),
    "Statistics": _closed({"bytes": _int(), "row_count": _int()}),
    "ProcessedData": _closed({k: _int() for k in ("read_rows", "read_bytes", "written_rows", "written_bytes")}),
    "QueryProgress": _closed({"query_id": _str(), "status": _str()}),
    "JobDetail": _closed(
        {
            "kind": _str(),
            "id": _str(),
            "job_id": _str(),
            "status": _STATUS,
            "created_at": _TIMESTAMP,
            "updated_at": _TIMESTAMP,
            "started_at": _nullable(_TIMESTAMP),
            "is_cancellable": {"type": "boolean"},
            "datasource": _nullable(_ref("DataSource")),
            "error": _str(),
            "errors": {"type": "array", "items": _str()},
            # import
            "import_id": _nullable(_str()),
            "mode": _nullable(_str()),
            "url": _nullable(_str()),
            "statistics": _nullable(_ref("Statistics")),
            "quarantine_rows": _int(),
            "invalid_lines": _int(),
            # populateview, copy, query, sink
            "query_id": _nullable(_str()),
            "query_sql": _nullable(_str()),
            "pipe_id": _nullable(_str()),
            "pipe_name": _nullable(_str()),
            "queries": {"type": "array", "items": _ref("QueryProgress")},
            "progress_percentage": {"type": "number", "minimum": 0, "maximum": 100},
            "processed_data": _ref("ProcessedData"),
            "result": {"type": "object", "additionalProperties": True},
            # delete_data
            "delete_condition": _nullable(_str()),
            "rows_affected": _nullable(_int()),
            # a declared kind: the creator's inputs
            "params": {"type": "object", "additionalProperties": True},
        },
        required=[
            "kind",
            "id",
            "job_id",
            "status",
            "created_at",
            "updated_at",
            "started_at",
            "is_cancellable",
            "datasource",
        ],
        description="Common fields, plus the fields of the job's kind (import, populateview, copy, query, "
        "delete_data, sink); a kind the operator declared adds pipe_id, pipe_name, progress_percentage, "
        "statistics, params and result.",
    ),
    "JobList": _closed(
        {
            "jobs": {"type": "array", "maxItems": 100, "items": _ref("JobListItem")},
            "next": {"type": "string", "description": "The next page (absolute URL); absent on the last page."},
        },
        required=["jobs"],
    ),
    "JobsLogRow": _closed(
        {
            "job_id": _str(),
            "job_type": _str(),
            "status": _STATUS,
            "error": _nullable(_str()),
            "workspace_id": _str(),
            "request_id": _str(),
            "pipe_id": _nullable(_str()),
            "datasource_id": _nullable(_str()),
            "created_at": _TIMESTAMP,
            "started_at": _nullable(_TIMESTAMP),
            "updated_at": _TIMESTAMP,
            "job_metadata": {"type": "string", "description": "JSON text"},
            "revision": _int(),
        },
    ),
    "JobsLog": _closed(
        {
            "meta": {
                "type": "array",
                "items": _closed({"name": _str(), "type": _str()}),
            },
            "data": {"type": "array", "maxItems": 100, "items": _ref("JobsLogRow")},
            "rows": _int(),
            "next": _str(),
        },
        required=["meta", "data", "rows"],
    ),
    "Workspace": _closed(
        {
            "id": _str(),
            "name": _str(),
            "scope": {"type": "string", "description": "The token's scopes, space separated."},
            "scopes": {"type": "array", "items": _str()},
            "token_name": _str(),
            "created_at": _nullable(_TIMESTAMP),
            "is_branch": {"type": "boolean"},
            "main": {"nullable": True, "type": "string"},
        },
        required=["id", "name", "scope", "scopes"],
    ),
    "Regions": _closed(
        {
            "regions": {
                "type": "array",
                "items": _closed(
                    {
                        "name": _str(),
                        "provider": _str(),
                        "api_host": _str(),
                        "host": _str(),
                        "default_password": _nullable(_str()),
                    }
                ),
            }
        },
    ),
    "JobEvent": {
        "type": "object",
        "description": "One Server-Sent Event (OpenAPI 3.0: the schema of a stream describes each event).",
        "required": ["event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": r"^\d+$", "description": "The job's revision"},
            "event": {"type": "string", "enum": ["snapshot", "status", "progress", "error"]},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [_ref("JobDetail"), _ref("Error")]},
            },
        },
    },
    "JobListEventData": _closed(
        {
            **_LIST_ITEM_PROPERTIES,
            "progress_percentage": {"type": "number", "minimum": 0, "maximum": 100},
            "revision": _int(),
        },
        required=[*_LIST_ITEM_REQUIRED, "progress_percentage", "revision"],
        description="A list item, plus the job's progress and revision (what a live list shows and orders by).",
    ),
    "JobListEvent": {
        "type": "object",
        "description": "One Server-Sent Event of the list stream.",
        "required": ["event", "data"],
        "properties": {
            "id": {
                "type": "string",
                "pattern": r"^\d+$",
                "description": "A resume point: send it back as `Last-Event-ID` to resume",
            },
            "event": {"type": "string", "enum": ["snapshot", "synced", "status", "progress", "error"]},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {
                    "anyOf": [_ref("JobListEventData"), {"type": "object", "maxProperties": 0}, _ref("Error")]
                },
            },
        },
    },
    "Kind": _closed(
        {
            "name": _str(),
            "description": _str(),
            "builtin": {"type": "boolean"},
            "cancellable_while_working": {"type": "boolean"},
            "concurrency_key": {"type": "string", "enum": ["workspace", "target"]},
            "concurrency_limit": {"type": "integer", "minimum": 1},
            "lease_seconds": {"type": "number"},
            "max_attempts": {"type": "integer", "minimum": 1},
            "time_limit_seconds": {"type": "number", "description": "0: no limit"},
            "retention_hours": {"type": "number"},
            "needs_datasource": {"type": "boolean"},
        },
        description="A kind of job this jobsd accepts, with its rules.",
    ),
    "KindList": _closed({"kinds": {"type": "array", "items": _ref("Kind")}}),
    "DataSourceDetail": {
        "type": "object",
        "description": "A data source of the embedded data plane: what job details render, with its columns.",
        "required": ["id", "name", "columns", "statistics"],
        "properties": {
            "id": _str(),
            "name": _str(),
            "columns": {
                "type": "array",
                "items": {"type": "object", "required": ["name", "type"], "additionalProperties": True},
            },
            "statistics": {"type": "object", "additionalProperties": True},
        },
        "additionalProperties": True,
    },
    "DataSourceCreated": _closed({"datasource": _ref("DataSourceDetail")}),
    "DataSourceList": _closed({"datasources": {"type": "array", "items": _ref("DataSourceDetail")}}),
    "NewDataSource": {
        "type": "object",
        "required": ["name", "schema"],
        "properties": {
            "name": _str(),
            "schema": {
                "description": 'Tinybird\'s text form ("date DateTime, user_id Int64") or a list of {name, type}',
                "oneOf": [
                    _str(),
                    {
                        "type": "array",
                        "items": {"type": "object", "required": ["name", "type"], "additionalProperties": True},
                    },
                ],
            },
            "description": _str(),
            "engine_sorting_key": _str(),
            "engine_partition_key": _str(),
        },
    },
    "Status": _closed({"status": _str()}),
}


def _param(name: str, description: str, schema: Schema | None = None, where: str = "query") -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or _str(),
    }


# ISO 8601 as the reference shows it (`2023-06-15T18:13:25.855Z`), offsets, or a bare date; empty is ignored. The
# pattern admits only real dates (days 01-28), so every value it describes is accepted; anything else is the
# documented 400.
_ISO_DATE: Schema = {
    "type": "string",
    "pattern": r"^((19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
    r"(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?(Z|[+-](0\d|1[0-3]):[0-5]\d)?)?)?$",
}

_FILTERS: list[Schema] = [
    _param("kind", "Only jobs of this kind (exact; an unknown kind matches nothing; empty is ignored)."),
    _param("status", "Only jobs in this status (exact; an unknown status matches nothing; empty is ignored)."),
    _param("pipe_id", "Only jobs of this pipe id."),
    _param("pipe_name", "Only jobs of this pipe name."),
    _param(
        "created_after", "Inclusive lower bound on created_at, ISO 8601 (`Z`, offsets and dates accepted).", _ISO_DATE
    ),
    _param("created_before", "Inclusive upper bound on created_at, ISO 8601; a date covers that whole day.", _ISO_DATE),
    _param("limit", "Page size, 1-100 (default 100).", {"type": "integer", "minimum": 1, "maximum": 100}),
    _param("page_token", "The page to read, as carried by the `next` link."),
]
_REVISION: Schema = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_JOB_ID = _param(
    "id", "The job id, or a prefix of it of at least 8 characters that only one visible job has.", where="path"
)
_DATASOURCE_NAME = _param("name", "The data source name.", where="path")


def _json(schema_name: str, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    meaning = {
        400: "Bad request: a parameter is invalid, or the job is not in a state that allows the operation",
        403: "Missing or invalid token, or the token has no access to this resource",
        404: "No such job (or it is past the 48 h window), or no such data source",
        409: "A data source of that name exists already",
        413: "Request body too large",
        500: "Unexpected server error",
        503: "The service cannot reach its store",
    }
    return {str(s): _json("Error", meaning[s]) for s in statuses}


_COMMON_ERRORS = (400, 403, 500, 503)


def _operation(summary: str, ok: Schema, params: list[Schema], errors: tuple[int, ...]) -> Schema:
    return {
        "summary": summary,
        "parameters": params,
        "responses": {"200": ok, **_errors(*errors)},
    }


def routed_paths(app: Any) -> dict[str, set[str]]:
    """The paths an aiohttp application routes, as OpenAPI writes them, each with its lower-case methods (HEAD,
    which aiohttp adds beside every GET, left out)."""
    paths: dict[str, set[str]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method in ("HEAD", "*"):
            continue
        paths.setdefault(path, set()).add(route.method.lower())
    return paths


def served_document(document: dict[str, Any], routed: dict[str, set[str]]) -> dict[str, Any]:
    """`document` with only the operations `routed` (a trailing-slash alias is the same operation)."""
    paths = {
        path: {method: op for method, op in operations.items() if method in routed.get(path, set())}
        for path, operations in document["paths"].items()
    }
    return {**document, "paths": {path: ops for path, ops in paths.items() if ops}}


def openapi_document() -> dict[str, Any]:
    """A fresh copy (callers may add `servers`)."""
    job_op_errors = (*_COMMON_ERRORS, 404)
    post_errors = (*job_op_errors, 413)
    paths: dict[str, Any] = {
        "/v0/jobs": {
            "get": _operation(
                "Jobs of the last 48 h, newest first", _json("JobList", "A page of jobs"), _FILTERS, _COMMON_ERRORS
            )
        },
        "/v0/jobs/events": {
            "get": _operation(
                "Live: the matching jobs and their changes as Server-Sent Events (the REST face of WatchJobs)",
                {
                    "description": "`event: snapshot` for each matching job not yet finished, `event: synced`, then "
                    "`event: status|progress` for each change of a matching job (a job that stops matching gets one "
                    "last event); `data:` is a list item with `progress_percentage` and `revision`. The stream stays "
                    "open until the client leaves; `Last-Event-ID` resumes, also sending (before `synced`) the jobs "
                    "whose status changed while the client was away",
                    "content": {"text/event-stream": {"schema": _ref("JobListEvent")}},
                },
                [
                    *_FILTERS[:6],
                    _param("Last-Event-ID", "Resume from this event of an earlier stream.", _REVISION, "header"),
                ],
                _COMMON_ERRORS,
            )
        },
        "/v0/jobs/{id}": {
            "get": _operation("A job's details", _json("JobDetail", "The job"), [_JOB_ID], job_op_errors)
        },
        "/v0/jobs/{id}/cancel": {
            "post": _operation(
                "Cancel a job", _json("JobDetail", "The job, cancelling or cancelled"), [_JOB_ID], post_errors
            )
        },
        "/v0/jobs/{id}/retry": {
            "post": _operation(
                "Run a failed or cancelled job again", _json("JobDetail", "The new job"), [_JOB_ID], post_errors
            )
        },
        "/v0/jobs/{id}/events": {
            "get": _operation(
                "The job's changes as Server-Sent Events until it ends",
                {
                    "description": "`id: <revision>`, `event: snapshot|status|progress`, `data: <job detail JSON>` "
                    "(with `progress_percentage` whatever the kind); a failure after the stream opened is "
                    "`event: error` with an error body",
                    "content": {"text/event-stream": {"schema": _ref("JobEvent")}},
                },
                [
                    _JOB_ID,
                    _param("Last-Event-ID", "Resume after this revision.", _REVISION, "header"),
                    _param("since_revision", "Resume after this revision.", _REVISION),
                ],
                job_op_errors,
            )
        },
        "/v0/jobs_log": {
            "get": _operation(
                "The jobs_log archive: one row per status change, newest first",
                _json("JobsLog", "A page of jobs_log rows"),
                [_param("job_id", "Only the rows of this job."), *_FILTERS],
                _COMMON_ERRORS,
            )
        },
        "/v0/kinds": {
            "get": _operation(
                "The kinds of job this jobsd accepts, with their rules (any valid token)",
                _json("KindList", "Every kind, by name"),
                [],
                (403, 500, 503),
            )
        },
        "/v0/datasources": {
            "get": _operation(
                "The workspace's data sources (served where the executors run)",
                _json("DataSourceList", "The data sources the token may read"),
                [_param("workspace_id", "The workspace, for tokens that span every workspace.")],
                _COMMON_ERRORS,
            ),
            "post": {
                **_operation(
                    "Create an empty data source with a schema (ADMIN or DATASOURCES:CREATE)",
                    _json("DataSourceCreated", "The new data source"),
                    [_param("workspace_id", "The workspace, for tokens that span every workspace.")],
                    (*_COMMON_ERRORS, 409, 413),
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("NewDataSource")},
                        "application/x-www-form-urlencoded": {"schema": _ref("NewDataSource")},
                    },
                },
            },
        },
        "/v0/datasources/{name}": {
            "get": _operation(
                "One data source: id, engine, columns, statistics",
                _json("DataSourceDetail", "The data source"),
                [_DATASOURCE_NAME, _param("workspace_id", "The workspace, for tokens that span every workspace.")],
                (*_COMMON_ERRORS, 404),
            ),
            "delete": {
                "summary": "Drop a data source and its quarantine table (ADMIN or DATASOURCES:CREATE)",
                "parameters": [
                    _DATASOURCE_NAME,
                    _param("workspace_id", "The workspace, for tokens that span every workspace."),
                ],
                "responses": {"204": {"description": "Dropped"}, **_errors(*_COMMON_ERRORS, 404)},
            },
        },
        "/v0/workspace": {
            "get": _operation("The token's workspace", _json("Workspace", "The workspace"), [], (403, 500, 503))
        },
        "/v1/workspace": {
            "get": _operation("The token's workspace", _json("Workspace", "The workspace"), [], (403, 500, 503))
        },
        "/v0/regions": {
            "get": {
                "summary": "The region this gateway serves (read by the `tinybird` CLI at start-up)",
                "security": [],
                "responses": {"200": _json("Regions", "One region: this gateway")},
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "security": [],
                "responses": {"200": _json("Status", "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The service can serve (its store is reachable)",
                "security": [],
                "responses": {"200": _json("Status", "Ready"), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
            }
        },
    }
    document = {
        "openapi": "3.0.3",
        "info": {
            "title": "jobsd REST gateway (Tinybird Jobs API)",
            "version": "1",
            "description": "The Tinybird Jobs API, served by jobsd. Token: `?token=` or `Authorization: Bearer`.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "query_token": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
        "security": [{"bearer": []}, {"query_token": []}],
    }
    return copy.deepcopy(document)
