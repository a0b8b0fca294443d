"""The webhook receiver: its cold start against bare boto3, and request-to-answer latency.

* init: ``import reditus_webhooks.handler`` (Powertools' logger and metrics, the receiver built
  from the environment with a DynamoDB and an SQS client; Secrets Manager only on first use)
  against ``import boto3`` and the same two clients with the same botocore Config, each in a
  fresh interpreter, measured as bench/startup.py measures the submitter: from the receiver's own
  package built by functions/Makefile (bench/artifact.py) under python3.12, CPU time, medians of
  interleaved rounds; in the development venv when no python3.12 or registry is there (the table
  says which).
* latency: the real handler served on 127.0.0.1 by reditus_local.webhooks (its own process, as
  in the local stack), backed by the project's moto server; signed Stripe ``charge.refunded``
  events, each a new refund (event recorded, refund request sent and recorded pending, event
  finished), posted after a warm-up, one at a time and then by 20 concurrent senders.
* cost: DynamoDB request units of the receiver per refund event, in-process against the bench's
  moto server and an empty table of its own (``measure_cost``), priced by bench.counting's
  CapacityModel: the writes to every index of the table (the receiver's sparse event and review
  indexes included) and the refused conditional writes, which DynamoDB bills.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from . import aws
from .artifact import Built
from .counting import CallCounter, CapacityModel, Units
from .procs import Child, python
from .startup import EPILOGUE, PROLOGUE, Timings, dev_probe, import_breakdown, interleaved, package_probe

SENDERS = 20
SECRET = "whsec_bench_" + "0" * 32

RECEIVER_CODE = PROLOGUE + "import reditus_webhooks.handler" + EPILOGUE

BARE_CODE = (
    PROLOGUE
    + """
import boto3
from botocore.config import Config
config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=3,
                max_pool_connections=4)
session = boto3.session.Session()
clients = [session.client(name, config=config) for name in ("dynamodb", "sqs")]
"""
    + EPILOGUE
)


@dataclass
class WebhookInit:
    python: str  # where it was measured, e.g. "Python 3.12.1, built package"
    receiver: Timings
    bare: Timings
    breakdown: list[tuple[str, float]]

    @property
    def receiver_ms(self) -> list[float]:
        return self.receiver.cpu_ms

    @property
    def bare_ms(self) -> list[float]:
        return self.bare.cpu_ms

    @property
    def ratio(self) -> float:
        return self.receiver.cpu / self.bare.cpu

    @property
    def wall_ratio(self) -> float:
        return self.receiver.wall / self.bare.wall


def measure_init(env: dict[str, str], rounds: int = 12, built: Built | None = None) -> WebhookInit:
    """The receiver's cold start, from its own built package when `built`, else in the dev venv."""
    with tempfile.TemporaryDirectory(prefix="bench-webhook-startup-") as workdir:
        probe = (
            dev_probe(env, workdir) if built is None else package_probe(env, built, built.receiver, workdir)
        )
        receiver, bare = interleaved(probe, RECEIVER_CODE, BARE_CODE, rounds)
        return WebhookInit(probe.where, receiver, bare, import_breakdown(probe, "reditus_webhooks.handler"))


# ---- latency ----------------------------------------------------------------------------------


def _signed(charge_id: str, event_id: str) -> tuple[bytes, dict[str, str]]:
    event = {
        "id": event_id,
        "object": "event",
        "type": "charge.refunded",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": charge_id,
                "object": "charge",
                "amount": 1099,
                "amount_refunded": 1099,
                "refunded": True,
                "currency": "usd",
                "metadata": {},
                "status": "succeeded",
            }
        },
    }
    body = json.dumps(event, separators=(",", ":")).encode()
    t = int(time.time())
    signature = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Stripe-Signature": f"t={t},v1={signature}", "content-type": "application/json"}


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class WebhookLatency:
    sequential_ms: list[float]
    concurrent_ms: list[float]

    @staticmethod
    def p(samples: list[float], q: float) -> float:
        return _percentile(samples, q)


def measure_latency(env: dict[str, str], requests_per_phase: int = 400) -> WebhookLatency:
    """`env` names the moto server (AWS_ENDPOINT_URL), the table and the queue."""
    server_env = {
        **env,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "PYTHONWARNINGS": "ignore:No application metrics to publish",
    }
    for name in [k for k in server_env if k.startswith("REDITUS_WEBHOOK_") and k.endswith("_SECRET_ARN")]:
        del server_env[name]
    argv = python("-m", "reditus_local.webhooks", "--port", "0")
    with Child("webhook receiver", argv, "webhook receiver ready:", env=server_env) as server:
        url = server.url + "/stripe"
        counter = iter(range(10**9))
        lock = threading.Lock()

        def post(session: requests.Session) -> float:
            with lock:
                n = next(counter)
            body, headers = _signed(f"ch_bench_{n}", f"evt_bench_{n}")
            started = time.perf_counter()
            answer = session.post(url, data=body, headers=headers, timeout=10)
            elapsed = (time.perf_counter() - started) * 1000
            if answer.status_code != 200 or answer.json().get("status") != "queued":
                raise RuntimeError(f"the receiver answered {answer.status_code}: {answer.text[:200]}")
            return elapsed

        with requests.Session() as session:
            for _ in range(20):  # warm: connections, the handler's first calls
                post(session)
            sequential = [post(session) for _ in range(requests_per_phase)]

        sessions = threading.local()

        def sender(_: int) -> float:
            if not hasattr(sessions, "session"):
                sessions.session = requests.Session()
            timed: Callable[[requests.Session], float] = post
            return timed(sessions.session)

        with ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(sender, range(SENDERS * 2)))  # warm every sender's connection
            concurrent = list(pool.map(sender, range(requests_per_phase)))
    return WebhookLatency(sequential, concurrent)


# ---- cost --------------------------------------------------------------------------------------


@dataclass
class WebhookCost:
    """Request units of the receiver per refund event and per replay, plus the Lambda's share."""

    events: int
    replays: int
    receiver: Units  # the receiver's own records: event, dedup, counts (EventStore's client)
    producer: Units  # the refund request it queues, recorded pending (RefundProducer's client)
    replay: Units  # both clients, replays only
    calls: Counter[str]  # the receiver's DynamoDB calls (both clients), new events
    replay_calls: Counter[str]
    sqs_calls: Counter[str]
    lambda_wru: float  # per refund, from bench/calls.py's figures of the same run
    lambda_rru: float

    def _part(self, *labels: str) -> Units:
        total = Units()
        for units in [getattr(self, label) for label in labels]:
            total.wru += units.wru
            total.gsi_wru += units.gsi_wru
            total.rru += units.rru
            for op, value in units.per_op.items():
                total.per_op[op] = total.per_op.get(op, 0.0) + value
        return total

    @property
    def receiver_part(self) -> Units:
        """Everything the receiver does for one new refund event, summed over the events."""
        return self._part("receiver", "producer")

    @property
    def replay_part(self) -> Units:
        return self._part("replay")

    def by_call(self) -> list[tuple[str, float]]:
        """Request units per refund event by call shape, the event store's and the producer's apart."""
        # call_shape names any transaction with a Put "pending": on the event store's client
        # that is the event record's first write.
        out: dict[str, float] = {}
        for label, units in (("receiver", self.receiver), ("producer", self.producer)):
            for op, value in units.per_op.items():
                if label == "receiver":
                    op = op.replace("(pending)", "(event received)")
                name = f"{label} {op}"
                out[name] = out.get(name, 0.0) + value / self.events
        return sorted(out.items())

    @property
    def wru_per_webhook_refund(self) -> float:
        part = self.receiver_part
        return (part.wru + part.gsi_wru) / self.events + self.lambda_wru

    @property
    def rru_per_webhook_refund(self) -> float:
        return self.receiver_part.rru / self.events + self.lambda_rru

    @property
    def wru_per_webhook_replay(self) -> float:
        part = self.replay_part
        return (part.wru + part.gsi_wru) / self.replays

    @property
    def rru_per_webhook_replay(self) -> float:
        return self.replay_part.rru / self.replays


def _function_url_event(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "version": "2.0",
        "rawPath": "/stripe",
        "headers": {k.lower(): v for k, v in headers.items()},
        "requestContext": {"http": {"method": "POST", "path": "/stripe"}},
        "body": body.decode(),
        "isBase64Encoded": False,
    }


def measure_cost(
    stack: aws.Stack, lambda_wru: float, lambda_rru: float, events: int = 100, replays: int = 20
) -> WebhookCost:
    """`events` signed Stripe ``charge.refunded`` events, each a new refund, then a replay of the
    first `replays` of them (a provider's retry), through the receiver in this process.

    `stack` must have an empty table (the model takes an item it has not seen written not to
    exist). The receiver is the one build_receiver composes, with its event store given a
    DynamoDB client of its own so that its records and the producer's are priced apart.
    """
    from reditus_webhooks.app import build_receiver
    from reditus_webhooks.events import EventStore

    env = {
        "HISTORY_TABLE_NAME": stack.table,
        "REFUND_QUEUE_URL": stack.queue_url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
    }
    events_ddb = aws.client("dynamodb", stack.endpoint)
    producer_ddb = aws.client("dynamodb", stack.endpoint)
    sqs = aws.client("sqs", stack.endpoint)
    receiver = build_receiver(env, dynamodb=producer_ddb, sqs=sqs)
    receiver.events = EventStore(stack.table, events_ddb)
    images = aws.client("dynamodb", stack.endpoint)
    capacity = CapacityModel(images)
    clients = ((events_ddb, "receiver"), (producer_ddb, "producer"))

    def post(n: int, expected: str) -> None:
        body, headers = _signed(f"ch_bench_cost_{n}", f"evt_bench_cost_{n}")
        answer = receiver.handle(_function_url_event(body, headers))
        if answer.status != 200 or answer.body.get("status") != expected:
            raise RuntimeError(f"the receiver answered {answer.status} {dict(answer.body)}, not {expected}")

    def attach(labels: tuple[str, str]) -> CallCounter:
        counter = CallCounter("dynamodb")
        for (client, _), label in zip(clients, labels, strict=True):
            capacity.attach(client, label)
            counter.attach(client)
        return counter

    def detach(labels: tuple[str, str]) -> None:
        for (client, _), label in zip(clients, labels, strict=True):
            capacity.detach(client, label)

    sqs_counter = CallCounter("sqs").attach(sqs)
    calls = attach(("receiver", "producer"))
    try:
        for n in range(events):
            post(n, "queued")
    finally:
        calls.detach()
        detach(("receiver", "producer"))
        sqs_counter.detach()
    replay_calls = attach(("replay", "replay"))
    try:
        for n in range(replays):
            post(n, "duplicate")
    finally:
        replay_calls.detach()
        detach(("replay", "replay"))
    return WebhookCost(
        events=events,
        replays=replays,
        receiver=capacity.units["receiver"],
        producer=capacity.units["producer"],
        replay=capacity.units["replay"],
        calls=Counter(calls.calls),
        replay_calls=Counter(replay_calls.calls),
        sqs_calls=Counter(sqs_counter.calls),
        lambda_wru=lambda_wru,
        lambda_rru=lambda_rru,
    )
