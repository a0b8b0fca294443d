"""Operators' decisions on partial refunds held for review: Submit or Dismiss.

For the console and the CLI (the operators' layer imports this; it imports neither the Lambda
handler nor Powertools). A review holds the very request the receiver would have queued
(refund_id derived from the provider's ids), so Submit queues that request and a later event
completing the refund, or a second Submit, lands on the same refund_id: one refund.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from reditus_refunds.producer import RefundProducer
from reditus_webhooks.events import (
    REVIEW_COMPLETED,
    REVIEW_DISMISSED,
    REVIEW_OPEN,
    REVIEW_SUBMITTED,
    EventStore,
    Review,
)


class ReviewError(ValueError):
    """The review cannot take this decision; the message says why, for people."""


@dataclass(frozen=True)
class Submitted:
    refund_id: str
    message_id: str | None  # None when the refund had been requested meanwhile (nothing sent)


def _open(events: EventStore, refund_id: str) -> Review:
    review = events.get_review(refund_id)
    if review is None:
        raise ReviewError(f"no partial refund awaits review under {refund_id!r}")
    if review.state != REVIEW_OPEN:
        by = f" by {review.decided_by}" if review.decided_by else ""
        raise ReviewError(f"the review of {refund_id} is already {review.state}{by}")
    return review


def submit_reviewed(
    refund_id: str, *, events: EventStore, producer: RefundProducer, operator: str
) -> Submitted:
    """Queue the reviewed refund request (recorded pending, requested_by the operator).

    Sent before the review is closed: if closing fails, the review stays open and a second
    Submit sends the same refund_id again, which the submitter treats as the same refund.
    """
    operator = operator.strip()
    if not operator:
        raise ReviewError("say who submits the refund (operator)")
    review = _open(events, refund_id)
    if events.refund_requested(refund_id):
        events.close_review(refund_id, REVIEW_COMPLETED, operator)
        return Submitted(refund_id, None)
    message_id = producer.send(replace(review.request, requested_by=operator[:256]))
    events.close_review(refund_id, REVIEW_SUBMITTED, operator)
    return Submitted(refund_id, message_id)


def dismiss_reviewed(refund_id: str, *, events: EventStore, operator: str) -> Review:
    """Close the review without queueing anything; a later event for the refund re-opens it."""
    operator = operator.strip()
    if not operator:
        raise ReviewError("say who dismisses the refund (operator)")
    _open(events, refund_id)
    if not events.close_review(refund_id, REVIEW_DISMISSED, operator):
        current = events.get_review(refund_id)
        state = current.state if current else "gone"
        raise ReviewError(f"the review of {refund_id} is already {state}")
    closed = events.get_review(refund_id)
    assert closed is not None
    return closed


__all__ = ["ReviewError", "Submitted", "dismiss_reviewed", "submit_reviewed"]
