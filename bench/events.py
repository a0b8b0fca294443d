"""SQS-shaped Lambda events from real queue messages, and a fake LambdaContext."""

from __future__ import annotations

import itertools
from typing import Any

from reditus_refunds.contract import RefundRequest, new_refund_id
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer

MEMORY_MB = 256  # template.yaml: FunctionMemorySize default
TIMEOUT_MS = 60_000  # template.yaml: Timeout 60


class LambdaContext:
    function_name = "refund-submitter"
    function_version = "$LATEST"
    memory_limit_in_mb = MEMORY_MB
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:refund-submitter"
    aws_request_id = "bench"
    log_group_name = "/aws/lambda/refund-submitter"
    log_stream_name = "bench"

    def __init__(self, remaining_ms: int = TIMEOUT_MS):
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def payment_ids(prefix: str, count: int) -> list[str]:
    return [f"pay_{prefix}_{i:06d}" for i in range(count)]


def request(payment_id: str) -> RefundRequest:
    """The common case: a CSV upload from the console (requested_by, source, a fresh refund_id)."""
    return RefundRequest(
        payment_id=payment_id, refund_id=new_refund_id(), requested_by="ops@example.com", source="csv"
    )


def to_record(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message["Attributes"],
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:refunds",
        "awsRegion": "us-east-1",
    }


class Feeder:
    """Queues refunds the way the console does (SQS + pending records) and delivers them as events,
    playing the SQS event source mapping: receive up to ten, hand them over, delete the successes."""

    def __init__(self, sqs: Any, dynamodb: Any, table: str, queue_url: str, payments: list[str]):
        self.sqs = sqs
        self.queue_url = queue_url
        self.producer = RefundProducer(sqs, queue_url, HistoryWriter(table, dynamodb))
        self._payments = iter(payments)

    def event(self, size: int = 10) -> dict[str, Any]:
        chunk = list(itertools.islice(self._payments, size))
        if len(chunk) < size:
            raise RuntimeError("the bench ran out of payment ids")
        report = self.producer.send_many([request(p) for p in chunk], minted_ids=True)
        if report.failed:
            raise RuntimeError(f"SQS refused messages: {report.failed[:3]}")
        messages: list[dict[str, Any]] = []
        for _ in range(50):
            got = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            messages += got
            if len(messages) >= size:
                break
        if len(messages) != size:
            raise RuntimeError(f"received {len(messages)} messages, expected {size}")
        return {"Records": [to_record(m) for m in messages]}

    def settle(self, event: dict[str, Any], response: dict[str, Any]) -> int:
        """Delete what the handler did not report as failed; returns the number of failures."""
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        entries = [
            {"Id": str(i), "ReceiptHandle": r["receiptHandle"]}
            for i, r in enumerate(event["Records"])
            if r["messageId"] not in failed
        ]
        if entries:
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        return len(failed)
