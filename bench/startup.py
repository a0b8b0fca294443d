"""Cold-start cost: importing and initialising the handler module against the bare minimum.

Each measurement is a fresh interpreter; the time is taken inside it, from before the first
import to after the last client exists (interpreter start-up is the same for both and left out).

Both run as in Lambda: LAMBDA_TASK_ROOT set and tracing on (the template's `Tracing: Active`), so
the X-Ray SDK behaves as it does there (its Lambda context and local sampler; outside Lambda it
would build a botocore X-Ray client for sampling rules, which Lambda never does). Both run with
bytecode: a first run compiles every module into a private cache (PYTHONPYCACHEPREFIX) that the
timed runs read, as they read the compiled bytecode the Lambda package ships (functions/Makefile).
Without it, a machine that sets PYTHONDONTWRITEBYTECODE would time the compiler on our modules
only, because pip installed the libraries with bytecode.

* handler: ``import reditus_refunds.handler``, which builds the service at import: the DynamoDB,
  SQS and (REDITUS_API_KEY_SECRET being set) Secrets Manager clients, the Reditus HTTP session and
  Powertools' logger, metrics and tracer. No client is created lazily later.
* bare: ``import boto3, requests`` and the same three clients (same botocore Config) and a
  requests Session: what any handler doing this work needs at least.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from .procs import ROOT

HANDLER_CODE = """
import time
started = time.perf_counter()
import reditus_refunds.handler
print(f"BENCH_SECONDS {time.perf_counter() - started:.6f}")
"""

BARE_CODE = """
import time
started = time.perf_counter()
import boto3
import requests
from botocore.config import Config
config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)
session = boto3.session.Session()
clients = [session.client(name, config=config) for name in ("dynamodb", "sqs", "secretsmanager")]
http = requests.Session()
print(f"BENCH_SECONDS {time.perf_counter() - started:.6f}")
"""


def _run(code: str, env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *options, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"the start-up probe failed:\n{done.stderr[-2000:]}")
    return done


def _seconds(code: str, env: dict[str, str]) -> float:
    for line in _run(code, env).stdout.splitlines():
        if line.startswith("BENCH_SECONDS "):
            return float(line.split()[1])
    raise RuntimeError("the start-up probe printed no time")


@dataclass
class StartupFigures:
    handler_ms: list[float]
    bare_ms: list[float]
    breakdown: list[tuple[str, float]]  # the handler's direct imports, cumulative ms, largest first
    # The same two without any bytecode (every module compiled at import), as a package built by
    # SAM's default Python builder runs on Lambda's read-only /var/task: what shipping .pyc saves.
    source_handler_ms: list[float]
    source_bare_ms: list[float]

    @property
    def handler_median(self) -> float:
        return statistics.median(self.handler_ms)

    @property
    def bare_median(self) -> float:
        return statistics.median(self.bare_ms)

    @property
    def ratio(self) -> float:
        return self.handler_median / self.bare_median


def import_breakdown(env: dict[str, str], top: int = 8) -> list[tuple[str, float]]:
    """`python -X importtime`, one run: the handler's import time by top-level package (the self
    times of its modules; exclusive, so the rows add up). The handler module's own body, where the
    clients and Powertools objects are built, is a row of its own."""
    stderr = _run("import reditus_refunds.handler", env, "-X", "importtime").stderr
    subtree: list[tuple[str, int]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        try:
            self_us, column = int(parts[0]), parts[2]
        except (ValueError, IndexError):
            continue  # the header line
        name = column.strip()
        subtree.append((name, self_us))
        if len(column) - len(column.lstrip(" ")) == 1:  # depth 0: a whole import tree ends here
            if name == "reditus_refunds.handler":
                break
            subtree = []
    totals: dict[str, float] = {}
    for name, self_us in subtree:
        label = (
            "handler module body (clients, Powertools objects)"
            if name == "reditus_refunds.handler"
            else (name.split(".")[0])
        )
        totals[label] = totals.get(label, 0.0) + self_us / 1000
    return sorted(totals.items(), key=lambda row: row[1], reverse=True)[:top]


def lambda_env(env: dict[str, str], workdir: str) -> dict[str, str]:
    """The handler's environment as Lambda gives it: tracing on, a task root, bytecode cached."""
    probe = {
        k: v for k, v in env.items() if k not in ("POWERTOOLS_TRACE_DISABLED", "PYTHONDONTWRITEBYTECODE")
    }
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unused:
        unused.bind(("127.0.0.1", 0))  # nothing is sent at import; any loopback port will do
        daemon = f"127.0.0.1:{unused.getsockname()[1]}"
    probe.update(
        {
            "LAMBDA_TASK_ROOT": os.path.join(workdir, "task"),
            "AWS_XRAY_DAEMON_ADDRESS": daemon,
            "PYTHONPYCACHEPREFIX": os.path.join(workdir, "bytecode"),
        }
    )
    return probe


def measure(env: dict[str, str], rounds: int = 12, source_rounds: int = 3) -> StartupFigures:
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as workdir:
        probe = lambda_env(env, workdir)
        figures = _measure(probe, rounds)
        # An empty cache that is never written: nothing but source to import from.
        no_bytecode = {
            **probe,
            "PYTHONPYCACHEPREFIX": os.path.join(workdir, "empty"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for _ in range(source_rounds):
            figures.source_handler_ms.append(_seconds(HANDLER_CODE, no_bytecode) * 1000)
            figures.source_bare_ms.append(_seconds(BARE_CODE, no_bytecode) * 1000)
        return figures


def _measure(env: dict[str, str], rounds: int) -> StartupFigures:
    handler: list[float] = []
    bare: list[float] = []
    for _ in range(2):  # compile into the cache, then warm the file cache
        _seconds(HANDLER_CODE, env)
        _seconds(BARE_CODE, env)
    for i in range(rounds):
        pair = [(HANDLER_CODE, handler), (BARE_CODE, bare)]
        for code, samples in pair if i % 2 == 0 else reversed(pair):
            samples.append(_seconds(code, env) * 1000)
    return StartupFigures(handler, bare, import_breakdown(env), [], [])
