"""docs/migration.md, run on moto: a table of each earlier shape moved to the one template.yaml
declares, step by step as the stack updates do it, with every item still there, readable through
the new indexes, and the day counters exact after the recount.

Each step is the DynamoDB change one CloudFormation stack update makes (CloudFormation creates or
deletes one global secondary index per update, cannot change an index's projection in place, and
turns a table's stream on in place). The stream function does not run on moto: the counters the
move leaves off are the ones it would not have seen, which is what the recount is for.
"""

from __future__ import annotations

from collections import Counter
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
from reditus_refunds.repair import DayRecounter, recount_days

OLD = "history-previous-shape"
DECLARED = "history-as-declared"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=25)  # the history spans 20 days
QUEUE_RETENTION_DAYS = 4  # template.yaml, RefundQueue's MessageRetentionPeriod (345600 s)

ALL: dict[str, Any] = {"ProjectionType": "ALL"}
KEYS: dict[str, Any] = {"ProjectionType": "KEYS_ONLY"}
# What a list row shows: by_outcome's and by_day's non-key attributes in the previous release.
ROW = [
    "payment_id",
    "outcome",
    "requested_by",
    "note",
    "source",
    "source_event_id",
    "force",
    "http_status",
    "detail",
    "attempts",
    "completed_at",
    "latency_ms",
    "duplicate_of",
    "requeue_of",
]
# The first issue-15 release projected the bookkeeping too.
ROW_AND_BOOKKEEPING = [*ROW, "error_kind", "last_attempt_at", "message_id", "attempt_log", "attempts_dropped"]


def _include(attributes: list[str], keys: tuple[str, str]) -> dict[str, Any]:
    return {"ProjectionType": "INCLUDE", "NonKeyAttributes": [a for a in attributes if a not in keys]}


# The refund indexes of each earlier release (the webhook and audit indexes are not changed here).
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "before issue 15": {
        layout.GSI_BY_OUTCOME: ALL,
        layout.GSI_BY_DAY: ALL,
        layout.GSI_BY_PAYMENT: ALL,
    },
    "first issue-15 release": {
        layout.GSI_BY_OUTCOME: _include(ROW_AND_BOOKKEEPING, ("outcome", "queued_at")),
        layout.GSI_BY_DAY: _include(ROW_AND_BOOKKEEPING, ("queued_day", "queued_at")),
        layout.GSI_BY_PAYMENT: KEYS,
        layout.GSI_BY_REQUESTER: KEYS,
    },
    "previous release": {
        layout.GSI_BY_OUTCOME: _include(ROW, ("outcome", "queued_at")),
        layout.GSI_BY_DAY: _include(ROW, ("queued_day", "queued_at")),
        layout.GSI_BY_PAYMENT: KEYS,
        layout.GSI_BY_REQUESTER: KEYS,
    },
}

# docs/migration.md, "The steps": step number -> the change. Which a table takes: `steps_for`.
STREAM = ("Stream", "")
STEPS: dict[int, tuple[str, str]] = {
    1: STREAM,
    2: ("Create", layout.GSI_BY_REQUESTER),
    3: ("Delete", layout.GSI_BY_PAYMENT),
    4: ("Create", layout.GSI_BY_PAYMENT),
    5: ("Delete", layout.GSI_BY_DAY),
    6: ("Create", layout.GSI_BY_DAY),
    7: ("Delete", layout.GSI_BY_OUTCOME),
    8: ("Create", layout.GSI_BY_OUTCOME),
}


def _gsi(name: str, projection: dict[str, Any]) -> dict[str, Any]:
    keys = layout.INDEXES[name]
    return {
        "IndexName": name,
        "KeySchema": [
            {"AttributeName": keys[0], "KeyType": "HASH"},
            {"AttributeName": keys[1], "KeyType": "RANGE"},
        ],
        "Projection": projection,
    }


def _declared(name: str) -> dict[str, Any]:
    projected = layout.INDEX_PROJECTIONS[name]
    return _gsi(
        name, KEYS if projected == layout.KEYS_ONLY else _include(list(projected), layout.INDEXES[name])
    )


def steps_for(client: Any, table: str) -> list[int]:
    """The note's rule: step 1 always; each index step pair whose index differs from template.yaml's."""
    have = _indexes(client, table)
    want = {name: _indexes_entry(_declared(name)) for name in layout.INDEXES}
    steps = [1]
    if layout.GSI_BY_REQUESTER not in have:
        steps.append(2)
    for first, name in ((3, layout.GSI_BY_PAYMENT), (5, layout.GSI_BY_DAY), (7, layout.GSI_BY_OUTCOME)):
        if have.get(name) != want[name]:
            steps += [first, first + 1]
    return steps


def _indexes_entry(gsi: dict[str, Any]) -> dict[str, Any]:
    projection = dict(gsi["Projection"])
    if "NonKeyAttributes" in projection:
        projection["NonKeyAttributes"] = sorted(projection["NonKeyAttributes"])
    return {"KeySchema": gsi["KeySchema"], "Projection": projection}


def _indexes(client: Any, table: str) -> dict[str, dict[str, Any]]:
    described = client.describe_table(TableName=table)["Table"]
    return {
        g["IndexName"]: _indexes_entry(g)
        for g in described.get("GlobalSecondaryIndexes", [])
        if g["IndexName"] in layout.INDEXES
    }


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        yield boto3.session.Session(region_name="us-east-1").client("dynamodb")


def _create_old_table(client: Any, shape: str) -> None:
    indexes = SHAPES[shape]
    keys = {a for name in indexes for a in layout.INDEXES[name]} | {layout.HASH_KEY}
    client.create_table(
        TableName=OLD,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in sorted(keys)],
        KeySchema=[{"AttributeName": layout.HASH_KEY, "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[_gsi(name, projection) for name, projection in indexes.items()],
    )


def _legacy_history(client: Any) -> list[str]:
    """Refunds as the earlier releases left them: a pending one says outcome "pending", each one
    carries the outcome its day counter counted it under (counted_outcome), and the producer and
    the submitter kept the counters. Pending, settled, with and without a person, payments refunded
    twice, payment markers. Returns the refund ids."""
    ids: list[str] = []
    counters: dict[str, Counter[str]] = {}
    for n in range(60):
        queued = iso(NOW - timedelta(days=n % 20, minutes=10 + n))
        outcome = Outcome.REFUNDED if n % 2 == 0 else Outcome.PENDING
        item: dict[str, Any] = {
            layout.HASH_KEY: f"r-{n:03d}",
            "payment_id": f"pay_{n % 25:03d}",
            "queued_at": queued,
            "queued_day": queued[:10],
            "requested_by": None if n % 7 == 0 else f"person{n % 4}@example.com",
            "note": f"note {n}" if n % 3 else None,
            "source": "console",
            "force": n % 25 != n or None,
            "message_id": f"m-{n}",
            "outcome": outcome.value,
            "counted_outcome": outcome.value,
            "attempts": 0,
        }
        if outcome is Outcome.REFUNDED:
            item |= {"http_status": 200, "detail": "ok", "attempts": 1, "completed_at": queued}
            marker = {
                layout.HASH_KEY: layout.PAYMENT_MARKER_PREFIX + item["payment_id"],
                "refunded_by": item[layout.HASH_KEY],
                "refunded_at": queued,
            }
            client.put_item(TableName=OLD, Item=layout.to_item(marker))
        client.put_item(TableName=OLD, Item=layout.to_item(item))
        counters.setdefault(queued[:10], Counter())[outcome.value] += 1
        ids.append(item[layout.HASH_KEY])
    for day, counts in counters.items():
        counter = {layout.HASH_KEY: layout.COUNTER_PREFIX + day, "counter_day": day, **counts}
        client.put_item(TableName=OLD, Item=layout.to_item(counter))
    return ids


def _during_the_move(client: Any) -> list[str]:
    """What this release's code writes between step 1 and the stream function's first batch (the
    stream function counts none of it on moto): new pending refunds, with no outcome attribute,
    and results of refunds the previous release recorded as pending (their counted_outcome stays)."""
    writer = HistoryWriter(OLD, client, clock=lambda: NOW)
    new = [
        RefundRequest(refund_id=f"n-{n}", payment_id=f"pay_new_{n}", requested_by="person1@example.com")
        for n in range(4)
    ]
    for n, request in enumerate(new):
        assert writer.record_pending([request], iso(NOW - timedelta(minutes=n))) == {request.refund_id}
    stored = client.get_item(TableName=OLD, Key=layout.item_key("n-0"))["Item"]
    assert "outcome" not in stored  # this release's pending record
    for rid in ("r-001", "r-021"):  # pending, queued 1 day ago: settled by the new code
        client.update_item(
            TableName=OLD,
            Key=layout.item_key(rid),
            UpdateExpression="SET outcome = :o, http_status = :s, detail = :d, attempts = :a",
            ExpressionAttributeValues={
                ":o": {"S": Outcome.REJECTED.value},
                ":s": {"N": "400"},
                ":d": {"S": "no"},
                ":a": {"N": "1"},
            },
        )
    return [request.refund_id for request in new]


def _apply(client: Any, step: int) -> None:
    action, name = STEPS[step]
    update: dict[str, Any] = {"TableName": OLD}
    if action == "Stream":
        update["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    elif action == "Create":
        update["GlobalSecondaryIndexUpdates"] = [{"Create": _declared(name)}]
        if name == layout.GSI_BY_REQUESTER:  # its hash key is a new key attribute
            update["AttributeDefinitions"] = [{"AttributeName": "requested_by", "AttributeType": "S"}]
    else:
        update["GlobalSecondaryIndexUpdates"] = [{"Delete": {"IndexName": name}}]
    client.update_table(**update)


def _scan(client: Any) -> dict[str, Any]:
    return {i["refund_id"]["S"]: i for i in client.scan(TableName=OLD)["Items"]}


def _truth(reader: HistoryReader, ids: list[str]) -> dict[str, Counter[str]]:
    """Per day, per outcome, what the items say (read by key)."""
    truth: dict[str, Counter[str]] = {}
    for rid in ids:
        record = reader.get(rid)
        assert record is not None
        truth.setdefault(record.queued_at[:10], Counter())[record.outcome.value] += 1
    return truth


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_documented_steps_move_a_deployed_table_without_losing_history(dynamodb: Any, shape: str) -> None:
    client = dynamodb
    _create_old_table(client, shape)
    ids = _legacy_history(client)
    steps = steps_for(client, OLD)
    assert (
        steps
        == {
            "before issue 15": [1, 2, 3, 4, 5, 6, 7, 8],
            "first issue-15 release": [1, 5, 6, 7, 8],
            "previous release": [1, 5, 6],
        }[shape]
    )

    for step in steps:
        before = _scan(client)
        _apply(client, step)
        # Every step leaves the table whole: the same items, byte for byte.
        assert _scan(client) == before
        if step == 1:  # this release's code runs from step 1 on
            ids += _during_the_move(client)

    # The refund indexes and the stream are now exactly as template.yaml declares them.
    create_table_as_declared(client, DECLARED)
    assert _indexes(client, OLD) == _indexes(client, DECLARED)
    stream = client.describe_table(TableName=OLD)["Table"]["StreamSpecification"]
    assert stream == client.describe_table(TableName=DECLARED)["Table"]["StreamSpecification"]

    # The counters of the days whose refunds changed while nothing counted them are off...
    reader = HistoryReader(OLD, client, clock=lambda: NOW)
    truth = _truth(reader, ids)
    first_day = (NOW - timedelta(days=QUEUE_RETENTION_DAYS)).date()

    def counts(day: str) -> dict[str, int]:
        return {
            k: v for k, v in reader.daily_counts(*[datetime.fromisoformat(day).date()] * 2)[day].items() if v
        }

    moved_days = [d for d in sorted(truth) if d >= first_day.isoformat()]
    assert any(counts(day) != dict(truth[day]) for day in moved_days)
    # ...until `reditus-refunds counters recount --since <4 days before step 1> --until <today>`.
    recount_days(DayRecounter(OLD, client), [first_day + timedelta(days=n) for n in range(5)])
    for day in sorted(truth):
        assert counts(day) == dict(truth[day]), day

    # Every refund is readable through the new indexes, as it is by key.
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
        assert record is not None
        return (record.refund_id, *(getattr(record, a) for a in layout.LIST_ATTRIBUTES))

    listed = everything()
    assert sorted(r.refund_id for r in listed) == sorted(ids)
    assert all(row(r) == row(by_key[r.refund_id]) for r in listed)
    # Pending: the earlier releases' "pending" items and this release's (no outcome) alike.
    pending = {rid for rid, r in by_key.items() if r and r.outcome is Outcome.PENDING}
    assert {"r-003", "n-0"} <= pending
    for outcome in (Outcome.PENDING, Outcome.REFUNDED, Outcome.REJECTED):
        got = everything(outcome=outcome)
        assert sorted(r.refund_id for r in got) == sorted(
            rid for rid, r in by_key.items() if r and r.outcome is outcome
        )
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
