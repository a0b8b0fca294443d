"""The bench's own arithmetic and its moto fix (no timings: `make bench` measures, tests do not)."""

from __future__ import annotations

from pathlib import Path

from bench.counting import attr_size, index_writes, item_size
from bench.pricing import PerRefund, per_million
from bench.report import KEYS
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
