"""RefundProducer and the dead-letter queue adapter against moto."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from reditus_operators.dlq import DeadLetterQueue, _peek_ids, original_refund_id
from reditus_operators.history import HistoryReader
from reditus_refunds.aws_errors import StoreError
from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.outcomes import REDRIVE_REFUND_ID_ATTRIBUTE
from reditus_refunds.producer import PENDING_BATCH, QueueError, RefundProducer
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
