"""Domain logic against a moto-backed store and a fake Reditus (a fake, not a mock)."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from reditus_operators.history import HistoryReader
from reditus_refunds.aws_errors import ConditionFailed, StoreError
from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.layout import INDEX_KEY_ATTRIBUTES, item_key, marker_key
from reditus_refunds.outcomes import (
    RECHECK_ATTRIBUTE,
    REDRIVE_REFUND_ID_ATTRIBUTE,
    ClaimView,
    RefundState,
    ResultWrite,
)
from reditus_refunds.producer import RefundProducer
from reditus_refunds.records import MAX_ATTEMPT_LOG, Attempt, Outcome, iso, utc_now
from reditus_refunds.reditus import ReditusAnswer, Verdict
from reditus_refunds.submitter import InboundMessage, RefundSubmitter, RetryLater, SubmitterConfig

from .fakes import Clock as FakeClock
from .fakes import FakeQueue, FakeStore, QueuedMessage
from .fakes import FakeReditus as FakeReditusInMemory
from .fakes import answer as fake_answer


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
        attributes: dict[str, str] | None = None,
    ) -> Outcome:
        text = json.dumps(body) if isinstance(body, dict) else body
        return self.submitter.process(
            InboundMessage(message_id, text, receive_count, sent_at or iso(self.clock()), attributes or {}),
            time.monotonic() + 30,
        )


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
    """What the day counters hold once the table's stream is applied: each refund item once, under
    its outcome (a pending one has none). The stream function that keeps them is tested on its own
    (tests/test_counter_stream.py); here the items it would count are read directly."""
    client, table = store.table.client, store.table.table_name
    items = client.scan(TableName=table, ConsistentRead=True)["Items"]
    refunds = [i for i in items if "#" not in i["refund_id"]["S"] and "queued_day" in i]
    return dict(Counter(i.get("outcome", {"S": "pending"})["S"] for i in refunds))


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
    # The delayed copy carries its chain's token (a message attribute); a copy without it (a
    # producer sending the same request again meanwhile) changes nothing while the chain is live.
    chain = rig.store.get_state("r3").recheck_token  # type: ignore[union-attr]
    assert chain
    assert rig.deliver({"payment_id": "late", "refund_id": "r3"}, message_id="m-copy") is Outcome.RETRYING
    assert rig.reditus.calls["late"] == 1
    assert (
        rig.deliver(
            {"payment_id": "late", "refund_id": "r3"},
            message_id="m-2",
            sent_at=iso(rig.clock.now),
            attributes={RECHECK_ATTRIBUTE: chain},
        )
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
    rig.store.record_pending([request], iso(rig.clock.now))
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


# ---- moto-backed: issue 12's faults -------------------------------------------------------------
def test_a_requeue_right_after_a_rejection_is_not_bounced(rig: Rig) -> None:
    rig.reditus.answers["pay_r"] = [
        answer(Verdict.REJECTED, 400, "nope"),
        answer(Verdict.REFUNDED, 200, "ok"),
    ]
    assert rig.deliver({"payment_id": "pay_r", "refund_id": "first"}) is Outcome.REJECTED
    # The operator requeues under a new refund_id at once: the payment's lease is released.
    assert rig.deliver({"payment_id": "pay_r", "refund_id": "again"}, message_id="m-2") is Outcome.REFUNDED
    assert rig.reditus.calls["pay_r"] == 2


def test_a_rejection_releases_only_its_own_lease_on_the_payment(rig: Rig, aws) -> None:
    """Our lease expired and another refund of the payment took it over: our late result must not
    clear their lease (that would let a third delivery submit the payment concurrently)."""
    request = RefundRequest(payment_id="pay_own", refund_id="slow")
    view = rig.store.read_for_claim("slow", "pay_own")
    rig.store.claim(
        request,
        view,
        message_id="m-slow",
        queued_at=iso(rig.clock.now),
        token="t-slow",
        lease_until=rig.clock.now + timedelta(seconds=60),
    )
    # Another refund of the payment holds the marker now.
    taken_until = int((rig.clock.now + timedelta(seconds=300)).timestamp() * 1000)
    aws.dynamodb.update_item(
        TableName=aws.table,
        Key={"refund_id": {"S": "payment#pay_own"}},
        UpdateExpression="SET lease_token = :t, lease_holder = :h, lease_until = :u",
        ExpressionAttributeValues={
            ":t": {"S": "t-other"},
            ":h": {"S": "other"},
            ":u": {"N": str(taken_until)},
        },
    )
    attempt = Attempt(at=iso(rig.clock.now), http_status=400, kind="rejected", detail="nope")
    rig.store.finish(
        ResultWrite(
            "slow", "t-slow", Outcome.REJECTED, attempt, detail="nope", http_status=400, payment_id="pay_own"
        )
    )
    marker = aws.dynamodb.get_item(TableName=aws.table, Key={"refund_id": {"S": "payment#pay_own"}})["Item"]
    assert marker["lease_holder"]["S"] == "other" and int(marker["lease_until"]["N"]) == taken_until


def test_a_redriven_dead_letter_without_refund_id_keeps_its_identity(rig: Rig) -> None:
    rig.reditus.answers["pay_dl"] = [answer(Verdict.TRANSIENT, 503, "busy")]
    for receive in range(1, 6):
        with pytest.raises(RetryLater):
            rig.deliver({"payment_id": "pay_dl"}, message_id="m-orig", receive_count=receive)
    assert rig.history.get("m-orig").outcome is Outcome.DEAD_LETTERED  # type: ignore[union-attr]
    rig.reditus.answers["pay_dl"] = [answer(Verdict.REFUNDED, 200, "ok")]
    # The redrive sends the body again with the original id as an attribute; SQS gives a new id.
    outcome = rig.deliver(
        {"payment_id": "pay_dl"}, message_id="m-redriven", attributes={REDRIVE_REFUND_ID_ATTRIBUTE: "m-orig"}
    )
    assert outcome is Outcome.REFUNDED
    assert rig.history.get("m-orig").outcome is Outcome.REFUNDED  # type: ignore[union-attr]
    assert rig.history.get("m-redriven") is None
    assert counters(rig.history) == {"refunded": 1}


def test_a_redrive_attribute_that_is_not_a_refund_id_is_invalid(rig: Rig) -> None:
    outcome = rig.deliver(
        {"payment_id": "pay_x"}, message_id="m-bad", attributes={REDRIVE_REFUND_ID_ATTRIBUTE: "payment#pay_x"}
    )
    assert outcome is Outcome.INVALID
    assert "reditus_refund_id" in rig.history.get("m-bad").detail  # type: ignore[union-attr]
    assert sum(rig.reditus.calls.values()) == 0


def test_a_whitespace_payment_id_never_writes_an_empty_index_key(rig: Rig, aws) -> None:
    assert rig.deliver('{"payment_id": "   ", "refund_id": "r-ws"}', message_id="m-ws") is Outcome.INVALID
    item = aws.dynamodb.get_item(TableName=aws.table, Key={"refund_id": {"S": "r-ws"}})["Item"]
    assert item["outcome"] == {"S": "invalid"} and "payment_id" not in item
    # Every write path guards it, not only the contract.
    rig.store.record_without_claim(
        "r-direct", Outcome.INVALID, detail="x", message_id="m", queued_at=iso(rig.clock.now), payment_id=""
    )
    item = aws.dynamodb.get_item(TableName=aws.table, Key={"refund_id": {"S": "r-direct"}})["Item"]
    assert "payment_id" not in item
    for attrs in (i for i in aws.dynamodb.scan(TableName=aws.table)["Items"]):
        assert all(attrs[k] != {"S": ""} for k in INDEX_KEY_ATTRIBUTES if k in attrs)


def test_the_attempt_log_is_capped_and_counts_what_it_dropped(rig: Rig) -> None:
    rig.reditus.answers["pay_many"] = [answer(Verdict.TRANSIENT, 503, "busy")]
    total = MAX_ATTEMPT_LOG + 5
    for i in range(total):
        with pytest.raises(RetryLater):
            rig.deliver({"payment_id": "pay_many", "refund_id": "r-many"}, message_id=f"m-{i}")
        rig.clock.now += timedelta(seconds=1)
    record = rig.history.get("r-many")
    assert record and record.attempts == total and record.attempts_dropped == 5
    assert len(record.attempt_log) == MAX_ATTEMPT_LOG
    first, last = record.attempt_log[0].at, record.attempt_log[-1].at
    assert first < record.attempt_log[1].at and last == max(a.at for a in record.attempt_log)


# ---- orchestration against the in-memory store (tests/fakes.py) ---------------------------------
VISIBILITY = timedelta(seconds=360)


class Killed(BaseException):
    """The invocation ended (a Lambda timeout): nothing after this point runs."""


class KillingStore(FakeStore):
    def __init__(self, clock, kill_finishes: int) -> None:
        super().__init__(clock)
        self.kill_finishes = kill_finishes

    def finish(self, *args, **kwargs) -> None:
        if self.kill_finishes:
            self.kill_finishes -= 1
            raise Killed()
        super().finish(*args, **kwargs)


@dataclass
class FakeRig:
    clock: FakeClock
    store: FakeStore
    queue: FakeQueue
    reditus: FakeReditusInMemory
    submitter: RefundSubmitter
    dead: list[QueuedMessage] = field(default_factory=list)

    def produce(self, body: dict, message_id: str = "m-1") -> QueuedMessage:
        message = QueuedMessage(json.dumps(body), self.clock.now, {}, message_id)
        self.queue.messages.append(message)
        return message

    def deliver(self, message: QueuedMessage) -> Outcome | None:
        """One receive: SQS leaves it in flight for the visibility timeout unless it succeeds."""
        message.receive_count += 1
        message.visible_at = self.clock.now + VISIBILITY
        inbound = InboundMessage(
            message.message_id, message.body, message.receive_count, iso(self.clock.now), message.attributes
        )
        try:
            outcome = self.submitter.process(inbound, time.monotonic() + 30)
        except RetryLater:
            return None
        self.queue.messages.remove(message)
        return outcome

    def drain(self, until: timedelta = timedelta(hours=2)) -> None:
        """Deliver every message when it becomes visible, in order, moving the clock."""
        end = self.clock.now + until
        while self.queue.messages and self.clock.now < end:
            message = min(self.queue.messages, key=lambda m: m.visible_at)
            self.clock.now = max(self.clock.now, message.visible_at)
            if message.receive_count >= 5:  # the redrive policy moves it on the next receive
                self.queue.messages.remove(message)
                self.dead.append(message)
                continue
            with contextlib.suppress(Killed):  # the invocation died: the message stays in flight
                self.deliver(message)

    def call_gaps(self, payment_id: str) -> list[float]:
        times = [t for p, t in self.reditus.call_times if p == payment_id]
        return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]


@pytest.fixture
def fake() -> FakeRig:
    clock = FakeClock()
    store = FakeStore(clock)
    queue = FakeQueue(clock)
    reditus = FakeReditusInMemory(clock=clock)
    submitter = RefundSubmitter(
        store,
        reditus,
        queue,
        SubmitterConfig(not_found_grace_seconds=600, not_found_recheck_delay_seconds=60, max_receive_count=5),
        clock=clock,
    )
    return FakeRig(clock, store, queue, reditus, submitter)


def test_fake_orchestration_refunds_once_and_counts(fake: FakeRig) -> None:
    fake.produce({"payment_id": "p1", "refund_id": "r1"})
    fake.produce({"payment_id": "p1", "refund_id": "r1"}, message_id="m-again")
    fake.produce({"payment_id": "p1", "refund_id": "r2"}, message_id="m-other")
    fake.drain()
    assert fake.reditus.calls["p1"] == 1
    assert fake.store.outcomes() == {"refunded": 1, "duplicate": 1}


def always_not_found(fake: FakeRig, payment_id: str) -> None:
    fake.reditus.answers[payment_id] = [fake_answer(Verdict.NOT_FOUND, 404, "Payment not found")]


def assert_one_chain(fake: FakeRig, payment_id: str) -> None:
    gaps = fake.call_gaps(payment_id)
    # One chain: one call per re-check period; a second chain would put calls closer together.
    assert gaps and min(gaps) >= 60, gaps
    assert fake.reditus.calls[payment_id] <= 600 // 60 + 1
    state = fake.store.get_state("r1")
    assert state is not None and state.outcome is Outcome.NOT_FOUND
    assert fake.queue.messages == [] and fake.dead == []


def test_a_producer_copy_during_the_grace_window_starts_no_second_chain(fake: FakeRig) -> None:
    always_not_found(fake, "late")
    fake.produce({"payment_id": "late", "refund_id": "r1"})
    fake.drain(until=timedelta(seconds=90))
    fake.produce({"payment_id": "late", "refund_id": "r1"}, message_id="m-copy")
    fake.drain()
    assert_one_chain(fake, "late")


def test_a_redelivered_batch_starts_no_second_chain(fake: FakeRig) -> None:
    always_not_found(fake, "late")
    first = fake.produce({"payment_id": "late", "refund_id": "r1"})
    assert fake.deliver(first) is Outcome.RETRYING
    # The batch failed after all (e.g. its settlement raised): SQS delivers the message again.
    fake.queue.messages.append(first)
    fake.drain()
    assert_one_chain(fake, "late")


@pytest.mark.parametrize("order", ["recheck first", "redelivery first"])
def test_a_timeout_between_the_recheck_send_and_the_result_leaves_one_chain(
    fake: FakeRig, order: str
) -> None:
    fake.store = KillingStore(fake.clock, kill_finishes=1)
    fake.submitter.store = fake.store
    always_not_found(fake, "late")
    first = fake.produce({"payment_id": "late", "refund_id": "r1"})
    with pytest.raises(Killed):
        fake.deliver(first)
    (recheck,) = [m for m in fake.queue.messages if m is not first]
    if order == "redelivery first":
        recheck.visible_at = first.visible_at + timedelta(seconds=1)
    fake.drain()
    assert_one_chain(fake, "late")


def test_a_stale_recheck_changes_nothing_and_is_not_sent_on(fake: FakeRig) -> None:
    always_not_found(fake, "late")
    fake.deliver(fake.produce({"payment_id": "late", "refund_id": "r1"}))
    before = fake.store.get_state("r1")
    stale = QueuedMessage(
        json.dumps({"payment_id": "late", "refund_id": "r1"}),
        fake.clock.now,
        {RECHECK_ATTRIBUTE: "old"},
        "m-stale",
    )
    fake.queue.messages.append(stale)
    assert fake.deliver(stale) is Outcome.RETRYING
    assert fake.store.get_state("r1") == before
    assert fake.reditus.calls["late"] == 1 and len(fake.queue.messages) == 1


def test_a_lost_recheck_send_never_strands_the_refund(fake: FakeRig) -> None:
    fake.reditus.answers["late"] = [
        fake_answer(Verdict.NOT_FOUND, 404, "Payment not found"),
        fake_answer(Verdict.NOT_FOUND, 404, "Payment not found"),
        fake_answer(Verdict.REFUNDED, 200, "ok"),
    ]
    fake.queue.fail_next = 1
    first = fake.produce({"payment_id": "late", "refund_id": "r1"})
    assert fake.deliver(first) is None  # SQS will deliver it again
    state = fake.store.get_state("r1")
    assert state and state.outcome is Outcome.RETRYING and state.lease_token is None
    fake.drain()
    assert fake.store.get_state("r1").outcome is Outcome.REFUNDED  # type: ignore[union-attr]
    assert fake.reditus.calls["late"] == 3 and fake.queue.messages == []


def test_the_payment_lease_is_released_on_every_terminal_outcome(fake: FakeRig) -> None:
    for verdict, status in ((Verdict.REJECTED, 400), (Verdict.FAILED, 418)):
        payment = f"p-{status}"
        fake.reditus.answers[payment] = [fake_answer(verdict, status), fake_answer(Verdict.REFUNDED, 200)]
        fake.deliver(
            fake.produce({"payment_id": payment, "refund_id": f"a-{status}"}, message_id=f"m-a-{status}")
        )
        second = fake.produce({"payment_id": payment, "refund_id": f"b-{status}"}, message_id=f"m-b-{status}")
        assert fake.deliver(second) is Outcome.REFUNDED


# ---- issue 15: the claim and the result as single-item writes -----------------------------------
class DiesAfterTheMark(HistoryWriter):
    """The invocation ends between the payment's mark and the result write (a Lambda timeout)."""

    def finish(self, result: ResultWrite) -> None:
        write = self.table.update

        def update(request: dict) -> None:
            if request["Key"] == item_key(result.refund_id):
                raise Killed()
            write(request)

        self.table.update = update  # type: ignore[method-assign]
        try:
            super().finish(result)
        finally:
            self.table.update = write  # type: ignore[method-assign]


def test_a_200_whose_result_write_was_lost_is_recorded_from_the_mark_not_sent_again(rig: Rig, aws) -> None:
    dying = DiesAfterTheMark(aws.table, aws.dynamodb, clock=rig.clock)
    rig.submitter.store = dying
    with pytest.raises(Killed):
        rig.deliver({"payment_id": "pay_lost", "refund_id": "r-lost"}, message_id="m-lost")
    assert rig.reditus.calls["pay_lost"] == 1
    marker = rig.history.payment_markers(["pay_lost"])["pay_lost"]
    assert marker.refunded_by == "r-lost"
    assert rig.history.get("r-lost").outcome is Outcome.PENDING  # type: ignore[union-attr]
    # Another refund of the payment is a duplicate at once: the mark is the record of the 200.
    rig.submitter.store = rig.store
    assert (
        rig.deliver({"payment_id": "pay_lost", "refund_id": "r-other"}, message_id="m-o") is Outcome.DUPLICATE
    )
    # SQS delivers the message again once the lease has expired: recorded from the mark.
    rig.clock.now += timedelta(minutes=10)
    assert (
        rig.deliver({"payment_id": "pay_lost", "refund_id": "r-lost"}, message_id="m-lost")
        is Outcome.REFUNDED
    )
    assert rig.reditus.calls["pay_lost"] == 1
    record = rig.history.get("r-lost")
    assert record is not None and record.outcome is Outcome.REFUNDED and record.http_status == 200
    assert "mark" in record.detail and record.attempt_log[-1].http_status == 200
    assert counters(rig.history) == {"refunded": 1, "duplicate": 1}
    # And a further copy changes nothing.
    assert (
        rig.deliver({"payment_id": "pay_lost", "refund_id": "r-lost"}, message_id="m-lost")
        is Outcome.REFUNDED
    )
    assert rig.reditus.calls["pay_lost"] == 1


def test_a_claim_that_cannot_take_the_payment_hands_the_refund_back(rig: Rig, aws) -> None:
    """The refund is taken first, then its payment; when another refund holds the payment, the
    refund's lease and the attempt it counted are handed back, so nothing waits for an expiry."""
    request = RefundRequest(payment_id="pay_busy", refund_id="r-second")
    view = rig.store.read_for_claim("r-second", "pay_busy")  # read before the other took the payment
    other = RefundRequest(payment_id="pay_busy", refund_id="r-first")
    rig.store.claim(
        other,
        rig.store.read_for_claim("r-first", "pay_busy"),
        message_id="m-first",
        queued_at=iso(rig.clock.now),
        token="t-first",
        lease_until=rig.clock.now + timedelta(seconds=60),
    )
    rig.store.record_pending([request], iso(rig.clock.now))
    view = rig.store.read_for_claim("r-second", "pay_busy")
    stale = type(view)(view.state, None)  # decided before the payment was taken
    with pytest.raises(ConditionFailed):
        rig.store.claim(
            request,
            stale,
            message_id="m-second",
            queued_at=iso(rig.clock.now),
            token="t-second",
            lease_until=rig.clock.now + timedelta(seconds=60),
        )
    item = rig.store.get_item("r-second")
    assert item is not None and "lease_token" not in item and "lease_until" not in item
    assert item["attempts"] == 0
    # The delivery decides again and waits for the payment, without waiting for its own lease.
    with pytest.raises(RetryLater, match="another refund of this payment"):
        rig.deliver({"payment_id": "pay_busy", "refund_id": "r-second"}, message_id="m-second")


def test_a_claim_whose_payment_write_fails_hands_the_refund_back_too(rig: Rig, aws) -> None:
    """The store fails on the payment's lease (not a condition): the refund's lease is handed back
    all the same, so its next delivery need not wait for it to expire."""
    request = RefundRequest(payment_id="pay_flaky", refund_id="r-flaky")
    write = rig.store.table.update

    def update(kwargs: dict) -> None:
        if kwargs["Key"] == marker_key("pay_flaky"):
            raise StoreError("DynamoDB answered InternalServerError")
        write(kwargs)

    rig.store.table.update = update  # type: ignore[method-assign]
    try:
        with pytest.raises(StoreError):
            rig.store.claim(
                request,
                rig.store.read_for_claim("r-flaky", "pay_flaky"),
                message_id="m-flaky",
                queued_at=iso(rig.clock.now),
                token="t-flaky",
                lease_until=rig.clock.now + timedelta(seconds=60),
            )
    finally:
        rig.store.table.update = write  # type: ignore[method-assign]
    item = rig.store.get_item("r-flaky")
    assert item is not None and "lease_token" not in item and item.get("open_claims", 0) == 0
    assert (
        rig.deliver({"payment_id": "pay_flaky", "refund_id": "r-flaky"}, message_id="m-flaky")
        is Outcome.REFUNDED
    )


# ---- a fresh request is claimed without reading first; anything else is decided on a look -------
class CountingLooks(HistoryWriter):
    """Counts the consistent looks; `stale` makes the next look answer an older state (another
    delivery wrote a result between our look and our claim)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.looks = 0
        self.stale: dict[str, RefundState] = {}

    def read_for_claim(self, refund_id: str, payment_id: str) -> ClaimView:
        self.looks += 1
        view = super().read_for_claim(refund_id, payment_id)
        if refund_id in self.stale:
            return view._replace(state=self.stale.pop(refund_id))
        return view


@pytest.fixture
def looks(rig: Rig, aws) -> CountingLooks:
    store = CountingLooks(aws.table, aws.dynamodb, clock=rig.clock)
    rig.submitter.store = store
    return store


def test_a_fresh_request_is_claimed_without_a_look(rig: Rig, looks: CountingLooks) -> None:
    request = RefundRequest(payment_id="pay_1", refund_id="r1", requested_by="ops")
    rig.store.record_pending([request], iso(rig.clock.now))
    assert rig.deliver({"payment_id": "pay_1", "refund_id": "r1", "requested_by": "ops"}) is Outcome.REFUNDED
    assert rig.deliver({"payment_id": "pay_2", "refund_id": "r2"}, message_id="m-2") is Outcome.REFUNDED
    assert looks.looks == 0 and rig.reditus.calls == {"pay_1": 1, "pay_2": 1}
    record = rig.history.get("r1")
    assert record is not None and record.requested_by == "ops" and record.attempts == 1


def test_a_request_that_is_not_fresh_is_decided_on_a_look(rig: Rig, looks: CountingLooks) -> None:
    assert rig.deliver({"payment_id": "pay_1", "refund_id": "r1"}) is Outcome.REFUNDED
    assert rig.deliver({"payment_id": "pay_1", "refund_id": "r1"}, message_id="m-2") is Outcome.REFUNDED
    assert rig.deliver({"payment_id": "pay_1", "refund_id": "r2"}, message_id="m-3") is Outcome.DUPLICATE
    assert rig.reditus.calls["pay_1"] == 1 and looks.looks == 2
    # The refused claim of r2 handed its lease back: nothing waits for it to expire.
    assert rig.store.get_state("r2").lease_token is None  # type: ignore[union-attr]


def test_a_pending_record_of_another_payment_is_never_claimed_blind(rig: Rig, looks: CountingLooks) -> None:
    """The refund_id was queued for one payment; a message naming another must be judged (invalid),
    never claimed and sent."""
    request = RefundRequest(payment_id="pay_a", refund_id="r1")
    rig.store.record_pending([request], iso(rig.clock.now))
    assert rig.deliver({"payment_id": "pay_b", "refund_id": "r1"}, message_id="m-b") is Outcome.INVALID
    assert rig.reditus.calls == {} and looks.looks == 1


def test_a_view_one_result_behind_cannot_claim(rig: Rig, looks: CountingLooks) -> None:
    """Same outcome, no lease, same chain, but one result more since the look (another delivery):
    the claim is refused, or its result would rewrite the attempt log from the look and lose one."""
    busy = answer(Verdict.TRANSIENT, 503, "busy")
    rig.reditus.answers["pay_1"] = [busy, busy, answer(Verdict.REFUNDED, 200, "ok")]
    with pytest.raises(RetryLater):
        rig.deliver({"payment_id": "pay_1", "refund_id": "r1"})
    before = rig.store.get_state("r1")
    with pytest.raises(RetryLater):
        rig.deliver({"payment_id": "pay_1", "refund_id": "r1"}, receive_count=2)
    assert before is not None and before.outcome is Outcome.RETRYING
    looks.stale["r1"] = before
    assert rig.deliver({"payment_id": "pay_1", "refund_id": "r1"}, receive_count=3) is Outcome.REFUNDED
    record = rig.history.get("r1")
    assert record is not None and [a.http_status for a in record.attempt_log] == [503, 503, 200]
    assert record.attempts == 3


def test_force_never_takes_again_a_payment_this_refund_refunded(rig: Rig, aws) -> None:
    """The first look does not read the payment's mark: the claim's condition must refuse a forced
    request whose own 200 is on the mark (its result write lost), so it is recorded from the mark."""
    dying = DiesAfterTheMark(aws.table, aws.dynamodb, clock=rig.clock)
    rig.submitter.store = dying
    body = {"payment_id": "pay_f", "refund_id": "r-f", "force": True}
    with pytest.raises(Killed):
        rig.deliver(body, message_id="m-f")
    rig.submitter.store = rig.store
    rig.clock.now += timedelta(minutes=10)
    assert rig.deliver(body, message_id="m-f") is Outcome.REFUNDED
    assert rig.reditus.calls["pay_f"] == 1
    record = rig.history.get("r-f")
    assert record is not None and "mark" in record.detail
