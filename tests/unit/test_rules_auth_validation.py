"""Queue rules (concurrency keys, limits, visibility), the auth model (docs/contract.md#auth) and new-job validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobsd.domain.auth import NO_ACCESS, Principal, ReadScope, hash_token, new_token_secret, validate_scope
from jobsd.domain.kinds import BUILTIN_KINDS
from jobsd.domain.model import Job, TokenRecord
from jobsd.domain.rules import concurrency_key, is_visible
from jobsd.domain.validation import NewJob, retry_of, validate_new_job
from jobsd.errors import InvalidArgument, PermissionDenied
from tests.support.jobs import waiting_job

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def job(workspace: str = "ws1", datasource: str | None = "events", pipe: str | None = None, **extra: Any) -> Job:
    return waiting_job(
        T0,
        workspace_id=workspace,
        concurrency_key="k",
        datasource=None if datasource is None else {"id": f"t_{datasource}", "name": datasource},
        pipe_name=pipe,
        **extra,
    )


def principal(*scopes: str, workspace: str | None = "ws1") -> Principal:
    return Principal.from_record(TokenRecord(hash_token("x"), "t", workspace, scopes, T0))


# ---------------------------------------------------------------- queue rules


@pytest.mark.parametrize(
    ("kind", "target", "key"),
    [
        ("import", "events", "ws:import"),
        ("query", None, "ws:query"),
        ("sink", "events", "ws:sink"),
        ("populateview", "events_mv", "ws:populateview:events_mv"),
        ("copy", "snap", "ws:copy:snap"),
        ("delete_data", "events", "ws:delete_data:events"),
        ("populateview", None, "ws:populateview"),
    ],
)
def test_concurrency_key(kind: str, target: str | None, key: str) -> None:
    assert concurrency_key("ws", kind, target) == key


def test_two_targets_of_one_kind_queue_separately_but_imports_share_one_queue() -> None:
    assert concurrency_key("ws", "populateview", "a") != concurrency_key("ws", "populateview", "b")
    assert concurrency_key("ws", "import", "a") == concurrency_key("ws", "import", "b")
    assert concurrency_key("ws1", "import", "a") != concurrency_key("ws2", "import", "a")


def test_built_in_kinds_have_the_documented_defaults() -> None:
    limits = {spec.name: spec.concurrency_limit for spec in BUILTIN_KINDS}
    assert limits == {"import": 4, "query": 4, "populateview": 1, "copy": 1, "delete_data": 1, "sink": 2}
    for spec in BUILTIN_KINDS:
        assert spec.retention == timedelta(hours=48) and spec.lease == timedelta(seconds=30)
        assert spec.heartbeat_interval * 3 == spec.lease and spec.max_attempts == 3
    assert BUILTIN_KINDS.limit_for("thumbnail") == 1  # a kind no longer declared runs one at a time


def test_visibility_bound_is_exact_to_the_microsecond() -> None:
    j = job()
    assert is_visible(j, T0 + timedelta(hours=48) - timedelta(microseconds=1))
    assert not is_visible(j, T0 + timedelta(hours=48))
    assert is_visible(job(expires_at=None), T0 + timedelta(days=365))


# ---------------------------------------------------------------- tokens and scopes


def test_token_secrets_are_random_and_stored_as_sha256() -> None:
    a, b = new_token_secret(), new_token_secret()
    assert a != b and len(a) > 32
    assert hash_token(a) != a and len(hash_token(a)) == 64 and hash_token(a) == hash_token(a)


@pytest.mark.parametrize(
    "scope", ["ADMIN", "DATASOURCES:CREATE", "JOBS:CREATE", "JOBS:EXECUTE", "DATASOURCES:READ:x", "PIPES:READ:y"]
)
def test_known_scopes_are_accepted(scope: str) -> None:
    assert validate_scope(scope) == scope


@pytest.mark.parametrize("scope", ["", "admin", "DATASOURCES:READ:", "PIPES:READ:", "JOBS:DELETE", "READ"])
def test_unknown_scopes_are_refused_naming_the_field(scope: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_scope(scope)
    assert info.value.field == "scope"


WIDE = ["ADMIN", "DATASOURCES:CREATE", "JOBS:CREATE"]


@pytest.mark.parametrize("scope", WIDE)
def test_wide_scopes_read_and_write_every_job_of_their_workspace(scope: str) -> None:
    p = principal(scope)
    for j in (job(), job(datasource="other"), job(datasource=None, pipe="p")):
        p.check_read(j)
        p.check_write(j)
    p.require_create()
    assert p.read_scope("ws1") == ReadScope("ws1", everything=True)


@pytest.mark.parametrize("scope", [*WIDE, "JOBS:EXECUTE", "DATASOURCES:READ:events"])
def test_no_scope_reaches_another_workspace(scope: str) -> None:
    p = principal(scope)
    theirs = job(workspace="ws2")
    with pytest.raises(PermissionDenied) as info:
        p.check_read(theirs)
    assert str(info.value) == NO_ACCESS
    with pytest.raises(PermissionDenied):
        p.check_write(theirs)
    with pytest.raises(PermissionDenied):
        p.workspace("ws2")


def test_datasource_read_scope_reads_only_jobs_on_that_datasource() -> None:
    p = principal("DATASOURCES:READ:events")
    p.check_read(job(datasource="events"))
    with pytest.raises(PermissionDenied) as info:
        p.check_read(job(datasource="other"))
    assert str(info.value) == NO_ACCESS
    scope = p.read_scope("ws1")
    assert not scope.everything and scope.datasource_names == {"events"}
    assert scope.allows(job(datasource="events")) and not scope.allows(job(datasource="other"))
    assert not scope.allows(job(workspace="ws2", datasource="events"))


def test_pipe_read_scope_reads_only_jobs_of_that_pipe() -> None:
    p = principal("PIPES:READ:by_day")
    p.check_read(job(datasource="x", pipe="by_day"))
    with pytest.raises(PermissionDenied):
        p.check_read(job(datasource="x", pipe="by_week"))
    with pytest.raises(PermissionDenied):
        p.check_read(job(datasource="by_day"))  # a data source named like the pipe is not the pipe


@pytest.mark.parametrize("scope", ["DATASOURCES:READ:events", "PIPES:READ:p"])
def test_narrow_read_scopes_can_neither_cancel_retry_nor_create(scope: str) -> None:
    p = principal(scope)
    with pytest.raises(PermissionDenied):
        p.check_write(job(datasource="events", pipe="p"))
    with pytest.raises(PermissionDenied):
        p.require_create()
    with pytest.raises(PermissionDenied):
        p.require_execute()


def test_execute_only_tokens_run_jobs_but_read_nothing() -> None:
    p = principal("JOBS:EXECUTE")
    p.require_execute()
    with pytest.raises(PermissionDenied):
        p.read_scope("ws1")
    with pytest.raises(PermissionDenied) as info:
        p.check_read(job())
    assert str(info.value) == NO_ACCESS
    with pytest.raises(PermissionDenied):
        p.require_create()
    with pytest.raises(PermissionDenied):
        p.check_write(job())


@pytest.mark.parametrize("scope", [*WIDE, "DATASOURCES:READ:events"])
def test_only_jobs_execute_lets_a_worker_claim(scope: str) -> None:
    with pytest.raises(PermissionDenied):
        principal(scope).require_execute()


def test_only_admin_passes_require_admin() -> None:
    principal("ADMIN").require_admin()
    for scope in ("DATASOURCES:CREATE", "JOBS:CREATE", "JOBS:EXECUTE"):
        with pytest.raises(PermissionDenied):
            principal(scope).require_admin()


def test_a_token_acts_on_its_own_workspace() -> None:
    p = principal("ADMIN")
    assert p.workspace(None) == "ws1" and p.workspace("") == "ws1" and p.workspace("ws1") == "ws1"


def test_every_workspace_tokens_must_name_the_workspace() -> None:
    p = principal("JOBS:CREATE", "JOBS:EXECUTE", workspace=None)
    with pytest.raises(InvalidArgument) as info:
        p.workspace(None)
    assert info.value.field == "workspace_id"
    assert p.workspace("ws1") == "ws1" and p.workspace("ws2") == "ws2"
    for theirs in (job(workspace="ws1"), job(workspace="ws2")):
        p.check_read(theirs)
        p.check_write(theirs)


def test_every_workspace_execute_token_cannot_read() -> None:
    p = principal("JOBS:EXECUTE", workspace=None)
    with pytest.raises(PermissionDenied):
        p.check_read(job(workspace="ws9"))


# ---------------------------------------------------------------- new-job validation

GOOD: dict[str, dict[str, Any]] = {
    "import": {"datasource": {"name": "events"}, "url": "https://example.com/e.csv"},
    "populateview": {"datasource": {"name": "events_mv"}, "query_sql": "SELECT 1"},
    "copy": {"datasource": {"name": "snap"}, "params": {"sql": "SELECT 1"}},
    "query": {"query_sql": "SELECT 1"},
    "delete_data": {"datasource": {"name": "events"}, "params": {"delete_condition": "a = 1"}},
    "sink": {},
}


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_a_good_job_of_every_kind_is_accepted(kind: str) -> None:
    valid = validate_new_job(NewJob(kind=kind, **GOOD[kind]))
    assert valid.kind == kind


def test_defaults_and_normalisation() -> None:
    valid = validate_new_job(NewJob(kind="import", pipe_id="", workspace_id="", **GOOD["import"]))
    assert valid.mode == "append" and valid.pipe_id is None and valid.workspace_id is None
    assert validate_new_job(NewJob(kind="import", mode="replace", **GOOD["import"])).mode == "replace"
    assert validate_new_job(NewJob(kind="import", url="file:///tmp/x.csv", datasource={"name": "e"})).url


LONG = "x" * 257
URL = "https://e.com/x"
BAD: list[tuple[str, str, dict[str, Any], str]] = [
    ("kind-empty", "", {}, "kind"),
    ("kind-unknown", "reindex", {}, "kind"),
    ("kind-case", "IMPORT", GOOD["import"], "kind"),
    ("datasource-missing-import", "import", {"url": "https://e.com/x"}, "datasource"),
    ("datasource-missing-populate", "populateview", {"query_sql": "SELECT 1"}, "datasource"),
    ("datasource-missing-copy", "copy", {"query_sql": "SELECT 1"}, "datasource"),
    ("datasource-missing-delete", "delete_data", {"params": {"delete_condition": "1"}}, "datasource"),
    ("datasource-no-name", "import", {"datasource": {"id": "t_1"}, "url": URL}, "datasource.name"),
    ("datasource-name-digit", "import", {"datasource": {"name": "1abc"}, "url": URL}, "datasource.name"),
    ("datasource-name-space", "import", {"datasource": {"name": "a b"}, "url": URL}, "datasource.name"),
    ("datasource-name-number", "import", {"datasource": {"name": 5}, "url": URL}, "datasource.name"),
    ("datasource-name-long", "import", {"datasource": {"name": "a" * 129}, "url": URL}, "datasource.name"),
    ("datasource-id-type", "import", {"datasource": {"name": "e", "id": 7}, "url": URL}, "datasource.id"),
    ("datasource-id-long", "import", {"datasource": {"name": "e", "id": LONG}, "url": URL}, "datasource.id"),
    ("mode-bad-import", "import", {**GOOD["import"], "mode": "merge"}, "mode"),
    ("mode-bad-copy", "copy", {**GOOD["copy"], "mode": "upsert"}, "mode"),
    ("mode-bad-populate", "populateview", {**GOOD["populateview"], "mode": "x"}, "mode"),
    ("url-missing", "import", {"datasource": {"name": "e"}}, "url"),
    ("url-scheme-ftp", "import", {"datasource": {"name": "e"}, "url": "ftp://e.com/x.csv"}, "url"),
    ("url-scheme-none", "import", {"datasource": {"name": "e"}, "url": "e.com/x.csv"}, "url"),
    ("url-no-host", "import", {"datasource": {"name": "e"}, "url": "https:///x.csv"}, "url"),
    ("url-javascript", "import", {"datasource": {"name": "e"}, "url": "javascript:alert(1)"}, "url"),
    ("url-too-long", "import", {"datasource": {"name": "e"}, "url": "https://e.com/" + "a" * 5000}, "url"),
    ("url-control-char", "import", {"datasource": {"name": "e"}, "url": "https://e.com/\n"}, "url"),
    ("sql-missing-query", "query", {}, "params.sql"),
    ("sql-blank-copy", "copy", {"datasource": {"name": "s"}, "params": {"sql": "   "}}, "params.sql"),
    ("sql-not-text", "populateview", {"datasource": {"name": "s"}, "params": {"sql": 5}}, "params.sql"),
    ("sql-too-long", "query", {"query_sql": "S" * 100_001}, "query_sql"),
    ("delete-condition-missing", "delete_data", {"datasource": {"name": "e"}}, "params.delete_condition"),
    ("params-too-big", "sink", {"params": {"blob": "x" * 70_000}}, "params"),
    ("pipe_id-long", "sink", {"pipe_id": LONG}, "pipe_id"),
    ("pipe_name-long", "sink", {"pipe_name": LONG}, "pipe_name"),
    ("pipe_name-control", "sink", {"pipe_name": "a\x00b"}, "pipe_name"),
    ("query_id-long", "sink", {"query_id": LONG}, "query_id"),
    ("idempotency_key-long", "sink", {"idempotency_key": LONG}, "idempotency_key"),
    ("request_id-long", "sink", {"request_id": LONG}, "request_id"),
    ("request_id-control", "sink", {"request_id": "a\tb"}, "request_id"),
]


@pytest.mark.parametrize(("kind", "fields", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_field(kind: str, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_new_job(NewJob(kind=kind, **fields))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ") and len(info.value.problem) > 5


def test_a_retry_asks_for_what_the_creator_asked_with_a_fresh_query_id_and_keys() -> None:
    job = waiting_job(
        T0,
        workspace_id="ws",
        kind="populateview",
        datasource={"name": "events", "id": "t_1"},
        pipe_id="p_1",
        pipe_name="pipe",
        query_id="q_old",
        query_sql="SELECT 1",
        mode="replace",
        url="https://example.invalid/data.csv",
        params={"sql": "SELECT 1"},
        idempotency_key="once",
        request_id="r_old",
    )
    assert retry_of(job) == NewJob(
        kind="populateview",
        workspace_id="ws",
        datasource={"name": "events", "id": "t_1"},
        pipe_id="p_1",
        pipe_name="pipe",
        query_sql="SELECT 1",
        mode="replace",
        url="https://example.invalid/data.csv",
        params={"sql": "SELECT 1"},
    )
