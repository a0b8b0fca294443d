"""docs/migration.md, run on moto: a table of the previous shape (three ALL-projection refund
indexes, no person index) moved to the shape template.yaml declares, one index per step as the
stack updates do it, with every item still there and readable through the new indexes.

Each step is the DynamoDB change one CloudFormation stack update makes (CloudFormation creates or
deletes one global secondary index per update, and cannot change an index's projection in place).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from reditus_local.resources import create_table_as_declared
from reditus_operators.history import HistoryReader
from reditus_refunds import layout
from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.records import HistoryRecord, Outcome, iso

OLD = "history-previous-shape"
DECLARED = "history-as-declared"
OLD_INDEXES = {  # template.yaml before issue 15 (the webhook indexes are unchanged by it)
    layout.GSI_BY_OUTCOME: ("outcome", "queued_at"),
    layout.GSI_BY_DAY: ("queued_day", "queued_at"),
    layout.GSI_BY_PAYMENT: ("payment_id", "queued_at"),
}
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=25)  # the day walk goes back day by day: the history spans 20 days


def _gsi(name: str, keys: tuple[str, str], projection: dict[str, Any]) -> dict[str, Any]:
    return {
        "IndexName": name,
        "KeySchema": [
            {"AttributeName": keys[0], "KeyType": "HASH"},
            {"AttributeName": keys[1], "KeyType": "RANGE"},
        ],
        "Projection": projection,
    }


def _declared_gsi(name: str) -> dict[str, Any]:
    projected = layout.INDEX_PROJECTIONS[name]
    projection: dict[str, Any] = (
        {"ProjectionType": "KEYS_ONLY"}
        if projected == layout.KEYS_ONLY
        else {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(projected)}
    )
    return _gsi(name, layout.INDEXES[name], projection)


# docs/migration.md, "The steps": one index change per stack update, in this order.
STEPS: list[tuple[str, str]] = [
    ("Create", layout.GSI_BY_REQUESTER),
    ("Delete", layout.GSI_BY_PAYMENT),
    ("Create", layout.GSI_BY_PAYMENT),
    ("Delete", layout.GSI_BY_DAY),
    ("Create", layout.GSI_BY_DAY),
    ("Delete", layout.GSI_BY_OUTCOME),
    ("Create", layout.GSI_BY_OUTCOME),
]


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.session.Session(region_name="us-east-1").client("dynamodb")
        keys = {a for pair in OLD_INDEXES.values() for a in pair} | {layout.HASH_KEY}
        client.create_table(
            TableName=OLD,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in sorted(keys)],
            KeySchema=[{"AttributeName": layout.HASH_KEY, "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[_gsi(n, k, {"ProjectionType": "ALL"}) for n, k in OLD_INDEXES.items()],
        )
        yield client


def _history(client: Any) -> list[str]:
    """Refunds as the previous version wrote them (pending, settled, with and without a person,
    one of them re-sent with force), plus markers and day counters. Returns the refund ids."""
    writer = HistoryWriter(OLD, client, clock=lambda: NOW)
    ids: list[str] = []
    entries = []
    for n in range(60):
        queued = NOW - timedelta(days=n % 20, minutes=n)
        request = RefundRequest(
            refund_id=f"r-{n:03d}",
            payment_id=f"pay_{n % 25:03d}",  # some payments refunded twice
            requested_by=None if n % 7 == 0 else f"person{n % 4}@example.com",
            note=f"note {n}" if n % 3 else None,
            source="console",
            force=n % 25 != n,
        )
        entries.append((request, f"m-{n}", iso(queued)))
        ids.append(request.refund_id)
    assert writer.record_pending(entries) == len(entries)
    # Half of them settled as the Lambda settles them: outcome, attempt, counters.
    for n in range(0, 60, 2):
        rid = f"r-{n:03d}"
        client.update_item(
            TableName=OLD,
            Key=layout.item_key(rid),
            UpdateExpression="SET outcome = :o, http_status = :s, detail = :d, attempts = :a",
            ExpressionAttributeValues={
                ":o": {"S": Outcome.REFUNDED.value},
                ":s": {"N": "200"},
                ":d": {"S": "ok"},
                ":a": {"N": "1"},
            },
        )
    state_changes = [writer.settlement_for(s) for s in map(writer.get_state, ids) if s is not None]
    assert writer.settle([s for s in state_changes if s is not None]) == []
    return ids


def _indexes(client: Any, table: str) -> dict[str, dict[str, Any]]:
    described = client.describe_table(TableName=table)["Table"]
    return {
        g["IndexName"]: {"KeySchema": g["KeySchema"], "Projection": g["Projection"]}
        for g in described.get("GlobalSecondaryIndexes", [])
    }


def test_the_documented_steps_move_a_deployed_table_without_losing_history(dynamodb: Any) -> None:
    client = dynamodb
    ids = _history(client)
    before = {i["refund_id"]["S"]: i for i in client.scan(TableName=OLD)["Items"]}

    for action, name in STEPS:
        update: dict[str, Any] = {"TableName": OLD}
        if action == "Create":
            update["GlobalSecondaryIndexUpdates"] = [{"Create": _declared_gsi(name)}]
            if name == layout.GSI_BY_REQUESTER:  # its hash key is a new key attribute
                update["AttributeDefinitions"] = [{"AttributeName": "requested_by", "AttributeType": "S"}]
        else:
            update["GlobalSecondaryIndexUpdates"] = [{"Delete": {"IndexName": name}}]
        client.update_table(**update)
        # Every step leaves the table whole: the same items, byte for byte.
        assert {i["refund_id"]["S"]: i for i in client.scan(TableName=OLD)["Items"]} == before

    # The refund indexes are now exactly as template.yaml declares them.
    create_table_as_declared(client, DECLARED)
    declared = {n: v for n, v in _indexes(client, DECLARED).items() if n in layout.INDEXES}
    assert {n: v for n, v in _indexes(client, OLD).items() if n in layout.INDEXES} == declared

    # Every refund is readable through the new indexes, as it is by key.
    reader = HistoryReader(OLD, client, clock=lambda: NOW)
    by_key = {rid: reader.get(rid) for rid in ids}
    assert all(by_key.values())

    def everything(**filters: Any) -> list[HistoryRecord]:
        records: list[HistoryRecord] = []
        cursor = None
        while True:
            page = reader.query(since=SINCE, until=NOW, limit=7, cursor=cursor, **filters)
            records += page.records
            cursor = page.cursor
            if cursor is None:
                return records

    def row(record: HistoryRecord | None) -> tuple[object, ...]:
        """What a list row shows: the list indexes hold it (a refund's detail is read by key)."""
        assert record is not None
        return (record.refund_id, *(getattr(record, a) for a in layout.LIST_ATTRIBUTES))

    listed = everything()
    assert sorted(r.refund_id for r in listed) == sorted(ids)
    assert all(row(r) == row(by_key[r.refund_id]) for r in listed)
    for outcome in (Outcome.PENDING, Outcome.REFUNDED):
        got = everything(outcome=outcome)
        assert {r.refund_id for r in got} == {rid for rid, r in by_key.items() if r and r.outcome is outcome}
        assert all(row(r) == row(by_key[r.refund_id]) for r in got)
    for payment in {r.payment_id for r in by_key.values() if r}:
        got = everything(payment_id=payment)
        assert {r.refund_id for r in got} == {
            rid for rid, r in by_key.items() if r and r.payment_id == payment
        }
    people = {r.requested_by for r in by_key.values() if r and r.requested_by}
    assert len(people) == 4
    for person in people:
        got = everything(requested_by=person)
        assert {r.refund_id for r in got} == {
            rid for rid, r in by_key.items() if r and r.requested_by == person
        }
        assert all(r == by_key[r.refund_id] for r in got)
    # The day counters came through too: one item per day, the settled ones counted.
    counts = reader.daily_counts((NOW - timedelta(days=20)).date(), NOW.date())
    assert sum(day.get("refunded", 0) for day in counts.values()) == 30
    assert sum(day.get("pending", 0) for day in counts.values()) == 30
