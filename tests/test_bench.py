"""The bench's own arithmetic and its moto fix (no timings: `make bench` measures, tests do not)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from bench.bulk import BulkFigures
from bench.counting import (
    CapacityModel,
    Index,
    Units,
    attr_size,
    call_shape,
    index_units,
    index_writes,
    item_size,
)
from bench.pricing import PerRefund, per_million
from bench.report import KEYS
from bench.webhooks import WebhookCost
from reditus_refunds.layout import INDEXES
from tests.conftest import AwsFixture

ROOT = Path(__file__).resolve().parents[1]


def test_results_have_exactly_the_tracked_keys() -> None:
    assert KEYS == (
        "batch10_overhead_ms",
        "batch10_vs_limit",
        "batch10_vs_sequential",
        "init_vs_bare",
        "ddb_writes_per_refund",
        "ddb_reads_per_refund",
        "usd_per_million_refunds",
        "usd_per_million_refunds_sequential",
        "history_items_read_first_page_10k",
        "history_items_read_first_page_100k",
        "history_items_read_requested_by_rare_100k",
        "history_items_read_pending_rare_100k",
        "summary_items_read_30_days",
        "bulk_10k_send_calls",
        "bulk_10k_vs_raw",
        "peak_rss_mb_batch10",
        "e2e_refunds_per_second",
        "webhook_init_vs_bare",
        "webhook_p50_ms",
        "webhook_p99_ms",
        "webhook_p50_ms_concurrent20",
        "webhook_p99_ms_concurrent20",
        "wru_per_refund",
        "rru_per_refund",
        "wru_per_webhook_refund",
        "rru_per_webhook_refund",
        "wru_per_webhook_replay",
    )


def test_item_sizes_follow_dynamodb_rules() -> None:
    assert attr_size({"S": "héllo"}) == 6
    assert attr_size({"N": "123"}) == 3
    assert attr_size({"BOOL": True}) == 1
    assert attr_size({"L": [{"S": "ab"}]}) == 3 + 1 + 2
    assert attr_size({"M": {"k": {"S": "ab"}}}) == 3 + 1 + 1 + 2
    assert item_size({"refund_id": {"S": "r1"}, "n": {"N": "7"}}) == 9 + 2 + 1 + 2


def test_index_writes() -> None:
    base = {
        "refund_id": {"S": "r1"},
        "payment_id": {"S": "p1"},
        "queued_at": {"S": "2026-01-01T00:00:00.000Z"},
        "queued_day": {"S": "2026-01-01"},
        "outcome": {"S": "pending"},
    }
    all_projected = {name: ("payment_id", "outcome", "lease", "queued_day", "attempts") for name in INDEXES}
    assert index_writes(None, base, all_projected) == 3  # a new item enters the three indexes it has keys of
    assert index_writes(base, {**base, "outcome": {"S": "refunded"}}, all_projected) == 2 + 1 + 1
    assert index_writes(base, {**base, "lease": {"N": "1"}}, all_projected) == 3  # every change
    assert index_writes({"refund_id": {"S": "payment#p1"}}, {"refund_id": {"S": "payment#p1"}}) == 0


def test_index_writes_follow_the_declared_projections() -> None:
    """Issue 15: only a change to what an index holds writes to it."""
    base = {
        "refund_id": {"S": "r1"},
        "payment_id": {"S": "p1"},
        "requested_by": {"S": "alice"},
        "queued_at": {"S": "2026-01-01T00:00:00.000Z"},
        "queued_day": {"S": "2026-01-01"},
        "outcome": {"S": "pending"},
        "counted_outcome": {"S": "pending"},
    }
    assert index_writes(None, base) == 4  # by_outcome, by_day, by_payment, by_requester
    # Attributes no index holds and the leases touch no index; keys-only indexes never change.
    assert index_writes(base, {**base, "counted_outcome": {"S": "refunded"}}) == 0
    assert index_writes(base, {**base, "lease_token": {"S": "t"}, "lease_until": {"N": "1"}}) == 0
    assert index_writes(base, {**base, "attempts": {"N": "1"}}) == 1  # the list index shows it
    assert index_writes(base, {**base, "outcome": {"S": "refunded"}}) == 2  # by_outcome moves


def test_cost_adds_its_parts() -> None:
    cost = per_million(PerRefund(handler_ms=10.0, wru=10.0, rru=2.0, sqs_requests=0.3))
    assert round(cost.dynamodb_usd, 2) == 6.5
    assert round(cost.sqs_usd, 2) == 0.12
    assert cost.total == cost.lambda_usd + cost.dynamodb_usd + cost.sqs_usd


def test_bulk_figures_give_the_ratio_both_ways() -> None:
    """Issue 15: the headline runs DynamoDB on a moto server of its own; the one-server figure
    stays beside it."""
    figures = BulkFigures(
        product_s=9.0,
        product_one_server_s=12.0,
        raw_s=6.0,
        sqs_only_s=5.0,
        send_calls=1000,
        raw_calls=1000,
        pending_ddb_calls=120,
        sent=10_000,
    )
    assert figures.vs_raw == 1.5 and figures.vs_raw_one_server == 2.0


def test_webhook_refund_adds_the_lambdas_share_to_the_receivers_units() -> None:
    """Issue 15: a webhook's refund is all in: the receiver's records (its own indexes and refused
    conditional writes included, all priced by the one model) and the Lambda's part, per event."""
    cost = WebhookCost(
        events=10,
        replays=5,
        receiver=Units(
            wru=90.0,
            gsi_wru=20.0,
            rru=10.0,
            per_op={"TransactWriteItems (pending)": 20.0, "PutItem refused": 10.0},
        ),
        producer=Units(wru=40.0, gsi_wru=40.0, rru=0.0),
        replay=Units(wru=10.0, rru=5.0),
        calls=Counter(),
        replay_calls=Counter(),
        sqs_calls=Counter(),
        lambda_wru=4.0,
        lambda_rru=1.5,
    )
    assert cost.wru_per_webhook_refund == (90 + 20 + 40 + 40) / 10 + 4.0
    assert cost.rru_per_webhook_refund == 10 / 10 + 1.5
    assert cost.wru_per_webhook_replay == 2.0 and cost.rru_per_webhook_replay == 1.0
    assert ("receiver TransactWriteItems (event received)", 2.0) in cost.by_call()
    assert ("receiver PutItem refused", 1.0) in cost.by_call()


def test_other_indexes_are_priced_by_what_they_hold() -> None:
    received = {
        "refund_id": {"S": "webhook#stripe#evt_1"},
        "received_day": {"S": "2026-11-30"},
        "received_at": {"S": "2026-11-30T09:00:00.000Z"},
        "decision": {"S": "received"},
        "note": {"S": "not projected"},
    }
    index = Index(("received_day", "received_at"), ("decision",))
    assert index_units(None, received, index) == 1  # enters the index
    assert index_units(received, {**received, "note": {"S": "other"}}, index) == 0
    assert index_units(received, {**received, "decision": {"S": "queued"}}, index) == 1
    assert index_units(received, {**received, "received_at": {"S": "2026-11-30T10:00:00.000Z"}}, index) == 2
    assert index_units(None, {"refund_id": {"S": "webhook_count#stripe#2026-11-30"}}, index) == 0


def test_call_shape_tells_a_fresh_claim_from_a_claim_after_a_read() -> None:
    claim = "SET lease_token = :token, open_claims = if_not_exists(open_claims, :zero) + :one"
    fresh = {"UpdateExpression": claim, "ConditionExpression": "attribute_not_exists(refund_id) OR (x)"}
    read_first = {"UpdateExpression": claim, "ConditionExpression": "attribute_not_exists(refund_id)"}
    assert call_shape("UpdateItem", fresh) == "UpdateItem (claim: refund (fresh))"
    assert call_shape("UpdateItem", read_first) == "UpdateItem (claim: refund)"


# ---- the capacity model against moto --------------------------------------------------------


def _priced(aws: AwsFixture) -> tuple[Any, CapacityModel]:
    """A client of the moto table with the model attached (its images through the fixture's)."""
    client = boto3.session.Session(region_name="us-east-1").client("dynamodb")
    return client, CapacityModel(aws.dynamodb).attach(client, "t")


def _spent(model: CapacityModel, call: Any, refused: str | None = None) -> Units:
    """What the model adds for one call; `refused`: the error code the call must fail with."""
    before = Units(**{k: v for k, v in vars(model.units["t"]).items() if k != "per_op"})
    ops = dict(model.units["t"].per_op)
    if refused is None:
        call()
    else:
        with pytest.raises(ClientError) as error:
            call()
        assert error.value.response["Error"]["Code"] == refused
    after = model.units["t"]
    changed = {op: v - ops.get(op, 0.0) for op, v in after.per_op.items() if v != ops.get(op, 0.0)}
    return Units(after.wru - before.wru, after.gsi_wru - before.gsi_wru, after.rru - before.rru, changed)


def test_model_prices_indexes_the_layout_does_not_know_from_describe_table(aws: AwsFixture) -> None:
    client, model = _priced(aws)
    keys = [{"AttributeName": "refund_id", "KeyType": "HASH"}]

    def gsi(name: str, hash_key: str, range_key: str | None, projection: dict[str, Any]) -> dict[str, Any]:
        schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
        if range_key:
            schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
        return {"IndexName": name, "KeySchema": schema, "Projection": projection}

    client.create_table(
        TableName="extra",
        KeySchema=keys,
        AttributeDefinitions=[
            {"AttributeName": a, "AttributeType": "S"} for a in ("refund_id", "k1", "r1", "k2", "r2", "k3")
        ],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[
            gsi("x_keys", "k1", "r1", {"ProjectionType": "KEYS_ONLY"}),
            gsi("x_include", "k2", "r2", {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["shown"]}),
            gsi("x_all", "k3", None, {"ProjectionType": "ALL"}),
        ],
    )
    item = {
        **{a: {"S": a} for a in ("refund_id", "k1", "r1", "k2", "r2", "k3")},
        "shown": {"S": "s"},
        "payload": {"S": "x" * 1500},  # only x_all holds it: its entry is 2 KB, the others' 1
    }

    def update(expression: str, value: str = "") -> Units:
        values = {"ExpressionAttributeValues": {":v": {"S": value}}} if value else {}
        return _spent(
            model,
            lambda: client.update_item(
                TableName="extra",
                Key={"refund_id": {"S": "refund_id"}},
                UpdateExpression=expression,
                **values,
            ),
        )

    put = _spent(model, lambda: client.put_item(TableName="extra", Item=item))
    assert put.gsi_wru == 1 + 1 + 2 and put.wru == 2
    assert model.schema("extra").indexes["x_all"] == Index(("k3",), None)
    assert update("SET payload = :v", "y" * 1500).gsi_wru == 2  # only ALL holds it
    assert update("SET shown = :v", "t").gsi_wru == 1 + 2  # INCLUDE and ALL
    assert update("SET k1 = :v", "k1b").gsi_wru == (1 + 1) + 2  # KEYS_ONLY moves, ALL changes
    assert update("SET k3 = :v", "k3b").gsi_wru == 2 + 2  # ALL moves
    assert update("REMOVE k2").gsi_wru == 1 + 2  # leaves INCLUDE, ALL changes


def test_model_bills_a_refused_conditional_write_by_the_standing_item(aws: AwsFixture) -> None:
    client, model = _priced(aws)
    table, key = aws.table, {"refund_id": {"S": "r1"}}
    standing = {**key, "payload": {"S": "x" * 2500}}  # 2.5 KB: 3 units
    client.put_item(TableName=table, Item=standing)
    assert item_size(standing) // 1024 == 2

    refused = {
        "PutItem refused": lambda: client.put_item(
            TableName=table, Item=key, ConditionExpression="attribute_not_exists(refund_id)"
        ),
        "UpdateItem refused": lambda: client.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET note = :n",
            ConditionExpression="attribute_not_exists(refund_id)",
            ExpressionAttributeValues={":n": {"S": "n"}},
        ),
        "DeleteItem refused": lambda: client.delete_item(
            TableName=table, Key=key, ConditionExpression="attribute_not_exists(refund_id)"
        ),
    }
    for shape, call in refused.items():
        spent = _spent(model, call, refused="ConditionalCheckFailedException")
        assert (spent.wru, spent.gsi_wru, spent.per_op) == (3, 0, {shape: 3}), shape
    absent = _spent(
        model,
        lambda: client.delete_item(
            TableName=table,
            Key={"refund_id": {"S": "nope"}},
            ConditionExpression="attribute_exists(refund_id)",
        ),
        refused="ConditionalCheckFailedException",
    )
    assert absent.wru == 1  # at least 1
    # Other errors bill nothing.
    invalid = _spent(
        model,
        lambda: client.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET queued_at = :e",
            ExpressionAttributeValues={":e": {"S": ""}},  # an empty index key
        ),
        refused="ValidationException",
    )
    missing = _spent(
        model,
        lambda: client.put_item(TableName="missing", Item=standing),
        refused="ResourceNotFoundException",
    )
    assert (invalid.wru, invalid.per_op, missing.wru, missing.per_op) == (0, {}, 0, {})


def test_model_bills_a_cancelled_transaction_by_the_item_that_failed(aws: AwsFixture) -> None:
    client, model = _priced(aws)
    table = aws.table
    client.put_item(TableName=table, Item={"refund_id": {"S": "big"}, "payload": {"S": "x" * 2500}})
    client.put_item(TableName=table, Item={"refund_id": {"S": "small"}, "payload": {"S": "x" * 5000}})

    def update(refund_id: str, condition: str) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": table,
                "Key": {"refund_id": {"S": refund_id}},
                "UpdateExpression": "SET note = :n",
                "ConditionExpression": condition,
                "ExpressionAttributeValues": {":n": {"S": "n"}},
            }
        }

    spent = _spent(
        model,
        lambda: client.transact_write_items(
            TransactItems=[
                update("small", "attribute_exists(refund_id)"),
                update("big", "attribute_not_exists(payload)"),
            ]
        ),
        refused="TransactionCanceledException",
    )
    # The 2.5 KB item whose condition failed, once (not doubled); not the 5 KB one that passed.
    assert (spent.wru, spent.gsi_wru, spent.per_op) == (3, 0, {"TransactWriteItems refused": 3})


def test_model_prices_the_refund_indexes_as_before(aws: AwsFixture) -> None:
    """The declared table's other indexes are sparse: a refund's writes cost what the layout's
    four indexes alone priced them at."""
    client, model = _priced(aws)
    table, key = aws.table, {"refund_id": {"S": "r1"}}
    pending = {
        **key,
        "payment_id": {"S": "p1"},
        "requested_by": {"S": "alice"},
        "queued_at": {"S": "2026-01-01T00:00:00.000Z"},
        "queued_day": {"S": "2026-01-01"},
    }

    def update(expression: str, values: dict[str, Any]) -> Units:
        return _spent(
            model,
            lambda: client.update_item(
                TableName=table, Key=key, UpdateExpression=expression, ExpressionAttributeValues=values
            ),
        )

    put = _spent(model, lambda: client.put_item(TableName=table, Item=pending))
    assert (put.wru, put.gsi_wru) == (1, 3) == (1, index_writes(None, pending))  # day, payment, requester
    lease = update("SET lease_token = :t, lease_until = :u", {":t": {"S": "t"}, ":u": {"N": "1"}})
    assert (lease.wru, lease.gsi_wru) == (1, 0)
    result = update("SET outcome = :o, attempts = :a", {":o": {"S": "refunded"}, ":a": {"N": "1"}})
    assert (result.wru, result.gsi_wru) == (1, 1)  # enters by_outcome
    again = update("SET attempts = :a", {":a": {"N": "2"}})
    assert (again.wru, again.gsi_wru) == (1, 1)  # by_outcome shows it
    assert list(again.per_op) == ["UpdateItem"]
