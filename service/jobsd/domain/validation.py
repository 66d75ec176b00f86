"""Validation of a new job's fields: every problem names the field, nothing is written on a bad request."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import orjson

from jobsd.domain.kinds import BUILTIN_KINDS, KindRegistry
from jobsd.domain.model import Job, JobKind, builder
from jobsd.domain.redaction import redact_url
from jobsd.errors import InvalidArgument

__all__ = ["DEFAULT_STRUCT_LIMITS", "NewJob", "StructLimits", "new_spec", "validate_new_job"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_MAX_TEXT = 256
_MAX_SQL = 100_000
_MODES = ("append", "replace")
# A control character (what `ord(c) < 32` finds), searched in C instead of a Python step per character.
_CONTROL = re.compile(r"[\x00-\x1f]")
# The built-in kinds by name: a dict read, not an Enum call, per new job.
_BUILTIN_BY_NAME: dict[str, JobKind] = {kind.value: kind for kind in JobKind}
_KiB = 1024


def _bytes_text(count: int) -> str:
    """Bytes for people: `64 KiB`, `1.5 MiB`, `700 bytes`."""
    for unit, size in (("GiB", _KiB**3), ("MiB", _KiB**2), ("KiB", _KiB)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} bytes"


@dataclass(frozen=True, slots=True)
class StructLimits:
    """The most bytes each free-form object of a job may take, measured as its compact JSON (what the store
    keeps): `datasource` and `params` when a job is created (or retried), `result` when a worker reports it
    (a heartbeat's or a finish's progress). Settings JOBSD_MAX_DATASOURCE_BYTES, _PARAMS_BYTES, _RESULT_BYTES."""

    datasource: int = 64 * _KiB
    params: int = 64 * _KiB
    result: int = 256 * _KiB

    def check(self, name: str, value: Mapping[str, Any] | None, field_path: str | None = None) -> None:
        """InvalidArgument naming `field_path` (default `name`) when `value` is not a JSON object within the
        limit `name` has (`datasource`, `params` or `result`)."""
        if value is None:
            return
        limit: int = getattr(self, name)
        where = field_path or name
        try:
            size = len(orjson.dumps(value))
        except (TypeError, ValueError, orjson.JSONEncodeError):
            raise InvalidArgument(where, "must be a JSON object") from None
        if size > limit:
            raise InvalidArgument(
                where,
                f"is {size:,} bytes as JSON, more than the {_bytes_text(limit)} allowed "
                f"(JOBSD_MAX_{name.upper()}_BYTES={limit})",
            )


DEFAULT_STRUCT_LIMITS = StructLimits()


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a creator asks for; empty strings mean "not given"."""

    kind: str
    workspace_id: str | None = None
    datasource: Mapping[str, Any] | None = None
    pipe_id: str | None = None
    pipe_name: str | None = None
    query_id: str | None = None
    query_sql: str | None = None
    mode: str | None = None
    url: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    request_id: str | None = None


# `NewJob(...)` without the frozen `__init__`'s cost (see `builder`): every create builds two.
new_spec = builder(NewJob)

# What a retry does not ask for again: a new run gets its own query id, and a request's keys are used once.
_FRESH_ON_RETRY = frozenset({"query_id", "idempotency_key", "request_id"})


def retry_of(job: Job) -> NewJob:
    """What a retry of `job` asks for: what its creator asked (each field of NewJob, read off the job, so a field
    added to NewJob is carried over too) but a fresh query id, idempotency key and request id."""
    return NewJob(**{f.name: getattr(job, f.name) for f in fields(NewJob) if f.name not in _FRESH_ON_RETRY})


def _text(name: str, value: str | None, limit: int = _MAX_TEXT) -> str | None:
    if not value:
        return None
    if len(value) > limit:
        raise InvalidArgument(name, f"is longer than {limit} characters")
    if name != "query_sql" and _CONTROL.search(value):
        raise InvalidArgument(name, "must not contain control characters")
    return value


def validate_new_job(
    spec: NewJob, kinds: KindRegistry = BUILTIN_KINDS, limits: StructLimits = DEFAULT_STRUCT_LIMITS
) -> NewJob:
    """The spec, normalised, or InvalidArgument naming the first bad field. Only declared kinds are accepted;
    the built-in ones also get their own checks (an import needs a URL, a copy its SQL, ...). `datasource` and
    `params` are bounded by `limits`."""
    if not spec.kind:
        raise InvalidArgument("kind", f"is required; one of {', '.join(kinds.names)}")
    rules = kinds.require(spec.kind)
    kind: JobKind | None = _BUILTIN_BY_NAME[rules.name] if rules.builtin else None

    datasource = dict(spec.datasource) if spec.datasource else None
    if datasource is not None:
        limits.check("datasource", datasource)
        name = datasource.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgument(
                "datasource.name", "must be a name of letters, digits and underscores, not starting with a digit"
            )
        ds_id = datasource.get("id")
        if ds_id is not None and (not isinstance(ds_id, str) or len(ds_id) > _MAX_TEXT):
            raise InvalidArgument("datasource.id", f"must be a string of at most {_MAX_TEXT} characters")
    elif rules.needs_datasource:
        raise InvalidArgument("datasource", f'is required for {rules.name} jobs (at least {{"name": ...}})')

    mode = _text("mode", spec.mode)
    if kind in (JobKind.IMPORT, JobKind.COPY):
        mode = mode or "append"
        if mode not in _MODES:
            raise InvalidArgument("mode", f"must be append or replace, got {mode!r}")
    elif mode is not None and mode not in _MODES:
        raise InvalidArgument("mode", f"must be append or replace, got {mode!r}")

    url = _text("url", spec.url, 4096)
    if kind is JobKind.IMPORT:
        if url is None:
            raise InvalidArgument("url", "is required for import jobs")
        # urlsplit: the scheme and netloc urlparse gives, without splitting `;params` off the path.
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https", "file") or (parsed.scheme != "file" and not parsed.netloc):
            raise InvalidArgument("url", f"must be an http(s):// or file:// URL, got {redact_url(url)!r}")

    params = dict(spec.params or {})
    limits.check("params", params)
    query_sql = _text("query_sql", spec.query_sql, _MAX_SQL)
    sql = query_sql or params.get("sql")
    if kind in (JobKind.COPY, JobKind.QUERY, JobKind.POPULATEVIEW) and not (isinstance(sql, str) and sql.strip()):
        raise InvalidArgument("params.sql", f"is required for {rules.name} jobs (or query_sql)")
    if kind is JobKind.DELETE_DATA:
        condition = params.get("delete_condition")
        if not isinstance(condition, str) or not condition.strip():
            raise InvalidArgument("params.delete_condition", "is required for delete_data jobs")

    return new_spec(
        kind=rules.name,
        workspace_id=spec.workspace_id or None,
        datasource=datasource,
        pipe_id=_text("pipe_id", spec.pipe_id),
        pipe_name=_text("pipe_name", spec.pipe_name),
        query_id=_text("query_id", spec.query_id),
        query_sql=query_sql,
        mode=mode,
        url=url,
        params=params,
        idempotency_key=_text("idempotency_key", spec.idempotency_key),
        request_id=_text("request_id", spec.request_id),
    )
