"""The kind registry: built-in kinds with their documented rules, operator kinds from TOML (file and variable),
the per-kind overrides, and every refusal naming the source, the kind and the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobsd.domain.kinds import (
    BUILTIN_KINDS,
    KeyScope,
    KindDefaults,
    KindRegistry,
    build_registry,
    parse_kind_declarations,
)
from jobsd.domain.model import Job, JobStatus
from jobsd.domain.validation import NewJob, validate_new_job
from jobsd.errors import InvalidArgument
from jobsd.settings import Settings, settings_from
from tests.support.jobs import waiting_job

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

KINDS_TOML = """
[thumbnail]
description = "render thumbnails"
cancellable_while_working = true
concurrency_limit = 4
lease_seconds = 12
max_attempts = 5
time_limit_seconds = 600
retention_hours = 2

[reindex]
concurrency_key = "target"
"""


def registry(
    text: str = KINDS_TOML,
    concurrency_limits: dict[str, int] | None = None,
    time_limits: dict[str, float] | None = None,
) -> KindRegistry:
    declared = parse_kind_declarations("kinds.toml", text)
    return build_registry(
        KindDefaults(), [("kinds.toml", declared)], concurrency_limits=concurrency_limits, time_limits=time_limits
    )


def test_the_tinybird_kinds_are_built_in_with_their_documented_rules() -> None:
    assert BUILTIN_KINDS.names == ("copy", "delete_data", "import", "populateview", "query", "sink")
    cancellable = {spec.name for spec in BUILTIN_KINDS if spec.cancellable_while_working}
    keyed_by_target = {spec.name for spec in BUILTIN_KINDS if spec.concurrency_key is KeyScope.TARGET}
    assert cancellable == {"populateview", "copy"}
    assert keyed_by_target == {"populateview", "copy", "delete_data"}
    assert all(spec.builtin for spec in BUILTIN_KINDS)


def test_a_declared_kind_takes_its_rules_and_the_defaults_for_the_rest() -> None:
    kinds = build_registry(
        KindDefaults(lease=timedelta(seconds=9), max_attempts=7, time_limit=None, retention=timedelta(hours=5)),
        [("kinds.toml", parse_kind_declarations("kinds.toml", KINDS_TOML))],
    )
    thumbnail = kinds.require("thumbnail")
    assert (thumbnail.cancellable_while_working, thumbnail.concurrency_limit) == (True, 4)
    assert thumbnail.lease == timedelta(seconds=12) and thumbnail.max_attempts == 5
    assert thumbnail.time_limit == timedelta(seconds=600) and thumbnail.retention == timedelta(hours=2)
    assert thumbnail.description == "render thumbnails" and not thumbnail.builtin
    reindex = kinds.require("reindex")
    assert not reindex.cancellable_while_working and reindex.concurrency_limit == 1
    assert reindex.lease == timedelta(seconds=9) and reindex.max_attempts == 7
    assert reindex.time_limit is None and reindex.retention == timedelta(hours=5)
    # Keyed by its target data source, so it needs one.
    assert reindex.needs_datasource and reindex.key_for("ws", "events") == "ws:reindex:events"
    assert thumbnail.key_for("ws", "events") == "ws:thumbnail"
    assert "import" in kinds and len(kinds) == 8


def test_a_built_in_kind_may_change_its_numbers_but_not_its_documented_rules() -> None:
    kinds = registry("import = {concurrency_limit = 9, time_limit_seconds = 0}")
    assert kinds.require("import").concurrency_limit == 9
    assert kinds.require("import").time_limit is None
    with pytest.raises(InvalidArgument) as info:
        registry("import = {cancellable_while_working = true}")
    assert str(info.value) == (
        "kinds.toml: kind 'import', field 'cancellable_while_working': is fixed for the built-in kind import "
        "(the Tinybird Jobs API documents it as false); only its numbers can change"
    )
    registry("copy = {cancellable_while_working = true}")  # the documented value itself is fine


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "thumbnail = {lease_seconds = 'soon'}",
            "kind 'thumbnail', field 'lease_seconds': expected a number, got 'soon'",
        ),
        (
            "thumbnail = {concurrency_limit = 0}",
            "kind 'thumbnail', field 'concurrency_limit': must be at least 1, got 0",
        ),
        (
            "thumbnail = {max_attempts = 1.5}",
            "kind 'thumbnail', field 'max_attempts': expected a whole number, got 1.5",
        ),
        (
            "thumbnail = {cancellable_while_working = 'yes'}",
            "field 'cancellable_while_working': expected true or false",
        ),
        ("thumbnail = {concurrency_key = 'pipe'}", 'field \'concurrency_key\': expected "workspace" or "target"'),
        ("thumbnail = {time_limit_seconds = -1}", "field 'time_limit_seconds': must be at least 0, got -1"),
        ("thumbnail = {colour = 'red'}", "kind 'thumbnail': unknown field 'colour'; expected some of description"),
        ("Thumbnail = {}", "kind 'Thumbnail': a kind name is 1-64 lower-case letters"),
        ("thumbnail = 3", "kind 'thumbnail': expected a table of its rules"),
        ("thumbnail = {", "is not valid TOML: "),
    ],
)
def test_a_bad_declaration_names_the_source_the_kind_and_the_field(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_kind_declarations("JOBSD_KINDS", text)
    assert info.value.field == "JOBSD_KINDS"
    assert str(info.value).startswith("JOBSD_KINDS: ") and message in str(info.value)


def test_overrides_must_name_declared_kinds_and_win_over_the_declaration() -> None:
    kinds = registry(concurrency_limits={"thumbnail": 2, "import": 8}, time_limits={"thumbnail": 0, "query": 30})
    assert kinds.require("thumbnail").concurrency_limit == 2
    assert kinds.require("thumbnail").time_limit is None
    assert kinds.require("query").time_limit == timedelta(seconds=30)
    assert kinds.require("import").concurrency_limit == 8
    with pytest.raises(InvalidArgument) as info:
        registry(concurrency_limits={"imprt": 2})
    assert str(info.value).startswith("JOBSD_CONCURRENCY_LIMITS: unknown kind 'imprt'; declared kinds: copy, ")


def test_a_kind_declared_in_two_places_is_refused() -> None:
    one = parse_kind_declarations("JOBSD_KINDS_FILE (k.toml)", "thumbnail = {}")
    two = parse_kind_declarations("JOBSD_KINDS", "thumbnail = {}")
    with pytest.raises(InvalidArgument) as info:
        build_registry(KindDefaults(), [("JOBSD_KINDS_FILE (k.toml)", one), ("JOBSD_KINDS", two)])
    assert str(info.value) == "JOBSD_KINDS: kind 'thumbnail' is already declared in JOBSD_KINDS_FILE (k.toml)"


def test_settings_read_the_file_and_the_variable_and_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "kinds.toml"
    path.write_text(KINDS_TOML)
    settings = settings_from(
        {
            "JOBSD_KINDS_FILE": str(path),
            "JOBSD_KINDS": 'resize = {description = "resize images"}',
            "JOBSD_LEASE_SECONDS": "21",
            "JOBSD_TIME_LIMITS": "resize=45,import=0",
            "JOBSD_CONCURRENCY_LIMITS": "resize=3",
        }
    )
    kinds = settings.kind_registry
    assert {"thumbnail", "reindex", "resize", "import"} <= set(kinds.names)
    resize = kinds.require("resize")
    assert resize.lease == timedelta(seconds=21) and resize.time_limit == timedelta(seconds=45)
    assert resize.concurrency_limit == 3
    assert kinds.require("import").time_limit is None and kinds.require("copy").time_limit == timedelta(hours=24)
    # The registry is rebuilt with the settings it belongs to.
    assert "resize" not in settings.with_changes(kinds="", kind_limits={}, time_limits={}).kind_registry


def test_a_missing_kinds_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        Settings(kinds_file=str(tmp_path / "nope.toml"))
    assert str(info.value) == f"JOBSD_KINDS_FILE: cannot read {tmp_path / 'nope.toml'}: No such file or directory"


def _job(kind: str, status: JobStatus, started_at: datetime | None) -> Job:
    return waiting_job(T0, kind=kind, status=status, expires_at=None, started_at=started_at)


def test_the_lease_never_outlasts_the_run_time_deadline() -> None:
    thumbnail = registry().require("thumbnail")
    job = _job("thumbnail", JobStatus.WORKING, T0)
    assert thumbnail.deadline(job) == T0 + timedelta(seconds=600)
    assert thumbnail.lease_until(job, T0 + timedelta(seconds=100)) == T0 + timedelta(seconds=112)
    assert thumbnail.lease_until(job, T0 + timedelta(seconds=595)) == T0 + timedelta(seconds=600)
    unlimited = registry("thumbnail = {time_limit_seconds = 0}").require("thumbnail")
    assert unlimited.deadline(job) is None
    assert unlimited.lease_until(job, T0) == T0 + timedelta(seconds=30)


def test_create_accepts_declared_kinds_only_and_lists_them() -> None:
    kinds = registry()
    valid = validate_new_job(NewJob(kind="thumbnail", params={"images": 4}), kinds)
    assert valid.kind == "thumbnail" and valid.params == {"images": 4}
    with pytest.raises(InvalidArgument) as info:
        validate_new_job(NewJob(kind="thumbnails"), kinds)
    assert str(info.value) == (
        "kind: unknown kind 'thumbnails'; expected one of copy, delete_data, import, populateview, query, reindex, "
        "sink, thumbnail"
    )
    with pytest.raises(InvalidArgument) as info:
        validate_new_job(NewJob(kind="reindex"), kinds)
    assert str(info.value) == 'datasource: is required for reindex jobs (at least {"name": ...})'
