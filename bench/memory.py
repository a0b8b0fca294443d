"""Peak resident memory of a fresh process that initialises the handler and handles one batch.

The parent queues ten refunds and writes their event to a file; a fresh interpreter (AWS in the
moto server's process, Reditus in the simulator's) imports the handler, handles the event and
reports its peak RSS: VmHWM of /proc/self/status (getrusage's ru_maxrss would not do: Linux
carries it across fork and exec, so a child reports its parent's peak). The handler runs as in
Lambda, traced (a sampled trace header: the X-Ray SDK records every subsegment and sends them to a
loopback port). A bare process (boto3, requests, the same clients) is measured beside it for scale.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import aws
from .events import MEMORY_MB, TIMEOUT_MS, Feeder
from .procs import ROOT
from .startup import BARE_CODE, lambda_env

MARK = "BENCH_RSS_KB"

PEAK = f"""
with open("/proc/self/status") as status:
    print("{MARK}", next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")))
"""

CHILD = (
    f"""
import json
import sys

import reditus_refunds.handler as handler


class Context:
    function_name = "refund-submitter"
    function_version = "$LATEST"
    memory_limit_in_mb = {MEMORY_MB}
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:refund-submitter"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self):
        return {TIMEOUT_MS}


with open(sys.argv[1]) as event_file:
    event = json.load(event_file)
response = handler.lambda_handler(event, Context())
if response["batchItemFailures"]:
    sys.exit(f"failures: {{response['batchItemFailures']}}")
"""
    + PEAK
)


def _read_mark(stdout: str) -> float:
    for line in stdout.splitlines():
        if line.startswith(MARK):
            return int(line.split()[1]) / 1024
    raise RuntimeError("the memory probe printed no figure")


def _probe(code: str, env: dict[str, str], *args: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"the memory probe failed:\n{done.stderr[-3000:]}")
    return _read_mark(done.stdout)


@dataclass
class MemoryFigures:
    handler_mb: list[float]
    bare_mb: float

    @property
    def median(self) -> float:
        return statistics.median(self.handler_mb)


TRACE_HEADER = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=1"


def measure(stack: aws.Stack, feeder: Feeder, env: dict[str, str], rounds: int = 3) -> MemoryFigures:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        traced = {**lambda_env(env, workdir), "_X_AMZN_TRACE_ID": TRACE_HEADER}
        return _measure(stack, feeder, traced, rounds)


def _measure(stack: aws.Stack, feeder: Feeder, env: dict[str, str], rounds: int) -> MemoryFigures:
    dynamodb = aws.client("dynamodb", stack.endpoint)
    figures: list[float] = []
    for _ in range(rounds):
        aws.reset_table(dynamodb, stack.table)
        event = feeder.event(10)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(event, handle)
        try:
            figures.append(_probe(CHILD, env, handle.name))
        finally:
            Path(handle.name).unlink(missing_ok=True)
        feeder.settle(event, {"batchItemFailures": []})
    return MemoryFigures(figures, _probe(BARE_CODE + PEAK, env))
