"""Counting AWS calls with botocore event hooks, and DynamoDB request units from the call shapes.

`CallCounter` counts calls per operation (and, for DynamoDB, the items the responses say were
read). `CapacityModel` prices each DynamoDB call in request units the way DynamoDB bills them:

* writes: 1 WRU per KB of the larger of the item's before and after image, twice that inside a
  transaction; plus, per secondary index of the table (learnt from describe_table, once per
  table: its keys and projection, KEYS_ONLY, INCLUDE or ALL), 1 write per KB of the index entry
  when the item enters or leaves the index or an attribute the index holds changes, 2 when its
  index key changes.
* refused writes: a PutItem, UpdateItem or DeleteItem that fails its condition costs 1 WRU per KB
  of the item as it stands (at least 1); a TransactWriteItems cancelled by a condition, the same
  for each item whose condition failed. Other errors cost nothing.
* reads: 1 RRU per 4 KB per item for a consistent read (also for an item that is not there),
  half for an eventually consistent one; a Query is billed on the total size it read.

The after images (and the standing item of a refused write) are read through a separate,
uncounted client (one BatchGetItem per write call), and remembered as the next write's before
image; the run that uses this starts from an empty table and is not timed.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from reditus_refunds.layout import HASH_KEY, INDEX_PROJECTIONS, INDEXES

DDB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
DDB_READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"})
INDEX_ENTRY_OVERHEAD = 100  # bytes DynamoDB adds to each index entry


class CallCounter:
    """Calls per operation of one client; for DynamoDB also the items read (from the responses)."""

    def __init__(self, service: str):
        self.service = service
        self.calls: Counter[str] = Counter()
        self.items_read = 0
        self._lock = threading.Lock()
        self._clients: list[Any] = []

    def attach(self, client: Any) -> CallCounter:
        client.meta.events.register(f"before-call.{self.service}.*", self._before)
        client.meta.events.register(f"after-call.{self.service}.*", self._after)
        self._clients.append(client)
        return self

    def detach(self) -> None:
        for client in self._clients:
            client.meta.events.unregister(f"before-call.{self.service}.*", self._before)
            client.meta.events.unregister(f"after-call.{self.service}.*", self._after)
        self._clients.clear()

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.items_read = 0

    def _before(self, model: Any, **kwargs: Any) -> None:
        with self._lock:
            self.calls[model.name] += 1

    def _after(self, model: Any, parsed: dict[str, Any], **kwargs: Any) -> None:
        read = items_in_response(model.name, parsed)
        if read:
            with self._lock:
                self.items_read += read

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.calls.items() if op in DDB_WRITES)

    @property
    def reads(self) -> int:
        return sum(n for op, n in self.calls.items() if op in DDB_READS)


class CallTimer:
    """Wall time spent inside one client's calls (summed over threads), and how many there were."""

    def __init__(self, service: str):
        self.service = service
        self.calls = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def attach(self, client: Any) -> CallTimer:
        client.meta.events.register(f"before-call.{self.service}.*", self._before)
        client.meta.events.register(f"after-call.{self.service}.*", self._after)
        return self

    def detach(self, client: Any) -> None:
        client.meta.events.unregister(f"before-call.{self.service}.*", self._before)
        client.meta.events.unregister(f"after-call.{self.service}.*", self._after)

    def reset(self) -> None:
        with self._lock:
            self.calls, self.seconds = 0, 0.0

    @staticmethod
    def _before(context: dict[str, Any], **kwargs: Any) -> None:
        context["bench_started"] = time.perf_counter()

    def _after(self, context: dict[str, Any], **kwargs: Any) -> None:
        started = context.get("bench_started")
        if started is not None:
            with self._lock:
                self.calls += 1
                self.seconds += time.perf_counter() - started


def items_in_response(operation: str, parsed: dict[str, Any]) -> int:
    """Items a DynamoDB read evaluated, as its response reports them."""
    if operation in ("Query", "Scan"):
        return int(parsed.get("ScannedCount", parsed.get("Count", 0)))
    if operation == "GetItem":
        return 1 if parsed.get("Item") else 0
    if operation == "BatchGetItem":
        return sum(len(items) for items in parsed.get("Responses", {}).values())
    if operation == "TransactGetItems":
        return sum(1 for r in parsed.get("Responses", []) if r.get("Item"))
    return 0


# ---- DynamoDB item sizes ---------------------------------------------------------------------


def _number_size(text: str) -> int:
    digits = Decimal(text).normalize().as_tuple().digits
    return (len(digits) + 1) // 2 + 1


def attr_size(value: dict[str, Any]) -> int:
    """Bytes of one attribute value (wire format), after DynamoDB's published sizing rules."""
    (kind, data), *_ = value.items()
    if kind == "S":
        return len(str(data).encode())
    if kind == "N":
        return _number_size(str(data))
    if kind == "B":
        return len(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in data)
    if kind == "NS":
        return sum(_number_size(n) for n in data)
    if kind == "BS":
        return sum(len(b) for b in data)
    if kind == "L":
        return 3 + sum(1 + attr_size(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + attr_size(v) for k, v in data.items())
    raise ValueError(f"unknown attribute type {kind}")


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + attr_size(value) for name, value in item.items())


def _kb(size: int, unit: int) -> int:
    return max(1, math.ceil(size / unit))


@dataclass(frozen=True)
class Index:
    """A secondary index as DynamoDB bills its writes: its key attributes and what it projects."""

    keys: tuple[str, ...]  # its hash key, then its range key if it has one
    projected: tuple[str, ...] | None  # non-key attributes it holds; None: all of them (ALL)


@dataclass(frozen=True)
class TableSchema:
    keys: tuple[str, ...]  # the table's primary key attributes
    indexes: Mapping[str, Index]


def described_schema(table: dict[str, Any]) -> TableSchema:
    """A table's keys and secondary indexes from describe_table's ``Table``."""

    def keys(schema: list[dict[str, str]]) -> tuple[str, ...]:
        ordered = sorted(schema, key=lambda k: k["KeyType"] != "HASH")
        return tuple(k["AttributeName"] for k in ordered)

    indexes: dict[str, Index] = {}
    for index in [*table.get("GlobalSecondaryIndexes", []), *table.get("LocalSecondaryIndexes", [])]:
        projection = index.get("Projection", {})
        kind = projection.get("ProjectionType", "ALL")
        projected = None if kind == "ALL" else tuple(projection.get("NonKeyAttributes", ()))
        indexes[index["IndexName"]] = Index(keys(index["KeySchema"]), projected)
    return TableSchema(keys(table["KeySchema"]), indexes)


def layout_indexes(projections: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Index]:
    """layout.INDEXES with `projections` (layout.INDEX_PROJECTIONS unless given)."""
    projections = INDEX_PROJECTIONS if projections is None else projections
    return {name: Index(keys, tuple(projections[name])) for name, keys in INDEXES.items()}


def index_units(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    index: Index,
    table_keys: tuple[str, ...] = (HASH_KEY,),
) -> int:
    """Write units of one item change in one index: 1 per KB of the entry when it enters or leaves
    the index or when what the index holds changes, both when its index key changes (delete +
    put); nothing when only attributes the index does not hold change."""

    def entry(item: dict[str, Any] | None) -> dict[str, Any] | None:
        if not item or any(k not in item for k in index.keys):
            return None  # sparse: an item without the index's keys has no entry
        if index.projected is None:
            return dict(item)
        return {k: v for k, v in item.items() if k in table_keys or k in index.keys or k in index.projected}

    def kb(e: dict[str, Any]) -> int:
        return _kb(item_size(e) + INDEX_ENTRY_OVERHEAD, 1024)

    old, new = entry(before), entry(after)
    if old is not None and new is not None:
        if any(old[k] != new[k] for k in index.keys):
            return kb(old) + kb(new)
        return kb(new) if old != new else 0
    if new is not None:
        return kb(new)
    return kb(old) if old is not None else 0


def index_writes(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    projections: Mapping[str, tuple[str, ...]] | None = None,
    indexes: Mapping[str, Index] | None = None,
    table_keys: tuple[str, ...] = (HASH_KEY,),
) -> int:
    """Index write units one item change costs over a table's indexes: `indexes` if given, else
    layout.INDEXES with `projections` (layout.INDEX_PROJECTIONS unless given)."""
    indexes = layout_indexes(projections) if indexes is None else indexes
    return sum(index_units(before, after, index, table_keys) for index in indexes.values())


# ---- request units per call ------------------------------------------------------------------


@dataclass
class Units:
    wru: float = 0.0  # base-table write request units
    gsi_wru: float = 0.0  # index writes
    rru: float = 0.0
    per_op: dict[str, float] = field(default_factory=dict)  # WRU + RRU by operation


def _write_keys(
    operation: str, params: dict[str, Any], key_names: Callable[[str], tuple[str, ...]]
) -> list[tuple[str, dict[str, Any], bool]]:
    """(table, key, transactional) of every item a write call touches, in the call's order;
    `key_names(table)` gives a table's primary key attributes (a Put names its key in its item)."""

    def key_of(table: str, item: dict[str, Any]) -> dict[str, Any]:
        return {k: item[k] for k in key_names(table)}

    if operation == "PutItem":
        return [(params["TableName"], key_of(params["TableName"], params["Item"]), False)]
    if operation in ("UpdateItem", "DeleteItem"):
        return [(params["TableName"], params["Key"], False)]
    if operation == "TransactWriteItems":
        keys = []
        for action in params["TransactItems"]:
            kind, op = next(iter(action.items()))
            key = key_of(op["TableName"], op["Item"]) if kind == "Put" else op["Key"]
            keys.append((op["TableName"], key, True))
        return keys
    if operation == "BatchWriteItem":
        keys = []
        for table, requests in params["RequestItems"].items():
            for req in requests:
                if "PutRequest" in req:
                    keys.append((table, key_of(table, req["PutRequest"]["Item"]), False))
                else:
                    keys.append((table, req["DeleteRequest"]["Key"], False))
        return keys
    return []


# What the product's write calls are for, told apart by their shapes (for the breakdown only).
_SHAPES = (
    # before the generic claim: a claim made without reading first has this condition
    ("attribute_not_exists(refund_id) OR (", "claim: refund (fresh)"),
    ("lease_holder", "claim: payment"),
    ("open_claims = if_not_exists(open_claims, :zero) + :one", "claim: refund"),
    ("refunded_by", "payment mark"),
    ("REMOVE lease_token, lease_until ADD open_claims", "claim handed back"),
    ("SET lease_until = :zero", "payment release"),
    ("lease_token = :token", "result"),
    ("decision = :decision", "webhook event finished"),
    ("count_day = :day", "webhook count"),
    ("review_state = :state", "webhook review closed"),
)


def call_shape(operation: str, params: dict[str, Any]) -> str:
    """`operation` plus, for the history store's writes, which step it is (claim, result, ...)."""
    if operation == "TransactWriteItems":
        actions = [next(iter(a.items())) for a in params["TransactItems"]]
        if any(kind == "Put" for kind, _ in actions):
            return f"{operation} (pending)"
        text = " ".join(str(op.get("UpdateExpression", "")) for _, op in actions)
    elif operation == "UpdateItem":
        text = f"{params.get('UpdateExpression', '')} {params.get('ConditionExpression', '')}"
    else:
        return operation
    for marker, name in _SHAPES:
        if marker in text:
            return f"{operation} ({name})"
    return operation


class CapacityModel:
    """Request units of every DynamoDB call the attached clients make (see the module docstring).

    Attach every client that writes to the table, and start from an empty table: an item this
    model has not seen written is taken not to exist. A refused write is billed under its call
    shape with " refused" appended (e.g. "UpdateItem (claim: refund (fresh)) refused").
    """

    def __init__(self, images_client: Any):
        self._images = images_client
        self._known: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._schemas: dict[str, TableSchema] = {}
        self.units: dict[str, Units] = {}  # by the label given to attach()
        self._lock = threading.Lock()
        self._describe_lock = threading.Lock()

    def attach(self, client: Any, label: str) -> CapacityModel:
        self.units.setdefault(label, Units())

        def before(params: dict[str, Any], model: Any, context: dict[str, Any], **kwargs: Any) -> None:
            self._before(params, model, context)

        def after(model: Any, parsed: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
            self._after(label, model, parsed, context)

        client.meta.events.register("before-parameter-build.dynamodb.*", before, unique_id=f"bench-{label}-b")
        client.meta.events.register("after-call.dynamodb.*", after, unique_id=f"bench-{label}-a")
        return self

    @staticmethod
    def detach(client: Any, label: str) -> None:
        client.meta.events.unregister("before-parameter-build.dynamodb.*", unique_id=f"bench-{label}-b")
        client.meta.events.unregister("after-call.dynamodb.*", unique_id=f"bench-{label}-a")

    def schema(self, table: str) -> TableSchema:
        """The table's keys and indexes, described once through the images client."""
        with self._describe_lock:
            if table not in self._schemas:
                described = self._images.describe_table(TableName=table)["Table"]
                self._schemas[table] = described_schema(described)
            return self._schemas[table]

    def _key_names(self, table: str) -> tuple[str, ...]:
        return self.schema(table).keys

    @staticmethod
    def _ident(table: str, key: dict[str, Any]) -> tuple[str, str]:
        return table, repr(sorted(key.items()))

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any]) -> None:
        try:
            keys = _write_keys(model.name, params, self._key_names) if model.name in DDB_WRITES else []
        except ClientError:  # no such table to describe: the call fails too, and costs nothing
            keys = []
        with self._lock:
            befores = [(t, k, tx, self._known.get(self._ident(t, k))) for t, k, tx in keys]
        context["bench_call"] = (model.name, dict(params), befores)

    def _images_of(self, keys: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The items as they stand now (consistent reads through the uncounted client)."""
        images: dict[tuple[str, str], dict[str, Any]] = {}
        wanted: dict[str, list[dict[str, Any]]] = {}
        for table, key in keys:
            if key not in wanted.setdefault(table, []):
                wanted[table].append(key)
        request: dict[str, Any] = {t: {"Keys": k, "ConsistentRead": True} for t, k in wanted.items() if k}
        while request:
            response = self._images.batch_get_item(RequestItems=request)
            for table, items in response.get("Responses", {}).items():
                names = self._key_names(table)
                for item in items:
                    images[self._ident(table, {k: item[k] for k in names})] = item
            request = response.get("UnprocessedKeys") or {}
        return images

    @staticmethod
    def _refused(
        operation: str, error: dict[str, Any], parsed: dict[str, Any], befores: list[Any]
    ) -> list[Any] | None:
        """The items whose condition refused the call (billed), or None for an error DynamoDB
        does not bill."""
        code = error.get("Code", "")
        if code == "ConditionalCheckFailedException" and operation in ("PutItem", "UpdateItem", "DeleteItem"):
            return befores
        if code == "TransactionCanceledException" and operation == "TransactWriteItems":
            # One reason per action, in the call's order (`None` for those that did not fail).
            reasons = parsed.get("CancellationReasons") or []
            return [
                before
                for before, reason in zip(befores, reasons, strict=False)
                if (reason or {}).get("Code") == "ConditionalCheckFailed"
            ]
        return None

    def _after(self, label: str, model: Any, parsed: dict[str, Any], context: dict[str, Any]) -> None:
        call = context.get("bench_call")
        if not call:
            return
        operation, params, befores = call
        shape = call_shape(operation, params)
        wru = gsi = rru = 0.0
        error = parsed.get("Error")
        if error:
            refused = self._refused(operation, error, parsed, befores)
            if not refused:
                return
            wru = self._refused_writes(refused)
            shape += " refused"
        else:
            if befores:
                wru, gsi = self._writes(befores)
            if operation in ("GetItem", "BatchGetItem"):
                rru = self._point_reads(operation, params, parsed)
            elif operation in ("Query", "Scan"):
                size = sum(item_size(i) for i in parsed.get("Items", []))
                rru = _kb(size, 4096) * (1.0 if params.get("ConsistentRead") else 0.5)
        with self._lock:
            units = self.units[label]
            units.wru += wru
            units.gsi_wru += gsi
            units.rru += rru
            units.per_op[shape] = units.per_op.get(shape, 0.0) + wru + gsi + rru

    def _writes(self, befores: list[Any]) -> tuple[float, float]:
        """Table and index write units of a successful write call."""
        wru = gsi = 0.0
        images = self._images_of([(t, k) for t, k, _, _ in befores])
        for table, key, transactional, before in befores:
            after = images.get(self._ident(table, key))
            schema = self.schema(table)
            wru += _kb(max(item_size(before), item_size(after)), 1024) * (2 if transactional else 1)
            gsi += index_writes(before, after, indexes=schema.indexes, table_keys=schema.keys)
            with self._lock:
                self._known[self._ident(table, key)] = after
        return wru, gsi

    def _refused_writes(self, refused: list[Any]) -> float:
        """A refused write is billed by the item as it stands (unchanged): 1 per KB, at least 1."""
        wru = 0.0
        images = self._images_of([(t, k) for t, k, _, _ in refused])
        for table, key, _, _ in refused:
            standing = images.get(self._ident(table, key))
            wru += _kb(item_size(standing), 1024)
            with self._lock:
                self._known[self._ident(table, key)] = standing
        return wru

    @staticmethod
    def _point_reads(operation: str, params: dict[str, Any], parsed: dict[str, Any]) -> float:
        if operation == "GetItem":
            factor = 1.0 if params.get("ConsistentRead") else 0.5
            return _kb(item_size(parsed.get("Item")), 4096) * factor
        units = 0.0
        for table, spec in params["RequestItems"].items():
            factor = 1.0 if spec.get("ConsistentRead") else 0.5
            found = {str(i[HASH_KEY]): i for i in parsed.get("Responses", {}).get(table, [])}
            for key in spec["Keys"]:
                units += _kb(item_size(found.get(str(key[HASH_KEY]))), 4096) * factor
        return units
