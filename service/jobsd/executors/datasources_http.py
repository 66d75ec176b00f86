"""Data-source management over REST, Tinybird-style, for the embedded data plane.

    POST   /v0/datasources            create: name + schema (ADMIN or DATASOURCES:CREATE)
    GET    /v0/datasources            list the workspace's data sources (with statistics)
    GET    /v0/datasources/{name}     one data source (the object job details render, with columns and statistics)
    DELETE /v0/datasources/{name}     drop it and its quarantine table (ADMIN or DATASOURCES:CREATE)

`name` and `schema` come from the JSON body or from query/form parameters. `schema` is a list of {"name", "type"}
(or [name, type] pairs), or Tinybird's text form: "date DateTime, user_id Int64, `event` String" (a trailing
`json:$.path` per column is accepted and ignored). Reading needs a read scope on the data source (ADMIN,
DATASOURCES:CREATE, or DATASOURCES:READ:<name>). Tokens that span every workspace say which one with
`?workspace_id=`. Errors are jobsd errors, rendered by the gateway's error middleware like every other endpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from jobsd.domain.auth import ADMIN, DATASOURCES_CREATE, NO_ACCESS, Principal
from jobsd.domain.json_depth import DEFAULT_MAX_JSON_DEPTH, json_depth_within
from jobsd.errors import InvalidArgument, PermissionDenied
from jobsd.executors.dataplane import DataPlane, DataSource, parse_columns, validate_datasource_name

__all__ = ["Authenticate", "add_routes", "parse_schema_text"]

Authenticate = Callable[[str | None], Awaitable[Principal]]
_BEARER = "bearer "
_JSON_PATH = re.compile(r"\s+`?json:\S*`?\s*$")


def _token(request: web.Request) -> str | None:
    from_query = request.query.get("token", "").strip()
    if from_query:
        return from_query
    header = request.headers.get("Authorization", "")
    if header[: len(_BEARER)].lower() == _BEARER:
        return header[len(_BEARER) :].strip() or None
    return None


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes (DateTime64(3, 'UTC') is one type)."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'`\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_schema_text(text: str) -> list[tuple[str, str]]:
    """Tinybird's schema text -> [(name, type)]; InvalidArgument names the column it cannot read."""
    columns: list[tuple[str, str]] = []
    for index, part in enumerate(_split_top_level(text)):
        definition = _JSON_PATH.sub("", part)
        if definition.startswith("`") and definition.find("`", 1) > 0:
            end = definition.find("`", 1)
            name, type_text = definition[1:end], definition[end + 1 :]
        else:
            name, _, type_text = definition.partition(" ")
        if not name or not type_text.strip():
            raise InvalidArgument(f"schema[{index}]", f"expected '<name> <Type>', got {part!r}")
        columns.append((name, type_text.strip()))
    return columns


class _Routes:
    def __init__(self, plane: DataPlane, authenticate: Authenticate, max_json_depth: int) -> None:
        self._plane = plane
        self._authenticate = authenticate
        self._max_json_depth = max_json_depth

    async def _principal(self, request: web.Request) -> tuple[Principal, str]:
        principal = await self._authenticate(_token(request))
        return principal, principal.workspace(request.query.get("workspace_id", ""))

    @staticmethod
    def _require_create(principal: Principal) -> None:
        if not principal.scopes & {ADMIN, DATASOURCES_CREATE}:
            raise PermissionDenied(
                "The token lacks the scope to manage data sources: needs ADMIN or DATASOURCES:CREATE"
            )

    @staticmethod
    def _readable(principal: Principal, workspace: str, name: str) -> bool:
        scope = principal.read_scope(workspace)
        return scope.everything or name in scope.datasource_names

    async def _detail(self, source: DataSource) -> dict[str, Any]:
        stats = await self._plane.run(source.workspace, lambda session: session.stats(source))
        return source.to_json(stats)

    async def create(self, request: web.Request) -> web.Response:
        principal, workspace = await self._principal(request)
        self._require_create(principal)
        fields = await _fields(request, self._max_json_depth)
        name = validate_datasource_name(fields.get("name"), "name")
        raw_schema = fields.get("schema")
        if isinstance(raw_schema, str):
            raw_schema = parse_schema_text(raw_schema)
        if not isinstance(raw_schema, list):
            raise InvalidArgument("schema", 'is required: e.g. "date DateTime, user_id Int64, event String"')
        columns = parse_columns(raw_schema, "schema")
        description = fields.get("description") or ""
        if not isinstance(description, str):
            raise InvalidArgument("description", "must be a string")
        engine = {
            key: str(fields[f"engine_{key}"]) for key in ("partition_key", "sorting_key") if fields.get(f"engine_{key}")
        }
        source = await self._plane.create_datasource(
            name, columns, workspace=workspace, description=description, engine=engine
        )
        return web.json_response({"datasource": await self._detail(source)})

    async def list(self, request: web.Request) -> web.Response:
        principal, workspace = await self._principal(request)
        sources = await self._plane.list_datasources(workspace=workspace)
        visible = [s for s in sources if self._readable(principal, workspace, s.name)]
        return web.json_response({"datasources": [await self._detail(s) for s in visible]})

    async def get(self, request: web.Request) -> web.Response:
        principal, workspace = await self._principal(request)
        name = request.match_info["name"]
        if not self._readable(principal, workspace, name):
            raise PermissionDenied(NO_ACCESS)
        source = await self._plane.get_datasource(name, workspace=workspace)
        return web.json_response(await self._detail(source))

    async def delete(self, request: web.Request) -> web.Response:
        principal, workspace = await self._principal(request)
        self._require_create(principal)
        await self._plane.drop(request.match_info["name"], workspace=workspace)
        return web.Response(status=204)


async def _fields(request: web.Request, max_json_depth: int) -> Mapping[str, Any]:
    """JSON body, else form fields, then query parameters (the body wins)."""
    fields: dict[str, Any] = {k: v for k, v in request.query.items() if k not in ("token", "workspace_id")}
    if request.can_read_body:
        if request.content_type == "application/json":
            text = await request.text() or "{}"
            if not json_depth_within(text, max_json_depth):
                raise InvalidArgument("body", f"is JSON nested more than {max_json_depth} levels deep")
            try:
                body = json.loads(text)
            except ValueError as error:
                raise InvalidArgument("body", f"is not valid JSON ({error})") from None
            if not isinstance(body, dict):
                raise InvalidArgument("body", "must be a JSON object")
            fields.update(body)
        else:
            fields.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return fields


def add_routes(
    app: web.Application,
    dataplane: DataPlane,
    authenticate: Authenticate,
    *,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> None:
    """Mount the data-source endpoints on the gateway's application (its `extra_routes` hook)."""
    routes = _Routes(dataplane, authenticate, max_json_depth)
    app.router.add_post("/v0/datasources", routes.create)
    app.router.add_get("/v0/datasources", routes.list)
    app.router.add_get("/v0/datasources/{name}", routes.get)
    app.router.add_delete("/v0/datasources/{name}", routes.delete)
