"""How the detail renders `datasource`: `result.datasource` (what the worker reported after the work) when present,
else the creator's object; never merged; `id` and `name` always present and first.

Jobs are moved through their life by the Workers RPCs, as a worker would (no executors here, so nothing else claims
them). Run against the in-process gateway and the standalone one over gRPC.
"""

from __future__ import annotations

from jobsd_client import pb

from .support import Gateway, struct


async def test_the_reported_object_wins_over_the_creator_s_and_is_not_merged(any_gw: Gateway) -> None:
    created = await any_gw.create(
        "import", datasource={"id": "t_creator", "name": "events", "description": "as the creator saw it"}
    )
    reported = {"id": "t_plane", "name": "events", "cluster": "default", "statistics": {"bytes": 9, "row_count": 1}}
    await any_gw.finish(
        await any_gw.claim("import"), progress=pb.ProgressUpdate(result=struct({"datasource": reported}))
    )

    detail = (await any_gw.get(f"/v0/jobs/{created.id}")).body
    items = (await any_gw.get("/v0/jobs")).body["jobs"]

    assert detail["datasource"] == reported
    assert [item["datasource"] for item in items] == [{"id": "t_plane", "name": "events"}]


async def test_a_reported_object_without_id_or_name_keeps_the_job_s(any_gw: Gateway) -> None:
    created = await any_gw.create("import", datasource={"id": "t_creator", "name": "events", "tags": {"a": "b"}})
    await any_gw.finish(
        await any_gw.claim("import"),
        progress=pb.ProgressUpdate(result=struct({"datasource": {"cluster": "default", "version": 0}})),
    )

    detail = (await any_gw.get(f"/v0/jobs/{created.id}")).body

    assert detail["datasource"] == {"id": "t_creator", "name": "events", "cluster": "default", "version": 0}
    assert list(detail["datasource"])[:2] == ["id", "name"]


async def test_a_result_without_a_datasource_object_keeps_the_creator_s(any_gw: Gateway) -> None:
    creator = {"id": "t_creator", "name": "events", "tags": {"a": "b"}}
    created = await any_gw.create("delete_data", datasource=creator)
    await any_gw.finish(
        await any_gw.claim("delete_data"),
        progress=pb.ProgressUpdate(result=struct({"rows_affected": 2, "datasource": "not an object"})),
    )

    detail = (await any_gw.get(f"/v0/jobs/{created.id}")).body

    assert detail["datasource"] == creator
    assert detail["rows_affected"] == 2
