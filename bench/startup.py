"""Cold-start cost: importing and initialising the handler module against the bare minimum.

Each measurement is a fresh interpreter; the time is taken inside it, from before the first
import to after the last client exists (interpreter start-up is the same for both and left out).

Where: the function's package as functions/Makefile builds it (bench/artifact.py: the locked
dependencies installed for Python 3.12, all compiled to bytecode), imported from that directory by
python3.12, the template's runtime, with nothing else on the path but the standard library. When
no python3.12 (or no package registry) is there, the development venv's interpreter instead, with
bytecode cached in a private directory (PYTHONPYCACHEPREFIX) after a first compiling run; the
table says which was used. Bare runs the same way from the same package.

Both run as in Lambda: LAMBDA_TASK_ROOT set and tracing on (the template's `Tracing: Active`), so
the X-Ray SDK behaves as it does there (its Lambda context and local sampler; outside Lambda it
would build a botocore X-Ray client for sampling rules, which Lambda never does).

What is compared: the CPU time of the process (user + system) over that span, medians over
interleaved rounds. Import and init are CPU-bound once the files are in the page cache (two
untimed warm-up runs put them there), and CPU time is what a busy machine does not inflate: on a
2-core machine shared with other work (load 5-7), wall-clock times of the same import vary by 2x
from one process to the next, so a median of a few wall times says more about the neighbours
than about the code. Wall times are reported beside.

* handler: ``import reditus_refunds.handler``, which builds the service at import: the two DynamoDB
  clients (the service's and the counter settlement's bounded one) and (REDITUS_API_KEY_SECRET being
  set) the Secrets Manager client, the Reditus HTTP session and Powertools' logger, metrics and
  tracer: everything a first invocation uses. The one client made later is SQS's, at the first 404
  re-check (a 404 inside the grace window), which most first invocations never send.
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
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import Built
from .procs import ROOT

# Timed from inside: wall (perf_counter) and the process's CPU (process_time), in seconds.
PROLOGUE = """
import time
started, cpu = time.perf_counter(), time.process_time()
"""
EPILOGUE = """
print(f"BENCH_SECONDS {time.perf_counter() - started:.6f} {time.process_time() - cpu:.6f}")
"""

HANDLER_CODE = PROLOGUE + "import reditus_refunds.handler" + EPILOGUE

BARE_CODE = (
    PROLOGUE
    + """
import boto3
import requests
from botocore.config import Config
config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)
session = boto3.session.Session()
clients = [session.client(name, config=config) for name in ("dynamodb", "sqs", "secretsmanager")]
http = requests.Session()
"""
    + EPILOGUE
)


@dataclass(frozen=True)
class Probe:
    """Where a cold start is timed: an interpreter, its options, environment and directory."""

    executable: str
    options: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    where: str  # for the table, e.g. "Python 3.12.1, built package"
    source_env: dict[str, str]  # the same, with any bytecode ignored (all compiled at import)

    def run(self, code: str, *options: str, source: bool = False) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.executable, *self.options, *options, "-c", code],
            cwd=self.cwd,
            env=self.source_env if source else self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the start-up probe failed ({self.where}):\n{done.stderr[-2000:]}")
        return done

    def seconds(self, code: str, source: bool = False) -> tuple[float, float]:
        """(wall, cpu) seconds of one fresh process."""
        for line in self.run(code, source=source).stdout.splitlines():
            if line.startswith("BENCH_SECONDS "):
                wall, cpu = line.split()[1:3]
                return float(wall), float(cpu)
        raise RuntimeError("the start-up probe printed no time")


def _lambda_base(env: dict[str, str]) -> dict[str, str]:
    """Lambda's tracing on (a loopback daemon address nothing listens on: nothing is sent at
    import), and nothing of this process's own Python set-up."""
    drop = ("POWERTOOLS_TRACE_DISABLED", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONPATH")
    probe = {k: v for k, v in env.items() if k not in drop and k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unused:
        unused.bind(("127.0.0.1", 0))
        probe["AWS_XRAY_DAEMON_ADDRESS"] = f"127.0.0.1:{unused.getsockname()[1]}"
    return probe


def lambda_env(env: dict[str, str], workdir: str) -> dict[str, str]:
    """The development venv's run: tracing on, a task root, bytecode cached in `workdir`."""
    return {
        **_lambda_base(env),
        "LAMBDA_TASK_ROOT": os.path.join(workdir, "task"),
        "PYTHONPYCACHEPREFIX": os.path.join(workdir, "bytecode"),
    }


def dev_probe(env: dict[str, str], workdir: str) -> Probe:
    probe = lambda_env(env, workdir)
    # An empty cache that is never written: nothing but source to import from.
    source = {**probe, "PYTHONPYCACHEPREFIX": os.path.join(workdir, "empty"), "PYTHONDONTWRITEBYTECODE": "1"}
    version = ".".join(map(str, sys.version_info[:3]))
    return Probe(sys.executable, (), probe, ROOT, f"Python {version}, development venv", source)


def package_probe(env: dict[str, str], built: Built, artifact: Path, workdir: str) -> Probe:
    """The built package as Lambda runs it: the task root first on the path, its shipped bytecode
    read as is (no cache prefix, nothing written: /var/task is read-only), no user site."""
    probe = {
        **_lambda_base(env),
        "LAMBDA_TASK_ROOT": str(artifact),
        "PYTHONPATH": str(artifact),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # A cache prefix makes Python look for bytecode there only: the shipped .pyc are ignored.
    source = {**probe, "PYTHONPYCACHEPREFIX": os.path.join(workdir, "empty")}
    return Probe(built.python, ("-s",), probe, artifact, f"Python {built.version}, built package", source)


@dataclass
class Timings:
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def add(self, wall_cpu: tuple[float, float]) -> None:
        self.wall_ms.append(wall_cpu[0] * 1000)
        self.cpu_ms.append(wall_cpu[1] * 1000)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_ms)


def interleaved(probe: Probe, ours: str, bare: str, rounds: int) -> tuple[Timings, Timings]:
    """`rounds` fresh processes of each, alternating which goes first, after two untimed runs of
    each (the first compiles into the cache when there is one; both warm the page cache)."""
    a, b = Timings(), Timings()
    for _ in range(2):
        probe.seconds(ours)
        probe.seconds(bare)
    for i in range(rounds):
        pair = [(ours, a), (bare, b)]
        for code, samples in pair if i % 2 == 0 else reversed(pair):
            samples.add(probe.seconds(code))
    return a, b


@dataclass
class StartupFigures:
    where: str
    handler: Timings
    bare: Timings
    breakdown: list[tuple[str, float]]  # the handler's direct imports, cumulative ms, largest first
    # The same two without any bytecode (every module compiled at import), as a package built by
    # SAM's default Python builder runs on Lambda's read-only /var/task: what shipping .pyc saves.
    source_handler: Timings
    source_bare: Timings

    @property
    def handler_median(self) -> float:
        return self.handler.cpu

    @property
    def bare_median(self) -> float:
        return self.bare.cpu

    @property
    def ratio(self) -> float:
        return self.handler.cpu / self.bare.cpu

    @property
    def wall_ratio(self) -> float:
        return self.handler.wall / self.bare.wall


def import_breakdown(
    probe: Probe, module: str = "reditus_refunds.handler", top: int = 8
) -> list[tuple[str, float]]:
    """`python -X importtime`, one run: the handler's import time by top-level package (the self
    times of its modules; exclusive, so the rows add up). The handler module's own body, where the
    clients and Powertools objects are built, is a row of its own."""
    stderr = probe.run(f"import {module}", "-X", "importtime").stderr
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
            if name == module:
                break
            subtree = []
    totals: dict[str, float] = {}
    for name, self_us in subtree:
        label = "handler module body (clients, Powertools objects)" if name == module else name.split(".")[0]
        totals[label] = totals.get(label, 0.0) + self_us / 1000
    return sorted(totals.items(), key=lambda row: row[1], reverse=True)[:top]


def measure(
    env: dict[str, str], rounds: int = 12, source_rounds: int = 3, built: Built | None = None
) -> StartupFigures:
    """The submitter's cold start, from its built package when `built`, else in the dev venv."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as workdir:
        probe = (
            dev_probe(env, workdir) if built is None else package_probe(env, built, built.submitter, workdir)
        )
        handler, bare = interleaved(probe, HANDLER_CODE, BARE_CODE, rounds)
        source_handler, source_bare = Timings(), Timings()
        for _ in range(source_rounds):
            source_handler.add(probe.seconds(HANDLER_CODE, source=True))
            source_bare.add(probe.seconds(BARE_CODE, source=True))
        return StartupFigures(
            probe.where, handler, bare, import_breakdown(probe), source_handler, source_bare
        )
