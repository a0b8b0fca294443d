"""Test data for the console: realistic history items and their day counters, written in bulk.

The items look like what the submitter writes (outcome, counted_outcome, attempt log, the index
attributes); the counters hold exactly the items' counts, as `HistoryStore.settle` keeps them.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from reditus_refunds.layout import COUNTER_PREFIX, HASH_KEY, PAYMENT_MARKER_PREFIX, to_item
from reditus_refunds.records import Outcome, iso

# Roughly what a month of refunds looks like.
OUTCOME_WEIGHTS = {
    Outcome.REFUNDED: 80,
    Outcome.NOT_FOUND: 6,
    Outcome.REJECTED: 3,
    Outcome.INVALID: 2,
    Outcome.DUPLICATE: 2,
    Outcome.FAILED: 1,
    Outcome.DEAD_LETTERED: 1,
    Outcome.PENDING: 4,
    Outcome.RETRYING: 1,
}
STATUS = {
    Outcome.REFUNDED: (200, '{"message": "ok"}'),
    Outcome.NOT_FOUND: (404, "Payment not found"),
    Outcome.REJECTED: (400, "Validation failed: payment_id is invalid"),
    Outcome.FAILED: (409, "unexpected answer 409"),
    Outcome.DEAD_LETTERED: (503, "retries used up: 503 Service Unavailable"),
}
OPERATORS = ("ana@example.com", "ben@example.com", "billing-webhook", "csv")


@dataclass
class Seeded:
    """What was written: per UTC day, per outcome."""

    per_day: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    refund_ids: list[str] = field(default_factory=list)

    @property
    def items(self) -> int:
        return sum(sum(c.values()) for c in self.per_day.values())

    def total(self, outcome: Outcome) -> int:
        return sum(c[outcome.value] for c in self.per_day.values())


def history_item(
    queued: datetime, outcome: Outcome, rng: random.Random, payment_id: str | None = None
) -> dict[str, Any]:
    refund_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    queued_at = iso(queued)
    data: dict[str, Any] = {
        HASH_KEY: refund_id,
        "payment_id": payment_id or f"pay_{rng.randrange(10**9):09d}",
        "outcome": outcome.value,
        "counted_outcome": outcome.value,
        "queued_at": queued_at,
        "queued_day": queued_at[:10],
        "requested_by": rng.choice(OPERATORS),
        "note": rng.choice([None, "customer refund", "chargeback", "refunded by support"]),
        "source": rng.choice(["console", "csv", "api", "cli"]),
        "message_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "attempts": 0,
    }
    if outcome in STATUS or outcome in (Outcome.INVALID, Outcome.DUPLICATE, Outcome.RETRYING):
        done = queued + timedelta(milliseconds=rng.randrange(300, 4000))
        status, detail = STATUS.get(outcome, (None, outcome.value))
        attempt: dict[str, Any] = {"at": iso(done), "kind": outcome.value, "detail": detail}
        if status is not None:
            attempt |= {"http_status": status, "latency_ms": rng.randrange(40, 900)}
        data |= {
            "attempts": 1,
            "last_attempt_at": iso(done),
            "detail": detail,
            "attempt_log": [attempt],
        }
        if status is not None:
            data["http_status"] = status
            data["latency_ms"] = attempt["latency_ms"]
        if outcome.terminal:
            data["completed_at"] = iso(done)
    return to_item(data)


def marker_item(payment_id: str, refund_id: str, refunded_at: str) -> dict[str, Any]:
    """The payment marker the submitter leaves when Reditus answered 200."""
    return to_item(
        {HASH_KEY: PAYMENT_MARKER_PREFIX + payment_id, "refunded_by": refund_id, "refunded_at": refunded_at}
    )


def counter_item(day: str, counts: Counter[str]) -> dict[str, Any]:
    return to_item({HASH_KEY: COUNTER_PREFIX + day, "counter_day": day, **dict(counts)})


def seed_history(
    dynamodb: Any,
    table: str,
    *,
    count: int,
    days: int,
    now: datetime,
    seed: int = 7,
    payment_ids: list[str] | None = None,
) -> Seeded:
    """`count` items spread over the `days` UTC days up to `now`, then one counter item per day."""
    rng = random.Random(seed)
    outcomes = list(OUTCOME_WEIGHTS)
    weights = list(OUTCOME_WEIGHTS.values())
    seeded = Seeded()
    start = now - timedelta(days=days) + timedelta(seconds=1)
    span = (now - start).total_seconds()
    batch: list[dict[str, Any]] = []
    for index in range(count):
        queued = start + timedelta(seconds=rng.random() * span)
        outcome = rng.choices(outcomes, weights)[0]
        payment = payment_ids[index] if payment_ids and index < len(payment_ids) else None
        item = history_item(queued, outcome, rng, payment)
        seeded.per_day[item["queued_day"]["S"]][outcome.value] += 1
        seeded.refund_ids.append(item[HASH_KEY]["S"])
        batch.append(item)
        if len(batch) == 25:
            _write(dynamodb, table, batch)
            batch = []
    if batch:
        _write(dynamodb, table, batch)
    counters = [counter_item(day, counts) for day, counts in seeded.per_day.items()]
    for start_index in range(0, len(counters), 25):
        _write(dynamodb, table, counters[start_index : start_index + 25])
    return seeded


def _write(dynamodb: Any, table: str, items: list[dict[str, Any]]) -> None:
    request = {table: [{"PutRequest": {"Item": item}} for item in items]}
    while request:
        response = dynamodb.batch_write_item(RequestItems=request)
        request = response.get("UnprocessedItems") or {}
