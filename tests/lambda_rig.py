"""Drives the real Lambda handler: moto for AWS, the Reditus simulator on 127.0.0.1, SQS-shaped events."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from reditus_local.simulator import ReditusSimulator
from reditus_operators.history import HistoryReader
from reditus_refunds.app import PowertoolsTelemetry, SubmitterService
from reditus_refunds.settings import Settings

from .conftest import API_KEY, AwsFixture


class LambdaContext:
    function_name = "refund-submitter"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:refund-submitter"
    aws_request_id = "req-1"

    def __init__(self, remaining_ms: int = 60_000):
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class Lambda:
    aws: AwsFixture
    sim: ReditusSimulator
    handler: Any
    service: SubmitterService

    def send(self, *bodies: Any, attributes: dict[str, str] | None = None) -> None:
        extra: dict[str, Any] = {}
        if attributes:
            extra["MessageAttributes"] = {
                k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()
            }
        for body in bodies:
            text = body if isinstance(body, str) else json.dumps(body)
            self.aws.sqs.send_message(QueueUrl=self.aws.queue_url, MessageBody=text, **extra)

    def receive_event(self) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        while True:
            got = self.aws.sqs.receive_message(
                QueueUrl=self.aws.queue_url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            if not got:
                break
            messages += got
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m["Attributes"],
                    "messageAttributes": {
                        name: {"stringValue": value.get("StringValue"), "dataType": value["DataType"]}
                        for name, value in (m.get("MessageAttributes") or {}).items()
                    },
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:refunds",
                    "awsRegion": "us-east-1",
                }
                for m in messages
            ]
        }

    def run(self, *bodies: Any, remaining_ms: int = 60_000) -> tuple[dict[str, Any], set[str]]:
        """Send, deliver as one event, return (event, ids reported as failures)."""
        self.send(*bodies)
        event = self.receive_event()
        response = self.handler.lambda_handler(event, LambdaContext(remaining_ms))
        return event, {f["itemIdentifier"] for f in response["batchItemFailures"]}

    def record(self, refund_id: str) -> Any:
        return HistoryReader(self.aws.table, self.aws.dynamodb).get(refund_id)

    def items(self) -> list[dict[str, Any]]:
        return self.aws.dynamodb.scan(TableName=self.aws.table)["Items"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def simulator() -> Iterator[ReditusSimulator]:
    with ReditusSimulator(API_KEY, late={"pay_late": 3600}) as sim:
        yield sim


def make_lambda(
    aws: AwsFixture, sim: ReditusSimulator, monkeypatch: pytest.MonkeyPatch, **env: str
) -> Lambda:
    secret_arn = aws.secrets.create_secret(Name=f"reditus-key-{uuid.uuid4().hex[:6]}", SecretString=API_KEY)[
        "ARN"
    ]
    values = {
        "HISTORY_TABLE_NAME": aws.table,
        "REFUND_QUEUE_URL": aws.queue_url,
        "REDITUS_API_BASE_URL": sim.base_url,
        "REDITUS_API_KEY_SECRET": secret_arn,
        "NOT_FOUND_GRACE_SECONDS": "0",
        "REDITUS_BACKOFF_BASE": "0.01",
        "REDITUS_BACKOFF_CAP": "0.05",
        **env,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    import reditus_refunds.handler as handler

    telemetry = PowertoolsTelemetry(handler.metrics, handler.tracer)
    service = SubmitterService(
        Settings.from_env(),
        dynamodb=aws.dynamodb,
        sqs=aws.sqs,
        secrets=aws.secrets,
        telemetry=telemetry,
    )
    monkeypatch.setattr(handler, "service", service)
    monkeypatch.setattr(handler, "telemetry", telemetry)
    return Lambda(aws, sim, handler, service)


@pytest.fixture
def lam(aws: AwsFixture, simulator: ReditusSimulator, monkeypatch: pytest.MonkeyPatch) -> Lambda:
    return make_lambda(aws, simulator, monkeypatch)
