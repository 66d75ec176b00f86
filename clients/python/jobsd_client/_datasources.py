"""A client of jobsd's REST data-source routes (`/v0/datasources`), on the standard library only.

The data sources live in the data plane of the jobsd that runs the executors, and its REST gateway serves them:

    POST /v0/datasources          create (name, schema, engine keys, description)
    GET  /v0/datasources          the workspace's data sources
    GET  /v0/datasources/{name}   one of them

Blocking calls (`urllib.request`), for `jobsctl` and scripts. Every failure is a `DataSourcesError` whose message is
fit for a person: the gateway's own `{"error": ...}` text, or what went wrong reaching it.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_HTTP_TARGET", "DataSourcesClient", "DataSourcesError"]

DEFAULT_HTTP_TARGET = "http://127.0.0.1:8080"
_MAX_ERROR_TEXT = 300


class DataSourcesError(Exception):
    """A refused or failed call; `status` is the HTTP status when the gateway answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class DataSourcesClient:
    """Calls one REST gateway with one token (`workspace_id` only for tokens that span every workspace)."""

    def __init__(self, base_url: str, token: str, *, workspace_id: str | None = None, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(base_url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise DataSourcesError(f"the REST gateway must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url.strip().rstrip("/")
        self._token = token
        self._workspace_id = workspace_id
        self._timeout = timeout

    def create(
        self,
        name: str,
        schema: str,
        *,
        sorting_key: str | None = None,
        partition_key: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Create a data source; `schema` in Tinybird's text form, e.g. "date DateTime, user_id Int64"."""
        body: dict[str, Any] = {"name": name, "schema": schema}
        if sorting_key:
            body["engine_sorting_key"] = sorting_key
        if partition_key:
            body["engine_partition_key"] = partition_key
        if description:
            body["description"] = description
        answer = self._call("POST", "/v0/datasources", body)
        return _object(answer.get("datasource"), "the created data source")

    def list(self) -> list[dict[str, Any]]:
        answer = self._call("GET", "/v0/datasources")
        items = answer.get("datasources")
        if not isinstance(items, list):
            raise DataSourcesError(f"unexpected answer from {self.base_url}: no list of data sources")
        return [_object(item, "a data source") for item in items]

    def get(self, name: str) -> dict[str, Any]:
        return self._call("GET", "/v0/datasources/" + urllib.parse.quote(name, safe=""))

    def _url(self, path: str) -> str:
        query = f"?{urllib.parse.urlencode({'workspace_id': self._workspace_id})}" if self._workspace_id else ""
        return self.base_url + path + query

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self._url(path), data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            with error:
                raise DataSourcesError(_error_message(error), error.code) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise DataSourcesError(self._no_answer()) from None
            raise DataSourcesError(f"cannot reach the REST gateway at {self.base_url}: {error.reason}") from None
        except TimeoutError:
            raise DataSourcesError(self._no_answer()) from None
        except (OSError, http.client.HTTPException) as error:
            if isinstance(error, http.client.BadStatusLine) and _binary(str(error)):
                raise DataSourcesError(
                    f"{self.base_url} answered in binary (HTTP/2) frames, not HTTP/1.1: is it jobsd's gRPC port? "
                    "--http-target / JOBSD_HTTP_TARGET is the REST gateway's URL (JOBSD_HTTP_ADDR, default "
                    "http://127.0.0.1:8080); the gRPC HOST:PORT goes to --target"
                ) from None
            raise DataSourcesError(f"cannot reach the REST gateway at {self.base_url}: {error}") from None
        return _object(_json(text, self.base_url), "the answer")

    def _no_answer(self) -> str:
        return f"no answer from the REST gateway at {self.base_url} within {self._timeout:g} s"


def _binary(text: str) -> bool:
    """A status line no HTTP/1 server sends: control bytes (an HTTP/2 server's SETTINGS frame, say)."""
    return any((ord(char) < 0x20 and char not in "\r\n\t") or 0x7F <= ord(char) < 0xA0 for char in text)


def _json(text: str, base_url: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise DataSourcesError(f"unexpected answer from {base_url}: not JSON ({text[:_MAX_ERROR_TEXT]!r})") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataSourcesError(f"unexpected answer: {what} is not a JSON object")
    return value


def _error_message(error: urllib.error.HTTPError) -> str:
    """The gateway's `{"error": ...}` text; else the status line and the start of the body."""
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
        return str(body["error"])
    detail = f": {text.strip()[:_MAX_ERROR_TEXT]}" if text.strip() else ""
    return f"HTTP {error.code} {error.reason}{detail}"
