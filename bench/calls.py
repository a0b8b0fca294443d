"""DynamoDB and SQS calls per refund over 1,000 refunds in the common case, and their request units.

The common case: refunds queued the way the console and CSV upload do it (ten per
SendMessageBatch, recorded pending), delivered in batches of ten, all answered 200 at once by
Reditus. Calls are counted with botocore event hooks on each party's own client: the producer,
the event source mapping (receive, delete), the Lambda, and the day counters' stream function.

The stream function (reditus_refunds.counter_stream, played by the local worker's stream mapping)
is applied once per STREAM_EVERY refunds: its event source mapping's batching window (10 s) at the
steady flow the pricing assumes (full batches of ten, at least a refund a second). At a trickle a
stream batch holds fewer refunds, and the counters cost up to a read and a write per day per batch.
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

STREAM_EVERY = 100  # refunds per stream-function invocation (see the module docstring)


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
    counter_units: Units  # the stream function's (the day counters)
    counter_invocations: int
    log_bytes: int

    def per_refund(self, counter: Counter[str], ops: frozenset[str] | None = None) -> float:
        return sum(n for op, n in counter.items() if ops is None or op in ops) / self.refunds

    @property
    def sqs_requests_per_refund(self) -> float:
        total = self.lambda_sqs + self.producer_sqs + self.esm_sqs
        return sum(total.values()) / self.refunds

    @property
    def parts(self) -> tuple[Units, Units, Units]:
        return self.producer_units, self.lambda_units, self.counter_units

    @property
    def wru_per_refund(self) -> float:
        return sum(u.wru + u.gsi_wru for u in self.parts) / self.priced

    @property
    def rru_per_refund(self) -> float:
        return sum(u.rru for u in self.parts) / self.priced


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

    from reditus_local.worker import StreamMapping, StreamSettings, counter_handler, stream_arn_of

    lambda_clients = [service.dynamodb]
    lambda_ddb = CallCounter("dynamodb")
    capacity = CapacityModel(images).attach(feed_ddb, "producer")
    for client in lambda_clients:
        lambda_ddb.attach(client)
        capacity.attach(client, "lambda")
    counter_ddb = aws.client("dynamodb", stack.endpoint)
    stream = StreamMapping(
        aws.client("dynamodbstreams", stack.endpoint),
        StreamSettings(stream_arn_of(images, stack.table)),
        counter_handler(stack.table, counter_ddb),
    )
    capacity.attach(counter_ddb, "counters")
    counter_calls = CallCounter("dynamodb").attach(counter_ddb)
    invocations = 0
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
                capacity.detach(counter_ddb, "counters")
            runner.run(handler, reset=False)
            if (batch + 1) * 10 % STREAM_EVERY == 0:
                stream.drain()
                invocations += 1
        stream.drain()
    finally:
        for counter in (lambda_ddb, lambda_sqs, producer_ddb, feeder_sqs, counter_calls):
            counter.detach()
        for client in lambda_clients:
            capacity.detach(client, "lambda")
        capacity.detach(feed_ddb, "producer")
        capacity.detach(counter_ddb, "counters")
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
        counter_units=capacity.units["counters"],
        counter_invocations=invocations,
        log_bytes=log_bytes,
    )
