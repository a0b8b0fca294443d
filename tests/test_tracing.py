"""X-Ray tracing as it runs in Lambda: subsegments around the Reditus call and every store call,
nested under the handler's subsegment although records run on worker threads.

A child process imports the real handler with Lambda's environment (LAMBDA_TASK_ROOT, a sampled
``_X_AMZN_TRACE_ID``, tracing on) and handles one batch against the moto server and the Reditus
simulator on 127.0.0.1. Its X-Ray SDK sends what it records over UDP to a "daemon" the test binds on
127.0.0.1 and reads: the same documents the real daemon would forward to X-Ray.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from reditus_local.motoserver import MotoServer
from reditus_local.resources import create_table_as_declared
from reditus_local.simulator import ReditusSimulator
from reditus_local.stack import AWS_IDENTITY_ENV

from .conftest import API_KEY

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
TRACE_ROOT = "1-67891233-abcdef012345678912345678"
FUNCTION_SEGMENT = "53995c3f42cd8ad8"
PROCESS_RECORD = "## reditus_refunds.handler.process_record"  # Powertools names it by module
CHILD = """
import json, sys
from reditus_refunds import handler

class Context:
    function_name = "refund-submitter"
    memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:refund-submitter"
    aws_request_id = "req-traced"

    def get_remaining_time_in_millis(self):
        return 60000

print(json.dumps(handler.lambda_handler(json.loads(sys.argv[1]), Context())))
"""


@dataclass
class Entity:
    id: str
    name: str
    parent_id: str | None
    doc: dict[str, Any] = field(repr=False)


@dataclass
class Trace:
    packets: list[bytes]
    entities: dict[str, Entity]

    def named(self, name: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.name == name]

    def ancestors(self, entity: Entity) -> list[str]:
        names: list[str] = []
        parent = entity.parent_id
        while parent in self.entities:
            names.append(self.entities[parent].name)
            parent = self.entities[parent].parent_id
        return names

    def children(self, entity: Entity) -> list[Entity]:
        return [e for e in self.entities.values() if e.parent_id == entity.id]


def parse(packets: list[bytes]) -> dict[str, Entity]:
    """The daemon protocol: a JSON header line, then one segment or subsegment document. A
    subsegment that closes after its children were streamed carries the rest inline."""
    entities: dict[str, Entity] = {}

    def walk(doc: dict[str, Any], parent_id: str | None) -> None:
        entities[doc["id"]] = Entity(doc["id"], doc["name"], parent_id, doc)
        for child in doc.get("subsegments", ()):
            walk(child, doc["id"])

    for packet in packets:
        header, _, body = packet.decode().partition("\n")
        assert json.loads(header) == {"format": "json", "version": 1}
        doc = json.loads(body)
        assert doc["trace_id"] == TRACE_ROOT
        walk(doc, doc.get("parent_id"))
    return entities


def drain(sock: socket.socket) -> list[bytes]:
    """Everything the child sent. Loopback UDP is delivered by the time the sender's call returns,
    and the child has exited, so whatever is queued is all there is."""
    sock.setblocking(False)
    packets: list[bytes] = []
    while True:
        try:
            packets.append(sock.recv(65535))
        except BlockingIOError:
            return packets


def sqs_record(body: Any) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "handle",
        "body": body if isinstance(body, str) else json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1780000000000"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:refunds",
        "awsRegion": "us-east-1",
    }


@pytest.fixture(scope="module")
def traced_batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Trace, dict[str, Any]]]:
    with (
        MotoServer() as moto,
        ReditusSimulator(
            API_KEY, payments=["pay_traced_1", "pay_traced_2"], invalid=["pay_traced_bad"]
        ) as sim,
    ):
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        dynamodb = session.client("dynamodb", endpoint_url=moto.endpoint_url)
        sqs = session.client("sqs", endpoint_url=moto.endpoint_url)
        create_table_as_declared(dynamodb, "history-traced")
        queue_url = sqs.create_queue(QueueName="refunds-traced")["QueueUrl"]
        secret = session.client("secretsmanager", endpoint_url=moto.endpoint_url).create_secret(
            Name="reditus-key-traced", SecretString=API_KEY
        )["ARN"]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if k not in AWS_IDENTITY_ENV}
        env.pop("POWERTOOLS_TRACE_DISABLED")
        env.update(
            {
                "LAMBDA_TASK_ROOT": str(tmp_path_factory.mktemp("task")),
                "_X_AMZN_TRACE_ID": f"Root={TRACE_ROOT};Parent={FUNCTION_SEGMENT};Sampled=1",
                "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{sock.getsockname()[1]}",
                "AWS_XRAY_CONTEXT_MISSING": "RUNTIME_ERROR",
                "AWS_ENDPOINT_URL": moto.endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "HISTORY_TABLE_NAME": "history-traced",
                "REFUND_QUEUE_URL": queue_url,
                "REDITUS_API_BASE_URL": sim.base_url,
                "REDITUS_API_KEY_SECRET": secret,
                "NOT_FOUND_GRACE_SECONDS": "0",
            }
        )
        event = {
            "Records": [
                sqs_record({"payment_id": "pay_traced_1", "refund_id": "r-traced-1"}),
                sqs_record({"payment_id": "pay_traced_2", "refund_id": "r-traced-2"}),
                sqs_record({"payment_id": "pay_traced_bad", "refund_id": "r-traced-3"}),
                sqs_record("this is not JSON"),
            ]
        }
        try:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(event)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            packets = drain(sock)
        finally:
            sock.close()
        response = json.loads(done.stdout.strip().splitlines()[-1])
        yield Trace(packets, parse(packets)), {"response": response, "output": done.stdout + done.stderr}


def test_the_batch_was_handled_while_traced(traced_batch: tuple[Trace, dict[str, Any]]) -> None:
    trace, run = traced_batch
    assert run["response"] == {"batchItemFailures": []}
    assert trace.packets, "the X-Ray SDK sent nothing to the daemon"


def test_the_handler_subsegment_hangs_off_the_function_segment(
    traced_batch: tuple[Trace, dict[str, Any]],
) -> None:
    trace, _ = traced_batch
    (handler,) = trace.named("## lambda_handler")
    assert handler.parent_id == FUNCTION_SEGMENT
    assert handler.doc["annotations"]["ColdStart"] is True


def test_each_record_is_traced_under_the_handler_though_it_runs_on_a_worker_thread(
    traced_batch: tuple[Trace, dict[str, Any]],
) -> None:
    trace, _ = traced_batch
    records = trace.named(PROCESS_RECORD)
    assert len(records) == 4
    for record in records:
        assert trace.ancestors(record) == ["## lambda_handler"]


def test_the_reditus_call_is_a_subsegment_with_the_http_call_inside(
    traced_batch: tuple[Trace, dict[str, Any]],
) -> None:
    trace, _ = traced_batch
    calls = trace.named("Reditus refund")
    assert len(calls) == 3  # two refunded, one rejected; the invalid message never reaches Reditus
    statuses = []
    for call in calls:
        assert trace.ancestors(call) == [PROCESS_RECORD, "## lambda_handler"]
        # The first call also fetches the key from Secrets Manager (then cached).
        inside = trace.children(call)
        assert {c.name for c in inside if c.doc["namespace"] == "aws"} <= {"secretsmanager"}
        (http,) = [c for c in inside if c.doc["namespace"] == "remote"]
        assert http.doc["http"]["request"]["url"].endswith("/v1/refunds")
        assert http.doc["http"]["request"]["method"] == "POST"
        statuses.append(http.doc["http"]["response"]["status"])
    assert sorted(statuses) == [200, 200, 400]
    # The records start together at a cold start; the key is fetched once, not once per record.
    assert len(trace.named("secretsmanager")) == 1


def test_every_store_call_is_a_subsegment_with_its_dynamodb_calls_inside(
    traced_batch: tuple[Trace, dict[str, Any]],
) -> None:
    trace, _ = traced_batch
    # Three fresh requests: each claimed without a read first (no "history read"), then its result.
    expected = {"history claim": 3, "history result": 3, "history record invalid": 1}
    for name, count in expected.items():
        spans = trace.named(name)
        assert len(spans) == count, name
        for span in spans:
            assert trace.ancestors(span) == [PROCESS_RECORD, "## lambda_handler"]
            calls = trace.children(span)
            assert calls and all(c.doc["namespace"] == "aws" and c.name == "dynamodb" for c in calls), name
    assert trace.named("history read") == []
    # The day counters follow the table's stream in a function of their own: nothing at the batch's end.
    assert trace.named("history settle counters") == []


def test_the_api_key_is_in_no_trace_document(traced_batch: tuple[Trace, dict[str, Any]]) -> None:
    trace, run = traced_batch
    assert not any(API_KEY.encode() in packet for packet in trace.packets)
    assert API_KEY not in run["output"]
