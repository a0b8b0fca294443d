"""A bulk send that stops part way (a console rerun raising inside the progress callback, an SQS
failure, Ctrl-C): what SQS accepted before it stopped is known to the caller, is not sent again when
the upload resumes, and is in the audit log with who queued it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from reditus_operators import actions
from reditus_operators.access import Actor, Role
from reditus_operators.audit import DONE, STOPPED, AuditWriter
from reditus_refunds.aws_errors import QueueError
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer, SendReport
from reditus_refunds.records import Outcome
from tests import test_access, test_cli
from tests.conftest import AwsFixture
from tests.test_access import signed_in
from tests.test_cli import System
from tests.test_console import BULK_PAGE, audit_entries, click, upload
from ui import bulk
from ui.bulk import BulkUpload, start_upload

# The fixtures these tests share with the access and CLI tests.
accounts = test_access.accounts
system = test_cli.system

ROWS = 250  # three chunks of 100 (see chunks_of_100)


@pytest.fixture(autouse=True)
def chunks_of_100(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks small enough that an upload of ROWS crosses two of their boundaries."""
    monkeypatch.setattr(bulk, "SEND_CHUNK", 100)


class Rerun(BaseException):
    """What Streamlit raises inside a callback that draws when the operator clicks during a run."""


class FailingSqs:
    """An SQS client whose `fail_at`-th SendMessageBatch (1-based) fails once; the rest go to moto."""

    def __init__(self, client: Any, fail_at: int):
        self._client = client
        self.fail_at = fail_at
        self.calls = 0

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ClientError(
                {"Error": {"Code": "ServiceUnavailable", "Message": "try later"}}, "SendMessageBatch"
            )
        return self._client.send_message_batch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def queued_bodies(aws: AwsFixture) -> list[dict[str, Any]]:
    bodies = []
    while True:
        got = aws.sqs.receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return bodies
        bodies += [json.loads(m["Body"]) for m in got]
        aws.sqs.delete_message_batch(
            QueueUrl=aws.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
        )


def csv_upload(rows: int = ROWS) -> BulkUpload:
    text = "payment_id,note\n" + "".join(f"pay_stop_{n:04d},month end\n" for n in range(rows))
    return start_upload(text.encode(), "f.csv", {}, "ops@example.com")


def producer(aws: AwsFixture, sqs: Any = None) -> RefundProducer:
    return RefundProducer(sqs or aws.sqs, aws.queue_url, HistoryWriter(aws.table, aws.dynamodb))


def sender(p: RefundProducer) -> Any:
    return lambda requests, progress, into, minted: p.send_many(
        requests, progress, minted_ids=minted, into=into
    )


def settle(aws: AwsFixture, refund_id: str) -> None:
    """What the Lambda writes when it has the refund's answer (enough of it for this test)."""
    aws.dynamodb.update_item(
        TableName=aws.table,
        Key={"refund_id": {"S": refund_id}},
        UpdateExpression="SET outcome = :o",
        ExpressionAttributeValues={":o": {"S": Outcome.REFUNDED.value}},
    )


def assert_each_sent_once(aws: AwsFixture, upload: BulkUpload) -> None:
    bodies = queued_bodies(aws)
    assert len(bodies) == ROWS
    assert Counter(b["payment_id"] for b in bodies).most_common(1)[0][1] == 1
    assert {b["refund_id"] for b in bodies} == set(upload.queued)


def test_a_rerun_inside_a_chunk_does_not_send_what_sqs_accepted_again(aws: AwsFixture) -> None:
    upload = csv_upload()
    p = producer(aws)

    def rerun(done: int, total: int) -> None:
        if done:
            raise Rerun

    with pytest.raises(Rerun):
        upload.send(sender(p), rerun)
    first = dict(upload.queued)
    assert 10 <= len(first) < 100  # stopped inside the first chunk, its answers so far kept
    settled = next(iter(first))
    settle(aws, settled)  # the Lambda got to one of them before the operator's rerun resumed
    upload.send(sender(p))
    assert_each_sent_once(aws, upload)
    item = aws.dynamodb.get_item(TableName=aws.table, Key={"refund_id": {"S": settled}})["Item"]
    assert item["outcome"]["S"] == Outcome.REFUNDED.value  # not recorded pending again over it


def test_an_sqs_failure_inside_a_chunk_keeps_what_was_queued_and_the_retry_sends_the_rest(
    aws: AwsFixture,
) -> None:
    upload = csv_upload()
    failing = FailingSqs(aws.sqs, fail_at=13)  # the third call of the second chunk
    with pytest.raises(QueueError):
        upload.send(sender(producer(aws, failing)))
    assert 100 <= len(upload.queued) < 200
    pending = aws.dynamodb.scan(TableName=aws.table)["Items"]
    assert {i["refund_id"]["S"] for i in pending} == set(upload.queued)  # no record without a message
    upload.send(sender(producer(aws, failing)))
    assert_each_sent_once(aws, upload)


def acting(aws: AwsFixture) -> actions.Acting:
    return actions.Acting(
        Actor("ops@example.com", Role.OPERATOR, "cli"), AuditWriter(aws.table, aws.dynamodb)
    )


def test_a_bulk_upload_that_stops_is_audited_with_what_it_queued(aws: AwsFixture) -> None:
    requests = [r for _, r in csv_upload().to_send()]
    p = producer(aws, FailingSqs(aws.sqs, fail_at=3))
    into = SendReport()
    with pytest.raises(QueueError):
        actions.bulk_upload(acting(aws), sender_for_cli(p), requests, {"file_name": "f.csv"}, into=into)
    [entry] = audit_entries(aws)
    assert entry.action == "bulk_upload" and entry.result == STOPPED
    assert set(entry.refund_ids) == {r.refund_id for r in into.sent} and 10 <= len(into.sent) < ROWS
    assert entry.details["queued"] == len(into.sent) and "try later" in (entry.reason or "")


def sender_for_cli(p: RefundProducer) -> Any:
    return lambda requests, into: p.send_many(requests, minted_ids=True, into=into)


def test_a_requeue_that_stops_is_audited_with_what_it_requeued(aws: AwsFixture) -> None:
    from reditus_operators.history import HistoryReader
    from tests.test_console import put_records

    old = put_records(aws, [(Outcome.NOT_FOUND, f"pay_rq_{n:02d}") for n in range(30)])
    records = [HistoryReader(aws.table, aws.dynamodb).get(refund_id) for refund_id in old]
    p = producer(aws, FailingSqs(aws.sqs, fail_at=2))
    with pytest.raises(QueueError):
        actions.requeue_records(acting(aws), p, [r for r in records if r], source="console")
    [entry] = audit_entries(aws)
    requeued = {b["refund_id"] for b in queued_bodies(aws)}
    assert entry.action == "requeue" and entry.result == STOPPED and entry.count == len(requeued) >= 10
    assert set(entry.details["requeued"].values()) == requeued


def test_the_console_audits_a_stopped_upload_and_its_retry_each_refund_once(
    accounts: AwsFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reditus_operators.config import SystemConfig

    original = SystemConfig.client

    def client(config: SystemConfig, service: str) -> Any:
        real = original(config, service)
        return FailingSqs(real, fail_at=5) if service == "sqs" else real

    monkeypatch.setattr(SystemConfig, "client", client)
    content = "payment_id,note\n" + "".join(f"pay_stop_{n:04d},month end\n" for n in range(ROWS))
    at = upload(signed_in("operator", BULK_PAGE), content, name="month-end.csv")
    click(at, f"Queue {ROWS} refund(s)")
    assert any("were queued before the failure" in c.value for c in at.caption)
    [retry] = [b for b in at.button if b.label.startswith("Retry the remaining")]
    retry.click().run()
    assert any(s.value.startswith(f"Queued {ROWS} refund(s)") for s in at.success)
    entries = {e.result: e for e in audit_entries(accounts) if e.action == "bulk_upload"}
    assert set(entries) == {STOPPED, DONE}
    stopped, done = set(entries[STOPPED].refund_ids), set(entries[DONE].refund_ids)
    assert len(stopped) >= 40 and not stopped & done  # calls 1-4 and those in flight, then the rest
    assert retry.label == f"Retry the remaining {ROWS - len(stopped)}"
    assert stopped | done == {b["refund_id"] for b in queued_bodies(accounts)}


def test_the_cli_says_how_many_it_queued_before_the_queue_failed(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reditus_operators.audit import AuditReader
    from reditus_operators.config import SystemConfig

    original = SystemConfig.client
    monkeypatch.setattr(
        SystemConfig,
        "client",
        lambda config, service: (
            FailingSqs(original(config, service), 3) if service == "sqs" else original(config, service)
        ),
    )
    path = tmp_path / "refunds.csv"
    path.write_text("payment_id\n" + "".join(f"pay_cli_{n:03d}\n" for n in range(ROWS)))
    run = system.run("enqueue", "--csv", str(path))
    sent = {json.loads(m["Body"])["refund_id"] for m in system.messages()}
    assert run.code == 1 and 20 <= len(sent) < ROWS
    assert f"queued {len(sent)} of {ROWS} refund(s) before it stopped" in run.err
    [entry] = AuditReader(system.table, system.dynamodb).list(limit=10).entries
    assert (entry.action, entry.result, entry.channel) == ("bulk_upload", STOPPED, "cli")
    assert set(entry.refund_ids) == sent


class LostAnswerSqs(FailingSqs):
    """Its `fail_at`-th SendMessageBatch reaches SQS, but the answer is lost (a read timeout)."""

    def send_message_batch(self, **kwargs: Any) -> Any:
        answer = self._client.send_message_batch(**kwargs)
        self.calls += 1
        if self.calls == self.fail_at:
            raise ReadTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com/")
        return answer


def test_what_sqs_took_without_answering_is_not_recorded_pending_over_the_lambda_s_item(
    aws: AwsFixture,
) -> None:
    upload = csv_upload()
    with pytest.raises(QueueError):
        upload.send(sender(producer(aws, LostAnswerSqs(aws.sqs, fail_at=2))))
    taken = {b["refund_id"] for b in queued_bodies(aws)} - set(upload.queued)
    assert len(taken) == 10  # in the queue, but the upload cannot know
    for refund_id in taken:  # the Lambda took them up and settled them meanwhile
        settle(aws, refund_id)
    upload.send(sender(producer(aws)))
    assert len(upload.queued) == ROWS
    for refund_id in taken:
        item = aws.dynamodb.get_item(TableName=aws.table, Key={"refund_id": {"S": refund_id}})["Item"]
        assert item["outcome"]["S"] == Outcome.REFUNDED.value
    assert not upload.unsure
