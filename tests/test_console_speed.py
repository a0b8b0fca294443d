"""With 100,000 items in the history table, History's first page and headline figures stay small reads.

The table is filled once for the module (batch writes through the DynamoDB API of an in-process
moto: about a minute), then the History page's own data functions, and the page itself through
AppTest, are measured by counting what the store reads (`HistoryReader.reads`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
import streamlit as st
from moto import mock_aws
from streamlit.testing.v1 import AppTest

from reditus_operators.history import HistoryReader
from reditus_refunds.records import Outcome
from tests.conftest import TABLE, create_history_table
from tests.console_support import Seeded, seed_history
from ui import data

# Seeds 100,000 items: `make test` runs it, the fast `make unit` does not.
pytestmark = pytest.mark.slow

ITEMS = 100_000
DAYS = 30
PAGE_SIZE = data.DEFAULT_PAGE_SIZE
# Reads beyond the page size that a first page may cost (none today: Limit stops each Query).
SMALL_CONSTANT = 5
APP = str(Path(__file__).resolve().parents[1] / "ui" / "app.py")


@dataclass
class BigHistory:
    dynamodb: object
    seeded: Seeded
    now: datetime

    def store(self) -> HistoryReader:
        return HistoryReader(TABLE, self.dynamodb)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def big_history() -> Iterator[BigHistory]:
    with mock_aws():
        dynamodb = boto3.session.Session(region_name="us-east-1").client("dynamodb")
        create_history_table(dynamodb)
        now = datetime.now(UTC)
        seeded = seed_history(dynamodb, TABLE, count=ITEMS, days=DAYS, now=now)
        assert seeded.items == ITEMS
        yield BigHistory(dynamodb, seeded, now)


def test_first_page_reads_at_most_the_page_size_plus_a_small_constant(big_history: BigHistory) -> None:
    store = big_history.store()
    today = big_history.now.date()
    history_filter = data.HistoryFilter(today - timedelta(days=DAYS - 1), today)
    data.cached_history_page.clear()
    page = data.cached_history_page("speed", history_filter, None, PAGE_SIZE, store)
    assert len(page.records) == PAGE_SIZE
    assert page.cursor is not None
    # by_day holds keys only: the page's keys, then its items by key (one BatchGetItem).
    assert store.reads.items <= 2 * PAGE_SIZE + SMALL_CONSTANT, store.reads
    times = [r.queued_at for r in page.records]
    assert times == sorted(times, reverse=True)  # newest first

    # The next page costs the same; a page of one outcome reads index entries only (by_outcome
    # holds what a row shows).
    before = store.reads.items
    data.read_history_page(store, history_filter, page.cursor, PAGE_SIZE)
    assert store.reads.items - before <= 2 * PAGE_SIZE + SMALL_CONSTANT
    before = store.reads.items
    not_found = data.read_history_page(
        store, data.HistoryFilter(history_filter.since, today, outcome=Outcome.NOT_FOUND), None, PAGE_SIZE
    )
    assert {r.outcome for r in not_found.records} == {Outcome.NOT_FOUND}
    assert store.reads.items - before <= PAGE_SIZE + SMALL_CONSTANT


def test_headline_figures_read_one_counter_item_per_day(big_history: BigHistory) -> None:
    store = big_history.store()
    today = big_history.now.date()
    since = today - timedelta(days=DAYS - 1)
    data.cached_headline.clear()
    headline = data.cached_headline("speed", since, today, store)
    days_with_items = sum(1 for day in big_history.seeded.per_day if day >= since.isoformat())
    assert store.reads.items == days_with_items <= DAYS, store.reads
    expected = {
        outcome.value: sum(
            c[outcome.value] for day, c in big_history.seeded.per_day.items() if day >= since.isoformat()
        )
        for outcome in Outcome
    }
    figures = {label: value for label, value, _ in headline.figures}
    assert figures["Refunded"] == expected["refunded"]
    assert figures["Pending"] == expected["pending"] + expected["retrying"]
    assert figures["Failed"] == expected["failed"] + expected["dead_lettered"]


def test_the_history_page_itself_reads_one_page_and_one_counter_per_day(
    big_history: BigHistory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from reditus_operators.config import SystemConfig, write_local_state

    names = ("CONSOLE_PASSWORD", "CONSOLE_SIGN_IN", "REDITUS_STACK_NAME", "AWS_ENDPOINT_URL")
    for name in (*names, "HISTORY_TABLE_NAME", "REFUND_QUEUE_URL", "DEAD_LETTER_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    # The open console runs only against the local stack: it finds this table through the state file.
    queue = "https://sqs.us-east-1.amazonaws.com/123456789012/refunds"
    local = SystemConfig(TABLE, queue, "", "us-east-1", origin="local stack", local=True)
    write_local_state(local, tmp_path)
    monkeypatch.setenv("CONSOLE_OPEN", "1")
    monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.switch_page("app_pages/history.py")
        at.run()
        assert not at.exception, at.exception
        page_store = data.services().store
        # The default view: the last 7 days' figures and the newest page of the table (its keys
        # from by_day, then its items by key).
        assert page_store.reads.items <= 7 + 2 * PAGE_SIZE + SMALL_CONSTANT, page_store.reads
        assert {m.label for m in at.metric} >= {"Refunded", "Pending", "Failed"}
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()


def _put_refund(big_history: BigHistory, refund_id: str, at: datetime, **extra: str) -> None:
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    item = {
        "refund_id": {"S": refund_id},
        "outcome": {"S": "refunded"},
        "queued_at": {"S": stamp},
        "queued_day": {"S": stamp[:10]},
        **{name: {"S": value} for name, value in extra.items()},
    }
    big_history.dynamodb.put_item(TableName=TABLE, Item=item)  # type: ignore[attr-defined]


def test_the_person_filter_reads_a_page_plus_a_small_constant(big_history: BigHistory) -> None:
    """Issue 15: one refund of a rare name among 100,000, looked for over 90 days, is found by
    the by_requester index (keys only, then the item by key), not by filtering the period."""
    # Sixty days back: outside every other test's window, so their figures are unchanged.
    _put_refund(
        big_history, "r-rare-person", big_history.now - timedelta(days=60), payment_id="pay_rare_person",
        requested_by="rare.person@example.com",
    )  # fmt: skip
    store = big_history.store()
    page = store.query(
        requested_by="rare.person@example.com", since=big_history.now - timedelta(days=90), limit=PAGE_SIZE
    )
    assert [r.refund_id for r in page.records] == ["r-rare-person"]
    assert page.records[0].payment_id == "pay_rare_person"  # the whole item, read by key
    assert store.reads.items == page.items_read <= 2 + SMALL_CONSTANT, store.reads
    assert page.cursor is None


def test_the_payment_filter_reads_its_refunds_plus_a_small_constant(big_history: BigHistory) -> None:
    older = big_history.now - timedelta(days=61)
    _put_refund(big_history, "r-pay-1", older, payment_id="pay_twice", requested_by="a@example.com")
    _put_refund(big_history, "r-pay-2", older + timedelta(hours=1), payment_id="pay_twice", note="again")
    store = big_history.store()
    page = store.query(payment_id="pay_twice", since=big_history.now - timedelta(days=90), limit=PAGE_SIZE)
    assert [r.refund_id for r in page.records] == ["r-pay-2", "r-pay-1"]  # newest first
    assert page.records[0].note == "again" and page.records[1].requested_by == "a@example.com"
    assert store.reads.items <= 2 * 2 + SMALL_CONSTANT, store.reads
    # A filter within the payment's refunds: the person's.
    mine = store.query(
        payment_id="pay_twice", requested_by="a@example.com", since=big_history.now - timedelta(days=90)
    )
    assert [r.refund_id for r in mine.records] == ["r-pay-1"]
