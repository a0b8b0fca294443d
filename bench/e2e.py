"""Refunds per second through `make run`'s whole local system.

`reditus-refunds local up --no-console --fresh` starts what `make run` starts (the moto server
with the resources from template.yaml, the Reditus simulator, the worker playing the event source
mapping and invoking the real handler), in a temporary data directory on free ports. The bench
makes 1,000 payments known to the simulator, queues 1,000 refunds the way the console and the
CLI's CSV path do (parse_csv + RefundProducer.send_many: SQS and pending records), and polls the
day counters (one item read per poll) until all 1,000 are settled. The clock runs from the first
send to the poll that sees the last one settled (polls every 0.2 s). If they are not all settled
within the time the bench has left, the figure is what settled by then, per second (the table
says so).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import requests

from reditus_operators.config import read_local_state
from reditus_operators.csv_import import parse_csv
from reditus_operators.history import HistoryReader
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer
from reditus_refunds.records import Outcome

from . import aws
from .procs import ROOT

REFUNDS = 1000
UNSETTLED = (Outcome.PENDING.value, Outcome.RETRYING.value)


@dataclass
class E2EFigures:
    refunds: int
    seconds: float
    settled: int
    milestones: list[tuple[int, float]] = field(default_factory=list)  # (settled, seconds since start)
    queue_seconds: float = 0.0
    complete: bool = True

    @property
    def per_second(self) -> float:
        return self.settled / self.seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _settled(store: HistoryReader) -> tuple[int, int]:
    today = datetime.now(UTC).date()
    counts = store.daily_counts(today - timedelta(days=1), today)
    done = sum(n for day in counts.values() for o, n in day.items() if o not in UNSETTLED)
    open_ = sum(n for day in counts.values() for o, n in day.items() if o in UNSETTLED)
    return done, open_


class LocalStackRun:
    """`reditus-refunds local up` as a child process (stopped by its pid, SIGINT then SIGKILL)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.output: list[str] = []
        exe = Path(sys.executable).with_name("reditus-refunds")
        argv = [
            str(exe),
            "local",
            "up",
            "--no-console",
            "--fresh",
            "--data-dir",
            str(data_dir),
            "--moto-port",
            str(free_port()),
            "--simulator-port",
            str(free_port()),
            "--console-port",
            str(free_port()),
        ]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=aws.clean_environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.output.append(line.rstrip("\n"))
            del self.output[:-100]

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            state = read_local_state(self.data_dir)
            if state and state.get("pid") == self.proc.pid:
                return state
            time.sleep(0.2)
        tail = "\n".join(self.output[-30:])
        raise RuntimeError(f"the local stack did not come up:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def measure(refunds: int = REFUNDS, timeout: float = 300.0) -> E2EFigures:
    data_dir = Path(tempfile.mkdtemp(prefix="reditus-bench-e2e-"))
    stack = LocalStackRun(data_dir)
    try:
        state = stack.wait_ready()
        payments = [f"pay_e2e_{i:06d}" for i in range(refunds)]
        control = str(state["simulator_control_url"]).rstrip("/")
        requests.post(
            f"{control}/config", data=json.dumps({"add_payments": payments}), timeout=30
        ).raise_for_status()
        for name, value in aws.FAKE_CREDENTIALS.items():  # never a real account
            os.environ[name] = value
        endpoint = state["endpoint_url"]
        store = HistoryReader(state["table_name"], aws.client("dynamodb", endpoint))
        producer = RefundProducer(
            aws.client("sqs", endpoint),
            state["queue_url"],
            HistoryWriter(state["table_name"], aws.client("dynamodb", endpoint)),
        )
        baseline, _ = _settled(store)
        data = ("payment_id\n" + "\n".join(payments) + "\n").encode()

        started = time.perf_counter()
        report = producer.send_many(parse_csv(data, requested_by="ops@example.com").requests, minted_ids=True)
        queue_seconds = time.perf_counter() - started
        if len(report.sent) != refunds:
            raise RuntimeError(f"e2e: only {len(report.sent)} of {refunds} queued")
        milestones: list[tuple[int, float]] = []
        marks = [refunds * q // 4 for q in (1, 2, 3, 4)]
        done = 0
        while True:
            settled, _ = _settled(store)
            done = settled - baseline
            elapsed = time.perf_counter() - started
            while marks and done >= marks[0]:
                milestones.append((marks.pop(0), elapsed))
            if done >= refunds or elapsed > timeout:
                break
            if stack.proc.poll() is not None:
                raise RuntimeError("the local stack stopped:\n" + "\n".join(stack.output[-30:]))
            time.sleep(0.2)
        return E2EFigures(refunds, elapsed, done, milestones, queue_seconds, complete=done >= refunds)
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
