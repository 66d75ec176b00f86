"""The real PyMongo client against a port where no MongoDB listens: jobsd reports Unavailable, quickly."""

from __future__ import annotations

import socket

import pytest

from jobsd.errors import Unavailable
from jobsd.store.mongo import MongoStore


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_opening_a_store_whose_server_is_down_is_unavailable_not_a_hang() -> None:
    store = MongoStore(f"mongodb://127.0.0.1:{closed_port()}/jobsd?serverSelectionTimeoutMS=200")
    try:
        with pytest.raises(Unavailable) as down:
            await store.open()
        assert "MongoDB store cannot" in str(down.value)
        with pytest.raises(Unavailable):
            await store.ping()
    finally:
        await store.close()
