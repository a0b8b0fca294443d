"""Shared fixtures: moto for AWS, the Reditus simulator on 127.0.0.1 for Reditus."""

from __future__ import annotations

import functools
import io
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

# Never reach AWS from a test: fake credentials, a fixed region, tracing off.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_SERVICE_NAME": "reditus-refunds",
        "POWERTOOLS_METRICS_NAMESPACE": "ReditusRefundsTest",
    }
)
for name in (
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "REDITUS_API_BASE_URL",
    "REDITUS_API_KEY",
    "REDITUS_API_KEY_SECRET",
):
    os.environ.pop(name, None)

from moto import mock_aws  # noqa: E402

from reditus_local.motostrict import use_strict_index_keys  # noqa: E402
from reditus_local.resources import create_table_as_declared  # noqa: E402

# DynamoDB refuses an empty string in an index key on every write path; moto misses some of them.
# The same patch the local stack's moto server uses (reditus_local.motoserver).
use_strict_index_keys()

# The Lambda rig's fixtures (lam, simulator) for every test module.
pytest_plugins = ("tests.lambda_rig",)

API_KEY = "sk_test_7f3a9c2e1b8d4f6a0c5e9b2d7a1f3c8e"
TABLE = "history-test"


def create_history_table(client: Any, name: str = TABLE) -> None:
    """The history table exactly as template.yaml declares it."""
    create_table_as_declared(client, name)


class SerialisedClient:
    """moto's in-process DynamoDB is not thread-safe; the Lambda calls it from several threads.

    Real DynamoDB needs no such thing; the local stack's moto server does the same with a lock
    (reditus_local.motoserver).
    """

    def __init__(self, client: Any):
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return locked


@dataclass
class AwsFixture:
    dynamodb: Any
    sqs: Any
    secrets: Any
    table: str
    queue_url: str
    dlq_url: str


@pytest.fixture
def aws() -> Iterator[AwsFixture]:
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        dynamodb = SerialisedClient(session.client("dynamodb"))
        sqs = session.client("sqs")
        secrets = session.client("secretsmanager")
        create_history_table(dynamodb)
        dlq_url = sqs.create_queue(QueueName="refunds-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        queue_url = sqs.create_queue(
            QueueName="refunds",
            Attributes={
                "VisibilityTimeout": "360",
                "RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"5"}}',
            },
        )["QueueUrl"]
        yield AwsFixture(dynamodb, sqs, secrets, TABLE, queue_url, dlq_url)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """What the Powertools logger writes, formatted as in Lambda (JSON lines)."""
    from aws_lambda_powertools import Logger

    powertools = Logger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(powertools.registered_formatter)
    target = logging.getLogger(powertools.name)
    target.addHandler(handler)
    try:
        yield stream
    finally:
        target.removeHandler(handler)
