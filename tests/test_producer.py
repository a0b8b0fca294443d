"""RefundProducer and the dead-letter queue adapter against moto."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from unittest.mock import ANY

import pytest
from botocore.exceptions import ClientError

from reditus_operators.dlq import DeadLetterQueue, _peek_ids, original_refund_id
from reditus_operators.history import HistoryReader
from reditus_refunds.aws_errors import StoreError
from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.outcomes import REDRIVE_REFUND_ID_ATTRIBUTE
from reditus_refunds.producer import PENDING_BATCH, SQS_IN_FLIGHT, QueueError, RefundProducer
from reditus_refunds.records import Outcome, utc_now


def test_send_many_sends_tens_and_records_pending(aws) -> None:
    producer = RefundProducer(aws.sqs, aws.queue_url, HistoryWriter(aws.table, aws.dynamodb))
    store = HistoryReader(aws.table, aws.dynamodb)
    requests = [RefundRequest(payment_id=f"pay_{i}", refund_id=f"r-{i}", source="csv") for i in range(205)]
    seen: list[tuple[int, int]] = []
    report = producer.send_many(requests, progress=lambda done, total: seen.append((done, total)))
    assert report.send_calls == 21 and len(report.sent) == 205 and report.failed == []
    assert seen[-1] == (205, 205)
    assert all(store.get(f"r-{i}").outcome is Outcome.PENDING for i in (0, 99, 204))  # type: ignore[union-attr]
    today = utc_now().date()
    assert store.daily_counts(today, today)[today.isoformat()] == {"pending": 205}
    attrs = aws.sqs.get_queue_attributes(
        QueueUrl=aws.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "205"
    body = json.loads(aws.sqs.receive_message(QueueUrl=aws.queue_url)["Messages"][0]["Body"])
    assert set(body) <= {"refund_id", "payment_id", "source"}


def test_a_missing_queue_is_a_clear_error(aws) -> None:
    producer = RefundProducer(aws.sqs, aws.queue_url + "-gone")
    with pytest.raises(QueueError, match="does not exist"):
        producer.send(RefundRequest(payment_id="p", refund_id="r"))


def test_dead_letters_peek_redrive_and_delete(aws) -> None:
    for i in range(3):
        aws.sqs.send_message(
            QueueUrl=aws.dlq_url, MessageBody=json.dumps({"payment_id": f"p{i}", "refund_id": f"r{i}"})
        )
    aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody="not json")
    dlq = DeadLetterQueue(aws.sqs, aws.dlq_url, aws.queue_url)
    letters = dlq.peek()
    assert sorted(str(letter.payment_id) for letter in letters) == ["None", "p0", "p1", "p2"]
    assert dlq.count() == 4  # peeking leaves them where they are
    by_payment = {letter.payment_id: letter.message_id for letter in letters}
    assert dlq.redrive([by_payment["p1"]]) == [by_payment["p1"]]
    assert dlq.delete([by_payment[None]]) == [by_payment[None]]
    assert sorted(str(letter.payment_id) for letter in dlq.peek()) == ["p0", "p2"]
    assert len(dlq.redrive()) == 2 and dlq.count() == 0
    moved = aws.sqs.receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(json.loads(m["Body"])["payment_id"] for m in moved) == ["p0", "p1", "p2"]


def test_history_pages_newest_first_without_scan(aws) -> None:
    store = HistoryReader(aws.table, aws.dynamodb)
    now = utc_now()
    entries = [
        (
            RefundRequest(
                payment_id=f"pay_{i}", refund_id=f"r-{i:03d}", requested_by="ops" if i % 2 else "bot"
            ),
            f"m-{i}",
            (now - timedelta(hours=i * 7)).isoformat().replace("+00:00", "Z")[:23] + "Z",
        )
        for i in range(40)
    ]
    HistoryWriter(aws.table, aws.dynamodb).record_pending(entries)
    seen: list[str] = []
    cursor = None
    while True:
        page = store.query(limit=15, cursor=cursor, since=now - timedelta(days=30), until=now)
        seen += [r.refund_id for r in page.records]
        cursor = page.cursor
        if not cursor:
            break
    assert seen == [f"r-{i:03d}" for i in range(40)]
    mine = store.query(requested_by="ops", limit=100, since=now - timedelta(days=30), until=now)
    assert {r.requested_by for r in mine.records} == {"ops"} and len(mine.records) == 20
    pending = store.query(outcome=Outcome.PENDING, limit=5, since=now - timedelta(days=30), until=now)
    assert [r.refund_id for r in pending.records] == [f"r-{i:03d}" for i in range(5)]
    assert pending.items_read == 5
    one = store.query(payment_id="pay_7", since=now - timedelta(days=30), until=now)
    assert [r.refund_id for r in one.records] == ["r-007"]


# ---- hostile dead letters, redrive identity (issue 12) ------------------------------------------------
HOSTILE_BODIES = [
    "[" * 100_000 + "]" * 100_000,  # RecursionError in the parser
    '{"payment_id": ' + "[" * 50_000 + "]" * 50_000 + "}",
    '{"payment_id": ' + "1" * 10_000 + "}",  # longer than int's digit limit: ValueError
    '{"payment_id": 1e999999, "refund_id": -1e999999}',  # inf
    '{"payment_id": "\\ud800", "refund_id": "\\udfff"}',  # lone surrogates
    '{"payment_id": "pay\\u0000x", "refund_id": "r\\u001b[31m"}',
    "\x00\x1b[2J not json \u202e",
    "",
    "null",
    '"just a string"',
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
def test_peeking_at_a_dead_letter_survives_any_body(body: str) -> None:
    payment_id, refund_id = _peek_ids(body)
    for value in (payment_id, refund_id):
        assert value is None or isinstance(value, str)
        if value is not None:
            value.encode("utf-8")  # printable somewhere: no lone surrogate
    assert original_refund_id("msg-1", body) in ("msg-1", refund_id)


def test_dead_letters_with_hostile_bodies_are_listed_and_redriven(aws) -> None:
    bodies = [b for b in HOSTILE_BODIES if b]  # SQS refuses an empty body
    sent = {
        aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=body)["MessageId"]: body for body in bodies
    }
    dlq = DeadLetterQueue(aws.sqs, aws.dlq_url, aws.queue_url)
    letters = dlq.peek()
    assert {letter.message_id for letter in letters} == set(sent)
    assert sorted(dlq.redrive()) == sorted(sent)


def receive_all(aws, url: str) -> list[dict]:
    got: list[dict] = []
    while batch := aws.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=60
    ).get("Messages", []):
        got += batch
    return got


def test_a_redriven_dead_letter_keeps_its_refund_id(aws) -> None:
    """The copy carries reditus_refund_id: the body's refund_id if valid, else the dead letter's
    MessageId (the refund_id the Lambda used), so the redrive settles the original record."""
    with_id = aws.sqs.send_message(
        QueueUrl=aws.dlq_url, MessageBody=json.dumps({"payment_id": "p1", "refund_id": "r-original"})
    )["MessageId"]
    without_id = aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=json.dumps({"payment_id": "p2"}))[
        "MessageId"
    ]
    bad_id = aws.sqs.send_message(
        QueueUrl=aws.dlq_url, MessageBody=json.dumps({"payment_id": "p3", "refund_id": "not valid!"})
    )["MessageId"]
    junk = aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody="[" * 10_000)["MessageId"]
    dlq = DeadLetterQueue(aws.sqs, aws.dlq_url, aws.queue_url)
    assert sorted(dlq.redrive()) == sorted([with_id, without_id, bad_id, junk])
    moved = receive_all(aws, aws.queue_url)
    kept = {m["Body"][:40]: m["MessageAttributes"][REDRIVE_REFUND_ID_ATTRIBUTE]["StringValue"] for m in moved}
    assert kept == {
        json.dumps({"payment_id": "p1", "refund_id": "r-original"})[:40]: "r-original",
        json.dumps({"payment_id": "p2"}): without_id,
        json.dumps({"payment_id": "p3", "refund_id": "not valid!"})[:40]: bad_id,
        "[" * 40: junk,
    }
    assert all(
        m["MessageId"] not in (without_id, bad_id, junk) for m in moved
    )  # new ids: hence the attribute


class _OverlapSqs:
    """SQS for send_many: accepts every entry and tells who waits that a send happened."""

    def __init__(self) -> None:
        self.calls = 0
        self.sent = threading.Condition()

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, object]:
        with self.sent:
            self.calls += 1
            self.sent.notify_all()
        return {"Successful": [{"Id": e["Id"], "MessageId": f"m-{self.calls}-{e['Id']}"} for e in Entries]}


class _OverlapStore:
    """A history writer whose first pending transaction finishes only once SQS has been called
    again: it can only finish if the sends go on while it is written."""

    def __init__(self, sqs: _OverlapSqs, fail: bool = False) -> None:
        self.sqs = sqs
        self.fail = fail
        self.recorded: list[int] = []
        self.overlapped = False

    def record_pending(self, entries: list[object]) -> int:
        if not self.recorded:
            with self.sqs.sent:
                seen = self.sqs.calls
                self.overlapped = self.sqs.sent.wait_for(lambda: self.sqs.calls > seen, timeout=10)
        if self.fail:
            raise StoreError("the table is gone", code="ResourceNotFoundException")
        self.recorded.append(len(entries))
        return len(entries)


def _requests(n: int) -> list[RefundRequest]:
    return [RefundRequest(refund_id=f"ov-{i}", payment_id=f"pay_ov_{i}") for i in range(n)]


def test_send_many_writes_pending_records_while_it_goes_on_sending() -> None:
    """Issue 15 (bulk_10k_vs_raw): the pending records' transaction overlaps the next SQS calls."""
    sqs = _OverlapSqs()
    store = _OverlapStore(sqs)
    report = RefundProducer(sqs, "queue", store).send_many(_requests(200))  # type: ignore[arg-type]
    assert store.overlapped
    assert len(report.sent) == 200 and sum(store.recorded) == 200 and sqs.calls == 20


def test_send_many_stops_soon_after_the_store_fails() -> None:
    """A store failure still ends the upload, within one transaction's worth of messages."""
    sqs = _OverlapSqs()
    store = _OverlapStore(sqs, fail=True)
    with pytest.raises(StoreError, match="the table is gone"):
        RefundProducer(sqs, "queue", store).send_many(_requests(1000))  # type: ignore[arg-type]
    assert sqs.calls <= 2 * PENDING_BATCH // 10 + 1


class _ScriptedSqs:
    """SQS for send_many, thread-safe: `answer(call, entries)` says what each call returns (or raises);
    it records which entries it accepted and how many calls were in flight at once."""

    def __init__(self, answer=None) -> None:
        self.answer = answer
        self.lock = threading.Condition()
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.returned: list[int] = []  # call numbers, in the order their answers were given
        self.accepted: set[str] = set()

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, object]:
        with self.lock:
            self.calls += 1
            call = self.calls
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.lock.notify_all()
        try:
            refused = self.answer(self, call, Entries) if self.answer else set()
            ok = [e for e in Entries if e["Id"] not in refused]
            with self.lock:
                self.accepted |= {json.loads(e["MessageBody"])["refund_id"] for e in ok}
            return {
                "Successful": [{"Id": e["Id"], "MessageId": f"m-{call}-{e['Id']}"} for e in ok],
                "Failed": [{"Id": i, "Code": "InvalidParameterValue", "Message": "no"} for i in refused],
            }
        finally:
            with self.lock:
                self.in_flight -= 1
                self.returned.append(call)
                self.lock.notify_all()


class _RecordingStore:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.lock = threading.Lock()
        self.recorded: list[str] = []

    def record_pending(self, entries: list[tuple[RefundRequest, str, str]]) -> int:
        if self.fail:
            raise StoreError("the table is gone", code="ResourceNotFoundException")
        with self.lock:
            self.recorded += [request.refund_id for request, _, _ in entries]
        return len(entries)


def test_send_many_keeps_several_sends_in_flight_and_reports_in_order() -> None:
    """Issue 15: SendMessageBatch calls overlap (the first answers only after the second has), yet
    the report and the progress read as if they took turns, refusals exact."""

    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        if call == 1:
            with sqs.lock:
                sqs.lock.wait_for(lambda: 2 in sqs.returned, timeout=10)
        return {"3"} if call == 4 else set()

    sqs, store = _ScriptedSqs(answer), _RecordingStore()
    requests = _requests(205)
    seen: list[int] = []
    report = RefundProducer(sqs, "queue", store).send_many(  # type: ignore[arg-type]
        requests, progress=lambda done, total: seen.append(done)
    )
    assert sqs.returned.index(2) < sqs.returned.index(1) and sqs.most_in_flight >= 2
    assert report.sent == requests[:33] + requests[34:] and report.failed == [(requests[33], ANY)]
    assert report.failed[0][1] == "InvalidParameterValue: no"
    assert report.send_calls == 21 and seen == [*range(10, 201, 10), 205]
    assert store.recorded == [r.refund_id for r in report.sent]  # in order, each once


def test_a_queue_error_lets_the_sends_in_flight_finish_and_records_all_they_queued() -> None:
    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        if call == 12:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessageBatch")
        return set()

    sqs, store = _ScriptedSqs(answer), _RecordingStore()
    with pytest.raises(QueueError, match="access to the queue 'queue' is denied"):
        RefundProducer(sqs, "queue", store).send_many(_requests(1000))  # type: ignore[arg-type]
    assert sqs.calls <= 12 + SQS_IN_FLIGHT - 1  # nothing new once the error is known
    assert len(sqs.accepted) == (sqs.calls - 1) * 10
    assert sorted(store.recorded) == sorted(sqs.accepted)  # what reached the queue is recorded


def test_both_failures_are_reported() -> None:
    """The queue fails, then so does the history: the error says both."""

    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        if call == 1:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessageBatch")
        return set()

    producer = RefundProducer(_ScriptedSqs(answer), "queue", _RecordingStore(fail=True))  # type: ignore[arg-type]
    with pytest.raises(QueueError, match=r"denied.*pending records were not written: the table is gone"):
        producer.send_many(_requests(50))


def test_send_many_goes_on_when_whole_batches_are_refused() -> None:
    """Refused entries have no pending record to wait for: the sends never stall on them."""

    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        return {e["Id"] for e in entries} if call <= 25 else set()

    sqs, store = _ScriptedSqs(answer), _RecordingStore()
    report = RefundProducer(sqs, "queue", store).send_many(_requests(300))  # type: ignore[arg-type]
    assert sqs.calls == 30 and len(report.failed) == 250 and len(report.sent) == 50
    assert store.recorded == [r.refund_id for r in report.sent]


class _Stopped(Exception):
    pass


def test_a_caller_stopping_the_upload_still_gets_the_sent_ones_recorded() -> None:
    """The console's progress callback can raise (Streamlit stopping the script): the sends in
    flight finish and every message that reached the queue has its pending record."""

    def progress(done: int, total: int) -> None:
        if done >= 30:
            raise _Stopped

    sqs, store = _ScriptedSqs(), _RecordingStore()
    with pytest.raises(_Stopped):
        RefundProducer(sqs, "queue", store).send_many(_requests(1000), progress)  # type: ignore[arg-type]
    assert 30 <= len(sqs.accepted) <= 30 + SQS_IN_FLIGHT * 10
    assert sorted(store.recorded) == sorted(sqs.accepted)
