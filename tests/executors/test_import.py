"""The import executor on real files: served over HTTP by a local server, or read from file:// paths."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.domain.model import datasource_id_for
from jobsd.executors.dataplane import DataPlane, TableStats
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.import_data import run_import
from jobsd.executors.outbound import ImportPolicy

from .conftest import LOCAL, WORKSPACE, FileServer, RecordingContext, make_job

EVENTS_SCHEMA = [("date", "DateTime"), ("user_id", "Int64"), ("event", "String"), ("amount", "Float64")]

# Lines 5, 6 and 9 parse but do not fit the schema (quarantine); 7 and 8 do not parse (invalid); 10-11 is one
# record with a quoted newline.
EVENTS_CSV = (
    "date,user_id,event,amount\n"
    "2024-01-01 10:00:00,1,view,1.5\n"
    "2024-01-01 11:00:00,2,buy,20\n"
    '2024-01-02 09:30:00,3,"view, with comma",0\n'
    "2024-01-02 12:00:00,four,view,1.0\n"
    "not a date,5,view,2.0\n"
    "2024-01-03 08:00:00,6,view\n"
    '2024-01-03 09:00:00,7,"bad"quote,1.0\n'
    "2024-01-03 10:00:00,8,buy,\n"
    '2024-01-04 10:00:00,9,"multi\n'
    'line",3.25\n'
    "2024-01-04 11:00:00,10,buy,4.75\n"
)
GOOD_EVENTS = ["view", "buy", "view, with comma", "multi\nline", "buy"]
# Three 8-byte columns per row, plus the text of `event`.
GOOD_BYTES = 24 * len(GOOD_EVENTS) + sum(len(e) for e in GOOD_EVENTS)


async def create_events(plane: DataPlane) -> None:
    await plane.create_datasource("events", EVENTS_SCHEMA, workspace=WORKSPACE)


async def rows(plane: DataPlane, sql: str) -> list[tuple[object, ...]]:
    return await plane.query(sql, workspace=WORKSPACE)


async def run(plane: DataPlane, **job_fields: object) -> RecordingContext:
    ctx = RecordingContext(make_job("import", **job_fields))  # type: ignore[arg-type]
    await run_import(ctx, plane, policy=LOCAL)
    return ctx


async def test_csv_with_good_quarantined_and_invalid_lines_gives_exact_figures(
    plane: DataPlane, files: FileServer
) -> None:
    await create_events(plane)
    ctx = await run(plane, url=files.write("events.csv", EVENTS_CSV))

    assert ctx.figures["statistics"] == {"bytes": GOOD_BYTES, "row_count": 5}
    assert ctx.figures["quarantine_rows"] == 3
    assert ctx.figures["invalid_lines"] == 2
    assert ctx.figures["progress_percentage"] == 100.0
    assert ctx.figures["errors"][0] == (
        "There was an error with file contents: 3 rows in quarantine (see data source events_quarantine) "
        "and 2 invalid lines."
    )
    assert ctx.figures["errors"][1] == "line 7: has 3 fields, the header has 4"
    assert ctx.figures["errors"][2].startswith("line 8: cannot be parsed as CSV")
    assert await rows(plane, "SELECT user_id, event FROM events ORDER BY user_id") == [
        (1, "view"),
        (2, "buy"),
        (3, "view, with comma"),
        (9, "multi\nline"),
        (10, "buy"),
    ]
    quarantined = await rows(plane, "SELECT c__line, user_id, c__error, c__import_id FROM events_quarantine ORDER BY 1")
    assert [(line, user) for line, user, _, _ in quarantined] == [(5, "four"), (6, "5"), (9, "8")]
    assert 'column "user_id": cannot parse "four" as Int64' in str(quarantined[0][2])
    assert 'column "date"' in str(quarantined[1][2])
    assert 'column "amount": missing value' in str(quarantined[2][2])
    assert {import_id for *_, import_id in quarantined} == {ctx.job.id}
    source = await plane.get_datasource("events", workspace=WORKSPACE)
    assert ctx.figures["result"] == {"datasource": source.job_json(TableStats(bytes=GOOD_BYTES, row_count=5))}


async def test_the_import_reports_the_target_object_as_it_is_after_the_work(
    plane: DataPlane, files: FileServer, clock: ManualClock
) -> None:
    await create_events(plane)
    before = await plane.get_datasource("events", workspace=WORKSPACE)
    clock.advance(timedelta(minutes=3))
    ctx = await run(plane, url=files.write("events.csv", EVENTS_CSV))

    reported = ctx.figures["result"]["datasource"]
    assert reported["id"] == before.id == datasource_id_for(WORKSPACE, "events")
    assert reported["name"] == "events"
    assert reported["created_at"] == before.job_json()["created_at"]
    assert reported["updated_at"] == clock.now().strftime("%Y-%m-%d %H:%M:%S.%f") != reported["created_at"]
    assert reported["statistics"] == ctx.figures["statistics"] == {"bytes": GOOD_BYTES, "row_count": 5}
    assert reported["headers"] == {"cached_delimiter": ","}
    assert "columns" not in reported


async def test_a_data_source_an_import_creates_is_described_as_csv_with_the_service_id(
    plane: DataPlane, files: FileServer
) -> None:
    ctx = await run(plane, datasource="fresh", url=files.write("fresh.csv", "a;b\n1;x\n"))

    reported = ctx.figures["result"]["datasource"]
    assert (reported["id"], reported["type"], reported["headers"]) == (
        datasource_id_for(WORKSPACE, "fresh"),
        "csv",
        {"cached_delimiter": ";"},
    )
    assert reported["statistics"] == {"bytes": 9, "row_count": 1}


async def test_ndjson_with_quarantined_and_invalid_lines(plane: DataPlane, files: FileServer) -> None:
    await plane.create_datasource(
        "clicks", [("ts", "DateTime"), ("user", "Int64"), ("tag", "Nullable(String)")], workspace=WORKSPACE
    )
    lines = [
        json.dumps({"ts": "2024-01-01 10:00:00", "user": 1, "tag": "a"}),
        json.dumps({"ts": "2024-01-01 10:00:01", "user": 2, "extra": "ignored"}),
        "[1, 2, 3]",
        json.dumps({"ts": "2024-01-01 10:00:02", "user": 2.5, "tag": "c"}),
        "",
        "{not json",
        json.dumps({"ts": "2024-01-01 10:00:03", "user": 4, "tag": {"nested": True}}),
        json.dumps({"user": 5}),
    ]
    ctx = await run(plane, datasource="clicks", url=files.write("clicks.ndjson", "\n".join(lines) + "\n"))

    assert ctx.figures["quarantine_rows"] == 2  # user 2.5 is no Int64; the last has no ts
    assert ctx.figures["invalid_lines"] == 2
    assert ctx.figures["errors"][1] == "line 3: is JSON but not an object (got list)"
    assert ctx.figures["errors"][2].startswith("line 6: is not valid JSON")
    assert await rows(plane, "SELECT user, tag FROM clicks ORDER BY user") == [
        (1, "a"),
        (2, None),
        (4, '{"nested":true}'),
    ]
    assert ctx.figures["statistics"] == {"bytes": 3 * 16 + len("a") + len('{"nested":true}'), "row_count": 3}


async def test_a_deeply_nested_ndjson_line_is_one_invalid_line_and_the_import_goes_on(
    plane: DataPlane, files: FileServer
) -> None:
    lines = [
        json.dumps({"user": 1, "tag": {"a": [1, {"b": 2}]}}),
        '{"user": 2, "tag": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"user": 3, "tag": "[[[[ not nesting: inside a string ]]]]"}',
        '{"user": 4, "tag": ' + "[" * 64 + "]" * 64 + "}",
    ]
    ctx = await run(plane, datasource="deep", url=files.write("deep.ndjson", "\n".join(lines) + "\n"))

    assert ctx.figures["invalid_lines"] == 2
    assert ctx.figures["errors"][1:] == [
        "line 2: is JSON nested more than 64 levels deep",
        "line 4: is JSON nested more than 64 levels deep",
    ]
    assert await rows(plane, "SELECT user FROM deep ORDER BY user") == [(1,), (3,)]


async def test_append_adds_and_replace_swaps_the_contents(plane: DataPlane, files: FileServer) -> None:
    await create_events(plane)
    url = files.write("events.csv", EVENTS_CSV)
    await run(plane, url=url, mode="append")
    second = await run(plane, url=url, mode="append")
    assert second.figures["statistics"]["row_count"] == 10

    small = files.write("small.csv", "date,user_id,event,amount\n2024-02-01 00:00:00,99,new,1\n")
    replaced = await run(plane, url=small, mode="replace")
    assert replaced.figures["statistics"] == {"bytes": 24 + 3, "row_count": 1}
    assert await rows(plane, "SELECT user_id FROM events") == [(99,)]


async def test_a_missing_data_source_is_created_with_a_schema_inferred_from_the_file(
    plane: DataPlane, files: FileServer
) -> None:
    csv_text = (
        "day,ts,n,price,flag,name,maybe\n"
        "2024-01-01,2024-01-01 10:00:00,1,1.5,true,a,7\n"
        "2024-01-02,2024-01-02T11:00:00,-2,3,false,b,\n"
    )
    ctx = await run(plane, datasource="inferred", url=files.write("inferred.csv", csv_text))

    source = await plane.get_datasource("inferred", workspace=WORKSPACE)
    assert [(c.name, c.type.name) for c in source.columns] == [
        ("day", "Date"),
        ("ts", "DateTime"),
        ("n", "Int64"),
        ("price", "Float64"),
        ("flag", "Bool"),
        ("name", "String"),
        ("maybe", "Nullable(Int64)"),
    ]
    assert source.type == "csv"
    assert source.headers == {"cached_delimiter": ","}
    assert ctx.figures["statistics"]["row_count"] == 2
    assert await rows(plane, "SELECT n, maybe FROM inferred ORDER BY n") == [(-2, None), (1, 7)]

    objects = [{"id": 1, "score": 1, "at": "2024-01-01 00:00:00", "meta": {"a": 1}}, {"id": 2, "score": 2.5}]
    text = "\n".join(json.dumps(o) for o in objects)
    await run(plane, datasource="inferred_json", url=files.write("feed.jsonl", text))
    source = await plane.get_datasource("inferred_json", workspace=WORKSPACE)
    assert [(c.name, c.type.name) for c in source.columns] == [
        ("id", "Int64"),
        ("score", "Float64"),
        ("at", "Nullable(DateTime)"),
        ("meta", "Nullable(String)"),
    ]


async def test_format_comes_from_the_param_then_the_suffix_then_the_content(
    plane: DataPlane, files: FileServer
) -> None:
    ndjson = '{"a": 1}\n{"a": 2}\n'
    # No telling suffix: sniffed from the first line.
    sniffed = await run(plane, datasource="sniffed", url=files.write("data.txt", ndjson))
    assert sniffed.figures["statistics"]["row_count"] == 2
    # The param wins over the suffix: a .csv file read as NDJSON.
    forced = await run(plane, datasource="forced", url=files.write("data.csv", ndjson), params={"format": "ndjson"})
    assert forced.figures["statistics"]["row_count"] == 2
    # Semicolons are recognised as the delimiter from the header.
    semi = await run(plane, datasource="semicolons", url=files.write("semi.csv", "a;b\n1;x\n2;y\n"))
    assert await rows(plane, "SELECT a, b FROM semicolons ORDER BY a") == [(1, "x"), (2, "y")]
    assert semi.figures["statistics"]["row_count"] == 2


async def test_http_404_fails_with_the_status_and_leaves_the_data_source_as_it_was(
    plane: DataPlane, files: FileServer
) -> None:
    await create_events(plane)
    await run(plane, url=files.write("events.csv", EVENTS_CSV))
    before = await plane.stats("events", workspace=WORKSPACE)

    url = files.url("missing.csv")
    with pytest.raises(ExecutionFailed) as failure:
        await run(plane, url=url, mode="replace")
    assert failure.value.message == f"Could not fetch {url}: HTTP 404 Not Found"
    assert await plane.stats("events", workspace=WORKSPACE) == before


async def test_an_unreachable_url_fails_with_a_message_naming_it(plane: DataPlane) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/events.csv"
    with pytest.raises(ExecutionFailed) as failure:
        await run(plane, url=url)
    assert failure.value.message.startswith(f"Could not fetch {url}: ")
    assert await plane.find_datasource("events", workspace=WORKSPACE) is None


@pytest.mark.parametrize(
    ("content", "params", "message"),
    [
        ("\x00\x01binary\x02\n", {"format": "ndjson"}, "No line of the file could be read as NDJSON"),
        ("", {}, "The file is empty"),
        ("a,b\n", {"format": "xml"}, "Unknown format 'xml'"),
    ],
)
async def test_a_file_in_the_wrong_format_fails_and_creates_nothing(
    plane: DataPlane, files: FileServer, content: str, params: dict[str, str], message: str
) -> None:
    with pytest.raises(ExecutionFailed) as failure:
        await run(plane, datasource="fresh", url=files.write("file.data", content), params=params)
    assert failure.value.message.startswith(message)
    assert await plane.find_datasource("fresh", workspace=WORKSPACE) is None


async def test_replace_with_a_file_of_only_invalid_lines_keeps_the_old_contents(
    plane: DataPlane, files: FileServer
) -> None:
    await create_events(plane)
    await run(plane, url=files.write("events.csv", EVENTS_CSV))
    before = await plane.stats("events", workspace=WORKSPACE)
    broken = files.write("broken.csv", 'date,user_id,event,amount\n1,2\n"x"y,1,2,3\n')
    with pytest.raises(ExecutionFailed) as failure:
        await run(plane, url=broken, mode="replace")
    assert "No line of the file could be read as CSV" in failure.value.message
    assert failure.value.errors[0] == "line 2: has 2 fields, the header has 4"
    assert await plane.stats("events", workspace=WORKSPACE) == before


async def test_a_csv_header_with_unknown_columns_fails_before_loading(plane: DataPlane, files: FileServer) -> None:
    await create_events(plane)
    with pytest.raises(ExecutionFailed) as failure:
        await run(plane, url=files.write("other.csv", "date,user_id,colour\n2024-01-01 00:00:00,1,red\n"))
    assert 'columns that data source "events" does not have: colour' in failure.value.message
    assert (await plane.stats("events", workspace=WORKSPACE)).row_count == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"datasource": None}, "The job names no data source"),
        ({"datasource": "bad name; drop"}, "datasource.name: 'bad name; drop' is not a valid data source name"),
        ({"datasource": "x_quarantine"}, "is reserved"),
        ({"mode": "upsert"}, "Unknown import mode 'upsert'"),
        ({"url": "ftp://example/x.csv"}, "the URL must start with http://, https:// or file://"),
        ({"url": None}, "The job needs params.url"),
    ],
)
async def test_bad_job_fields_fail_with_a_message_naming_them(
    plane: DataPlane, fields: dict[str, object], message: str
) -> None:
    job_fields: dict[str, object] = {"url": "http://127.0.0.1:9/x.csv", **fields}
    with pytest.raises(ExecutionFailed) as failure:
        await run(plane, **job_fields)
    assert message in failure.value.message


async def test_file_urls_are_read_only_under_the_import_root(plane: DataPlane, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.csv").write_text("a\n1\n2\n")
    policy = ImportPolicy.build(file_root=allowed)
    ctx = RecordingContext(make_job("import", url=f"file://{allowed}/ok.csv"))
    await run_import(ctx, plane, policy=policy)
    assert ctx.figures["statistics"]["row_count"] == 2

    (tmp_path / "secret.csv").write_text("a\n1\n")
    for url in (f"file://{tmp_path}/secret.csv", f"file://{allowed}/../secret.csv"):
        outside = RecordingContext(make_job("import", datasource="other", url=url))
        with pytest.raises(ExecutionFailed) as failure:
            await run_import(outside, plane, policy=policy)
        assert failure.value.message.endswith("file imports may only read the server's import directory")
        assert str(tmp_path) not in failure.value.message.replace(url, "")
    off = RecordingContext(make_job("import", datasource="other", url=f"file://{allowed}/ok.csv"))
    with pytest.raises(ExecutionFailed, match="file imports are off on this server"):
        await run_import(off, plane)
    assert await plane.find_datasource("other", workspace=WORKSPACE) is None


async def test_gzip_files_are_decompressed_and_progress_counts_bytes(plane: DataPlane, files: FileServer) -> None:
    body = "n,label\n" + "".join(f"{i},label-{i}\n" for i in range(300_000))
    compressed = gzip.compress(body.encode())
    files.write("numbers.csv.gz", compressed)
    ctx = await run(plane, datasource="numbers", url=files.url("numbers.csv.gz"))

    assert ctx.figures["statistics"]["row_count"] == 300_000
    assert ctx.figures["processed_data"]["read_bytes"] == len(compressed)
    percentages = [r["progress_percentage"] for r in ctx.reports if "progress_percentage" in r]
    assert percentages == sorted(percentages)
    assert percentages[-1] == 100.0
    assert any(0 < p < 100 for p in percentages), "progress should move before the end"


async def test_concurrent_imports_into_one_data_source_all_land(plane: DataPlane, files: FileServer) -> None:
    await create_events(plane)
    url = files.write("events.csv", EVENTS_CSV)
    contexts = [RecordingContext(make_job("import", url=url)) for _ in range(4)]
    await asyncio.gather(*(run_import(ctx, plane, policy=LOCAL) for ctx in contexts))
    assert (await plane.stats("events", workspace=WORKSPACE)).row_count == 4 * 5
    assert await rows(plane, "SELECT count(*) FROM events_quarantine") == [(4 * 3,)]
