"""The day walks and their cursors: the unfiltered one, the Pending filter's (day counters and by_day)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

os.environ.update({"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"})

import boto3
import pytest
from moto import mock_aws

from reditus_local.resources import create_table_as_declared
from reditus_operators.audit import AuditReader
from reditus_operators.history import HistoryReader
from reditus_operators.operations import history_matches
from reditus_operators.paging import encode_cursor
from reditus_operators.webhooks import WebhookReader
from reditus_refunds.day_counts import pending_attr
from reditus_refunds.layout import HASH_KEY, to_item
from reditus_refunds.records import Outcome, iso

NOW = datetime(2025, 3, 20, 12, tzinfo=UTC)


@pytest.fixture
def client() -> Iterator[Any]:
    with mock_aws():
        c = boto3.client("dynamodb")
        create_table_as_declared(c, "h")
        yield c


def readers(client: Any) -> dict[str, Any]:
    return {
        "history": HistoryReader("h", client, clock=lambda: NOW).query,
        "webhooks": WebhookReader("h", client, clock=lambda: NOW).events,
        "audit": AuditReader("h", client, clock=lambda: NOW).list,
    }


@pytest.mark.parametrize("reader", ["history", "webhooks", "audit"])
@pytest.mark.parametrize(
    "state",
    [
        {"day": 5},
        {"day": "x"},
        {"day": "2025-3-1"},
        {"day": "9999-12-31", "lek": None},
        {"day": "2025-03-19", "lek": "x"},
        {"lek": {"refund_id": "x"}},
    ],
)
def test_a_forged_cursor_is_refused_with_a_clear_error(client: Any, reader: str, state: dict) -> None:
    with pytest.raises(ValueError, match="the page cursor is not valid"):
        readers(client)[reader](cursor=encode_cursor(state))


def test_pages_walk_days_backwards_and_count_what_they_read(client: Any) -> None:
    for n in range(12):
        at = NOW - timedelta(hours=9 * n)
        client.put_item(
            TableName="h",
            Item=to_item(
                {
                    HASH_KEY: f"r{n:02d}",
                    "queued_at": iso(at),
                    "queued_day": iso(at)[:10],
                    "outcome": "pending",
                }
            ),
        )
    reader = HistoryReader("h", client, clock=lambda: NOW)
    seen, cursor, pages = [], None, 0
    while True:
        page = reader.query(limit=5, cursor=cursor, since=NOW - timedelta(days=10))
        assert page.items_read >= len(page.records)
        seen += [r.refund_id for r in page.records]
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == [f"r{n:02d}" for n in range(12)]
    assert pages == 3


# ---- the Pending filter: day counters and by_day (issue 15: pending refunds have no outcome) ---------
PERIOD = NOW - timedelta(days=6)  # seven UTC days: 2025-03-14 .. 2025-03-20


class CountingClient:
    """The moto client, with every Query's day and every BatchGetItem's keys noted."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.queried_days: list[str] = []
        self.got_keys: list[str] = []

    def query(self, **kwargs: Any) -> Any:
        if kwargs.get("IndexName") == "by_day":
            self.queried_days.append(kwargs["ExpressionAttributeValues"][":k"]["S"])
        return self.client.query(**kwargs)

    def batch_get_item(self, **kwargs: Any) -> Any:
        for request in kwargs["RequestItems"].values():
            self.got_keys += [k[HASH_KEY]["S"] for k in request["Keys"]]
        return self.client.batch_get_item(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def put_refund(client: Any, refund_id: str, at: datetime, outcome: str | None = None) -> None:
    """A refund item: `outcome=None` as this release writes a pending one (no attribute at all);
    "pending" as items written before it may still say."""
    item: dict[str, Any] = {
        HASH_KEY: refund_id,
        "payment_id": f"pay_{refund_id}",
        "queued_at": iso(at),
        "queued_day": iso(at)[:10],
        "outcome": outcome,
    }
    client.put_item(TableName="h", Item=to_item(item))


def put_counter(client: Any, day: str, **counts: int) -> None:
    """The day's counter item as the stream function keeps it (plus a high-water mark, ignored)."""
    item = {HASH_KEY: f"counter#{day}", "counter_day": day, "applied#shardId-000001": "0" * 40, **counts}
    client.put_item(TableName="h", Item=to_item(item))


def pending_pages(reader: HistoryReader, limit: int, **kw: Any) -> tuple[list[str], int, int]:
    """Every page of the Pending filter: the refund ids, the pages, the items read."""
    seen: list[str] = []
    cursor, pages, read = None, 0, 0
    while True:
        page = reader.query(outcome=Outcome.PENDING, limit=limit, cursor=cursor, since=PERIOD, **kw)
        seen += [r.refund_id for r in page.records]
        assert all(r.outcome is Outcome.PENDING for r in page.records)
        pages, read, cursor = pages + 1, read + page.items_read, page.cursor
        if cursor is None:
            return seen, pages, read


def test_pending_refunds_with_no_outcome_and_legacy_pending_ones_are_listed_newest_first(client: Any) -> None:
    put_refund(client, "new-pending", NOW - timedelta(hours=1))
    put_refund(client, "settled", NOW - timedelta(hours=2), "refunded")
    put_refund(client, "legacy-pending", NOW - timedelta(hours=3), "pending")
    put_refund(client, "retrying", NOW - timedelta(hours=4), "retrying")
    put_refund(client, "old-pending", NOW - timedelta(days=2, hours=1))
    put_counter(client, "2025-03-20", pending=2, refunded=1, retrying=1)
    put_counter(client, "2025-03-18", pending=1)
    reader = HistoryReader("h", client, clock=lambda: NOW)
    seen, _, _ = pending_pages(reader, limit=50)
    assert seen == ["new-pending", "legacy-pending", "old-pending"]
    # The other filters see the same records as pending (the same reading of an absent outcome).
    [listed] = reader.query(payment_id="pay_new-pending", outcome=Outcome.PENDING, since=PERIOD).records
    assert listed.refund_id == "new-pending"
    retrying = reader.query(outcome=Outcome.RETRYING, since=PERIOD).records
    assert [r.refund_id for r in retrying] == ["retrying"]


def test_a_rare_pending_refund_costs_the_counters_and_its_days_walk_until_it(client: Any) -> None:
    """One pending refund among 310 settled ones over seven days: the days whose counter says 0 are
    not queried at all, and the day that has it is walked only until it is found."""
    busy = datetime(2025, 3, 17, 23, 59, tzinfo=UTC)
    for n in range(250):  # 2025-03-17: 250 settled refunds, the pending one the 121st newest
        put_refund(client, f"s{n:03d}", busy - timedelta(seconds=10 * n), "refunded")
    put_refund(client, "the-pending", busy - timedelta(seconds=10 * 120 - 5))
    put_counter(client, "2025-03-17", refunded=250, pending=1)
    for day in (14, 15, 16, 18, 19, 20):
        for n in range(10):
            put_refund(client, f"d{day}-{n}", datetime(2025, 3, day, 1 + n, tzinfo=UTC), "rejected")
        put_counter(client, f"2025-03-{day}", rejected=10, pending=0)
    counting = CountingClient(client)
    reader = HistoryReader("h", counting, clock=lambda: NOW)  # type: ignore[arg-type]
    page = reader.query(outcome=Outcome.PENDING, since=PERIOD, limit=50)
    assert [r.refund_id for r in page.records] == ["the-pending"]
    assert counting.queried_days == ["2025-03-17", "2025-03-17"]  # the other six days' counters say 0
    # Seven counters; on 2025-03-17 a first Query of 50 keys (what the page wants) and a second of
    # 100 that reaches the pending one (the 121st), each with its items by key; then the day is
    # left: its 130 older refunds are not read.
    assert page.items_read == reader.reads.items == 7 + 150 + 150
    assert page.cursor is None  # the earlier days' counters (read in the same batch) say 0


def test_a_day_is_left_once_it_gave_its_count_and_a_lagging_count_is_what_it_trusts(client: Any) -> None:
    """The early stop: the counter says 1, so the walk stops at the newest pending refund (a second,
    older one that the stream has not counted yet is missed: the documented lag), and a day whose
    counter says 0 is skipped even when it holds a pending refund the counter does not know yet."""
    put_refund(client, "counted", NOW - timedelta(minutes=1))
    for n in range(40):
        put_refund(client, f"s{n:02d}", NOW - timedelta(minutes=2 + n), "refunded")
    put_refund(client, "not-counted-yet", NOW - timedelta(hours=2))
    put_refund(client, "yesterday-not-counted-yet", NOW - timedelta(days=1))
    put_counter(client, "2025-03-20", pending=1, refunded=40)
    put_counter(client, "2025-03-19", pending=0)
    counting = CountingClient(client)
    reader = HistoryReader("h", counting, clock=lambda: NOW)  # type: ignore[arg-type]
    page = reader.query(outcome=Outcome.PENDING, since=PERIOD, limit=5)
    assert [r.refund_id for r in page.records] == ["counted"]
    assert counting.queried_days == [
        "2025-03-20",
        "2025-03-18",
        "2025-03-17",
        "2025-03-16",
        "2025-03-15",
        "2025-03-14",
    ]
    # Two counters, then on 2025-03-20 one Query of 5 keys and their 5 items: not the 42 of the day.
    assert page.items_read == 2 + 5 + 5


def test_a_day_without_a_counter_item_is_walked_to_its_end(client: Any) -> None:
    """No counter item (a table the stream never counted, or a day's first refunds within the
    stream's latency): the day is walked whole rather than trusted to hold none."""
    put_refund(client, "p1", NOW - timedelta(hours=1))
    put_refund(client, "s1", NOW - timedelta(hours=2), "refunded")
    put_refund(client, "p2", NOW - timedelta(hours=3), "pending")
    reader = HistoryReader("h", client, clock=lambda: NOW)
    seen, _, _ = pending_pages(reader, limit=50)
    assert seen == ["p1", "p2"]


def test_pending_pages_continue_across_days_and_mid_batch(client: Any) -> None:
    """Pages of 2 over pending refunds spread over days, settled ones between them: every pending
    one exactly once, newest first; a page that fills mid-batch goes on right after its last row."""
    expected = []
    counts: dict[str, dict[str, int]] = {}
    for n in range(30):
        at = NOW - timedelta(hours=5 * n)
        outcome = None if n % 3 == 0 else ("pending" if n % 3 == 1 else "rejected")
        put_refund(client, f"r{n:02d}", at, outcome)
        of_day = counts.setdefault(iso(at)[:10], {})
        name = outcome or "pending"
        of_day[name] = of_day.get(name, 0) + 1
        if name == "pending":
            expected.append(f"r{n:02d}")
    for day, day_counts in counts.items():
        put_counter(client, day, **day_counts)
    reader = HistoryReader("h", client, clock=lambda: NOW)
    seen, pages, _ = pending_pages(reader, limit=2)
    expected = [r for r in expected if NOW - timedelta(hours=5 * int(r[1:])) >= PERIOD]
    assert seen == expected
    assert pages >= len(expected) // 2


def test_the_pending_walk_stays_inside_the_period(client: Any) -> None:
    put_refund(client, "day-before", PERIOD - timedelta(days=1))
    put_refund(client, "same-day-before", PERIOD - timedelta(hours=1))
    put_refund(client, "inside", PERIOD + timedelta(hours=1))
    put_refund(client, "day-after", NOW + timedelta(days=1))
    for n in range(-1, 8):
        day = iso(PERIOD + timedelta(days=n))[:10]
        put_counter(client, day, pending={-1: 1, 0: 2, 7: 1}.get(n, 0))
    counting = CountingClient(client)
    reader = HistoryReader("h", counting, clock=lambda: NOW)  # type: ignore[arg-type]
    seen, _, _ = pending_pages(reader, limit=1, until=NOW)
    assert seen == ["inside"]
    days = {k.removeprefix("counter#") for k in counting.got_keys if k.startswith("counter#")}
    assert min(days) == iso(PERIOD)[:10] and max(days) == iso(NOW)[:10]
    assert set(counting.queried_days) == {iso(PERIOD)[:10]}


def put_listed_counter(client: Any, day: str, listed: dict[str, datetime], **counts: int) -> None:
    """A counter item that lists pending refunds as the stream function does (pending_attr -> queued_at)."""
    item = {HASH_KEY: f"counter#{day}", "counter_day": day, "applied#shardId-000001": "0" * 40, **counts}
    item.update({pending_attr(rid): iso(at) for rid, at in listed.items()})
    client.put_item(TableName="h", Item=to_item(item))


def test_a_rare_pending_refund_listed_by_its_counter_costs_the_counters_and_itself(client: Any) -> None:
    """The same day of 250 settled refunds with one pending deep in it, its counter listing it:
    no Query at all, the seven counters and the one refund by key."""
    busy = datetime(2025, 3, 17, 23, 59, tzinfo=UTC)
    for n in range(250):
        put_refund(client, f"s{n:03d}", busy - timedelta(seconds=10 * n), "refunded")
    at = busy - timedelta(seconds=10 * 120 - 5)
    put_refund(client, "the-pending", at)
    put_listed_counter(client, "2025-03-17", {"the-pending": at}, refunded=250, pending=1)
    for day in (14, 15, 16, 18, 19, 20):
        put_counter(client, f"2025-03-{day}", rejected=10, pending=0)
    counting = CountingClient(client)
    reader = HistoryReader("h", counting, clock=lambda: NOW)  # type: ignore[arg-type]
    page = reader.query(outcome=Outcome.PENDING, since=PERIOD, limit=50)
    assert [r.refund_id for r in page.records] == ["the-pending"]
    assert counting.queried_days == []
    assert page.items_read == reader.reads.items == 7 + 1
    assert page.cursor is None


def test_listed_pending_refunds_page_by_key_newest_first_and_a_short_list_is_walked(client: Any) -> None:
    """Pages of 3 over two listed days and one whose list is short of its count (more were pending
    than the stream function lists): every pending refund once, newest first, the listed days read
    by key only, the other walked; one that has left pending since its counter was written (the
    counter's lag) is read and dropped, and the page is filled from the next ones."""
    expected = []
    listed: dict[str, dict[str, datetime]] = {"2025-03-20": {}, "2025-03-19": {}, "2025-03-18": {}}
    for n in range(15):  # 11:00 on 2025-03-20 back to 03:00 on 2025-03-18, every 4 hours
        at = NOW - timedelta(hours=1 + 4 * n)
        day = iso(at)[:10]
        settled_since = n == 1  # on 2025-03-20, a listed day
        put_refund(client, f"p{n:02d}", at, "refunded" if settled_since else None)
        put_refund(client, f"s{n:02d}", at - timedelta(minutes=1), "refunded")
        listed[day][f"p{n:02d}"] = at
        if not settled_since:
            expected.append(f"p{n:02d}")
    for day, pending in listed.items():
        if day == "2025-03-19":  # lists one fewer than it counts: walked
            put_listed_counter(client, day, dict(list(pending.items())[1:]), pending=len(pending))
        else:
            put_listed_counter(client, day, pending, pending=len(pending))
    counting = CountingClient(client)
    reader = HistoryReader("h", counting, clock=lambda: NOW)  # type: ignore[arg-type]
    seen, _, _ = pending_pages(reader, limit=3)
    assert seen == expected
    # Queries on the day whose list is short, and on the period's days that have no counter item.
    assert "2025-03-20" not in counting.queried_days and "2025-03-18" not in counting.queried_days
    assert "2025-03-19" in counting.queried_days


@pytest.mark.parametrize(
    "state",
    [
        {"day": "2025-03-20", "lek": None, "found": -1},
        {"day": "2025-03-20", "lek": None, "found": "3"},
        {"day": "2025-03-20", "lek": None, "found": True},
        {"day": "2025-03-21", "lek": None, "found": 0},
        {"day": "2025-03-20", "lek": ["x"], "found": 0},
    ],
)
def test_a_forged_pending_cursor_is_refused(client: Any, state: dict) -> None:
    reader = HistoryReader("h", client, clock=lambda: NOW)
    with pytest.raises(ValueError, match="the page cursor is not valid"):
        reader.query(outcome=Outcome.PENDING, since=PERIOD, cursor=encode_cursor(state))


def test_the_in_flight_check_finds_pending_refunds_without_an_outcome(client: Any) -> None:
    """operations.history_matches: pending (absent or legacy "pending") from the day walk,
    retrying from by_outcome, a 200 from the payment marker; one walk for many payments."""
    put_refund(client, "wait", NOW - timedelta(minutes=5))
    put_refund(client, "legacy", NOW - timedelta(days=1), "pending")
    put_refund(client, "retry", NOW - timedelta(days=2), "retrying")
    put_refund(client, "stale", NOW - timedelta(days=20))  # SQS dropped it long ago: not in flight
    put_refund(client, "done", NOW - timedelta(hours=1), "rejected")
    put_counter(client, "2025-03-20", pending=1, rejected=1)
    put_counter(client, "2025-03-19", pending=1)
    put_counter(client, iso(NOW - timedelta(days=20))[:10], pending=1)
    reader = HistoryReader("h", client, clock=lambda: NOW)
    payments = [f"pay_{r}" for r in ("wait", "legacy", "retry", "stale", "done")] + [
        f"pay_other_{n}" for n in range(1000)
    ]
    found = history_matches(reader, payments)
    assert {p: (m.refund_id, m.refunded) for p, m in found.items()} == {
        "pay_wait": ("wait", False),
        "pay_legacy": ("legacy", False),
        "pay_retry": ("retry", False),
    }
    assert found["pay_wait"].warning == "a refund of this payment is already pending (wait)"
    assert found["pay_retry"].warning == "a refund of this payment is already retrying (retry)"
