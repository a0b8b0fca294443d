"""AWS resources in the bench's moto server, and the environment the handler is built from."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import boto3
import requests

from reditus_local.resources import create_table_as_declared

REGION = "us-east-1"
API_KEY = "sk_bench_3b9e0c41d7a24f6e8c15"  # the simulator's key; also stored as the secret
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_SESSION_TOKEN": "bench",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


def aws_env(endpoint: str | None) -> dict[str, str]:
    """Fake credentials (never a real account) and, if given, the moto server as every endpoint."""
    env = dict(FAKE_CREDENTIALS)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def clean_environ() -> dict[str, str]:
    """os.environ without anything that could point the bench at a real account."""
    drop = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("REDITUS_")}


def client(service: str, endpoint: str | None) -> Any:
    return boto3.session.Session(region_name=REGION).client(service, endpoint_url=endpoint)  # type: ignore[call-overload]


def create_table(dynamodb: Any, name: str) -> None:
    """The history table as template.yaml declares it."""
    create_table_as_declared(dynamodb, name)


def reset_table(dynamodb: Any, name: str) -> None:
    """An empty table under the same name (moto: instant)."""
    with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
        dynamodb.delete_table(TableName=name)
    create_table(dynamodb, name)


def create_queue(sqs: Any, name: str) -> str:
    return str(sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "360"})["QueueUrl"])


@dataclass
class Stack:
    """What one handler needs: table, queue, secret, simulator."""

    endpoint: str
    sim_url: str
    table: str
    queue_url: str
    secret: str

    def handler_env(self, **extra: str) -> dict[str, str]:
        return {
            **aws_env(self.endpoint),
            "HISTORY_TABLE_NAME": self.table,
            "REFUND_QUEUE_URL": self.queue_url,
            "REDITUS_API_BASE_URL": self.sim_url,
            "REDITUS_API_KEY_SECRET": self.secret,
            "POWERTOOLS_SERVICE_NAME": "reditus-refunds",
            "POWERTOOLS_METRICS_NAMESPACE": "ReditusRefundsBench",
            "POWERTOOLS_LOG_LEVEL": "INFO",  # the template's default
            "POWERTOOLS_LOGGER_LOG_EVENT": "false",
            "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
            "POWERTOOLS_TRACE_DISABLED": "1",
            **extra,
        }


def make_stack(endpoint: str, sim_url: str, prefix: str = "bench") -> Stack:
    suffix = uuid.uuid4().hex[:6]
    table = f"{prefix}-history-{suffix}"
    create_table(client("dynamodb", endpoint), table)
    queue_url = create_queue(client("sqs", endpoint), f"{prefix}-refunds-{suffix}")
    secret = client("secretsmanager", endpoint).create_secret(
        Name=f"{prefix}-reditus-key-{suffix}", SecretString=API_KEY
    )["ARN"]
    return Stack(endpoint, sim_url, table, queue_url, secret)


def add_payments(sim_url: str, payment_ids: Iterable[str]) -> None:
    """Make payments known to the simulator (its control API)."""
    ids = list(payment_ids)
    for start in range(0, len(ids), 5000):
        response = requests.post(
            f"{sim_url}/_sim/config", data=json.dumps({"add_payments": ids[start : start + 5000]}), timeout=30
        )
        response.raise_for_status()


def set_latency(sim_url: str, seconds: float) -> None:
    response = requests.post(f"{sim_url}/_sim/config", data=json.dumps({"latency": seconds}), timeout=30)
    response.raise_for_status()
