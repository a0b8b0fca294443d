"""Counting AWS calls with botocore event hooks, and DynamoDB request units from the call shapes.

`CallCounter` counts calls per operation (and, for DynamoDB, the items the responses say were
read). `CapacityModel` prices each DynamoDB call in request units the way DynamoDB bills them:

* writes: 1 WRU per KB of the larger of the item's before and after image, twice that inside a
  transaction; plus, per global secondary index, with the projection layout.INDEX_PROJECTIONS
  declares (template.yaml the same), 1 write per KB of the index entry when the item enters or
  leaves the index or an attribute the index holds changes, 2 when its index key changes.
* reads: 1 RRU per 4 KB per item for a consistent read (also for an item that is not there),
  half for an eventually consistent one; a Query is billed on the total size it read.

The after images are read through a separate, uncounted client (one BatchGetItem per write
call), and remembered as the next write's before image; the run that uses this starts from an
empty table and is not timed.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

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


def _index_entry(item: dict[str, Any], keys: tuple[str, ...], projected: tuple[str, ...]) -> dict[str, Any]:
    """What an index holds of an item: the table's and the index's keys and the projected attributes."""
    return {k: v for k, v in item.items() if k == HASH_KEY or k in keys or k in projected}


def index_writes(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    projections: dict[str, tuple[str, ...]] | None = None,
) -> int:
    """Index write units one item change costs over the table's GSIs, each with its projection
    (layout.INDEX_PROJECTIONS unless given): 1 per KB of the entry when it enters or leaves the
    index or when a projected attribute changes, both when its index key changes (delete + put);
    nothing when only attributes the index does not hold change."""
    projections = INDEX_PROJECTIONS if projections is None else projections
    units = 0
    for index, (hash_key, range_key) in INDEXES.items():
        keys, projected = (hash_key, range_key), projections[index]
        was = bool(before) and hash_key in before and range_key in before  # type: ignore[operator]
        now = bool(after) and hash_key in after and range_key in after  # type: ignore[operator]
        old_entry = _index_entry(before or {}, keys, projected)
        new_entry = _index_entry(after or {}, keys, projected)
        old = _kb(item_size(old_entry) + INDEX_ENTRY_OVERHEAD, 1024)
        new = _kb(item_size(new_entry) + INDEX_ENTRY_OVERHEAD, 1024)
        if was and now:
            assert before is not None and after is not None
            same_key = before[hash_key] == after[hash_key] and before[range_key] == after[range_key]
            if not same_key:
                units += old + new
            elif old_entry != new_entry:
                units += new
        elif now:
            units += new
        elif was:
            units += old
    return units


# ---- request units per call ------------------------------------------------------------------


@dataclass
class Units:
    wru: float = 0.0  # base-table write request units
    gsi_wru: float = 0.0  # index writes
    rru: float = 0.0
    per_op: dict[str, float] = field(default_factory=dict)  # WRU + RRU by operation


def _write_keys(operation: str, params: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(table, key, transactional) of every item a write call touches."""
    if operation == "PutItem":
        return [(params["TableName"], {HASH_KEY: params["Item"][HASH_KEY]}, False)]
    if operation in ("UpdateItem", "DeleteItem"):
        return [(params["TableName"], params["Key"], False)]
    if operation == "TransactWriteItems":
        keys = []
        for action in params["TransactItems"]:
            kind, op = next(iter(action.items()))
            key = {HASH_KEY: op["Item"][HASH_KEY]} if kind == "Put" else op["Key"]
            keys.append((op["TableName"], key, True))
        return keys
    if operation == "BatchWriteItem":
        keys = []
        for table, requests in params["RequestItems"].items():
            for req in requests:
                if "PutRequest" in req:
                    keys.append((table, {HASH_KEY: req["PutRequest"]["Item"][HASH_KEY]}, False))
                else:
                    keys.append((table, req["DeleteRequest"]["Key"], False))
        return keys
    return []


# What the product's write calls are for, told apart by their shapes (for the breakdown only).
_SHAPES = (
    ("lease_holder", "claim: payment"),
    ("open_claims = if_not_exists(open_claims, :zero) + :one", "claim: refund"),
    ("refunded_by", "payment mark"),
    ("counted_outcome = :new", "counters"),
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
    model has not seen written is taken not to exist.
    """

    def __init__(self, images_client: Any):
        self._images = images_client
        self._known: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.units: dict[str, Units] = {}  # by the label given to attach()
        self._lock = threading.Lock()

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

    @staticmethod
    def _ident(table: str, key: dict[str, Any]) -> tuple[str, str]:
        return table, repr(sorted(key.items()))

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any]) -> None:
        keys = _write_keys(model.name, params) if model.name in DDB_WRITES else []
        with self._lock:
            befores = [(t, k, tx, self._known.get(self._ident(t, k))) for t, k, tx in keys]
        context["bench_call"] = (model.name, dict(params), befores)

    def _after_images(self, keys: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
        images: dict[tuple[str, str], dict[str, Any]] = {}
        wanted: dict[str, list[dict[str, Any]]] = {}
        for table, key in keys:
            if key not in wanted.setdefault(table, []):
                wanted[table].append(key)
        request: dict[str, Any] = {t: {"Keys": k, "ConsistentRead": True} for t, k in wanted.items()}
        while request:
            response = self._images.batch_get_item(RequestItems=request)
            for table, items in response.get("Responses", {}).items():
                for item in items:
                    images[self._ident(table, {HASH_KEY: item[HASH_KEY]})] = item
            request = response.get("UnprocessedKeys") or {}
        return images

    def _after(self, label: str, model: Any, parsed: dict[str, Any], context: dict[str, Any]) -> None:
        call = context.get("bench_call")
        if not call or parsed.get("Error"):
            return
        operation, params, befores = call
        wru = gsi = rru = 0.0
        if befores:
            images = self._after_images([(t, k) for t, k, _, _ in befores])
            for table, key, transactional, before in befores:
                after = images.get(self._ident(table, key))
                wru += _kb(max(item_size(before), item_size(after)), 1024) * (2 if transactional else 1)
                gsi += index_writes(before, after)
                with self._lock:
                    self._known[self._ident(table, key)] = after
        if operation in ("GetItem", "BatchGetItem"):
            rru += self._point_reads(operation, params, parsed)
        elif operation in ("Query", "Scan"):
            size = sum(item_size(i) for i in parsed.get("Items", []))
            rru += _kb(size, 4096) * (1.0 if params.get("ConsistentRead") else 0.5)
        with self._lock:
            units = self.units[label]
            units.wru += wru
            units.gsi_wru += gsi
            units.rru += rru
            shape = call_shape(operation, params)
            units.per_op[shape] = units.per_op.get(shape, 0.0) + wru + gsi + rru

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
