"""The bench's own arithmetic and its moto fix (no timings: `make bench` measures, tests do not)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.bulk import BulkFigures
from bench.counting import Units, attr_size, index_writes, item_size
from bench.pricing import PerRefund, per_million
from bench.report import KEYS
from bench.webhooks import WebhookCost, _index_units
from reditus_refunds.layout import INDEXES

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
    # The counter settlement and the leases touch no index; keys-only indexes never change.
    assert index_writes(base, {**base, "counted_outcome": {"S": "refunded"}}) == 0
    assert index_writes(base, {**base, "lease_token": {"S": "t"}, "lease_until": {"N": "1"}}) == 0
    assert index_writes(base, {**base, "attempts": {"N": "1"}}) == 2  # the two list indexes show it
    assert index_writes(base, {**base, "outcome": {"S": "refunded"}}) == 2 + 1  # by_outcome moves


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
    """Issue 15: a webhook's refund is all in: the receiver's records, what the model leaves out
    (its own indexes, refused conditional writes) and the Lambda's part, per event."""
    cost = WebhookCost(
        events=10,
        replays=5,
        receiver=Units(wru=80.0, gsi_wru=0.0, rru=10.0, per_op={"TransactWriteItems (pending)": 20.0}),
        producer=Units(wru=40.0, gsi_wru=40.0, rru=0.0),
        replay=Units(wru=5.0, rru=5.0),
        calls=Counter(),
        replay_calls=Counter(),
        sqs_calls=Counter(),
        lambda_wru=4.0,
        lambda_rru=1.5,
        unpriced={"receiver": Units(wru=10.0, gsi_wru=20.0), "replay": Units(wru=5.0)},
    )
    assert cost.wru_per_webhook_refund == (80 + 40 + 40 + 10 + 20) / 10 + 4.0
    assert cost.rru_per_webhook_refund == 10 / 10 + 1.5
    assert cost.wru_per_webhook_replay == 2.0 and cost.rru_per_webhook_replay == 1.0
    assert ("receiver TransactWriteItems (event received)", 2.0) in cost.by_call()


def test_other_indexes_are_priced_by_what_they_hold() -> None:
    received = {
        "refund_id": {"S": "webhook#stripe#evt_1"},
        "received_day": {"S": "2026-11-30"},
        "received_at": {"S": "2026-11-30T09:00:00.000Z"},
        "decision": {"S": "received"},
        "note": {"S": "not projected"},
    }
    index = ("refund_id", "received_day", "received_at", ("decision",))
    assert _index_units(None, received, *index) == 1  # enters the index
    assert _index_units(received, {**received, "note": {"S": "other"}}, *index) == 0
    assert _index_units(received, {**received, "decision": {"S": "queued"}}, *index) == 1
    assert _index_units(received, {**received, "received_at": {"S": "2026-11-30T10:00:00.000Z"}}, *index) == 2
    assert _index_units(None, {"refund_id": {"S": "webhook_count#stripe#2026-11-30"}}, *index) == 0
