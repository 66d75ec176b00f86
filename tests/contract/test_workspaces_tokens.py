"""Contract: workspaces by name, hashed tokens, and the health check."""

from __future__ import annotations

import uuid
from datetime import timedelta

from jobsd.domain.auth import hash_token, new_token_secret
from jobsd.domain.model import TokenRecord
from jobsd.store.base import JobStore

from .factories import T0


async def test_ensure_workspace_creates_once_and_finds_by_id(store: JobStore) -> None:
    name = f"team-{uuid.uuid4().hex[:8]}"
    created = await store.ensure_workspace(name, T0)
    assert created.name == name and created.created_at == T0
    assert uuid.UUID(created.id).version == 4
    again = await store.ensure_workspace(name, T0 + timedelta(days=1))
    assert again == created
    other = await store.ensure_workspace(name + "-other", T0)
    assert other.id != created.id
    assert await store.get_workspace(created.id) == created
    assert await store.get_workspace(str(uuid.uuid4())) is None


async def test_find_workspace_finds_by_name_and_never_creates(store: JobStore) -> None:
    name = f"team-{uuid.uuid4().hex[:8]}"
    assert await store.find_workspace(name) is None
    assert await store.find_workspace(name) is None, "a lookup must not create the workspace"
    created = await store.ensure_workspace(name, T0)
    assert await store.find_workspace(name) == created
    assert await store.find_workspace(name.upper()) is None


async def test_tokens_are_found_by_hash_and_replaced_by_hash(store: JobStore) -> None:
    secret = new_token_secret()
    record = TokenRecord(
        token_hash=hash_token(secret),
        name="admin",
        workspace_id=str(uuid.uuid4()),
        scopes=("ADMIN", "DATASOURCES:READ:events"),
        created_at=T0,
    )
    await store.put_token(record)
    assert await store.get_token(hash_token(secret)) == record
    assert await store.get_token(hash_token(secret + "x")) is None
    service = TokenRecord(record.token_hash, "service", None, ("JOBS:EXECUTE",), T0 + timedelta(hours=1))
    await store.put_token(service)
    assert await store.get_token(record.token_hash) == service


async def test_an_open_store_answers_ping(store: JobStore) -> None:
    await store.ping()
