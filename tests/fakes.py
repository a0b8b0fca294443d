"""In-memory fakes of the submitter's collaborators: the store (same conditional semantics as
HistoryWriter: claim conditions, leases, the payment marker), a queue and Reditus.

They let the orchestration tests run without moto; the moto-backed tests keep the real store honest.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from reditus_refunds.aws_errors import ConditionFailed
from reditus_refunds.contract import RefundRequest
from reditus_refunds.outcomes import ClaimView, PaymentMarker, RefundState, ResultWrite
from reditus_refunds.records import Attempt, Outcome, capped_attempt_log, day_of, iso, utc_now
from reditus_refunds.reditus import ReditusAnswer, Verdict


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


class FakeStore:
    """The ClaimStore protocol over dicts. Every method holds one lock: each is one atomic write."""

    def __init__(self, clock: Callable[[], datetime] = utc_now):
        self.clock = clock
        self.items: dict[str, RefundState] = {}
        self.markers: dict[str, PaymentMarker] = {}
        self.extra: dict[str, dict[str, object]] = {}  # refund_id -> attributes the domain never reads
        self.lock = threading.RLock()

    # ---- ClaimStore --------------------------------------------------------------------------
    def read_for_claim(self, refund_id: str, payment_id: str) -> ClaimView:
        with self.lock:
            return ClaimView(self.items.get(refund_id), self.markers.get(payment_id))

    def get_state(self, refund_id: str) -> RefundState | None:
        with self.lock:
            return self.items.get(refund_id)

    def claim(
        self,
        request: RefundRequest,
        view: ClaimView | None,
        *,
        message_id: str,
        queued_at: str,
        token: str,
        lease_until: datetime,
    ) -> None:
        with self.lock:
            now_ms = _ms(self.clock())
            item = self.items.get(request.refund_id)
            if view is None:  # a fresh request, claimed without reading (as the real store)
                if item is not None and (
                    item.outcome is not Outcome.PENDING
                    or item.lease_until_ms >= now_ms
                    or item.recheck_token is not None
                    or item.payment_id not in (None, request.payment_id)
                ):
                    raise ConditionFailed("not fresh")
            elif view.state is None:
                if item is not None:
                    raise ConditionFailed("exists")
            elif (
                item is None
                or item.outcome is not view.state.outcome
                or item.lease_until_ms >= now_ms
                or item.recheck_token != view.state.recheck_token
                or item.attempts != view.state.attempts
            ):
                raise ConditionFailed("changed")
            marker = self.markers.get(request.payment_id, PaymentMarker())
            if marker.lease_until_ms >= now_ms and marker.lease_holder != request.refund_id:
                raise ConditionFailed("payment leased")
            if not request.force and marker.refunded_by is not None:
                raise ConditionFailed("payment refunded")
            if request.force and marker.refunded_by == request.refund_id:
                raise ConditionFailed("payment refunded by this refund")
            base = item or RefundState(
                refund_id=request.refund_id, outcome=Outcome.PENDING, payment_id=None, queued_at=queued_at
            )
            self.items[request.refund_id] = base._replace(
                payment_id=request.payment_id or None,
                message_id=message_id,
                lease_token=token,
                lease_until_ms=_ms(lease_until),
            )
            self.markers[request.payment_id] = marker._replace(
                lease_holder=request.refund_id, lease_until_ms=_ms(lease_until)
            )
            extra = self.extra.setdefault(request.refund_id, {})
            extra["attempts"] = int(extra.get("attempts", 0) or 0) + 1  # type: ignore[call-overload]

    def finish(self, result: ResultWrite) -> None:
        r = result
        with self.lock:
            item = self.items.get(r.refund_id)
            if r.outcome is Outcome.REFUNDED and r.payment_id is not None:
                # As the real store: the payment's mark first, then the result (lease-checked).
                marker = self.markers.get(r.payment_id, PaymentMarker())
                self.markers[r.payment_id] = marker._replace(
                    lease_until_ms=0, refunded_by=r.refund_id, refunded_at=iso(self.clock())
                )
            if item is None or item.lease_token != r.token:
                raise ConditionFailed("lease lost")
            base = r.previous or item
            log, dropped = capped_attempt_log(base.attempt_log, base.attempts_dropped, r.attempt)
            chain = (
                r.recheck_token
                if r.recheck_token is not None
                else (item.recheck_token if r.keep_recheck else None)
            )
            self.items[r.refund_id] = item._replace(
                outcome=r.outcome,
                lease_token=None,
                lease_until_ms=0,
                recheck_token=chain,
                attempt_log=tuple(log),
                attempts_dropped=dropped,
                attempts=(item.attempts or 0) + 1,
            )
            self.extra.setdefault(r.refund_id, {}).update(detail=r.detail, error_kind=r.error_kind)
            if r.outcome.terminal and r.outcome is not Outcome.REFUNDED and r.payment_id is not None:
                marker = self.markers.get(r.payment_id, PaymentMarker())
                if marker.lease_holder == r.refund_id:  # only our own lease, as the real store
                    self.markers[r.payment_id] = marker._replace(lease_until_ms=0)

    def record_lost_result(self, state: RefundState, marker: PaymentMarker, message_id: str) -> None:
        with self.lock:
            item = self.items.get(state.refund_id)
            if item is None or item.outcome is not state.outcome or item.lease_until_ms >= _ms(self.clock()):
                raise ConditionFailed("changed")
            attempt = Attempt(at=iso(self.clock()), http_status=200, kind="refunded", detail="from the mark")
            log, dropped = capped_attempt_log(item.attempt_log, item.attempts_dropped, attempt)
            self.items[state.refund_id] = item._replace(
                outcome=Outcome.REFUNDED,
                lease_token=None,
                lease_until_ms=0,
                recheck_token=None,
                message_id=message_id,
                attempt_log=tuple(log),
                attempts_dropped=dropped,
                attempts=(item.attempts or 0) + 1,
            )

    def record_without_claim(
        self,
        refund_id: str,
        outcome: Outcome,
        *,
        detail: str,
        message_id: str,
        queued_at: str,
        request: RefundRequest | None = None,
        payment_id: str | None = None,
        duplicate_of: str | None = None,
        body_excerpt: str | None = None,
        seen_outcome: str | None = None,
    ) -> None:
        with self.lock:
            item = self.items.get(refund_id)
            if seen_outcome is None:
                if item is not None:
                    raise ConditionFailed("exists")
            elif (
                item is None or item.outcome.value != seen_outcome or item.lease_until_ms >= _ms(self.clock())
            ):
                raise ConditionFailed("changed")
            payment = payment_id if request is None else request.payment_id
            self.items[refund_id] = RefundState(
                refund_id=refund_id,
                outcome=outcome,
                payment_id=payment or None,  # never an empty index key
                queued_at=item.queued_at if item else queued_at,
                message_id=message_id,
                attempts=((item.attempts or 0) if item else 0) + 1,
            )
            self.extra.setdefault(refund_id, {}).update(detail=detail, duplicate_of=duplicate_of)

    def outcomes(self) -> dict[str, int]:
        return dict(Counter(i.outcome.value for i in self.items.values()))


@dataclass
class QueuedMessage:
    body: str
    visible_at: datetime
    attributes: dict[str, str]
    message_id: str
    receive_count: int = 0


@dataclass
class FakeQueue:
    """The DelayedSender protocol: what was sent, with its delay and attributes."""

    clock: Callable[[], datetime]
    messages: list[QueuedMessage] = field(default_factory=list)
    fail_next: int = 0
    sent: int = 0

    def send(
        self, request: RefundRequest, delay_seconds: int = 0, attributes: Mapping[str, str] | None = None
    ) -> str:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("SQS is unavailable")
        from datetime import timedelta

        self.sent += 1
        message_id = f"sent-{self.sent}"
        self.messages.append(
            QueuedMessage(
                request.to_body(),
                self.clock() + timedelta(seconds=delay_seconds),
                dict(attributes or {}),
                message_id,
            )
        )
        return message_id


@dataclass
class FakeReditus:
    """Answers by payment id (a list is consumed, its last answer repeats); records each call."""

    answers: dict[str, list[ReditusAnswer]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    call_times: list[tuple[str, datetime]] = field(default_factory=list)
    clock: Callable[[], datetime] = utc_now
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refund(self, payment_id: str, deadline: float) -> ReditusAnswer:
        with self.lock:
            self.calls[payment_id] += 1
            self.call_times.append((payment_id, self.clock()))
            queue = self.answers.get(payment_id)
            if queue:
                return queue.pop(0) if len(queue) > 1 else queue[0]
        return ReditusAnswer(Verdict.REFUNDED, 200, "ok", 5, 1)


def answer(verdict: Verdict, status: int | None, detail: str = "") -> ReditusAnswer:
    return ReditusAnswer(verdict, status, detail, 7, 1)


class Clock:
    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now


__all__ = [
    "Clock",
    "FakeQueue",
    "FakeReditus",
    "FakeStore",
    "QueuedMessage",
    "answer",
    "day_of",
    "iso",
]
