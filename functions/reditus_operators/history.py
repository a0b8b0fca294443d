"""HistoryReader: what operators read from the history table (the console, the CLI).

Pages over the four refund indexes (never a Scan), one refund by key, payment markers in batches,
and the per-day counters. Every AWS failure arrives as StoreError with a readable message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reditus_refunds.aws_errors import StoreError
from reditus_refunds.layout import (
    COUNTER_PREFIX,
    GSI_BY_DAY,
    GSI_BY_OUTCOME,
    GSI_BY_PAYMENT,
    GSI_BY_REQUESTER,
    HASH_KEY,
    INDEX_PROJECTIONS,
    KEYS_ONLY,
    PAYMENT_MARKER_PREFIX,
    counter_key,
    from_item,
    item_key,
    marker_key,
    to_attr,
)
from reditus_refunds.records import HistoryRecord, Outcome, iso, utc_now
from reditus_refunds.table import HistoryTable, ReadCounter

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any


# "All time" for the history: earlier than any record (a payment's whole story, the console's all-time view).
START_OF_TIME = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class Page:
    records: list[HistoryRecord]
    cursor: str | None
    items_read: int


def encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, default=str).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        raise ValueError("the page cursor is not valid") from None
    if not isinstance(data, dict):
        raise ValueError("the page cursor is not valid")
    return data


@dataclass(frozen=True)
class PaymentMarker:
    """What the table says of one payment: which refund_id refunded it, and when."""

    payment_id: str
    refunded_by: str | None
    refunded_at: str | None


class HistoryReader:
    def __init__(self, table_name: str, client: DynamoDBClient, clock: Callable[[], datetime] = utc_now):
        self.table = HistoryTable(table_name, client)
        self.table_name = table_name
        self.clock = clock

    @property
    def reads(self) -> ReadCounter:
        return self.table.reads

    def payment_markers(self, payment_ids: Sequence[str]) -> dict[str, PaymentMarker]:
        """The markers of these payments that exist (100 per BatchGetItem)."""
        wanted = list(dict.fromkeys(p for p in payment_ids if p))
        found = self.table.batch_get([marker_key(p) for p in wanted])
        markers: dict[str, PaymentMarker] = {}
        for payment_id in wanted:
            item = found.get(PAYMENT_MARKER_PREFIX + payment_id)
            if item is not None:
                markers[payment_id] = PaymentMarker(
                    payment_id,
                    None if item.get("refunded_by") is None else str(item["refunded_by"]),
                    None if item.get("refunded_at") is None else str(item["refunded_at"]),
                )
        return markers

    def get(self, refund_id: str) -> HistoryRecord | None:
        if "#" in refund_id:
            return None
        item = self.table.get_item(refund_id)
        return HistoryRecord.from_item(item) if item else None

    def query(
        self,
        *,
        outcome: Outcome | None = None,
        payment_id: str | None = None,
        requested_by: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first, one page; never a Scan.

        payment_id uses the by_payment index, requested_by the by_requester index, outcome the
        by_outcome index (each filter within the other's results), and no filter walks the by_day
        index one day at a time backwards: every page reads a page of index entries (and, from the
        keys-only payment and person indexes, those items by key), whatever the table's size.
        """
        until = until or self.clock()
        since = since or (until - timedelta(days=30))
        low, high = iso(since), iso(until)
        state = decode_cursor(cursor) if cursor else {}
        records: list[HistoryRecord] = []
        read = 0

        def wanted(record: HistoryRecord) -> bool:
            return (outcome is None or record.outcome is outcome) and (
                not requested_by or record.requested_by == requested_by
            )

        if payment_id is not None or requested_by or outcome is not None:
            if payment_id is not None:
                index, key_name, key_value = GSI_BY_PAYMENT, "payment_id", payment_id
            elif requested_by:
                index, key_name, key_value = GSI_BY_REQUESTER, "requested_by", requested_by
            else:
                assert outcome is not None
                index, key_name, key_value = GSI_BY_OUTCOME, "outcome", outcome.value
            lek = state.get("lek")
            while len(records) < limit:
                got, lek, scanned = self._query_index(
                    index, key_name, key_value, low, high, limit - len(records), lek
                )
                records += [r for r in got if wanted(r)]
                read += scanned
                if lek is None:
                    break
            next_cursor = encode_cursor({"lek": lek}) if lek else None
            return Page(records, next_cursor, read)
        day = state.get("day") or high[:10]
        lek = state.get("lek")
        first_day = low[:10]
        while len(records) < limit and day >= first_day:
            got, lek, scanned = self._query_index(
                GSI_BY_DAY, "queued_day", day, low, high, limit - len(records), lek
            )
            records += got
            read += scanned
            if lek is None:
                day = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
        more = lek is not None or day >= first_day
        return Page(records, encode_cursor({"day": day, "lek": lek}) if more else None, read)

    def _query_index(
        self,
        index: str,
        key_name: str,
        key_value: str,
        low: str,
        high: str,
        limit: int,
        lek: dict[str, Any] | None,
    ) -> tuple[list[HistoryRecord], dict[str, Any] | None, int]:
        """One Query, newest first. An index that holds keys only is followed by one BatchGetItem
        of the items it names (in the index's order; one deleted meanwhile is left out)."""
        kwargs: dict[str, Any] = {
            "IndexName": index,
            "KeyConditionExpression": "#k = :k AND queued_at BETWEEN :low AND :high",
            "ExpressionAttributeNames": {"#k": key_name},
            "ExpressionAttributeValues": {
                ":k": to_attr(key_value),
                ":low": to_attr(low),
                ":high": to_attr(high),
            },
            "ScanIndexForward": False,
            "Limit": max(1, limit),
        }
        if lek:
            kwargs["ExclusiveStartKey"] = lek
        response = self.table.query(kwargs)
        scanned = int(response.get("ScannedCount", len(response.get("Items", []))))
        items = [from_item(i) for i in response.get("Items", [])]
        if INDEX_PROJECTIONS[index] == KEYS_ONLY and items:
            ids = [str(item[HASH_KEY]) for item in items]
            found = self.table.batch_get([item_key(i) for i in ids])
            scanned += len(found)
            items = [found[i] for i in ids if i in found]
        records = [HistoryRecord.from_item(item) for item in items]
        return records, response.get("LastEvaluatedKey"), scanned

    def daily_counts(self, since: date, until: date) -> dict[str, dict[str, int]]:
        """Per-day, per-outcome counts, one item read per day of the period."""
        days = []
        day = since
        while day <= until:
            days.append(day.isoformat())
            day += timedelta(days=1)
        result: dict[str, dict[str, int]] = {d: {} for d in days}
        for start in range(0, len(days), 100):
            chunk = days[start : start + 100]
            found = self.table.batch_get([counter_key(d) for d in chunk])
            for d in chunk:
                item = found.get(COUNTER_PREFIX + d)
                if item:
                    result[d] = {
                        o.value: int(item[o.value])
                        for o in Outcome
                        if isinstance(item.get(o.value), Decimal | int)
                    }
        return result


__all__ = ["START_OF_TIME", "HistoryReader", "Page", "PaymentMarker", "StoreError"]
