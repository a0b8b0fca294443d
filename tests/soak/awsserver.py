"""The local stack's AWS server (reditus_refunds.local.awsserver) with two moto hot spots made cheap.

    python -m tests.soak.awsserver --port 0 [awsserver options]

A soak puts thousands of items and messages in moto, and two of moto 5.2's costs grow with them
until the soak measures moto instead of the product:

* TransactWriteItems backs up the whole table with ``copy.deepcopy`` once per action, so that it
  can roll back a cancelled transaction: about 0.1 s per thousand items per action, so every claim
  (two actions) and counter settlement (up to 81) takes seconds. Here the backup covers only the
  items the transaction names - all a rollback needs, since a transaction changes nothing else.
* SQS works out every message's visibility with a datetime round trip (``unix_time``), for every
  message in the queue, several times per SendMessage (the queue's attributes, with their
  approximate counts, are computed for each message sent) and per ReceiveMessage: about 60 ms per
  message sent with 4,000 waiting. Here the time is ``time.time()`` (what that round trip computes)
  and the counts take one pass.

Behaviour is unchanged; everything else is the product's own server, DynamoDB requests still one at a
time (motoserver.SerialisedDynamoDB).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Sequence
from typing import Any

import moto.dynamodb.models as dynamodb_models
import moto.sqs.models as sqs_models
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

Slot = tuple[Any, Any]  # (hash value, range value or None)


class _CopyWithoutTables:
    """Stands in for the `copy` module inside moto.dynamodb.models: a Table is not copied."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        if isinstance(value, Table):
            return value  # backed up item by item instead, see transact_write_items
        return copy.deepcopy(value, memo)


def _slot(table: Table, op: dict[str, Any]) -> Slot | None:
    attributes = op.get("Key") or op.get("Item") or {}
    try:
        hash_value = DynamoType(attributes[table.hash_key_attr])
        range_value = DynamoType(attributes[table.range_key_attr]) if table.range_key_attr else None
    except (KeyError, TypeError):
        return None
    return hash_value, range_value


def _get(table: Table, slot: Slot) -> Any:
    hash_value, range_value = slot
    found = table.items.get(hash_value)
    if range_value is None or found is None:
        return found
    return found.get(range_value)


def _put_back(table: Table, slot: Slot, item: Any) -> None:
    hash_value, range_value = slot
    if range_value is None:
        if item is None:
            table.items.pop(hash_value, None)
        else:
            table.items[hash_value] = item
        return
    ranges = table.items[hash_value]
    if item is None:
        ranges.pop(range_value, None)
    else:
        ranges[range_value] = item


_original = dynamodb_models.DynamoDBBackend.transact_write_items


def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    saved: list[tuple[Table, Slot, Any]] = []
    for action in transact_items:
        if not isinstance(action, dict) or len(action) != 1:
            continue  # moto refuses it before changing anything
        ((_, op),) = action.items()
        table = self.tables.get(op.get("TableName")) if isinstance(op, dict) else None
        slot = None if table is None else _slot(table, op)
        if table is not None and slot is not None:
            saved.append((table, slot, copy.deepcopy(_get(table, slot))))
    try:
        _original(self, transact_items)
    except BaseException:
        for table, slot, item in reversed(saved):  # reversed: an item named twice gets its first state
            _put_back(table, slot, item)
        raise


_unix_time = sqs_models.unix_time
_unix_time_millis = sqs_models.unix_time_millis
_counts = {
    name: getattr(sqs_models.Queue, name)
    for name in (
        "approximate_number_of_messages",
        "approximate_number_of_messages_not_visible",
        "approximate_number_of_messages_delayed",
    )
}


def unix_time(dt: Any = None) -> float:
    return time.time() if dt is None else float(_unix_time(dt))


def unix_time_millis(dt: Any = None) -> float:
    return time.time() * 1000.0 if dt is None else float(_unix_time_millis(dt))


def _visible_now(queue: Any) -> int:
    now = time.time() * 1000.0
    return sum(1 for m in queue._messages if now > m.visible_at and not now < m.delayed_until)


def _not_visible_now(queue: Any) -> int:
    now = time.time() * 1000.0
    return sum(1 for m in queue._messages if not now > m.visible_at)


def _delayed_now(queue: Any) -> int:
    now = time.time() * 1000.0
    return sum(1 for m in queue._messages if now < m.delayed_until)


def install() -> None:
    dynamodb_models.copy = _CopyWithoutTables()  # type: ignore[assignment]
    dynamodb_models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    sqs_models.unix_time = unix_time
    sqs_models.unix_time_millis = unix_time_millis
    sqs_models.Queue.approximate_number_of_messages = property(_visible_now)  # type: ignore[assignment]
    sqs_models.Queue.approximate_number_of_messages_not_visible = property(_not_visible_now)  # type: ignore[assignment]
    sqs_models.Queue.approximate_number_of_messages_delayed = property(_delayed_now)  # type: ignore[assignment]


def uninstall() -> None:
    dynamodb_models.copy = copy
    dynamodb_models.DynamoDBBackend.transact_write_items = _original  # type: ignore[method-assign]
    sqs_models.unix_time = _unix_time
    sqs_models.unix_time_millis = _unix_time_millis
    for name, value in _counts.items():
        setattr(sqs_models.Queue, name, value)


def main(argv: Sequence[str] | None = None) -> int:
    install()
    from reditus_refunds.local.awsserver import main as server_main

    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
