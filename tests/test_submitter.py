"""Domain logic against a moto-backed store and a fake Reditus (a fake, not a mock)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from reditus_operators.history import HistoryReader

from reditus_refunds.aws_errors import StoreError
from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer
from reditus_refunds.records import Outcome, iso, utc_now
from reditus_refunds.reditus import ReditusAnswer, Verdict
from reditus_refunds.submitter import InboundMessage, Ledger, RefundSubmitter, RetryLater, SubmitterConfig


@dataclass
class FakeReditus:
    """Answers by payment id; counts calls per payment."""

    answers: dict[str, list[ReditusAnswer]] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refund(self, payment_id: str, deadline: float) -> ReditusAnswer:
        with self.lock:
            self.calls[payment_id] += 1
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


@dataclass
class Rig:
    store: HistoryWriter
    history: HistoryReader
    reditus: FakeReditus
    submitter: RefundSubmitter
    producer: RefundProducer
    clock: Clock
    queue_url: str
    sqs: object

    def deliver(
        self,
        body: str | dict | None,
        message_id: str = "m-1",
        receive_count: int = 1,
        sent_at: str | None = None,
    ) -> Outcome:
        text = json.dumps(body) if isinstance(body, dict) else body
        ledger = Ledger()
        try:
            return self.submitter.process(
                InboundMessage(message_id, text, receive_count, sent_at or iso(self.clock())),
                time.monotonic() + 30,
                ledger,
            )
        finally:
            self.store.settle(ledger.drain())


@pytest.fixture
def rig(aws) -> Rig:
    clock = Clock()
    store = HistoryWriter(aws.table, aws.dynamodb, clock=clock)
    reditus = FakeReditus()
    producer = RefundProducer(aws.sqs, aws.queue_url)
    submitter = RefundSubmitter(
        store,
        reditus,
        producer,
        SubmitterConfig(not_found_grace_seconds=600, not_found_recheck_delay_seconds=60, max_receive_count=5),
        clock=clock,
    )
    return Rig(
        store,
        HistoryReader(aws.table, aws.dynamodb),
        reditus,
        submitter,
        producer,
        clock,
        aws.queue_url,
        aws.sqs,
    )


def counters(store: HistoryReader) -> dict[str, int]:
    today = utc_now().date()
    totals: Counter = Counter()
    for day in store.daily_counts(today - timedelta(days=2), today + timedelta(days=2)).values():
        totals.update(day)
    return {k: v for k, v in totals.items() if v}


def test_refunded(rig: Rig) -> None:
    assert rig.deliver({"payment_id": "pay_1", "refund_id": "r1", "requested_by": "ops"}) is Outcome.REFUNDED
    record = rig.history.get("r1")
    assert record is not None
    assert (record.outcome, record.http_status, record.attempts, record.requested_by) == (
        Outcome.REFUNDED,
        200,
        1,
        "ops",
    )
    assert record.completed_at and record.attempt_log[0].http_status == 200
    assert counters(rig.history) == {"refunded": 1}


def test_rejected_records_the_details(rig: Rig) -> None:
    rig.reditus.answers["bad"] = [answer(Verdict.REJECTED, 400, "Validation failed: payment_id is invalid")]
    assert rig.deliver({"payment_id": "bad", "refund_id": "r2"}) is Outcome.REJECTED
    record = rig.history.get("r2")
    assert (
        record and record.detail == "Validation failed: payment_id is invalid" and record.http_status == 400
    )


def test_not_found_within_grace_is_rechecked_later_then_found(rig: Rig) -> None:
    rig.reditus.answers["late"] = [
        answer(Verdict.NOT_FOUND, 404, "Payment not found"),
        answer(Verdict.REFUNDED, 200, "ok"),
    ]
    assert rig.deliver({"payment_id": "late", "refund_id": "r3"}) is Outcome.RETRYING
    record = rig.history.get("r3")
    assert record and record.outcome is Outcome.RETRYING and record.error_kind == "awaiting_payment"
    # The re-check is a delayed copy of the request on the queue, not a busy retry.
    messages = rig.sqs.receive_message(
        QueueUrl=rig.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
    ).get("Messages", [])
    assert messages == []  # still delayed
    rig.clock.now += timedelta(seconds=61)
    assert (
        rig.deliver({"payment_id": "late", "refund_id": "r3"}, message_id="m-2", sent_at=iso(rig.clock.now))
        is Outcome.REFUNDED
    )
    record = rig.history.get("r3")
    assert record and record.attempts == 2 and record.outcome is Outcome.REFUNDED
    assert counters(rig.history) == {"refunded": 1}


def test_not_found_after_grace_is_terminal(rig: Rig) -> None:
    rig.reditus.answers["gone"] = [answer(Verdict.NOT_FOUND, 404, "Payment not found")]
    sent = iso(rig.clock.now - timedelta(seconds=601))
    assert rig.deliver({"payment_id": "gone", "refund_id": "r4"}, sent_at=sent) is Outcome.NOT_FOUND
    assert counters(rig.history) == {"not_found": 1}


def test_grace_zero_turns_the_window_off(rig: Rig) -> None:
    rig.submitter.config = SubmitterConfig(not_found_grace_seconds=0)
    rig.reditus.answers["gone"] = [answer(Verdict.NOT_FOUND, 404, "Payment not found")]
    assert rig.deliver({"payment_id": "gone", "refund_id": "r5"}) is Outcome.NOT_FOUND


@pytest.mark.parametrize(
    ("verdict", "status", "kind"),
    [(Verdict.TRANSIENT, 503, "transient"), (Verdict.AUTH_ERROR, 401, "auth_error")],
)
def test_retryable_failures_raise_and_dead_letter_on_the_last_receive(
    rig: Rig, verdict, status, kind
) -> None:
    rig.reditus.answers["p"] = [answer(verdict, status, "nope")]
    with pytest.raises(RetryLater):
        rig.deliver({"payment_id": "p", "refund_id": "r6"})
    record = rig.history.get("r6")
    assert record and record.outcome is Outcome.RETRYING and record.error_kind == kind
    assert counters(rig.history) == {"retrying": 1}
    with pytest.raises(RetryLater):
        rig.deliver({"payment_id": "p", "refund_id": "r6"}, receive_count=5)
    record = rig.history.get("r6")
    assert record and record.outcome is Outcome.DEAD_LETTERED and record.attempts == 2
    assert counters(rig.history) == {"dead_lettered": 1}
    # Redriven from the dead-letter queue, it may succeed after all.
    rig.reditus.answers["p"] = [answer(Verdict.REFUNDED, 200, "ok")]
    assert rig.deliver({"payment_id": "p", "refund_id": "r6"}) is Outcome.REFUNDED
    assert counters(rig.history) == {"refunded": 1}


def test_duplicate_delivery_does_not_call_reditus_again(rig: Rig) -> None:
    body = {"payment_id": "pay_d", "refund_id": "r7"}
    assert rig.deliver(body) is Outcome.REFUNDED
    assert rig.deliver(body, message_id="m-again") is Outcome.REFUNDED
    assert rig.reditus.calls["pay_d"] == 1
    assert counters(rig.history) == {"refunded": 1}


def test_already_refunded_payment_is_a_duplicate_unless_forced(rig: Rig) -> None:
    assert rig.deliver({"payment_id": "pay_x", "refund_id": "first"}) is Outcome.REFUNDED
    assert rig.deliver({"payment_id": "pay_x", "refund_id": "second"}, message_id="m-2") is Outcome.DUPLICATE
    dup = rig.history.get("second")
    assert dup and dup.duplicate_of == "first" and dup.outcome is Outcome.DUPLICATE
    assert rig.reditus.calls["pay_x"] == 1
    assert (
        rig.deliver({"payment_id": "pay_x", "refund_id": "third", "force": True}, message_id="m-3")
        is Outcome.REFUNDED
    )
    assert rig.reditus.calls["pay_x"] == 2
    assert counters(rig.history) == {"refunded": 2, "duplicate": 1}


def test_concurrent_deliveries_never_both_call_reditus(rig: Rig) -> None:
    gate = threading.Event()
    release = threading.Event()
    original = rig.reditus.refund

    def slow_refund(payment_id: str, deadline: float) -> ReditusAnswer:
        gate.set()
        release.wait(10)
        return original(payment_id, deadline)

    rig.reditus.refund = slow_refund  # type: ignore[method-assign]
    results: list[object] = []

    def first() -> None:
        results.append(rig.deliver({"payment_id": "pay_c", "refund_id": "rc"}))

    thread = threading.Thread(target=first)
    thread.start()
    assert gate.wait(10)
    with pytest.raises(RetryLater):
        rig.deliver({"payment_id": "pay_c", "refund_id": "rc"}, message_id="m-dup")
    with pytest.raises(RetryLater):  # another refund_id for the same payment waits too
        rig.deliver({"payment_id": "pay_c", "refund_id": "rc-other"}, message_id="m-other")
    release.set()
    thread.join(10)
    assert results == [Outcome.REFUNDED]
    assert rig.reditus.calls["pay_c"] == 1


def test_expired_lease_can_be_taken_over(rig: Rig) -> None:
    body = {"payment_id": "pay_l", "refund_id": "rl"}
    request = RefundRequest(payment_id="pay_l", refund_id="rl")
    view = rig.store.read_for_claim("rl", "pay_l")
    # A delivery that crashed after claiming leaves a lease behind.
    rig.store.claim(
        request,
        view,
        message_id="m-crashed",
        queued_at=iso(rig.clock.now),
        token="t",
        lease_until=rig.clock.now + timedelta(seconds=30),
    )
    with pytest.raises(RetryLater):
        rig.deliver(body, message_id="m-next")
    rig.clock.now += timedelta(seconds=31)
    assert rig.deliver(body, message_id="m-next") is Outcome.REFUNDED
    assert rig.history.get("rl").attempts == 2  # type: ignore[union-attr]


def test_pending_record_from_producer_is_completed_and_never_overwrites(rig: Rig, aws) -> None:
    producer = RefundProducer(aws.sqs, aws.queue_url, rig.store, clock=rig.clock)
    request = RefundRequest(payment_id="pay_p", refund_id="rp", requested_by="ops@example.com", note="n")
    producer.send(request)
    assert rig.history.get("rp").outcome is Outcome.PENDING  # type: ignore[union-attr]
    assert counters(rig.history) == {"pending": 1}
    assert rig.deliver(json.loads(request.to_body())) is Outcome.REFUNDED
    # A late pending write (the producer raced the Lambda) changes nothing.
    rig.store.record_pending([(request, "m-1", iso(rig.clock.now))])
    record = rig.history.get("rp")
    assert record and record.outcome is Outcome.REFUNDED and record.requested_by == "ops@example.com"
    assert counters(rig.history) == {"refunded": 1}


def test_refund_id_reused_for_another_payment_is_invalid_under_the_message_id(rig: Rig) -> None:
    assert rig.deliver({"payment_id": "pay_a", "refund_id": "same"}) is Outcome.REFUNDED
    assert rig.deliver({"payment_id": "pay_b", "refund_id": "same"}, message_id="m-b") is Outcome.INVALID
    record = rig.history.get("m-b")
    assert record and "already used for another payment" in record.detail
    assert rig.reditus.calls["pay_b"] == 0


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "",
        None,
        "[]",
        "42",
        "null",
        '{"payment_id": ""}',
        '{"payment_id": "p", "amount": 1}',
        '{"payment_id": "' + "x" * 300 + '"}',
        '{"payment_id": "a\\u0000b"}',
    ],
)
def test_invalid_messages_are_recorded_and_never_sent(rig: Rig, body) -> None:
    assert rig.deliver(body, message_id="m-bad") is Outcome.INVALID
    record = rig.history.get("m-bad")
    assert record and record.outcome is Outcome.INVALID and record.detail
    assert sum(rig.reditus.calls.values()) == 0
    # A redelivery of the same message records nothing new.
    assert rig.deliver(body, message_id="m-bad") is Outcome.INVALID
    assert counters(rig.history) == {"invalid": 1}


class FlakyFinishStore(HistoryWriter):
    """The store fails the result write a few times: before applying it, or after (answer lost)."""

    def __init__(self, *args, failures: int, applied: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures
        self.applied = applied

    def finish(self, *args, **kwargs) -> None:
        if self.failures:
            self.failures -= 1
            if self.applied:
                super().finish(*args, **kwargs)
            raise StoreError("DynamoDB answered InternalServerError")
        super().finish(*args, **kwargs)


@pytest.mark.parametrize("applied", [False, True])
def test_a_failing_result_write_is_retried_not_resubmitted(rig: Rig, aws, applied: bool) -> None:
    store = FlakyFinishStore(aws.table, aws.dynamodb, clock=rig.clock, failures=3, applied=applied)
    rig.submitter.store = store
    rig.store = store
    assert rig.deliver({"payment_id": "pay_f", "refund_id": "rf"}) is Outcome.REFUNDED
    assert rig.reditus.calls["pay_f"] == 1
    record = rig.history.get("rf")
    assert record and record.outcome is Outcome.REFUNDED
    # Not applied: every failure was waited out. Applied: the first retry saw it had landed.
    assert store.failures == (1 if applied else 0)
    assert counters(rig.history) == {"refunded": 1}
