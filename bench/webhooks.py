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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from .artifact import Built
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
