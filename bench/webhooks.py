"""The webhook receiver: its cold start against bare boto3, and request-to-answer latency.

* init: ``import reditus_webhooks.handler`` (Powertools' logger and metrics, the receiver built
  from the environment with a DynamoDB and an SQS client; Secrets Manager only on first use)
  against ``import boto3`` and the same two clients with the same botocore Config, each in a
  fresh interpreter, measured as bench/startup.py measures the submitter (Lambda's environment,
  bytecode cached). On the template's Python (3.12) when an interpreter of it can import the
  dependencies, else on this one: the table says which.
* latency: the real handler served on 127.0.0.1 by reditus_local.webhooks (its own process, as
  in the local stack), backed by the project's moto server; signed Stripe ``charge.refunded``
  events, each a new refund (event recorded, refund request sent and recorded pending, event
  finished), posted after a warm-up, one at a time and then by 20 concurrent senders.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from .procs import ROOT, Child, python
from .startup import lambda_env

RUNTIME = "3.12"  # template.yaml's python3.12
SENDERS = 20
SECRET = "whsec_bench_" + "0" * 32

RECEIVER_CODE = """
import time
started = time.perf_counter()
import reditus_webhooks.handler
print(f"BENCH_SECONDS {time.perf_counter() - started:.6f}")
"""

BARE_CODE = """
import time
started = time.perf_counter()
import boto3
from botocore.config import Config
config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=3,
                max_pool_connections=4)
session = boto3.session.Session()
clients = [session.client(name, config=config) for name in ("dynamodb", "sqs")]
print(f"BENCH_SECONDS {time.perf_counter() - started:.6f}")
"""

DEPENDENCIES_PROBE = "import boto3, aws_lambda_powertools, reditus_webhooks"


def interpreter(env: dict[str, str]) -> str:
    """python3.12 (pyenv's too, as functions/Makefile looks) if it imports what the receiver needs."""
    candidates = [f"python{RUNTIME}"]
    pyenv = shutil.which("pyenv")
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False) if pyenv else None
    if root is not None and root.returncode == 0:
        versions = os.path.join(root.stdout.strip(), "versions")
        if os.path.isdir(versions):
            candidates += [
                os.path.join(versions, v, "bin", f"python{RUNTIME}")
                for v in sorted(os.listdir(versions))
                if v.startswith(RUNTIME)
            ]
    for candidate in candidates:
        try:
            done = subprocess.run(
                [candidate, "-c", DEPENDENCIES_PROBE], env=env, capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return candidate
    return sys.executable


def _seconds(executable: str, code: str, env: dict[str, str]) -> float:
    done = subprocess.run(
        [executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"the receiver's start-up probe failed:\n{done.stderr[-2000:]}")
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_SECONDS "):
            return float(line.split()[1])
    raise RuntimeError("the receiver's start-up probe printed no time")


@dataclass
class WebhookInit:
    python: str
    receiver_ms: list[float]
    bare_ms: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.receiver_ms) / statistics.median(self.bare_ms)


def measure_init(env: dict[str, str], rounds: int = 12) -> WebhookInit:
    with tempfile.TemporaryDirectory(prefix="bench-webhook-startup-") as workdir:
        probe = lambda_env(env, workdir)
        executable = interpreter(probe)
        receiver: list[float] = []
        bare: list[float] = []
        for _ in range(2):  # compile into the cache, then warm the file cache
            _seconds(executable, RECEIVER_CODE, probe)
            _seconds(executable, BARE_CODE, probe)
        for i in range(rounds):
            pair = [(RECEIVER_CODE, receiver), (BARE_CODE, bare)]
            for code, samples in pair if i % 2 == 0 else reversed(pair):
                samples.append(_seconds(executable, code, probe) * 1000)
        version = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return WebhookInit(f"Python {version}", receiver, bare)


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
