"""Queueing a CSV of 10,000 refunds: the product's bulk path against a raw boto3 loop.

* product: ``csv_import.parse_csv`` (every row validated with the shared contract) and
  ``RefundProducer.send_many``: a hundred requests at a time are recorded pending in the history
  BEFORE they are sent (one BatchGetItem for the refund_ids that exist, then BatchWriteItem Puts,
  25 per call, 1 write unit each), then sent ten per SendMessageBatch with a few calls in flight;
  the next hundred's records are written while those sends go on. The CLI's ``enqueue --csv``
  path (the console's bulk upload is the same, 100 rows per send_many).
* raw: ``csv.reader`` over the same text, a JSON body per row, ``send_message_batch`` ten at a
  time, one call after another; no validation, no history.
* product without the history (``store=None``), to show what the pending records cost.

DynamoDB and SQS on two moto servers. In AWS they are separate services on separate fleets; one
moto server is one Python process (one GIL) doing both services' work, so there the pending
records' DynamoDB work and the sends' SQS work queue up behind each other, which is moto's cost,
not the product's. So the headline figure runs the product's DynamoDB on a second moto server of
its own (the project's ``reditus_local.motoserver``, as for every figure) and its SQS, like the raw
path's and the SQS-only path's, on the bench's server; the raw path uses SQS alone, so it is the
same on one server or two. The product with both services on the bench's one server is measured
too, and reported beside it (``product_one_server_s``), so nobody is misled.

Each path has its own fresh queue (and the product its own table); the paths take turns a
thousand rows at a time, and only their own calls are timed.

Runs in a process of its own, as the CLI's ``enqueue --csv`` does (bench/run.py starts it once the
figures before it are done, so nothing else runs beside it), not inside the bench's process, which
by then holds what the earlier figures left (the handler, Powertools, the log sink, their objects
and threads). On the same code the ratio came out 1.55 and 1.71 in there and 1.32-1.53 in fresh
processes (2026-11-30); why exactly was not established (a test with a large heap was inconclusive).

    python -m bench.bulk ENDPOINT   # ENDPOINT: the bench's moto server; prints one JSON object
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from reditus_operators.csv_import import parse_csv
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer

from . import aws, procs
from .counting import CallCounter
from .procs import ROOT

ROWS = 10_000
CHUNK = 1_000  # the paths take turns, a thousand rows at a time, so load changes hit all alike


def csv_text(rows: int = ROWS, first: int = 0) -> str:
    lines = ["payment_id,note"] + [
        f"pay_bulk_{i:06d},Cancelled within 14 days" for i in range(first, first + rows)
    ]
    return "\n".join(lines) + "\n"


@dataclass
class BulkFigures:
    product_s: float  # DynamoDB on a moto server of its own, SQS on the bench's (the headline)
    product_one_server_s: float  # both on the bench's one moto server
    raw_s: float
    sqs_only_s: float
    send_calls: int
    raw_calls: int
    pending_ddb_calls: int
    sent: int

    @property
    def vs_raw(self) -> float:
        return self.product_s / self.raw_s

    @property
    def vs_raw_one_server(self) -> float:
        return self.product_one_server_s / self.raw_s


def _raw(sqs: Any, queue_url: str, text: str) -> int:
    reader = csv.reader(io.StringIO(text))
    next(reader)
    bodies = [
        json.dumps({"payment_id": row[0], "refund_id": str(uuid.uuid4()), "note": row[1]}) for row in reader
    ]
    calls = 0
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        calls += 1
    return calls


def _product(producer: RefundProducer, text: str) -> int:
    report = parse_csv(text.encode(), requested_by="ops@example.com")
    sent = producer.send_many(report.requests, minted_ids=True)
    if sent.failed or len(sent.sent) != len(report.requests):
        raise RuntimeError(f"bulk: {len(sent.sent)} sent, {len(sent.failed)} failed")
    return len(sent.sent)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def measure(endpoint: str) -> BulkFigures:
    """`endpoint` is the bench's moto server; a second one is started here for DynamoDB."""
    with procs.start_moto() as dynamodb_server:
        return _measure(endpoint, dynamodb_server.url)


def _measure(endpoint: str, dynamodb_endpoint: str) -> BulkFigures:
    sqs = aws.client("sqs", endpoint)
    dynamodb_one = aws.client("dynamodb", endpoint)
    dynamodb_two = aws.client("dynamodb", dynamodb_endpoint)
    table = _name("bulk-history")
    aws.create_table(dynamodb_one, table)
    aws.create_table(dynamodb_two, table)
    raw_queue = aws.create_queue(sqs, _name("bulk-raw"))
    product = RefundProducer(sqs, aws.create_queue(sqs, _name("bulk")), HistoryWriter(table, dynamodb_two))
    product_one = RefundProducer(
        sqs, aws.create_queue(sqs, _name("bulk-one")), HistoryWriter(table, dynamodb_one)
    )
    sqs_only = RefundProducer(sqs, aws.create_queue(sqs, _name("bulk-nostore")))
    _raw(sqs, aws.create_queue(sqs, _name("bulk-warm")), csv_text(200, ROWS))  # connections, moto's first use

    sqs_counter = CallCounter("sqs").attach(sqs)
    ddb_counter = CallCounter("dynamodb").attach(dynamodb_two)
    seconds = {"raw": 0.0, "product": 0.0, "product_one": 0.0, "sqs_only": 0.0}
    calls = {name: 0 for name in seconds}
    pending_calls = sent = 0
    for i, first in enumerate(range(0, ROWS, CHUNK)):
        text = csv_text(CHUNK, first)
        runs = [
            ("raw", functools.partial(_raw, sqs, raw_queue, text)),
            ("product", functools.partial(_product, product, text)),
            ("product_one", functools.partial(_product, product_one, text)),
            ("sqs_only", functools.partial(_product, sqs_only, text)),
        ]
        for name, run in runs[i % len(runs) :] + runs[: i % len(runs)]:
            sqs_counter.reset()
            ddb_counter.reset()
            started = time.perf_counter()
            result = run()
            seconds[name] += time.perf_counter() - started
            calls[name] += sqs_counter.calls["SendMessageBatch"]
            if name == "product":
                sent += result
                pending_calls += ddb_counter.total
    sqs_counter.detach()
    ddb_counter.detach()
    return BulkFigures(
        product_s=seconds["product"],
        product_one_server_s=seconds["product_one"],
        raw_s=seconds["raw"],
        sqs_only_s=seconds["sqs_only"],
        send_calls=calls["product"],
        raw_calls=calls["raw"],
        pending_ddb_calls=pending_calls,
        sent=sent,
    )


def run_alone(endpoint: str) -> BulkFigures:
    """measure() in a fresh Python process (see the top); its output is one JSON object."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.bulk", endpoint],
        cwd=ROOT,
        env=aws.clean_environ(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.bulk failed:\n{done.stderr[-3000:]}")
    return BulkFigures(**json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.bulk ENDPOINT", file=sys.stderr)
        return 2
    os.environ.update(aws.aws_env(None))
    os.environ.pop("AWS_ENDPOINT_URL", None)
    print(json.dumps(dataclasses.asdict(measure(args[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
