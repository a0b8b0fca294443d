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
from reditus_refunds.producer import PENDING_GROUP, SQS_IN_FLIGHT, QueueError, RefundProducer
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
    # The day counters are the table stream's now (test_counter_stream.py): here, the records.
    records = pending_records(aws)
    assert set(records) == {r.refund_id for r in requests}
    today = utc_now().date().isoformat()
    assert {(item["queued_day"]["S"], item["attempts"]["N"]) for item in records.values()} == {(today, "0")}
    # No outcome while pending (the first result writes one); no message_id until the claim.
    assert not any({"outcome", "message_id"} & set(item) for item in records.values())
    attrs = aws.sqs.get_queue_attributes(
        QueueUrl=aws.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "205"
    body = json.loads(aws.sqs.receive_message(QueueUrl=aws.queue_url)["Messages"][0]["Body"])
    assert set(body) <= {"refund_id", "payment_id", "source"}


def pending_records(aws) -> dict[str, dict]:
    """The refund items in the table (raw), by refund_id: markers and counters left out."""
    items: dict[str, dict] = {}
    kwargs: dict = {"TableName": aws.table}
    while True:
        page = aws.dynamodb.scan(**kwargs)
        for item in page["Items"]:
            key = item["refund_id"]["S"]
            if not key.startswith(("payment#", "counter#")):
                items[key] = item
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


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
    writer = HistoryWriter(aws.table, aws.dynamodb)
    for request, _, queued_at in entries:  # one queued time per call
        assert writer.record_pending([request], queued_at) == {request.refund_id}
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
    # The Pending filter walks by_day (keys, then the items by key): five of each. No counter item
    # exists here (the stream function that keeps them is not running), so the days are walked
    # rather than skipped, until the page is full; with counters, they would be read too.
    assert pending.items_read == 10
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


# ---- pending records written before the sends (issue 15) ----------------------------------------
# The invariant every path keeps: once send_many returns or raises, the pending records it wrote
# and did not forget are exactly the requests SQS accepted (no message without its record, no
# record without its message).


class _ScriptedSqs:
    """SQS for send_many, thread-safe: `answer(sqs, call, entries)` says which entry Ids each call
    refuses (or raises); it records what it accepted and how many calls were in flight at once."""

    def __init__(self, answer=None) -> None:
        self.answer = answer
        self.lock = threading.Condition()
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.returned: list[int] = []  # call numbers, in the order their answers were given
        self.accepted: set[str] = set()
        self.sent_before_recorded: set[str] = set()
        self.store: _FakeStore | None = None

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, object]:
        ids = [json.loads(e["MessageBody"])["refund_id"] for e in Entries]
        with self.lock:
            self.calls += 1
            call = self.calls
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.store is not None:
                self.sent_before_recorded |= set(ids) - set(self.store.items)
            self.lock.notify_all()
        try:
            refused = self.answer(self, call, Entries) if self.answer else set()
            ok = [(e, i) for e, i in zip(Entries, ids, strict=True) if e["Id"] not in refused]
            with self.lock:
                self.accepted |= {i for _, i in ok}
            return {
                "Successful": [{"Id": e["Id"], "MessageId": f"m-{call}-{e['Id']}"} for e, _ in ok],
                "Failed": [{"Id": i, "Code": "InvalidParameterValue", "Message": "no"} for i in refused],
            }
        finally:
            with self.lock:
                self.in_flight -= 1
                self.returned.append(call)
                self.lock.notify_all()


class _FakeStore:
    """HistoryWriter's producer side in memory: a record is written only where none exists. The
    record_pending call for the group starting at `fail_group` (a refund_id) and every
    forget_pending can be made to fail; `hold(first refund_id)` runs inside each record_pending
    call (to make one wait for the sends). Groups may be recorded two at once, in any order."""

    def __init__(self, sqs: _ScriptedSqs, fail_group: str = "", fail_forget: bool = False, hold=None) -> None:
        self.lock = threading.Lock()
        self.items: dict[str, str] = {}  # refund_id -> who wrote it: "us" or "before"
        self.record_calls = 0
        self.began: list[str] = []  # the first refund_id of each record_pending call
        self.recorded: list[str] = []  # in the order written
        self.asked: set[str] = set()
        self.asked_again: set[str] = set()  # a record asked for twice (real reads may lag: no)
        self.forgotten: list[str] = []
        self.minted: list[bool] = []  # each record_pending call's `minted`
        self.fail_group = fail_group
        self.fail_forget = fail_forget
        self.hold = hold
        sqs.store = self

    def record_pending(
        self, requests: list[RefundRequest], queued_at: str, *, minted: bool = False
    ) -> set[str]:
        with self.lock:
            self.minted.append(minted)
            self.record_calls += 1
            self.began.append(requests[0].refund_id)
        if self.hold:
            self.hold(requests[0].refund_id)
        if requests[0].refund_id == self.fail_group:
            raise StoreError("the table is gone", code="ResourceNotFoundException")
        with self.lock:
            self.asked_again |= self.asked & {r.refund_id for r in requests}
            self.asked |= {r.refund_id for r in requests}
            fresh = [r.refund_id for r in requests if r.refund_id not in self.items]
            self.items.update(dict.fromkeys(fresh, "us"))
            self.recorded += fresh
        return set(fresh)

    def forget_pending(self, refund_ids) -> None:
        if self.fail_forget:
            raise StoreError("the table is gone", code="ResourceNotFoundException")
        with self.lock:
            for refund_id in refund_ids:
                if self.items.get(refund_id) == "us":
                    del self.items[refund_id]
                    self.forgotten.append(refund_id)

    def ours(self) -> set[str]:
        return {refund_id for refund_id, by in self.items.items() if by == "us"}


def _requests(n: int, prefix: str = "ov") -> list[RefundRequest]:
    return [RefundRequest(refund_id=f"{prefix}-{i}", payment_id=f"pay_{prefix}_{i}") for i in range(n)]


def assert_records_are_what_was_queued(sqs: _ScriptedSqs, store: _FakeStore) -> None:
    assert store.ours() == sqs.accepted
    assert sqs.sent_before_recorded == set()  # every message went after its record


def test_send_many_keeps_several_sends_in_flight_and_reports_in_order() -> None:
    """Issue 15: SendMessageBatch calls overlap (the first answers only after the second has), yet
    the report and the progress read as if they took turns, refusals exact; the refused entry's
    record is forgotten."""

    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        if call == 1:
            with sqs.lock:
                sqs.lock.wait_for(lambda: 2 in sqs.returned, timeout=10)
        return {"3"} if call == 4 else set()

    sqs = _ScriptedSqs(answer)
    store = _FakeStore(sqs)
    requests = _requests(205)
    seen: list[int] = []
    report = RefundProducer(sqs, "queue", store).send_many(  # type: ignore[arg-type]
        requests, progress=lambda done, total: seen.append(done)
    )
    assert sqs.returned.index(2) < sqs.returned.index(1) and sqs.most_in_flight >= 2
    assert report.sent == requests[:33] + requests[34:] and report.failed == [(requests[33], ANY)]
    assert report.failed[0][1] == "InvalidParameterValue: no"
    assert report.send_calls == 21 and seen == [*range(10, 201, 10), 205]
    assert sorted(store.recorded) == sorted(r.refund_id for r in requests)  # each once
    assert store.began == ["ov-0", "ov-100", "ov-200"] or store.began == ["ov-100", "ov-0", "ov-200"]
    assert store.forgotten == ["ov-33"]
    assert_records_are_what_was_queued(sqs, store)


def test_send_many_records_the_next_group_while_it_sends() -> None:
    """Issue 15 (bulk_10k_vs_raw): later groups' records are written while a group is sent. The
    third group's records start once the first group begins to go (two groups are recorded ahead);
    the first group's last send answers only once they have begun, and they end only once a send
    has answered after they began."""
    overlapped: list[bool] = []

    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        if call == 10:
            with sqs.lock:
                sqs.lock.wait_for(lambda: "ov-200" in store.began, timeout=5)
        return set()

    def hold(first: str) -> None:
        with sqs.lock:
            sqs.lock.notify_all()
            if first == "ov-200":
                seen = len(sqs.returned)
                overlapped.append(sqs.lock.wait_for(lambda: len(sqs.returned) > seen, timeout=5))

    sqs = _ScriptedSqs(answer)
    store = _FakeStore(sqs, hold=hold)
    report = RefundProducer(sqs, "queue", store).send_many(_requests(300))  # type: ignore[arg-type]
    assert overlapped == [True]
    assert len(report.sent) == 300 and sqs.calls == 30 and store.record_calls == 3
    assert_records_are_what_was_queued(sqs, store)


@pytest.mark.parametrize("failing_group", [0, 2])
def test_a_store_failure_sends_nothing_of_that_group(failing_group: int) -> None:
    sqs = _ScriptedSqs()
    store = _FakeStore(sqs, fail_group=f"ov-{failing_group * PENDING_GROUP}")
    with pytest.raises(StoreError, match="the table is gone"):
        RefundProducer(sqs, "queue", store).send_many(_requests(1000))  # type: ignore[arg-type]
    # A group's records start once the group two before it has begun to go: that stops too.
    assert (failing_group - 2) * PENDING_GROUP < 10 * sqs.calls <= failing_group * PENDING_GROUP
    assert sqs.accepted == {f"ov-{i}" for i in range(10 * sqs.calls)}
    assert store.record_calls <= failing_group + 2  # the group after it at most
    assert_records_are_what_was_queued(sqs, store)


def test_a_queue_error_lets_the_sends_in_flight_finish_and_forgets_the_rest() -> None:
    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        if call == 12:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessageBatch")
        return set()

    sqs = _ScriptedSqs(answer)
    store = _FakeStore(sqs)
    with pytest.raises(QueueError, match="access to the queue 'queue' is denied"):
        RefundProducer(sqs, "queue", store).send_many(_requests(1000))  # type: ignore[arg-type]
    assert sqs.calls <= 12 + SQS_IN_FLIGHT - 1  # nothing new once the error is known
    assert len(sqs.accepted) == (sqs.calls - 1) * 10
    assert store.forgotten  # the failed call's ten at least, and the group recorded ahead
    assert_records_are_what_was_queued(sqs, store)


def test_both_failures_are_reported() -> None:
    """The queue fails, then so does forgetting the records of what was not sent: the error says
    both (the records left behind are the store's fault, and said)."""

    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        if call == 1:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessageBatch")
        return set()

    sqs = _ScriptedSqs(answer)
    store = _FakeStore(sqs, fail_forget=True)
    with pytest.raises(
        QueueError, match=r"denied.*pending records of the requests not queued were not removed"
    ):
        RefundProducer(sqs, "queue", store).send_many(_requests(50))  # type: ignore[arg-type]


def test_a_failure_to_forget_after_a_clean_upload_is_raised() -> None:
    """Everything went but one refused entry, whose record cannot be removed: not a silent success."""
    sqs = _ScriptedSqs(lambda sqs, call, entries: {"0"} if call == 1 else set())
    store = _FakeStore(sqs, fail_forget=True)
    with pytest.raises(StoreError, match="1 requests were not queued and their pending records were not"):
        RefundProducer(sqs, "queue", store).send_many(_requests(30))  # type: ignore[arg-type]


def test_send_many_goes_on_when_whole_batches_are_refused() -> None:
    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        return {e["Id"] for e in entries} if call <= 25 else set()

    sqs = _ScriptedSqs(answer)
    store = _FakeStore(sqs)
    report = RefundProducer(sqs, "queue", store).send_many(_requests(300))  # type: ignore[arg-type]
    assert sqs.calls == 30 and len(report.failed) == 250 and len(report.sent) == 50
    assert len(store.forgotten) == 250
    assert_records_are_what_was_queued(sqs, store)


class _Stopped(Exception):
    pass


def test_a_caller_stopping_the_upload_forgets_what_it_did_not_send() -> None:
    """The console's progress callback can raise (Streamlit stopping the script): the sends in
    flight finish; what reached the queue keeps its record, what did not loses it."""

    def progress(done: int, total: int) -> None:
        if done >= 30:
            raise _Stopped

    sqs = _ScriptedSqs()
    store = _FakeStore(sqs)
    with pytest.raises(_Stopped):
        RefundProducer(sqs, "queue", store).send_many(_requests(1000), progress)  # type: ignore[arg-type]
    assert 30 <= len(sqs.accepted) <= 30 + SQS_IN_FLIGHT * 10
    assert store.record_calls <= 3  # two groups recorded ahead, no more
    assert_records_are_what_was_queued(sqs, store)


def test_an_id_given_twice_is_recorded_once_and_kept_if_either_went() -> None:
    requests = _requests(150)
    requests[120] = requests[5]  # the first copy refused, the second (a later group) accepted
    sqs = _ScriptedSqs(lambda sqs, call, entries: {"5"} if call == 1 else set())
    store = _FakeStore(sqs)
    report = RefundProducer(sqs, "queue", store).send_many(requests)  # type: ignore[arg-type]
    assert report.failed == [(requests[5], ANY)] and len(report.sent) == 149
    assert store.recorded.count("ov-5") == 1 and "ov-5" in store.ours()
    assert store.asked_again == set()  # the producer knows what it recorded: never asked again
    assert_records_are_what_was_queued(sqs, store)


# ---- against moto's DynamoDB: the real HistoryWriter ------------------------------------------
class _Dynamo:
    """The moto client, with batch_write_item scripted: `on_batch_write(call, puts)` may raise,
    or return a number n to have only the first n items written (the rest come back unprocessed),
    or -1 to have them all written and the call fail."""

    def __init__(self, client, on_batch_write=None, fail_delete: bool = False) -> None:
        self.client = client
        self.on_batch_write = on_batch_write
        self.fail_delete = fail_delete
        self.batch_writes = 0
        self.lock = threading.Lock()  # record_pending's calls come from several threads

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def batch_write_item(self, RequestItems: dict) -> dict:
        with self.lock:
            self.batch_writes += 1
            call = self.batch_writes
        ((table, puts),) = RequestItems.items()
        keep = self.on_batch_write(call, puts) if self.on_batch_write else None
        if keep is None:
            return self.client.batch_write_item(RequestItems=RequestItems)
        if keep < 0:  # written, but the answer is lost (a timeout): the caller cannot know
            self.client.batch_write_item(RequestItems=RequestItems)
            raise _throttled()
        if keep:
            self.client.batch_write_item(RequestItems={table: puts[:keep]})
        return {"UnprocessedItems": {table: puts[keep:]}} if puts[keep:] else {}

    def delete_item(self, **kwargs):
        if self.fail_delete:
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "down"}}, "DeleteItem")
        return self.client.delete_item(**kwargs)


def _throttled(code: str = "InternalServerError") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "down"}}, "BatchWriteItem")


def _existing(aws, refund_id: str) -> dict:
    """An item the Lambda finished earlier (a refund_id sent before)."""
    item = {
        "refund_id": {"S": refund_id},
        "payment_id": {"S": "pay_old"},
        "outcome": {"S": "refunded"},
        "queued_at": {"S": "2026-01-01T00:00:00.000Z"},
        "queued_day": {"S": "2026-01-01"},
        "message_id": {"S": "m-old"},
    }
    aws.dynamodb.put_item(TableName=aws.table, Item=item)
    return item


def test_record_pending_retries_unprocessed_items(aws) -> None:
    dynamo = _Dynamo(aws.dynamodb, lambda call, puts: 10 if call == 1 else None)
    writer = HistoryWriter(aws.table, dynamo)  # type: ignore[arg-type]
    requests = _requests(60, "up")
    assert writer.record_pending(requests, "2026-02-01T10:00:00.000Z") == {r.refund_id for r in requests}
    assert dynamo.batch_writes == 4  # 25 (10 written, 15 back), the 15 again, 25, 10
    assert set(pending_records(aws)) == {r.refund_id for r in requests}


def test_record_pending_gives_up_on_items_that_stay_unprocessed_and_leaves_nothing(aws) -> None:
    dynamo = _Dynamo(aws.dynamodb, lambda call, puts: 0 if call >= 2 else None)
    writer = HistoryWriter(aws.table, dynamo)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="unprocessed"):
        writer.record_pending(_requests(60, "up"), "2026-02-01T10:00:00.000Z")
    assert pending_records(aws) == {}  # the first 25, written, were forgotten


def test_a_batch_write_that_failed_after_writing_leaves_nothing(aws) -> None:
    dynamo = _Dynamo(aws.dynamodb, lambda call, puts: -1 if call == 2 else None)
    writer = HistoryWriter(aws.table, dynamo)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        writer.record_pending(_requests(60, "up"), "2026-02-01T10:00:00.000Z")
    assert pending_records(aws) == {}


def test_record_pending_never_overwrites_an_item_that_exists(aws) -> None:
    old = _existing(aws, "up-7")
    writer = HistoryWriter(aws.table, aws.dynamodb)
    requests = _requests(30, "up")
    recorded = writer.record_pending(requests, "2026-02-01T10:00:00.000Z")
    assert recorded == {r.refund_id for r in requests} - {"up-7"}
    assert pending_records(aws)["up-7"] == old
    assert writer.record_pending([requests[7]], "2026-02-01T10:00:00.000Z") == set()  # the single path
    assert pending_records(aws)["up-7"] == old


class _CountingDynamo:
    """A real (moto) DynamoDB client that counts BatchGetItem calls."""

    def __init__(self, client) -> None:
        self._client = client
        self.batch_gets = 0

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def batch_get_item(self, **kwargs):
        self.batch_gets += 1
        return self._client.batch_get_item(**kwargs)


def test_minted_refund_ids_are_recorded_without_the_existence_read(aws) -> None:
    """Ids minted for this send (a CSV row's, a requeue's) cannot exist: no BatchGetItem, half a
    read unit each saved; ids someone supplied are still read first."""
    counting = _CountingDynamo(aws.dynamodb)
    writer = HistoryWriter(aws.table, counting)  # type: ignore[arg-type]
    minted = _requests(30, "mi")
    assert writer.record_pending(minted, "2026-02-01T10:00:00.000Z", minted=True) == {
        r.refund_id for r in minted
    }
    assert counting.batch_gets == 0 and set(pending_records(aws)) == {r.refund_id for r in minted}
    writer.record_pending(_requests(30, "su"), "2026-02-01T10:00:00.000Z")
    assert counting.batch_gets == 1


def test_send_many_passes_the_callers_word_on_minted_ids() -> None:
    sqs = _ScriptedSqs()
    store = _FakeStore(sqs)
    RefundProducer(sqs, "queue", store).send_many(_requests(250), minted_ids=True)  # type: ignore[arg-type]
    RefundProducer(sqs, "queue", store).send_many(_requests(50, "other"))  # type: ignore[arg-type]
    assert store.minted == [True, True, True, False]


def test_record_pending_takes_an_id_given_twice_once(aws) -> None:
    requests = _requests(30, "tw")
    requests[20] = requests[3]  # BatchGetItem and BatchWriteItem refuse a key given twice
    writer = HistoryWriter(aws.table, aws.dynamodb)
    assert writer.record_pending(requests, "2026-02-01T10:00:00.000Z") == {r.refund_id for r in requests}
    assert len(pending_records(aws)) == 29


def test_forget_pending_leaves_what_the_lambda_touched(aws) -> None:
    writer = HistoryWriter(aws.table, aws.dynamodb)
    writer.record_pending(_requests(3, "fg"), "2026-02-01T10:00:00.000Z")
    aws.dynamodb.update_item(
        TableName=aws.table,
        Key={"refund_id": {"S": "fg-1"}},
        UpdateExpression="SET lease_token = :t, open_claims = :one",
        ExpressionAttributeValues={":t": {"S": "tok"}, ":one": {"N": "1"}},
    )
    _existing(aws, "fg-old")
    writer.forget_pending(["fg-0", "fg-1", "fg-old", "fg-never"])
    assert set(pending_records(aws)) == {"fg-1", "fg-2", "fg-old"}


@pytest.mark.parametrize("failing_write", [1, 6])  # the very first BatchWriteItem; a later one
def test_a_table_failure_mid_upload_leaves_only_the_records_of_what_was_queued(
    aws, failing_write: int
) -> None:
    def on_batch_write(call: int, puts: list) -> int | None:
        if call == failing_write:
            raise _throttled()
        return None

    sqs = _ScriptedSqs()
    writer = HistoryWriter(aws.table, _Dynamo(aws.dynamodb, on_batch_write))  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        RefundProducer(sqs, "queue", writer).send_many(_requests(300))  # type: ignore[arg-type]
    # Groups are recorded two at once, so which group the failing call is in varies: that group
    # and those after it are not sent; what was sent is a prefix.
    assert sqs.calls <= 20 and sqs.accepted == {f"ov-{i}" for i in range(10 * sqs.calls)}
    assert set(pending_records(aws)) == sqs.accepted


def test_refused_entries_lose_their_records_but_an_existing_item_stays(aws) -> None:
    old = _existing(aws, "ov-3")
    refused = {"ov-3", "ov-4", "ov-150"}

    def answer(sqs: _ScriptedSqs, call: int, entries: list[dict[str, str]]) -> set[str]:
        return {e["Id"] for e in entries if json.loads(e["MessageBody"])["refund_id"] in refused}

    sqs = _ScriptedSqs(answer)
    report = RefundProducer(sqs, "queue", HistoryWriter(aws.table, aws.dynamodb)).send_many(_requests(200))  # type: ignore[arg-type]
    assert {r.refund_id for r, _ in report.failed} == refused
    records = pending_records(aws)
    assert set(records) == sqs.accepted | {"ov-3"} and records["ov-3"] == old


class _OneSqs:
    """send_message that fails (or answers) as told."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.sent: list[str] = []

    def send_message(self, QueueUrl: str, MessageBody: str, DelaySeconds: int, **kw) -> dict[str, str]:
        if self.fail:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "SendMessage")
        self.sent.append(json.loads(MessageBody)["refund_id"])
        return {"MessageId": "m-1"}


def test_send_sends_then_records_with_the_message_id(aws) -> None:
    """One request is recorded once SQS has accepted it: a record always stands for a message that
    exists (the webhook receiver reads an existing record as "already sent")."""
    sqs = _OneSqs(fail=False)
    producer = RefundProducer(sqs, "queue", HistoryWriter(aws.table, aws.dynamodb))  # type: ignore[arg-type]
    assert producer.send(RefundRequest(refund_id="one-1", payment_id="pay_1")) == "m-1"
    records = pending_records(aws)
    assert set(records) == {"one-1"} and sqs.sent == ["one-1"]
    assert records["one-1"]["message_id"] == {"S": "m-1"} and "outcome" not in records["one-1"]
    producer.send(RefundRequest(refund_id="one-2", payment_id="pay_2"), delay_seconds=30)
    assert set(pending_records(aws)) == {"one-1"}  # a delayed re-check records nothing


def test_a_failed_send_records_nothing_and_leaves_an_existing_item(aws) -> None:
    old = _existing(aws, "one-old")
    producer = RefundProducer(_OneSqs(fail=True), "queue", HistoryWriter(aws.table, aws.dynamodb))  # type: ignore[arg-type]
    with pytest.raises(QueueError, match="denied"):
        producer.send(RefundRequest(refund_id="one-1", payment_id="pay_1"))
    with pytest.raises(QueueError, match="denied"):
        producer.send(RefundRequest(refund_id="one-old", payment_id="pay_old"))
    assert pending_records(aws) == {"one-old": old}


def test_a_sent_request_the_lambda_took_up_first_keeps_its_item(aws) -> None:
    """The Lambda may claim a message before its producer records it: the record then leaves the
    item alone (a conditional put)."""
    old = _existing(aws, "one-old")
    producer = RefundProducer(_OneSqs(fail=False), "queue", HistoryWriter(aws.table, aws.dynamodb))  # type: ignore[arg-type]
    producer.send(RefundRequest(refund_id="one-old", payment_id="pay_old"))
    assert pending_records(aws) == {"one-old": old}
