"""Newest-first pages over the history table's time-sorted indexes, never a Scan.

Every list the operators read (refunds, webhook events, the audit log) is an index keyed by a
partition (a UTC day, a person, an outcome...) and sorted by a timestamp. `IndexQuery` is one
such Query over a time window; `page_days` walks a day-partitioned index one UTC day at a time
from the window's last day back to its first, and `page_key` reads one partition. Both stop when
the page is full and hand back an opaque cursor (the day reached and DynamoDB's
LastEvaluatedKey) that continues where the page stopped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Generic, TypeVar

from reditus_refunds.layout import HASH_KEY, INDEX_PROJECTIONS, KEYS_ONLY, from_item, item_key, to_attr
from reditus_refunds.table import HistoryTable

T = TypeVar("T")
BAD_CURSOR = "the page cursor is not valid"


def encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, default=str).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        raise ValueError(BAD_CURSOR) from None
    if not isinstance(data, dict):
        raise ValueError(BAD_CURSOR)
    return data


def _start_key(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cursor's LastEvaluatedKey: an attribute map, or nothing (a forged one is refused here)."""
    lek = state.get("lek")
    if lek is None:
        return None
    if not isinstance(lek, dict) or not lek or not all(isinstance(v, dict) for v in lek.values()):
        raise ValueError(BAD_CURSOR)
    return lek


def _start_day(state: Mapping[str, Any], last_day: str) -> str:
    """The cursor's day; never after the period's last (a forged far-off day would cost a Query a day)."""
    day = state.get("day") or last_day
    try:
        valid = isinstance(day, str) and date.fromisoformat(day).isoformat() == day
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(BAD_CURSOR)
    if day > last_day:
        raise ValueError(f"{BAD_CURSOR} for this period: its day {day} is after the last, {last_day}")
    return str(day)


@dataclass
class Paged(Generic[T]):
    items: list[T]
    cursor: str | None
    items_read: int  # index entries scanned plus items read by key: what the page cost


@dataclass(frozen=True)
class IndexQuery:
    """Newest-first Queries of one index: `<key_name> = value AND <time_name> BETWEEN low AND high`.

    `filter_expression` (with `filter_values`) narrows what DynamoDB returns, not what it reads.
    An index that holds keys only (layout.INDEX_PROJECTIONS) is followed by one BatchGetItem of
    the items it names, in the index's order (one deleted meanwhile is left out).
    """

    table: HistoryTable
    index: str
    key_name: str
    time_name: str
    low: str
    high: str
    filter_expression: str | None = None
    filter_values: Mapping[str, Any] = field(default_factory=dict)

    def run(
        self, key_value: str, limit: int, lek: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, int]:
        """One Query of at most `limit` entries: the items, the LastEvaluatedKey, the items read."""
        kwargs: dict[str, Any] = {
            "IndexName": self.index,
            "KeyConditionExpression": "#k = :k AND #at BETWEEN :low AND :high",
            "ExpressionAttributeNames": {"#k": self.key_name, "#at": self.time_name},
            "ExpressionAttributeValues": {
                ":k": to_attr(key_value),
                ":low": to_attr(self.low),
                ":high": to_attr(self.high),
                **{name: to_attr(value) for name, value in self.filter_values.items()},
            },
            "ScanIndexForward": False,
            "Limit": max(1, limit),
        }
        if self.filter_expression:
            kwargs["FilterExpression"] = self.filter_expression
        if lek:
            kwargs["ExclusiveStartKey"] = lek
        response = self.table.query(kwargs)
        read = int(response.get("ScannedCount", len(response.get("Items", []))))
        items = [from_item(i) for i in response.get("Items", [])]
        if INDEX_PROJECTIONS.get(self.index) == KEYS_ONLY and items:
            keys = [str(item[HASH_KEY]) for item in items]
            found = self.table.batch_get([item_key(k) for k in keys])
            read += len(found)
            items = [found[k] for k in keys if k in found]
        return items, response.get("LastEvaluatedKey"), read


def page_days(
    query: IndexQuery, convert: Callable[[dict[str, Any]], T], *, limit: int, cursor: str | None
) -> Paged[T]:
    """One page of a day-partitioned index: one Query per UTC day, from the window's last day
    back to its first, until `limit` items; the cursor carries the day reached and its LEK."""
    state = decode_cursor(cursor) if cursor else {}
    first_day = query.low[:10]
    day = _start_day(state, query.high[:10])
    lek = _start_key(state)
    items: list[T] = []
    read = 0
    while len(items) < limit and day >= first_day:
        got, lek, scanned = query.run(day, limit - len(items), lek)
        items += [convert(item) for item in got]
        read += scanned
        if lek is None:
            day = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
    more = lek is not None or day >= first_day
    return Paged(items, encode_cursor({"day": day, "lek": lek}) if more else None, read)


def page_key(
    query: IndexQuery,
    key_value: str,
    convert: Callable[[dict[str, Any]], T],
    *,
    limit: int,
    cursor: str | None,
    keep: Callable[[T], bool] | None = None,
) -> Paged[T]:
    """One page of one partition, until `limit` items `keep` accepts; the cursor carries the LEK."""
    lek = _start_key(decode_cursor(cursor)) if cursor else None
    items: list[T] = []
    read = 0
    while len(items) < limit:
        got, lek, scanned = query.run(key_value, limit - len(items), lek)
        items += [x for x in map(convert, got) if keep is None or keep(x)]
        read += scanned
        if lek is None:
            break
    return Paged(items, encode_cursor({"lek": lek}) if lek else None, read)
