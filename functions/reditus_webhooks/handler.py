"""The webhook receiver Lambda (behind a Function URL): Powertools wiring only; the work is in app.py.

Kept small at cold start: Logger and Metrics only (no batch, no data classes, no tracer), a
DynamoDB and an SQS client; the Secrets Manager client and Powertools Parameters are built on
the first request that needs a provider's secret.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from botocore.config import Config

from reditus_refunds.sdk_logs import pin_sdk_logs
from reditus_webhooks.app import WebhookReceiver, build_receiver

logger = Logger()
metrics = Metrics()


class ToPowertools(logging.Handler):
    """The package logs through `logging`; its records come out as the Powertools logger's JSON."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(logger.name).handle(record)


pin_sdk_logs()  # botocore's DEBUG lines hold secrets (sdk_logs.py)
_package_logger = logging.getLogger("reditus_webhooks")
_package_logger.handlers = [h for h in _package_logger.handlers if type(h).__name__ != "ToPowertools"]
_package_logger.addHandler(ToPowertools())
_package_logger.setLevel(logger.log_level)
_package_logger.propagate = False  # Lambda's root handler would print each line a second time

# A provider waits a few seconds at most: fail fast and let it retry rather than time out.
AWS_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=3, max_pool_connections=4
)


class PowertoolsMetrics:
    def __init__(self, target: Metrics):
        self._metrics = target
        self._lock = threading.Lock()

    def count(self, metric: str) -> None:
        with self._lock:
            self._metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)


_session = boto3.session.Session()
receiver: WebhookReceiver = build_receiver(
    os.environ,
    dynamodb=_session.client("dynamodb", config=AWS_CONFIG),
    sqs=_session.client("sqs", config=AWS_CONFIG),
    secretsmanager=lambda: _session.client("secretsmanager", config=AWS_CONFIG),
    telemetry=PowertoolsMetrics(metrics),
)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return receiver.handle(event).to_function_url()
