"""The receiver's sparse indexes in the table template.yaml declares: what they list, and what not.

Queried the way an operator's list would (through the index, its projection only), so a missing
projected attribute or a key attribute written under another name shows here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.layout import from_item
from reditus_webhooks import events
from reditus_webhooks.events import EventFacts, EventStore

from .conftest import AwsFixture

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _query(aws: AwsFixture, index: str, key: str, value: str) -> list[dict[str, Any]]:
    page = aws.dynamodb.query(
        TableName=aws.table,
        IndexName=index,
        KeyConditionExpression="#k = :v",
        ExpressionAttributeNames={"#k": key},
        ExpressionAttributeValues={":v": {"S": value}},
    )
    return [from_item(item) for item in page["Items"]]


def test_events_and_open_reviews_are_listed_from_their_indexes_alone(aws: AwsFixture) -> None:
    store = EventStore(aws.table, aws.dynamodb, clock=lambda: NOW)
    facts = EventFacts(
        provider="stripe",
        event_id="evt_1",
        event_type="charge.refunded",
        key=events.event_key("stripe", "evt_1"),
        refund_id="wh:stripe:ch_1",
        payment_id="ch_1",
        refund_key="re_1",
        reason="partial refund: 500 of 1000",
    )
    assert store.begin(facts) is None
    assert store.finish(facts, events.NEEDS_REVIEW)
    request = RefundRequest(payment_id="ch_1", refund_id="wh:stripe:ch_1", source="stripe")
    assert store.open_review(facts, request)
    # A refund request in the same table enters neither index.
    writer = HistoryWriter(aws.table, aws.dynamodb, clock=lambda: NOW)
    assert writer.record_pending([request], NOW.isoformat()) == {request.refund_id}

    listed = _query(aws, events.EVENT_DAY_INDEX, events.EVENT_DAY_ATTRIBUTE, "2026-11-30")
    assert [events.event_from_item(item) for item in listed] == [store.get_event(facts.key)]

    reviews = _query(aws, events.OPEN_REVIEW_INDEX, events.REVIEW_OPEN_ATTRIBUTE, "stripe")
    assert [events.review_from_item(item) for item in reviews] == [store.get_review("wh:stripe:ch_1")]

    # Closing the review takes it out of the open-reviews index.
    assert store.close_review("wh:stripe:ch_1", events.REVIEW_DISMISSED, by="ops@example.com")
    assert _query(aws, events.OPEN_REVIEW_INDEX, events.REVIEW_OPEN_ATTRIBUTE, "stripe") == []
