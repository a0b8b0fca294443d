"""DynamoDB and SQS calls per refund over 1,000 refunds in the common case, and their request units.

The common case: refunds queued the way the console and CSV upload do it (ten per
SendMessageBatch, recorded pending), delivered in batches of ten, all answered 200 at once by
Reditus. Calls are counted with botocore event hooks on each party's own client: the producer,
the event source mapping (receive, delete) and the Lambda.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reditus_operators.history import HistoryReader

from . import aws
from .batches import BatchRunner, Handler
from .counting import CallCounter, CapacityModel, Units
from .events import Feeder
from .sink import LogSink


@dataclass
class CallFigures:
    refunds: int
    priced: int  # refunds the request units were counted over
    lambda_ddb: Counter[str]
    producer_ddb: Counter[str]
    lambda_sqs: Counter[str]
    producer_sqs: Counter[str]
    esm_sqs: Counter[str]
    lambda_units: Units
    producer_units: Units
    log_bytes: int

    def per_refund(self, counter: Counter[str], ops: frozenset[str] | None = None) -> float:
        return sum(n for op, n in counter.items() if ops is None or op in ops) / self.refunds

    @property
    def sqs_requests_per_refund(self) -> float:
        total = self.lambda_sqs + self.producer_sqs + self.esm_sqs
        return sum(total.values()) / self.refunds

    @property
    def wru_per_refund(self) -> float:
        units = (self.lambda_units.wru + self.lambda_units.gsi_wru) + (
            self.producer_units.wru + self.producer_units.gsi_wru
        )
        return units / self.priced

    @property
    def rru_per_refund(self) -> float:
        return (self.lambda_units.rru + self.producer_units.rru) / self.priced


def measure(
    stack: aws.Stack,
    service: Any,
    handler: Handler,
    payments: list[str],
    logs: LogSink,
    refunds: int = 1000,
    priced: int = 300,
) -> CallFigures:
    """Calls are counted over all `refunds`; request units over the first `priced` of them (every
    common-case refund costs the same units, and pricing costs moto calls)."""
    images = aws.client("dynamodb", stack.endpoint)
    aws.reset_table(images, stack.table)
    aws.set_latency(stack.sim_url, 0.0)
    feed_sqs, feed_ddb = aws.client("sqs", stack.endpoint), aws.client("dynamodb", stack.endpoint)
    feeder = Feeder(feed_sqs, feed_ddb, stack.table, stack.queue_url, payments)
    runner = BatchRunner(stack, feeder, logs)

    # The Lambda's DynamoDB calls go through two clients: the service's, and the counter
    # settlement's own (bounded timeouts; app.py). Both are counted and priced as the Lambda's.
    lambda_clients = [service.dynamodb]
    settle_client = getattr(getattr(getattr(service, "settle_store", None), "table", None), "client", None)
    if settle_client is not None and settle_client is not service.dynamodb:
        lambda_clients.append(settle_client)
    lambda_ddb = CallCounter("dynamodb")
    capacity = CapacityModel(images).attach(feed_ddb, "producer")
    for client in lambda_clients:
        lambda_ddb.attach(client)
        capacity.attach(client, "lambda")
    lambda_sqs = CallCounter("sqs").attach(service.sqs)
    producer_ddb = CallCounter("dynamodb").attach(feed_ddb)
    feeder_sqs = CallCounter("sqs").attach(feed_sqs)
    logged = logs.bytes
    try:
        for batch in range(refunds // 10):
            if batch * 10 == priced:
                for client in lambda_clients:
                    capacity.detach(client, "lambda")
                capacity.detach(feed_ddb, "producer")
            runner.run(handler, reset=False)
    finally:
        for counter in (lambda_ddb, lambda_sqs, producer_ddb, feeder_sqs):
            counter.detach()
        for client in lambda_clients:
            capacity.detach(client, "lambda")
        capacity.detach(feed_ddb, "producer")
    log_bytes = logs.bytes - logged

    today = datetime.now(UTC).date()
    counts = HistoryReader(stack.table, images).daily_counts(today - timedelta(days=1), today)
    refunded = sum(day.get("refunded", 0) for day in counts.values())
    pending = sum(day.get("pending", 0) for day in counts.values())
    if refunded != refunds or pending != 0:
        raise RuntimeError(f"expected {refunds} refunded and none pending, the counters say {counts}")

    producer_sqs = Counter({op: n for op, n in feeder_sqs.calls.items() if op == "SendMessageBatch"})
    esm_sqs = Counter({op: n for op, n in feeder_sqs.calls.items() if op != "SendMessageBatch"})
    return CallFigures(
        refunds=refunds,
        priced=min(priced, refunds),
        lambda_ddb=Counter(lambda_ddb.calls),
        producer_ddb=Counter(producer_ddb.calls),
        lambda_sqs=Counter(lambda_sqs.calls),
        producer_sqs=producer_sqs,
        esm_sqs=esm_sqs,
        lambda_units=capacity.units["lambda"],
        producer_units=capacity.units["producer"],
        log_bytes=log_bytes,
    )
