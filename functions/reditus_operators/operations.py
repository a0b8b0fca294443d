"""What operators do, shared by the console and the CLI: queue, check, requeue."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reditus_refunds.contract import RefundRequest, new_refund_id, validate
from reditus_refunds.producer import RefundProducer, SendReport
from reditus_refunds.records import REQUEUEABLE, HistoryRecord, Outcome

from .history import HistoryReader


@dataclass(frozen=True)
class PaymentStatus:
    """What the history already says about a payment, before queuing another refund of it."""

    refunded: list[HistoryRecord]
    in_flight: list[HistoryRecord]

    @property
    def needs_force(self) -> bool:
        return bool(self.refunded or self.in_flight)

    def warning(self) -> str | None:
        if self.refunded:
            first = self.refunded[0]
            return f"payment already refunded by {first.refund_id} at {first.completed_at or first.queued_at}"
        if self.in_flight:
            first = self.in_flight[0]
            return f"a refund of this payment is already {first.outcome.value} ({first.refund_id})"
        return None


def payment_status(store: HistoryReader, payment_id: str) -> PaymentStatus:
    page = store.query(payment_id=payment_id, limit=50, since=_epoch())
    refunded = [r for r in page.records if r.outcome is Outcome.REFUNDED]
    in_flight = [r for r in page.records if r.outcome in (Outcome.PENDING, Outcome.RETRYING)]
    return PaymentStatus(refunded, in_flight)


def _epoch() -> Any:
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC)


def build_request(
    payment_id: str,
    *,
    note: str | None = None,
    requested_by: str | None = None,
    source: str = "cli",
    force: bool = False,
    requeue_of: str | None = None,
) -> RefundRequest:
    """Validate operator input with the shared contract (raises ContractError)."""
    return validate(
        {
            "payment_id": payment_id,
            "note": note or None,
            "requested_by": requested_by or None,
            "source": source,
            "force": force,
            "requeue_of": requeue_of,
        },
        default_refund_id=new_refund_id(),
    )


def requeue(
    producer: RefundProducer,
    records: Sequence[HistoryRecord],
    *,
    requested_by: str | None,
    source: str,
) -> tuple[SendReport, list[tuple[HistoryRecord, str]]]:
    """Queue each requeueable record again under a new refund_id that points at the old one."""
    requests: list[RefundRequest] = []
    refused: list[tuple[HistoryRecord, str]] = []
    for record in records:
        if record.outcome not in REQUEUEABLE:
            refused.append((record, f"{record.outcome.value} cannot be requeued"))
            continue
        if not record.payment_id:
            refused.append((record, "it has no valid payment_id"))
            continue
        requests.append(
            build_request(
                record.payment_id,
                note=record.note,
                requested_by=requested_by,
                source=source,
                force=record.force,
                requeue_of=record.refund_id,
            )
        )
    return producer.send_many(requests), refused


def dedupe_against_history(
    store: HistoryReader,
    requests: Iterable[RefundRequest],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, PaymentStatus]:
    """Payment ids among `requests` that already have a 200 or an in-flight request."""
    found: dict[str, PaymentStatus] = {}
    items = list(requests)
    for index, request in enumerate(items):
        status = payment_status(store, request.payment_id)
        if status.needs_force:
            found[request.payment_id] = status
        if progress and index % 50 == 0:
            progress(index + 1, len(items))
    return found


MARKER_BATCH = 100  # BatchGetItem's limit
IN_FLIGHT_DAYS = 14  # SQS keeps a message at most 14 days: older pending records are not in flight


def history_warnings(
    store: HistoryReader,
    payment_ids: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """Why each of these payments needs force, for those the history already has (as PaymentStatus.warning).

    The same answer as one payment_status() per payment, in far fewer reads for a large CSV: the
    payment markers say which payments have a 200 (100 per BatchGetItem), and the outcome index lists
    the refunds still pending or retrying (usually few), whatever their payment.
    """
    from datetime import UTC, datetime, timedelta

    wanted = list(dict.fromkeys(payment_ids))
    wanted_set = set(wanted)
    warnings: dict[str, str] = {}
    since = datetime.now(UTC) - timedelta(days=IN_FLIGHT_DAYS)
    for outcome in (Outcome.PENDING, Outcome.RETRYING):
        cursor: str | None = None
        while True:
            page = store.query(outcome=outcome, since=since, limit=1000, cursor=cursor)
            for record in page.records:
                if record.payment_id in wanted_set and record.payment_id not in warnings:
                    warnings[record.payment_id] = (
                        f"a refund of this payment is already {outcome.value} ({record.refund_id})"
                    )
            cursor = page.cursor
            if cursor is None:
                break
    for start in range(0, len(wanted), MARKER_BATCH):
        chunk = wanted[start : start + MARKER_BATCH]
        for payment_id, marker in store.payment_markers(chunk).items():
            if marker.refunded_by:
                warnings[payment_id] = (
                    f"payment already refunded by {marker.refunded_by} at {marker.refunded_at or '?'}"
                )
        if progress:
            progress(min(start + MARKER_BATCH, len(wanted)), len(wanted))
    return warnings
