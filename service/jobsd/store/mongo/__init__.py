"""The MongoDB store (PyMongo's native asyncio API): the store, its document codec, its queries and change feed."""

from jobsd.store.mongo.store import MongoStore, database_from_uri

__all__ = ["MongoStore", "database_from_uri"]
