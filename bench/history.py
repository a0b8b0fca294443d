"""Items the store reads for the console's first History page, two rare filters and its 30-day headline.

Tables of 10,000 and 100,000 refunds over the last 30 days are filled with batch writes into an
in-process moto (what is measured is what the store reads, not how fast moto is), then the
store reads the console's default view (the last 7 days, newest first, 50 rows: by_day's keys,
then the items by key), the person filter for one refund among all (90 days), the Pending filter
for the one pending refund among all (the 30 days), and the headline of the last 30 days; the
items read are counted from the responses (ScannedCount of a Query, the items of a BatchGetItem).

The pending refund sits mid-period at a random time of its day, as the rare person's does. The
Pending filter reads the period's 30 day counters; the stream function lists each day's pending
refunds on its counter (up to 100), so that day's list is whole and the refund is read by key:
31 items, not the ~3,300 of its day a walk newest first would read (what a day listing fewer than
it counts, after a backlog of more than 100, still costs; this figure does not show that case).

Runs in its own process (moto's in-process mock patches botocore for the whole process):

    python -m bench.history        # prints one JSON object
"""

from __future__ import annotations

import json
import os
import random
import sys
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from reditus_operators.history import HistoryReader
from reditus_refunds.day_counts import pending_attr
from reditus_refunds.layout import COUNTER_PREFIX, HASH_KEY
from reditus_refunds.records import Outcome, iso

from . import aws
from .counting import CallCounter

DAYS = 30
PAGE_SIZE = 50  # ui/data.py DEFAULT_PAGE_SIZE
DEFAULT_PERIOD_DAYS = 7  # ui/data.py default_period
OUTCOMES = (
    ("refunded", 0.86),
    ("rejected", 0.05),
    ("not_found", 0.04),
    ("duplicate", 0.03),
    ("invalid", 0.02),
)


def _s(text: str) -> dict[str, str]:
    return {"S": text}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


RARE_REQUESTER = "rare@example.com"  # one refund among all the table's, mid-period
PENDING = "pending"  # the one pending refund, next to the rare person's: no outcome attribute


def _item(
    rng: random.Random, at: datetime, outcome: str, requested_by: str = "ops@example.com"
) -> dict[str, Any]:
    stamp = iso(at)
    item = {
        HASH_KEY: _s(str(uuid.UUID(int=rng.getrandbits(128)))),
        "payment_id": _s(f"pay_{rng.getrandbits(40):010x}"),
        "outcome": _s(outcome),
        "queued_at": _s(stamp),
        "queued_day": _s(stamp[:10]),
        "requested_by": _s(requested_by),
        "source": _s("csv"),
        "message_id": _s(str(uuid.UUID(int=rng.getrandbits(128)))),
        "attempts": _n(1),
        "http_status": _n(200 if outcome == "refunded" else 400),
        "detail": _s("ok" if outcome == "refunded" else "Validation failed: payment_id is invalid"),
        "last_attempt_at": _s(stamp),
        "completed_at": _s(stamp),
        "latency_ms": _n(rng.randint(80, 400)),
        "attempt_log": {
            "L": [{"M": {"at": _s(stamp), "kind": _s(outcome), "detail": _s("ok"), "http_status": _n(200)}}]
        },
    }
    if outcome == PENDING:  # as the producer records it: no outcome, no attempt yet
        for name in ("outcome", "http_status", "detail", "last_attempt_at", "completed_at", "latency_ms"):
            del item[name]
        item.update(attempts=_n(0), attempt_log={"L": []})
    return item


def fill(dynamodb: Any, table: str, size: int, now: datetime, seed: int = 7) -> None:
    """`size` refunds spread evenly over the last DAYS days, one of them pending, and each day's
    counter item as the stream function keeps it (a pending figure on every day: each refund was
    counted pending first; the day's pending refunds listed)."""
    rng = random.Random(seed)
    names = [name for name, _ in OUTCOMES]
    weights = [weight for _, weight in OUTCOMES]
    first = now.date() - timedelta(days=DAYS - 1)
    pending: list[dict[str, Any]] = []
    for day_index in range(DAYS):
        day = first + timedelta(days=day_index)
        start = datetime.combine(day, time.min, UTC)
        span = (now - start).total_seconds() if day == now.date() else 86_399.0
        count = size // DAYS + (1 if day_index < size % DAYS else 0)
        counts: dict[str, int] = {PENDING: 0}
        for _ in range(count):
            outcome = rng.choices(names, weights)[0]
            if len(pending) == size // 2 + 1:
                outcome = PENDING
            counts[outcome] = counts.get(outcome, 0) + 1
            who = RARE_REQUESTER if len(pending) == size // 2 else "ops@example.com"
            pending.append(_item(rng, start + timedelta(seconds=rng.uniform(0, span)), outcome, who))
        counter = {HASH_KEY: _s(COUNTER_PREFIX + day.isoformat()), "counter_day": _s(day.isoformat())}
        counter.update({outcome: _n(n) for outcome, n in counts.items()})
        for item in pending[len(pending) - count :]:  # the stream function lists the day's pending refunds
            if "outcome" not in item:
                counter[pending_attr(item[HASH_KEY]["S"])] = item["queued_at"]
        pending.append(counter)
    for start_at in range(0, len(pending), 25):
        chunk = [{"PutRequest": {"Item": item}} for item in pending[start_at : start_at + 25]]
        request: dict[str, Any] = {table: chunk}
        while request:
            request = dynamodb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def read_figures(dynamodb: Any, table: str, today: date) -> dict[str, int]:
    store = HistoryReader(table, dynamodb)
    counter = CallCounter("dynamodb").attach(dynamodb)
    since = today - timedelta(days=DEFAULT_PERIOD_DAYS - 1)
    page = store.query(
        since=datetime.combine(since, time.min, UTC),
        until=datetime.combine(today, time.max, UTC),
        limit=PAGE_SIZE,
    )
    page_items, page_calls = counter.items_read, counter.total
    if len(page.records) != PAGE_SIZE or page_items != page.items_read:
        raise RuntimeError(f"unexpected first page: {len(page.records)} rows, {page_items} items read")
    counter.reset()
    # The person filter over 90 days: one matching refund among them all.
    rare = store.query(
        requested_by=RARE_REQUESTER,
        since=datetime.combine(today - timedelta(days=89), time.min, UTC),
        until=datetime.combine(today, time.max, UTC),
        limit=PAGE_SIZE,
    )
    if len(rare.records) != 1:
        raise RuntimeError(f"the person filter found {len(rare.records)} refunds of {RARE_REQUESTER}, not 1")
    rare_items, rare_calls = counter.items_read, counter.total
    counter.reset()
    # The Pending filter over the period: the one pending refund among them all.
    waiting = store.query(
        outcome=Outcome.PENDING,
        since=datetime.combine(today - timedelta(days=DAYS - 1), time.min, UTC),
        until=datetime.combine(today, time.max, UTC),
        limit=PAGE_SIZE,
    )
    if len(waiting.records) != 1 or waiting.items_read != counter.items_read:
        raise RuntimeError(f"the Pending filter found {len(waiting.records)} refunds, not 1")
    pending_items, pending_calls = counter.items_read, counter.total
    counter.reset()
    store.daily_counts(today - timedelta(days=DAYS - 1), today)
    figures = {
        "page_items": page_items,
        "page_calls": page_calls,
        "requested_by_rare_items": rare_items,
        "requested_by_rare_calls": rare_calls,
        "pending_rare_items": pending_items,
        "pending_rare_calls": pending_calls,
        "summary_items": counter.items_read,
        "summary_calls": counter.total,
    }
    counter.detach()
    return figures


def main() -> int:
    os.environ.update(aws.aws_env(None))
    os.environ.pop("AWS_ENDPOINT_URL", None)
    from moto import mock_aws

    results: dict[str, dict[str, int]] = {}
    now = datetime.now(UTC)
    with mock_aws():
        dynamodb = aws.client("dynamodb", None)
        for size in (10_000, 100_000):
            table = f"history-{size}"
            aws.create_table(dynamodb, table)
            fill(dynamodb, table, size, now)
            results[str(size)] = read_figures(dynamodb, table, now.date())
            dynamodb.delete_table(TableName=table)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
