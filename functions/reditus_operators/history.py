"""HistoryReader: what operators read from the history table (the console, the CLI).

Pages over the four refund indexes (never a Scan), one refund by key, payment markers in batches,
and the per-day counters. Every AWS failure arrives as StoreError with a readable message.

A pending refund has no `outcome` attribute (HistoryRecord.from_item reads it as pending; items
written before issue 15 may say "pending"), so no index lists the pending refunds as such: the
Pending filter reads the refunds the day counters list, or walks the days whose counter says they
have more (`_pending_counts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reditus_refunds.aws_errors import StoreError
from reditus_refunds.day_counts import pending_listed
from reditus_refunds.layout import (
    COUNTER_PREFIX,
    GSI_BY_DAY,
    GSI_BY_OUTCOME,
    GSI_BY_PAYMENT,
    GSI_BY_REQUESTER,
    INDEXES,
    PAYMENT_MARKER_PREFIX,
    counter_key,
    item_key,
    marker_key,
)
from reditus_refunds.records import HistoryRecord, Outcome, iso, utc_now
from reditus_refunds.table import HistoryTable, ReadCounter

# The cursor codec lived here before paging.py: re-exported for callers that import it from here.
from .paging import (
    DayCount,
    IndexQuery,
    decode_cursor,
    encode_cursor,
    page_days,
    page_days_counted,
    page_key,
)

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

    def whole(self, records: Sequence[HistoryRecord]) -> list[HistoryRecord]:
        """The records of a list page with all their item holds (attempt log, message id, error
        kind), read by key: the list indexes hold only what a list row shows (layout.LIST_ATTRIBUTES).
        A record whose item is gone meanwhile stays as listed."""
        found = self.table.batch_get([item_key(r.refund_id) for r in records])
        return [HistoryRecord.from_item(found[r.refund_id]) if r.refund_id in found else r for r in records]

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
        index one day at a time backwards: every page reads a page of index entries and those items
        by key (the day, payment and person indexes hold keys only), whatever the table's size.

        Pending alone is the exception: by_outcome holds no pending refund (their items have no
        outcome yet), so it reads the period's day counters (100 per BatchGetItem), newest day
        first. A day whose counter says 0 pending is skipped; a day whose counter lists its
        pending refunds (the stream function lists up to 100 per day, day_counts.pending_listed)
        has them read by key, newest first, as many as the page needs; only a day with more
        pending refunds than that (a backlog: they are then its newest) or no counter is walked
        on by_day (keys, then the items by key) until it gave as many as its counter says. A page
        therefore reads the period's counters and a page of items in every case but a backlog.
        The counters follow the items through the table's stream, seconds behind (the stream's
        latency and the counter function's batching window, about ten seconds at most in normal
        operation): a pending refund written that recently may be missed (its day skipped, or
        left early), and one that has just left pending is read and dropped. See
        paging.page_days_counted.
        """
        until = until or self.clock()
        since = since or (until - timedelta(days=30))

        def wanted(record: HistoryRecord) -> bool:
            return (outcome is None or record.outcome is outcome) and (
                not requested_by or record.requested_by == requested_by
            )

        def index(name: str) -> IndexQuery:
            key_name, time_name = INDEXES[name]
            return IndexQuery(self.table, name, key_name, time_name, iso(since), iso(until))

        if payment_id is not None:
            name, key_value = GSI_BY_PAYMENT, payment_id
        elif requested_by:
            name, key_value = GSI_BY_REQUESTER, requested_by
        elif outcome is Outcome.PENDING:
            paged = page_days_counted(
                index(GSI_BY_DAY),
                HistoryRecord.from_item,
                wanted,
                self._pending_counts,
                limit=limit,
                cursor=cursor,
            )
            return Page(paged.items, paged.cursor, paged.items_read)
        elif outcome is not None:
            name, key_value = GSI_BY_OUTCOME, outcome.value
        else:
            paged = page_days(index(GSI_BY_DAY), HistoryRecord.from_item, limit=limit, cursor=cursor)
            return Page(paged.items, paged.cursor, paged.items_read)
        # Each filter within the other's results: the index answers one, `wanted` the rest.
        paged = page_key(
            index(name), key_value, HistoryRecord.from_item, limit=limit, cursor=cursor, keep=wanted
        )
        return Page(paged.items, paged.cursor, paged.items_read)

    def _pending_counts(self, days: list[str]) -> tuple[dict[str, DayCount], int]:
        """Pending refunds per day, from the days' counter items (one BatchGetItem per 100 days):
        the count, and the refunds themselves when the item lists them all (day_counts.pending_listed);
        a day without a counter item is left out (unknown), one without a pending figure has 0."""
        found = self.table.batch_get([counter_key(d) for d in days])
        counts: dict[str, DayCount] = {}
        for day in days:
            item = found.get(COUNTER_PREFIX + day)
            if item is not None:
                value = item.get(Outcome.PENDING.value)
                listed = pending_listed(item)
                counts[day] = DayCount(
                    int(value) if isinstance(value, Decimal | int) else 0,
                    None if listed is None else tuple((at, rid) for rid, at in listed.items()),
                )
        return counts, len(found)

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


__all__ = [
    "START_OF_TIME",
    "HistoryReader",
    "Page",
    "PaymentMarker",
    "StoreError",
    "decode_cursor",
    "encode_cursor",
]
