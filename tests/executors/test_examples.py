"""The sample shipped for the demo gives the figures examples/README.md promises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobsd.executors.dataplane import DataPlane
from jobsd.executors.import_data import run_import
from jobsd.executors.outbound import ImportPolicy
from jobsd.executors.populate_view import run_populate

from .conftest import WORKSPACE, RecordingContext, make_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_the_sample_imports_with_the_documented_figures_and_populates_by_day(
    plane: DataPlane, clock: Any
) -> None:
    imported = RecordingContext(make_job("import", url=f"file://{EXAMPLES / 'events.csv'}"))
    await run_import(imported, plane, policy=ImportPolicy.build(file_root=EXAMPLES))

    assert imported.figures["statistics"]["row_count"] == 2996
    assert imported.figures["quarantine_rows"] == 2
    assert imported.figures["invalid_lines"] == 2
    assert [e.split(":")[0] for e in imported.figures["errors"][1:]] == ["line 1801", "line 2601"]
    source = await plane.get_datasource("events", workspace=WORKSPACE)
    assert [(c.name, c.type.name) for c in source.columns] == [
        ("date", "Date"),
        ("timestamp", "DateTime"),
        ("user_id", "Int64"),
        ("event", "String"),
        ("product_id", "String"),
        ("price", "Float64"),
    ]

    sql = (EXAMPLES / "events_by_day.sql").read_text()
    populated = RecordingContext(
        make_job(
            "populateview", datasource="events_by_day", params={"sql": sql, "source": "events", "partition_by": "date"}
        )
    )
    await run_populate(populated, plane, clock=clock)
    assert [q["status"] for q in populated.figures["queries"]] == ["done"] * 7
    assert await plane.query("SELECT sum(events) FROM events_by_day", workspace=WORKSPACE) == [(2996,)]
