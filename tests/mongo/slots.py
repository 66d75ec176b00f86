"""What the MongoDB store keeps of a concurrency key's places, read straight off the emulated database."""

from __future__ import annotations

from tests.support.mongo_emulation import EmulatedAsyncMongoClient

DATABASE = "jobsd"


def holders_of(client: EmulatedAsyncMongoClient, key: str) -> list[tuple[str, str]] | None:
    """(job, claim) of each holder of the key's places, in order; None when the key has no slot document."""
    slot = client.raw_database(DATABASE)["slots"].find_one({"_id": key})
    if slot is None:
        return None
    return [(holder["job"], holder["claim"]) for holder in slot["holders"]]
