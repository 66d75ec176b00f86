"""An in-process EMULATION of the `AsyncMongoClient` subset `MongoStore` uses, for tests where no server exists.

It runs each call on `mongomock` (a MongoDB written in Python) behind awaitables, and yields to the event loop
before every call so concurrent coroutines interleave at operation boundaries, as they do against a server. It is
stricter than mongomock about the shapes a real server would refuse or run badly:

- documents, filters and updates must be BSON-encodable, with UTC-aware datetimes and no `$`/`.` in stored keys;
- updates use only update operators, replacements none;
- a sorted find must hint an existing index whose key order yields the sort after the fields the filter fixes
  (so the server walks the index in order and never sorts in memory, which `explain()` confirms on a real one);
- the collection's write concern must be majority for writes, its read concern majority for reads.

It does NOT emulate: change streams (`watch()` raises NotImplementedError, as mongomock has none, so the store
takes its standalone-server fallback), TTL deletion, `explain()`, transactions, or server-side concurrency
beyond one operation at a time. Test ids that use it say "emulated"; tests/mongo covers the rest on a real server.
Never used by `jobsd serve`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast

import bson
import mongomock
from bson.errors import InvalidDocument
from mongomock.filtering import filter_applies
from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, ServerSelectionTimeoutError

__all__ = ["EmulatedAsyncMongoClient", "EmulationRefused", "RecordedCall", "sort_problem"]

_DUPLICATE_KEY = 11000
_UPDATE_OPERATORS = frozenset({"$set", "$unset", "$inc", "$max", "$push", "$pull", "$addToSet", "$setOnInsert"})
_QUERY_OPERATORS = frozenset(
    {"$and", "$or", "$in", "$nin", "$lt", "$lte", "$gt", "$gte", "$eq", "$ne", "$exists", "$size", "$type"}
)


class EmulationRefused(AssertionError):
    """The store sent something a real server would refuse, or would run with an in-memory sort."""


@dataclass(frozen=True, slots=True)
class RecordedCall:
    collection: str
    operation: str
    filter: Mapping[str, Any] | None
    sort: tuple[tuple[str, int], ...] = ()
    hint: str | None = None


def _walk_keys(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every mapping entry, at any depth (lists included)."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            found.append((here, item))
            found.extend(_walk_keys(item, here))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found.extend(_walk_keys(item, f"{path}[{index}]"))
    return found


def _check_bson(what: str, value: Mapping[str, Any]) -> None:
    try:
        bson.encode(value)
    except (InvalidDocument, TypeError, OverflowError) as exc:
        raise EmulationRefused(f"{what} is not BSON-encodable: {exc}") from None
    for path, item in _walk_keys(value):
        if isinstance(item, datetime) and item.tzinfo is None:
            raise EmulationRefused(f"{what} has a naive datetime at {path}; store UTC-aware datetimes")


def _check_stored(what: str, document: Mapping[str, Any]) -> None:
    _check_bson(what, document)
    for path, _ in _walk_keys(document):
        key = path.rsplit(".", 1)[-1].split("[", 1)[0]
        if key.startswith("$"):
            raise EmulationRefused(f"{what} has a field named {key!r} at {path}")


def _check_filter(what: str, filter_: Mapping[str, Any]) -> None:
    _check_bson(what, filter_)
    for path, _ in _walk_keys(filter_):
        key = path.rsplit(".", 1)[-1].split("[", 1)[0]
        if key.startswith("$") and key not in _QUERY_OPERATORS:
            raise EmulationRefused(f"{what} uses the query operator {key!r}, which the store has no business using")


def _check_update(what: str, update: Mapping[str, Any]) -> None:
    _check_bson(what, update)
    if not update:
        raise EmulationRefused(f"{what} is empty")
    for operator, fields in update.items():
        if operator not in _UPDATE_OPERATORS:
            raise EmulationRefused(f"{what} must use update operators only; got {operator!r}")
        if not isinstance(fields, Mapping) or not fields:
            raise EmulationRefused(f"{what}: {operator} needs a non-empty document of fields")


def sort_problem(filter_: Mapping[str, Any], sort: Sequence[tuple[str, int]], keys: Sequence[tuple[str, int]]) -> str:
    """Why an index with `keys` cannot return `filter_`'s matches in `sort` order without an in-memory sort ("" if
    it can): the sort must be a run of the index keys, all in the index's direction or all against it, and every
    key before that run must be fixed by the filter (equality, or `$in`, which the server merges in order)."""
    fields = [name for name, _ in keys]
    wanted = [name for name, _ in sort]
    start = next((i for i in range(len(fields) - len(wanted) + 1) if fields[i : i + len(wanted)] == wanted), None)
    if start is None:
        return f"the index keys {fields} do not contain the sort fields {wanted} in order"
    directions = {s * k for (_, s), (_, k) in zip(sort, keys[start : start + len(wanted)], strict=True)}
    if len(directions) != 1:
        return f"the sort {list(sort)} mixes directions against the index {list(keys)}"
    for name in fields[:start]:
        if name not in filter_:
            return f"the index starts with {name!r} but the filter does not fix it"
        condition = filter_[name]
        if isinstance(condition, Mapping) and not set(condition) <= {"$eq", "$in"}:
            return f"the filter bounds {name!r} with {sorted(condition)}, so the index cannot yield the sort order"
    return ""


def _bson_order(value: Any) -> tuple[int, Any]:
    """Sort key of a scalar in MongoDB's cross-type order (null < numbers < strings < dates)."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        raise EmulationRefused("the emulation does not sort on booleans")
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, datetime):
        return (3, value)
    raise EmulationRefused(f"the emulation sorts on scalars only, not {type(value).__name__}")


def _matches(filter_: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    """Whether one document matches a filter, by mongomock's matcher."""
    return bool(filter_applies(filter_, document))  # type: ignore[no-untyped-call]


def _field_order(name: str, document: Mapping[str, Any]) -> tuple[int, Any]:
    return _bson_order(document.get(name))


class _EmulatedCursor:
    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self._documents = documents

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        return self._documents if length is None else self._documents[:length]

    def __aiter__(self) -> _EmulatedCursor:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if not self._documents:
            raise StopAsyncIteration
        return self._documents.pop(0)


class _EmulatedCollection:
    def __init__(self, client: EmulatedAsyncMongoClient, sync: Any, options: Mapping[str, Any]) -> None:
        self._client = client
        self._sync = sync
        self._options = options
        self.name: str = sync.name

    @property
    def database(self) -> _EmulatedDatabase:
        return _EmulatedDatabase(self._client, self._sync.database, self._options)

    # -- the checks every call passes

    async def _enter(self, operation: str, *, write: bool, data: bool = True) -> None:
        """Every call: a turn of the event loop, injected faults, and (for data, not index metadata) the concern
        the store must use."""
        await asyncio.sleep(0)  # let other coroutines run between operations, as a network round trip does
        if not self._client.reachable:
            raise ServerSelectionTimeoutError("emulated MongoDB server is unreachable (set by the test)")
        fault = self._client.take_fault(self.name, operation)
        if fault is not None:
            raise fault
        hook = self._client.take_hook(self.name, operation)
        if hook is not None:
            await hook()
        if not data:
            return
        concern = self._options.get("write_concern" if write else "read_concern")
        level = getattr(concern, "document", {}).get("w") if write else getattr(concern, "level", None)
        if level != "majority":
            kind = "write concern" if write else "read concern"
            raise EmulationRefused(f"{self.name}.{operation}: the collection's {kind} is {level!r}, not majority")

    def _record(self, operation: str, filter_: Mapping[str, Any] | None, sort: Any = None, hint: Any = None) -> None:
        order = tuple((str(f), int(d)) for f, d in (sort or ()))
        self._client.calls.append(RecordedCall(self.name, operation, filter_, order, hint))

    def _check_sorted(self, operation: str, filter_: Mapping[str, Any], sort: Any, hint: Any) -> None:
        if not sort:
            return
        if not isinstance(hint, str):
            raise EmulationRefused(f"{self.name}.{operation} sorts by {sort} without naming the index (hint) to use")
        index = self._sync.index_information().get(hint)
        if index is None:
            raise EmulationRefused(f"{self.name}.{operation} hints {hint!r}, which is not an index of {self.name}")
        problem = sort_problem(filter_, [(f, int(d)) for f, d in sort], [(f, int(d)) for f, d in index["key"]])
        if problem:
            raise EmulationRefused(f"{self.name}.{operation} with hint {hint!r} would sort in memory: {problem}")

    # -- reads

    async def find_one(
        self, filter_: Mapping[str, Any], projection: Any = None, *, sort: Any = None, hint: Any = None
    ) -> dict[str, Any] | None:
        await self._enter("find_one", write=False)
        _check_filter(f"{self.name}.find_one filter", filter_)
        self._check_sorted("find_one", filter_, sort, hint)
        self._record("find_one", filter_, sort, hint)
        if sort:
            first = self._sorted_ids(filter_, sort, 1)
            if not first:
                return None
            filter_ = {"_id": first[0]}
        found: dict[str, Any] | None = self._sync.find_one(filter_, projection)
        return found

    def find(
        self,
        filter_: Mapping[str, Any],
        projection: Any = None,
        *,
        sort: Any = None,
        limit: int = 0,
        hint: Any = None,
    ) -> _EmulatedAwaitingCursor:
        return _EmulatedAwaitingCursor(self, filter_, projection, sort, limit, hint)

    async def _run_find(
        self, filter_: Mapping[str, Any], projection: Any, sort: Any, limit: int, hint: Any
    ) -> list[dict[str, Any]]:
        await self._enter("find", write=False)
        _check_filter(f"{self.name}.find filter", filter_)
        self._check_sorted("find", filter_, sort, hint)
        self._record("find", filter_, sort, hint)
        if not sort:
            cursor = self._sync.find(filter_, projection)
            return list(cursor.limit(limit) if limit else cursor)
        ids = self._sorted_ids(filter_, sort, limit)
        by_id = {d["_id"]: d for d in self._sync.find({"_id": {"$in": ids}}, projection)}
        return [by_id[i] for i in ids]

    def _sorted_ids(self, filter_: Mapping[str, Any], sort: Any, limit: int) -> list[Any]:
        """The ids of a sorted find, in order. mongomock copies every matching document before it applies a
        limit, which would make each one-job claim cost a copy of every waiting job."""
        # Read-only walk over mongomock's stored documents (its find would copy each one first), sorted with
        # plain Python keys (its own sort goes through a slow generic comparator; the store sorts on scalars).
        documents: list[dict[str, Any]] = list(self._sync._iter_documents(filter_))
        for name, direction in reversed(list(sort)):
            documents.sort(key=partial(_field_order, name), reverse=int(direction) < 0)
        return [d["_id"] for d in (documents[:limit] if limit else documents)]

    async def distinct(self, key: str, filter: Mapping[str, Any] | None = None, *, hint: Any = None) -> list[Any]:
        """The distinct values of `key` among the matches. Held to what a server does without a scan: the hinted
        index must hold `key` with every key before it fixed by the filter (as for a sorted find)."""
        await self._enter("distinct", write=False)
        filter_ = dict(filter or {})
        _check_filter(f"{self.name}.distinct filter", filter_)
        if not isinstance(hint, str):
            raise EmulationRefused(f"{self.name}.distinct of {key!r} without naming the index (hint) to use")
        self._check_sorted("distinct", filter_, [(key, 1)], hint)
        self._record("distinct", filter_, None, hint)
        values = {d.get(key) for d in self._sync._iter_documents(filter_)}
        return sorted(values, key=_bson_order)

    async def index_information(self) -> dict[str, Any]:
        await self._enter("index_information", write=False, data=False)
        info: dict[str, Any] = self._sync.index_information()
        for name, options in self._held_options().items():
            if name in info:
                info[name] = {**info[name], **options}
        return info

    async def count_documents(self, filter_: Mapping[str, Any]) -> int:
        await self._enter("count_documents", write=False)
        _check_filter(f"{self.name}.count_documents filter", filter_)
        return int(self._sync.count_documents(filter_))

    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("change streams are not emulated (mongomock has none); use a real replica set")

    # -- writes

    async def insert_one(self, document: Mapping[str, Any]) -> Any:
        await self._enter("insert_one", write=True)
        _check_stored(f"{self.name}.insert_one document", document)
        self._check_unique(document)
        self._record("insert_one", None)
        return self._sync.insert_one(dict(document))

    async def insert_many(self, documents: Sequence[Mapping[str, Any]], ordered: bool = True) -> Any:
        await self._enter("insert_many", write=True)
        for document in documents:
            _check_stored(f"{self.name}.insert_many document", document)
            self._check_unique(document)
        self._record("insert_many", None)
        return self._sync.insert_many([dict(d) for d in documents], ordered=ordered)

    async def replace_one(
        self, filter_: Mapping[str, Any], replacement: Mapping[str, Any], upsert: bool = False
    ) -> Any:
        await self._enter("replace_one", write=True)
        _check_filter(f"{self.name}.replace_one filter", filter_)
        _check_stored(f"{self.name}.replace_one replacement", replacement)
        self._check_unique(replacement)
        self._record("replace_one", filter_)
        return self._sync.replace_one(filter_, dict(replacement), upsert=upsert)

    async def update_one(self, filter_: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False) -> Any:
        await self._enter("update_one", write=True)
        _check_filter(f"{self.name}.update_one filter", filter_)
        _check_update(f"{self.name}.update_one update", update)
        self._check_update_keeps_unique(f"{self.name}.update_one", update)
        self._record("update_one", filter_)
        return self._sync.update_one(filter_, update, upsert=upsert)

    async def update_many(self, filter_: Mapping[str, Any], update: Mapping[str, Any]) -> Any:
        await self._enter("update_many", write=True)
        _check_filter(f"{self.name}.update_many filter", filter_)
        _check_update(f"{self.name}.update_many update", update)
        self._check_update_keeps_unique(f"{self.name}.update_many", update)
        self._record("update_many", filter_)
        return self._sync.update_many(filter_, update)

    async def find_one_and_update(
        self,
        filter_: Mapping[str, Any],
        update: Mapping[str, Any],
        projection: Any = None,
        *,
        sort: Any = None,
        upsert: bool = False,
        return_document: bool = ReturnDocument.BEFORE,
        hint: Any = None,
    ) -> dict[str, Any] | None:
        await self._enter("find_one_and_update", write=True)
        _check_filter(f"{self.name}.find_one_and_update filter", filter_)
        _check_update(f"{self.name}.find_one_and_update update", update)
        self._check_update_keeps_unique(f"{self.name}.find_one_and_update", update)
        self._check_sorted("find_one_and_update", filter_, sort, hint)
        self._record("find_one_and_update", filter_, sort, hint)
        if sort and not upsert:
            # Pick the first match by the cheap sorted-ids path, then update it by _id: still one atomic step,
            # since nothing else runs until this method returns.
            first = self._sorted_ids(filter_, sort, 1)
            if not first:
                return None
            filter_, sort = {"_id": first[0]}, None
        found: dict[str, Any] | None = self._sync.find_one_and_update(
            filter_, update, projection, upsert=upsert, return_document=return_document
        )
        return found

    async def delete_many(self, filter_: Mapping[str, Any]) -> Any:
        await self._enter("delete_many", write=True)
        _check_filter(f"{self.name}.delete_many filter", filter_)
        self._record("delete_many", filter_)
        return self._sync.delete_many(filter_)

    async def create_index(self, keys: Sequence[tuple[str, int]], *, name: str, **options: Any) -> str:
        await self._enter("create_index", write=True, data=False)
        held: dict[str, Any] = {}
        # mongomock would expire documents against the wall clock at every read; tests run on a ManualClock, and
        # TTL deletion is not emulated. The option is kept aside and reported by index_information().
        if "expireAfterSeconds" in options:
            held["expireAfterSeconds"] = int(options.pop("expireAfterSeconds"))
        # mongomock checks a unique index by scanning the collection on every write, which made the emulated
        # suite slow; a partial unique index is checked here instead, only by writes that can break it.
        if options.get("unique") and "partialFilterExpression" in options:
            held["unique"] = options.pop("unique")
        created: str = self._sync.create_index(list(keys), name=name, **options)
        self._held_options()[name] = held
        return created

    async def drop_index(self, name: str) -> None:
        await self._enter("drop_index", write=True, data=False)
        self._sync.drop_index(name)
        self._held_options().pop(name, None)

    def _held_options(self) -> dict[str, dict[str, Any]]:
        return self._client.held_index_options(self._sync.database.name, self.name)

    def _partial_unique_indexes(self) -> list[tuple[str, list[str], Mapping[str, Any]]]:
        """(name, key fields, partial filter) of the unique indexes this emulation checks itself."""
        info = self._sync.index_information()
        return [
            (name, [f for f, _ in info[name]["key"]], info[name]["partialFilterExpression"])
            for name, held in self._held_options().items()
            if held.get("unique") and name in info
        ]

    def _check_unique(self, document: Mapping[str, Any]) -> None:
        """DuplicateKeyError, as the server raises it, if `document` would break a partial unique index."""
        for name, fields, partial_filter in self._partial_unique_indexes():
            if not _matches(partial_filter, document):
                continue
            key = {f: document.get(f) for f in fields}
            clash = self._sync.find_one(
                {**key, "$and": [partial_filter], "_id": {"$ne": document.get("_id")}}, {"_id": 1}
            )
            if clash is not None:
                raise DuplicateKeyError(
                    f"E11000 duplicate key error collection: {self.name} index: {name} dup key: {key}",
                    _DUPLICATE_KEY,
                    {"keyPattern": dict.fromkeys(fields, 1), "keyValue": key},
                )

    def _check_update_keeps_unique(self, what: str, update: Mapping[str, Any]) -> None:
        """An update may touch a partial unique index only to take documents out of it (e.g. clear the key)."""
        for name, fields, partial_filter in self._partial_unique_indexes():
            touched = {f: v for op in update.values() for f, v in op.items() if f in fields or f in partial_filter}
            if touched and (set(update) - {"$set"} or _matches(partial_filter, touched)):
                raise EmulationRefused(
                    f"{what} sets {sorted(touched)}, which the emulation cannot check against {name}"
                )


class _EmulatedAwaitingCursor:
    """`collection.find(...)` is not a coroutine in pymongo; the query runs at `to_list()` / first iteration."""

    def __init__(
        self,
        collection: _EmulatedCollection,
        filter_: Mapping[str, Any],
        projection: Any,
        sort: Any,
        limit: int,
        hint: Any,
    ) -> None:
        self._collection = collection
        self._args = (filter_, projection, sort, limit, hint)
        self._cursor: _EmulatedCursor | None = None

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        documents = await self._collection._run_find(*self._args)
        return documents if length is None else documents[:length]

    def __aiter__(self) -> _EmulatedAwaitingCursor:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._cursor is None:
            self._cursor = _EmulatedCursor(await self._collection._run_find(*self._args))
        return await self._cursor.__anext__()


class _EmulatedDatabase:
    def __init__(self, client: EmulatedAsyncMongoClient, sync: Any, options: Mapping[str, Any]) -> None:
        self._client = client
        self._sync = sync
        self._options = dict(options)
        self.name: str = sync.name

    def get_collection(self, name: str, **options: Any) -> _EmulatedCollection:
        return _EmulatedCollection(self._client, self._sync.get_collection(name), {**self._options, **options})

    def __getitem__(self, name: str) -> _EmulatedCollection:
        return self.get_collection(name)

    async def command(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        if not self._client.reachable:
            raise ServerSelectionTimeoutError("emulated MongoDB server is unreachable (set by the test)")
        if name != "ping":
            raise NotImplementedError(f"the emulation answers only the ping command, not {name!r}")
        return {"ok": 1.0}

    async def list_collection_names(self) -> list[str]:
        names: list[str] = self._sync.list_collection_names()
        return names


class EmulatedAsyncMongoClient:
    """The emulated client. Share one instance between several `MongoStore`s to emulate replicas of one database.

    `calls` records every collection call (collection, operation, filter, sort, hint) for tests to inspect;
    `reachable = False` makes every call fail as an unreachable server does (ServerSelectionTimeoutError);
    `fail_next()` makes one call fail; `before_next()` runs a coroutine just before one call, to put another
    client's operations at an exact point of an interleaving.
    """

    def __init__(self) -> None:
        self._sync: Any = mongomock.MongoClient(tz_aware=True)
        self.calls: list[RecordedCall] = []
        self.reachable = True
        self.admin = _EmulatedDatabase(self, self._sync.get_database("admin"), {})
        self._held: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._faults: dict[tuple[str, str], Exception] = {}
        self._hooks: dict[tuple[str, str], list[Callable[[], Awaitable[None]]]] = {}

    def fail_next(self, collection: str, operation: str, error: Exception) -> None:
        """Make the next `operation` on `collection` raise `error` (a lost connection, say) instead of running."""
        self._faults[(collection, operation)] = error

    def take_fault(self, collection: str, operation: str) -> Exception | None:
        return self._faults.pop((collection, operation), None)

    def before_next(self, collection: str, operation: str, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` (to completion) just before the next `operation` on `collection`, whichever client makes
        it; hooks queue up in the order given, one per call. Operations the hook makes run normally."""
        self._hooks.setdefault((collection, operation), []).append(hook)

    def take_hook(self, collection: str, operation: str) -> Callable[[], Awaitable[None]] | None:
        queued = self._hooks.get((collection, operation))
        return queued.pop(0) if queued else None

    def raw_database(self, name: str) -> Any:
        """The emulated server's data as a synchronous mongomock database, for tests to set up or inspect what a
        crashed process would leave behind. Bypasses every check above."""
        return self._sync.get_database(name)

    def held_index_options(self, database: str, collection: str) -> dict[str, dict[str, Any]]:
        """Index options the emulation keeps out of mongomock (TTL, partial unique), by index name."""
        return self._held.setdefault((database, collection), {})

    def get_database(self, name: str, **options: Any) -> _EmulatedDatabase:
        return _EmulatedDatabase(self, self._sync.get_database(name), options)

    async def drop_database(self, name: str) -> None:
        self._sync.drop_database(name)
        for key in [k for k in self._held if k[0] == name]:
            del self._held[key]

    async def close(self) -> None:
        """Nothing to release: the data lives as long as this object."""

    def as_client(self) -> AsyncMongoClient[dict[str, Any]]:
        """This emulation typed as the client `MongoStore` expects. The store is type-checked against the real
        PyMongo API; the emulation implements the part of it the store calls (the emulated tests prove that)."""
        return cast("AsyncMongoClient[dict[str, Any]]", self)
