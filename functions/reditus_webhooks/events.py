"""The receiver's records in the history table: one per received event, one per partial refund
awaiting review, and per-provider day counts.

They share the refunds' table under prefixed keys (refund ids cannot contain '#', so they never
collide) and carry none of the attributes that key the refunds' indexes (``outcome``,
``queued_at``, ``queued_day``, ``payment_id``): an event record never shows up in the refunds'
history pages. That is why the refund and payment an event is about are stored as
``target_refund_id`` / ``target_payment_id``; ``WebhookEvent`` gives them their plain names.

What an event record holds is chosen field by field from the decision, never copied from the
payload, so no e-mail, name, address or metadata of the provider's event can reach it.

Free of Powertools and of the Lambda handler: the operators' layer imports it (and ``review``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from reditus_refunds.aws_errors import ConditionFailed
from reditus_refunds.contract import RefundRequest
from reditus_refunds.layout import HASH_KEY, item_key, to_attr, to_item
from reditus_refunds.records import day_of, iso, utc_now
from reditus_refunds.table import HistoryTable
from reditus_webhooks.decide import source_event_id

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any

EVENT_PREFIX = "webhook#"
REVIEW_PREFIX = "webhook_review#"
COUNT_PREFIX = "webhook_count#"
SOURCE_PREFIX = "webhook_source#"
RECORD_TYPE = "webhook_event"
# Two sparse indexes of the history table (template.yaml): events by day (HASH received_day,
# RANGE received_at) and open reviews (HASH review_open = the provider, RANGE opened_at). Only
# these records carry the attributes, so refunds cost these indexes nothing.
EVENT_DAY_INDEX = "by_webhook_day"
EVENT_DAY_ATTRIBUTE = "received_day"
EVENT_TIME_ATTRIBUTE = "received_at"
OPEN_REVIEW_INDEX = "by_open_review"
REVIEW_OPEN_ATTRIBUTE = "review_open"
REVIEW_TIME_ATTRIBUTE = "opened_at"

# An event is recorded ``received`` before anything is sent; what it ended in replaces it.
RECEIVED = "received"
QUEUED = "queued"
NEEDS_REVIEW = "needs_review"
IGNORED = "ignored"
UNMAPPABLE = "unmappable"
UNREADABLE = "unreadable"  # authenticated, but not an event this provider sends
DUPLICATE_REFUND = "duplicate_refund"  # the refund was already requested by another event
DECISIONS = (RECEIVED, QUEUED, NEEDS_REVIEW, IGNORED, UNMAPPABLE, UNREADABLE, DUPLICATE_REFUND)
# Counted only (no event record): a replayed event, and requests that failed authentication
# (their body cannot be trusted to name an event, so it must not create or block a record).
DUPLICATE = "duplicate"
BAD_SIGNATURE = "bad_signature"
COUNTED = (*DECISIONS[1:], DUPLICATE, BAD_SIGNATURE)

REVIEW_OPEN = "open"
REVIEW_DISMISSED = "dismissed"
REVIEW_SUBMITTED = "submitted"  # an operator chose Submit
REVIEW_COMPLETED = "completed"  # a later event completed the refund and queued it
REVIEW_STATES = (REVIEW_OPEN, REVIEW_DISMISSED, REVIEW_SUBMITTED, REVIEW_COMPLETED)

MAX_REASON = 500


def event_key(provider: str, event_id: str, index: int = 0) -> str:
    """The key of an event's record; ``index`` > 0 for the further signals of one event."""
    return f"{EVENT_PREFIX}{provider}#{event_id}" + (f"#{index}" if index else "")


def review_key(refund_id: str) -> str:
    return REVIEW_PREFIX + refund_id


def count_key(provider: str, day: str) -> str:
    return f"{COUNT_PREFIX}{provider}#{day}"


def source_key(provider: str) -> str:
    return SOURCE_PREFIX + provider


@dataclass(frozen=True)
class WebhookEvent:
    """One received event as recorded (the shape of ``reditus-refunds webhooks --json``)."""

    provider: str
    event_id: str
    type: str
    received_at: str
    decision: str
    refund_id: str | None = None
    payment_id: str | None = None
    reason: str = ""
    refund_key: str | None = None
    updated_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "event_id": self.event_id,
            "type": self.type,
            "received_at": self.received_at,
            "decision": self.decision,
            "refund_id": self.refund_id,
            "payment_id": self.payment_id,
            "reason": self.reason,
            "refund_key": self.refund_key,
            "updated_at": self.updated_at,
        }


def event_from_item(item: Mapping[str, Any]) -> WebhookEvent:
    return WebhookEvent(
        provider=str(item.get("provider", "")),
        event_id=str(item.get("event_id", "")),
        type=str(item.get("event_type", "")),
        received_at=str(item.get("received_at", "")),
        decision=str(item.get("decision", "")),
        refund_id=item.get("target_refund_id"),
        payment_id=item.get("target_payment_id"),
        reason=str(item.get("reason", "")),
        refund_key=item.get("refund_key"),
        updated_at=item.get("updated_at"),
    )


@dataclass(frozen=True)
class Review:
    """A partial refund awaiting an operator's Submit or Dismiss, with the request Submit sends."""

    refund_id: str
    provider: str
    state: str
    request: RefundRequest
    reason: str
    event_id: str
    opened_at: str
    decided_by: str | None = None
    decided_at: str | None = None


def review_from_item(item: Mapping[str, Any]) -> Review:
    event_id = str(item.get("event_id", ""))
    request = RefundRequest(
        payment_id=str(item["target_payment_id"]),
        refund_id=str(item["target_refund_id"]),
        requested_by=item.get("requested_by"),
        note=item.get("note"),
        source=item.get("source"),
        # The review's event (the latest that opened or refreshed it) is the request's source event,
        # as decide() made it: no attribute of its own, so the open-reviews index needs none.
        source_event_id=source_event_id(event_id) if event_id else None,
    )
    return Review(
        refund_id=request.refund_id,
        provider=str(item.get("provider", "")),
        state=str(item.get("review_state", "")),
        request=request,
        reason=str(item.get("reason", "")),
        event_id=event_id,
        opened_at=str(item.get("opened_at", "")),
        decided_by=item.get("decided_by"),
        decided_at=item.get("decided_at"),
    )


@dataclass(frozen=True)
class EventFacts:
    """What is recorded about one event (chosen fields only: never the payload)."""

    provider: str
    event_id: str
    event_type: str
    key: str
    refund_id: str | None = None
    payment_id: str | None = None
    refund_key: str | None = None
    reason: str = ""


class EventStore:
    """Conditional writes of the receiver's records; every AWS failure comes out as StoreError."""

    def __init__(self, table_name: str, client: DynamoDBClient, clock: Callable[[], datetime] = utc_now):
        self.table = HistoryTable(table_name, client)
        self.clock = clock

    # ---- events ---------------------------------------------------------------------------
    def _event_data(self, facts: EventFacts, decision: str, now: str) -> dict[str, Any]:
        return {
            HASH_KEY: facts.key,
            "record_type": RECORD_TYPE,
            "provider": facts.provider,
            "event_id": facts.event_id,
            "event_type": facts.event_type[:200],
            "received_at": now,
            EVENT_DAY_ATTRIBUTE: day_of(now),
            "decision": decision,
            "reason": facts.reason[:MAX_REASON],
            "target_refund_id": facts.refund_id,
            "target_payment_id": facts.payment_id,
            "refund_key": facts.refund_key,
        }

    def begin(self, facts: EventFacts) -> WebhookEvent | None:
        """Record the event as ``received``; None if new, else the record already there."""
        now = iso(self.clock())
        try:
            # A conditional single-item put: 1 write unit, where a transaction of one costs 2.
            self.table.put(
                {
                    "TableName": self.table.table_name,
                    "Item": to_item(self._event_data(facts, RECEIVED, now)),
                    "ConditionExpression": "attribute_not_exists(refund_id)",
                }
            )
        except ConditionFailed:
            return self.get_event(facts.key) or WebhookEvent(
                facts.provider, facts.event_id, facts.event_type, now, RECEIVED
            )
        return None

    def record(self, facts: EventFacts, decision: str) -> WebhookEvent | None:
        """Record a final decision at once (nothing to send); None if new, else the record there."""
        now = iso(self.clock())
        put = {
            "Put": {
                "TableName": self.table.table_name,
                "Item": to_item(self._event_data(facts, decision, now)),
                "ConditionExpression": "attribute_not_exists(refund_id)",
            }
        }
        try:
            self.table.transact([put, *self._tallies(facts, decision, now)])
        except ConditionFailed:
            return self.get_event(facts.key) or WebhookEvent(
                facts.provider, facts.event_id, facts.event_type, now, decision
            )
        return None

    def finish(self, facts: EventFacts, decision: str) -> bool:
        """Turn a ``received`` record into its final decision and count it, in one transaction.

        False if another delivery of the event finished it meanwhile (then nothing is counted twice).
        """
        now = iso(self.clock())
        values: dict[str, Any] = {":decision": decision, ":received": RECEIVED, ":now": now}
        sets = ["decision = :decision", "updated_at = :now"]
        for name, value in (
            ("reason", facts.reason[:MAX_REASON]),
            ("target_refund_id", facts.refund_id),
            ("target_payment_id", facts.payment_id),
        ):
            if value:
                sets.append(f"{name} = :{name}")
                values[f":{name}"] = value
        update = {
            "Update": {
                "TableName": self.table.table_name,
                "Key": item_key(facts.key),
                "UpdateExpression": "SET " + ", ".join(sets),
                "ConditionExpression": "decision = :received",
                "ExpressionAttributeValues": {k: to_attr(v) for k, v in values.items()},
            }
        }
        try:
            self.table.transact([update, *self._tallies(facts, decision, now)])
        except ConditionFailed:
            return False
        return True

    def get_event(self, key: str) -> WebhookEvent | None:
        item = self.table.get_item(key, consistent=True)
        return None if item is None else event_from_item(item)

    def _tallies(self, facts: EventFacts, decision: str, now: str) -> list[dict[str, Any]]:
        """The day count and the provider's "last event", written with the decision."""
        return [
            self._count_action(facts.provider, decision, now),
            {
                "Update": {
                    "TableName": self.table.table_name,
                    "Key": item_key(source_key(facts.provider)),
                    "UpdateExpression": "SET last_received_at = :now, last_event_id = :id, "
                    "last_event_type = :type, last_decision = :decision",
                    "ExpressionAttributeValues": {
                        ":now": to_attr(now),
                        ":id": to_attr(facts.event_id),
                        ":type": to_attr(facts.event_type[:200]),
                        ":decision": to_attr(decision),
                    },
                }
            },
        ]

    def _count_action(self, provider: str, what: str, now: str) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table.table_name,
                "Key": item_key(count_key(provider, day_of(now))),
                "UpdateExpression": "SET provider = :provider, count_day = :day ADD #what :one",
                "ExpressionAttributeNames": {"#what": what},
                "ExpressionAttributeValues": {
                    ":provider": to_attr(provider),
                    ":day": to_attr(day_of(now)),
                    ":one": to_attr(1),
                },
            }
        }

    def count(self, provider: str, what: str) -> None:
        """Count a request that leaves no event record (a replay, a bad signature)."""
        self.table.update(self._count_action(provider, what, iso(self.clock()))["Update"])

    def counts(self, provider: str, days: list[str]) -> dict[str, dict[str, int]]:
        """Counts by decision, per day (UTC, e.g. "2026-11-30"), for the console."""
        found = self.table.batch_get([item_key(count_key(provider, day)) for day in days])
        out: dict[str, dict[str, int]] = {}
        for day in days:
            item = found.get(count_key(provider, day), {})
            out[day] = {name: int(item.get(name, 0)) for name in COUNTED}
        return out

    def source(self, provider: str) -> dict[str, Any] | None:
        """The provider's last event (received at, id, type, decision), or None if none yet."""
        item = self.table.get_item(source_key(provider), consistent=False)
        if item is None:
            return None
        return {k: item[k] for k in ("last_received_at", "last_event_id", "last_event_type", "last_decision")}

    # ---- refunds --------------------------------------------------------------------------
    def refund_requested(self, refund_id: str) -> bool:
        """Whether a refund request with this refund_id is in the history (any outcome)."""
        return self.table.get_item(refund_id, consistent=True) is not None

    def requested_and_review_open(self, refund_id: str) -> tuple[bool, bool]:
        """Whether the refund is in the history, and whether a review of it is open: one consistent
        BatchGetItem of both items (2 read units), so that a refund with no open review (nearly every
        one) is not sent a review-closing write that would be refused and still billed (1 write unit,
        five times a read unit's price)."""
        found = self.table.batch_get([item_key(refund_id), item_key(review_key(refund_id))], consistent=True)
        review = found.get(review_key(refund_id))
        return refund_id in found, review is not None and review.get("review_state") == REVIEW_OPEN

    # ---- reviews --------------------------------------------------------------------------
    def open_review(self, facts: EventFacts, request: RefundRequest) -> bool:
        """Record (or refresh, or re-open after a Dismiss) the review of a partial refund.

        False if the refund was already submitted or completed: nothing is left to review.
        """
        now = iso(self.clock())
        data = {
            "record_type": "webhook_review",
            "provider": facts.provider,
            "event_id": facts.event_id,
            "event_type": facts.event_type[:200],
            "reason": facts.reason[:MAX_REASON],
            "target_refund_id": request.refund_id,
            "target_payment_id": request.payment_id,
            "requested_by": request.requested_by,
            "note": request.note,
            "source": request.source,
            "review_state": REVIEW_OPEN,
            REVIEW_OPEN_ATTRIBUTE: facts.provider,
            "updated_at": now,
        }
        present = {k: v for k, v in data.items() if v is not None}
        sets = [f"#{k} = :{k}" for k in present] + ["opened_at = if_not_exists(opened_at, :now)"]
        try:
            self.table.update(
                {
                    "TableName": self.table.table_name,
                    "Key": item_key(review_key(request.refund_id)),
                    "UpdateExpression": "SET " + ", ".join(sets) + " REMOVE decided_by, decided_at",
                    "ConditionExpression": (
                        "attribute_not_exists(refund_id) OR review_state IN (:open, :dismissed)"
                    ),
                    "ExpressionAttributeNames": {f"#{k}": k for k in present},
                    "ExpressionAttributeValues": {
                        **{f":{k}": to_attr(v) for k, v in present.items()},
                        ":now": to_attr(now),
                        ":open": to_attr(REVIEW_OPEN),
                        ":dismissed": to_attr(REVIEW_DISMISSED),
                    },
                }
            )
        except ConditionFailed:
            return False
        return True

    def close_review(self, refund_id: str, state: str, by: str) -> bool:
        """Close an open review (submitted, dismissed, completed); False if it was not open."""
        if state not in REVIEW_STATES or state == REVIEW_OPEN:
            raise ValueError(f"not a closing review state: {state!r}")
        try:
            self.table.update(
                {
                    "TableName": self.table.table_name,
                    "Key": item_key(review_key(refund_id)),
                    # Removing review_open takes the review out of the open-reviews index.
                    "UpdateExpression": f"SET review_state = :state, decided_by = :by, decided_at = :now "
                    f"REMOVE {REVIEW_OPEN_ATTRIBUTE}",
                    "ConditionExpression": "review_state = :open",
                    "ExpressionAttributeValues": {
                        ":state": to_attr(state),
                        ":by": to_attr(by[:256]),
                        ":now": to_attr(iso(self.clock())),
                        ":open": to_attr(REVIEW_OPEN),
                    },
                }
            )
        except ConditionFailed:
            return False
        return True

    def get_review(self, refund_id: str) -> Review | None:
        item = self.table.get_item(review_key(refund_id), consistent=True)
        return None if item is None else review_from_item(item)

    def raw(self, key: str) -> dict[str, Any] | None:
        """An item as stored (tests and support)."""
        return self.table.get_item(key, consistent=True)


__all__ = [
    "DECISIONS",
    "EventFacts",
    "EventStore",
    "Review",
    "WebhookEvent",
    "event_from_item",
    "event_key",
    "review_key",
]
