"""What operators do, shared by the console and the CLI: queue, check, requeue.

"Which payments need force" is answered here, once, for one payment or a whole CSV alike
(`history_matches`), so that the console and the CLI cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from reditus_refunds.contract import RefundRequest, new_refund_id, validate
from reditus_refunds.producer import RefundProducer, SendReport
from reditus_refunds.records import REQUEUEABLE, HistoryRecord, Outcome

from .history import HistoryReader

MARKER_BATCH = 100  # BatchGetItem's limit
IN_FLIGHT_DAYS = 14  # SQS keeps a message at most 14 days: older pending records are not in flight
IN_FLIGHT_PAGE = 1000


@dataclass(frozen=True)
class HistoryMatch:
    """Why the history says a payment needs force, and which earlier refund says so."""

    payment_id: str
    refund_id: str
    refunded: bool  # True: a 200 is recorded; False: a refund is still pending or retrying
    warning: str


def history_matches(
    store: HistoryReader,
    payment_ids: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, HistoryMatch]:
    """The payments among `payment_ids` that already have a 200 or a refund in flight.

    Payment markers say which payments have a 200 (100 per BatchGetItem); the refunds in flight
    are listed whatever their payment, over the last IN_FLIGHT_DAYS: the retrying ones from the
    outcome index, the pending ones (no outcome attribute, so no outcome-index entry) from the
    Pending filter (HistoryReader.query): 14 day counters, which list their days' pending refunds
    (read by key), and a walk of only a day that has more than its counter lists (a backlog: its
    newest). So one payment and a 100,000-row CSV cost the same reads, bounded by the in-flight
    refunds and the days they sit in, not by the CSV. A refund queued in the last seconds may not
    be counted yet (the counters follow the table's stream) and so not seen. A 200 wins over a
    refund in flight.
    """
    wanted = list(dict.fromkeys(p for p in payment_ids if p))
    wanted_set = set(wanted)
    found: dict[str, HistoryMatch] = {}
    if not wanted:
        return found
    since = store.clock() - timedelta(days=IN_FLIGHT_DAYS)
    for outcome in (Outcome.PENDING, Outcome.RETRYING):
        cursor: str | None = None
        while True:
            page = store.query(outcome=outcome, since=since, limit=IN_FLIGHT_PAGE, cursor=cursor)
            for record in page.records:
                if record.payment_id in wanted_set and record.payment_id not in found:
                    found[record.payment_id] = HistoryMatch(
                        record.payment_id,
                        record.refund_id,
                        refunded=False,
                        warning=f"a refund of this payment is already {outcome.value} ({record.refund_id})",
                    )
            cursor = page.cursor
            if cursor is None:
                break
    for start in range(0, len(wanted), MARKER_BATCH):
        chunk = wanted[start : start + MARKER_BATCH]
        for payment_id, marker in store.payment_markers(chunk).items():
            if marker.refunded_by:
                found[payment_id] = HistoryMatch(
                    payment_id,
                    marker.refunded_by,
                    refunded=True,
                    warning=(
                        f"payment already refunded by {marker.refunded_by} at {marker.refunded_at or '?'}"
                    ),
                )
        if progress:
            progress(min(start + MARKER_BATCH, len(wanted)), len(wanted))
    return found


def history_warnings(
    store: HistoryReader,
    payment_ids: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """payment_id -> why it needs force (history_matches, as text)."""
    return {p: match.warning for p, match in history_matches(store, payment_ids, progress).items()}


def payment_match(store: HistoryReader, payment_id: str) -> HistoryMatch | None:
    """One payment's answer: the same check as for a CSV, never a second implementation."""
    return history_matches(store, [payment_id]).get(payment_id)


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
    into: SendReport | None = None,
) -> tuple[SendReport, list[tuple[HistoryRecord, str]]]:
    """Queue each requeueable record again under a new refund_id that points at the old one
    (`into`: the report to fill in, as RefundProducer.send_many)."""
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
    return producer.send_many(requests, minted_ids=True, into=into), refused  # build_request mints each id
