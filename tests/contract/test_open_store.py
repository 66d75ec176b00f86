"""`open_store(url)`: JOBSD_STORE picks the backend; a URL it cannot serve is refused naming the `store` setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from jobsd.errors import InvalidArgument
from jobsd.store import SqliteStore, open_store


async def test_an_absolute_sqlite_url_opens_that_file_creating_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "jobsd.db"
    store = open_store(f"sqlite:///{path}")
    assert isinstance(store, SqliteStore) and store.path == path
    await store.open()
    try:
        await store.ping()
        assert path.exists()
    finally:
        await store.close()


async def test_a_relative_sqlite_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///.jobsd/jobsd.db")
    await store.open()
    await store.close()
    assert (tmp_path / ".jobsd" / "jobsd.db").exists()


@pytest.mark.parametrize(
    "url",
    ["", "sqlite://", "sqlite:///", "sqlite:///data/", "sqlite:///:memory:", "postgres://db/jobs", "/var/jobsd.db"],
)
def test_unusable_urls_are_refused_naming_the_store_setting(url: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        open_store(url)
    assert refused.value.field == "store"
    assert "sqlite:///" in refused.value.problem  # says what would work


def test_a_refused_url_never_echoes_its_password() -> None:
    with pytest.raises(InvalidArgument) as refused:
        open_store("mysql://jobs:s3cret@db.internal/jobs")
    assert "s3cret" not in str(refused.value)


@pytest.mark.skipif(importlib.util.find_spec("jobsd.store.mongo") is None, reason="jobsd.store.mongo not written yet")
async def test_a_mongodb_url_gets_the_mongodb_store() -> None:
    from jobsd.store.mongo.store import MongoStore  # type: ignore[import-not-found,unused-ignore]

    store = open_store("mongodb://127.0.0.1:1/jobsd")  # not opened: nothing connects
    assert isinstance(store, MongoStore)
    await store.close()
