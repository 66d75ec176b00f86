"""What `MongoStore.open()` leaves on the server: the index plan (on the emulation, which reports indexes as the
server does), created idempotently, and retention changes applied to the existing TTL index."""

from __future__ import annotations

from datetime import timedelta

from jobsd.store.mongo import MongoStore
from tests.support.mongo_emulation import EmulatedAsyncMongoClient

LIST_ORDER = [("created_at_us", 1), ("_id", 1)]


async def indexes(client: EmulatedAsyncMongoClient, collection: str) -> dict[str, dict[str, object]]:
    info = await client.get_database("jobsd").get_collection(collection).index_information()
    return {name: {**spec, "key": [(f, int(d)) for f, d in spec["key"]]} for name, spec in info.items()}


async def test_open_creates_one_list_index_per_filter_led_by_workspace_and_ending_in_creation_order(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    jobs = await indexes(emulated_client, "jobs")
    expected_lists = {
        "jobs_by_workspace": [],
        "jobs_by_kind": ["kind"],
        "jobs_by_status": ["status"],
        "jobs_by_pipe_id": ["pipe_id"],
        "jobs_by_pipe_name": ["pipe_name"],
        "jobs_by_datasource_name": ["datasource_name"],
    }
    for name, equality in expected_lists.items():
        assert jobs[name]["key"] == [("workspace_id", 1), *((f, 1) for f in equality), *LIST_ORDER], name
    # Claims: the workspaces with waiting jobs (a distinct over workspace_id), then one workspace's FIFO.
    assert jobs["jobs_claim"]["key"] == [("status", 1), ("workspace_id", 1), *LIST_ORDER]
    assert jobs["jobs_claim_by_kind"]["key"] == [("status", 1), ("kind", 1), ("workspace_id", 1), *LIST_ORDER]
    assert jobs["jobs_leases"]["key"] == [("status", 1), ("lease_expires_at_us", 1), ("_id", 1)]


async def test_expired_jobs_have_a_ttl_index_that_deletes_at_expires_at(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    ttl = (await indexes(emulated_client, "jobs"))["jobs_expiry"]
    assert ttl["key"] == [("expires_at", 1)]
    assert ttl["expireAfterSeconds"] == 0


async def test_idempotency_keys_are_unique_per_workspace_only_where_set(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    unique = (await indexes(emulated_client, "jobs"))["jobs_idempotency"]
    assert unique["key"] == [("workspace_id", 1), ("idempotency_key", 1)]
    assert unique["unique"] is True
    assert unique["partialFilterExpression"] == {"idempotency_key": {"$type": "string"}}


async def test_log_workspace_and_token_collections_have_their_indexes(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    log = await indexes(emulated_client, "jobs_log")
    assert log["jobs_log_by_workspace"]["key"] == [
        ("workspace_id", 1),
        ("updated_at_us", 1),
        ("job_id", 1),
        ("revision", 1),
    ]
    assert "jobs_log_ttl" not in log  # no retention given: purge alone deletes old rows
    workspaces = await indexes(emulated_client, "workspaces")
    assert workspaces["workspaces_by_name"]["key"] == [("name", 1)]
    assert workspaces["workspaces_by_name"]["unique"] is True


async def test_opening_again_changes_nothing_and_the_log_retention_sets_the_log_ttl(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    before = await indexes(emulated_client, "jobs")
    again = MongoStore("mongodb://emulated.invalid/jobsd", client=emulated_client.as_client())
    await again.open()
    assert await indexes(emulated_client, "jobs") == before
    await again.close()

    for days in (30, 7):
        configured = MongoStore(
            "mongodb://emulated.invalid/jobsd", client=emulated_client.as_client(), log_retention=timedelta(days=days)
        )
        await configured.open()
        ttl = (await indexes(emulated_client, "jobs_log"))["jobs_log_ttl"]
        assert ttl["key"] == [("updated_at", 1)]
        assert ttl["expireAfterSeconds"] == days * 86_400
        await configured.close()
