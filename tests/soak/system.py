"""The local system as separate processes, for the soak and the secrets tests.

* :class:`Servers` - the AWS server (``reditus_local.awsserver``: moto) and the Reditus
  simulator (``reditus_local.simulator``), each its own process on a free loopback port;
* :class:`System` - one set of template.yaml resources on those servers (queue, dead-letter
  queue, history table, API key secret; its own stack name, so scenarios never share state) and
  its worker processes (``reditus_local.worker``, the real handler inside), which can be
  SIGKILLed and restarted.

Every process's stdout and stderr go to files in a log folder (:meth:`Process.output`). Every wait
polls for its condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from reditus_local.resources import LocalSystem, TemplateModel, create_resources, moto_session
from reditus_local.stack import AWS_IDENTITY_ENV
from reditus_operators.dlq import DeadLetter, DeadLetterQueue
from reditus_operators.history import HistoryReader
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.layout import from_item

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
AWS_READY = "moto server ready:"
SIMULATOR_READY = "Reditus simulator ready:"
WORKER_READY = "worker ready:"
# Never handed to the processes: they talk to moto with fake credentials, at its own endpoint.
NOT_PASSED_ON = (*AWS_IDENTITY_ENV, "AWS_ENDPOINT_URL")
PRODUCT_ENV = (
    "HISTORY_TABLE_NAME",
    "REFUND_QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL",
    "REDITUS_API_BASE_URL",
    "REDITUS_API_KEY",
    "REDITUS_API_KEY_SECRET",
    "REDITUS_STACK_NAME",
)


class SoakError(AssertionError):
    """A wait ran out, or a process did not start: the text says which, with its output."""


# How long the workers get, once the queue is drained, to apply the rest of the table's stream:
# they poll it at least every 10 s (reditus_local.worker.STREAM_POLL_SECONDS), and a counter write
# failed by a store fault window is retried at the next poll.
COUNTERS_TIMEOUT = 60.0

# Workers that also play the stream's event source mapping (see Soak.worker_argv).
STREAM_APPLIERS = 2
# The final re-read of the whole stream (settle_counters).
STREAM_REREAD_TIMEOUT = 600.0


def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    describe: Callable[[], str] = lambda: "",
    interval: float = 0.2,
) -> Any:
    """Poll `check` every `interval` seconds until it returns something truthy; SoakError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = describe()
            raise SoakError(
                f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{detail}" if detail else "")
            )
        time.sleep(interval)  # the polling interval, not a synchronisation


def base_env(endpoint_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_PASSED_ON and k not in PRODUCT_ENV}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO_ROOT),  # `python -m tests.soak.faulty_worker`
        }
    )
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


class Process:
    """One child process; each run's stdout and stderr are kept in files of the log folder."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, ready_marker: str | None = None
    ):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_dir = log_dir
        self.ready_marker = ready_marker
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.files: list[Path] = []
        self._open: list[IO[bytes]] = []

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start a new run; returns the line with the ready marker (or "" without one)."""
        self.runs += 1
        out_path = self.log_dir / f"{self.name}.{self.runs}.stdout"
        err_path = self.log_dir / f"{self.name}.{self.runs}.stderr"
        self.files += [out_path, err_path]
        out, err = out_path.open("wb"), err_path.open("wb")
        self._open += [out, err]
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        if not self.ready_marker:
            return ""
        marker = self.ready_marker

        def ready() -> str | None:
            for line in out_path.read_text(errors="replace").splitlines():
                if marker in line:
                    return line
            if not self.running:
                raise SoakError(
                    f"{self.name} exited with {self.proc and self.proc.returncode}:\n{self.output()}"
                )
            return None

        line: str = wait_until(ready, timeout, f"{self.name} to be ready", self.output)
        return line

    def kill(self) -> int:
        """SIGKILL, to this process only; returns its pid."""
        assert self.proc is not None
        pid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        return pid

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        for handle in self._open:
            handle.close()
        self._open = []

    def output(self, tail: int | None = 60) -> str:
        """Everything the process wrote, every run, stdout and stderr (the last `tail` lines of each)."""
        parts = []
        for path in self.files:
            if not path.is_file():
                continue
            lines = path.read_text(errors="replace").splitlines()
            if tail is not None:
                lines = lines[-tail:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def raw_output(self) -> bytes:
        return b"".join(path.read_bytes() for path in self.files if path.is_file())


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Servers:
    """moto and the Reditus simulator, each in its own process."""

    aws: Process
    simulator: Process
    endpoint: str
    reditus_url: str
    api_key: str = field(repr=False)

    @property
    def control_url(self) -> str:
        return self.reditus_url + "/_sim"

    def _control(self, method: str, path: str, payload: Any = None) -> Any:
        response = requests.request(method, f"{self.control_url}/{path}", json=payload, timeout=30)
        response.raise_for_status()
        return response.json()

    def configure(self, **changes: Any) -> dict[str, Any]:
        config: dict[str, Any] = self._control("POST", "config", changes)
        return config

    def reset(self) -> None:
        self._control("POST", "reset")

    def requests(self) -> list[dict[str, Any]]:
        recorded: list[dict[str, Any]] = self._control("GET", "requests")
        return recorded

    def request_count(self) -> int:
        return int(self._control("GET", "health")["requests"])

    def refunds(self) -> dict[str, Any]:
        refunds: dict[str, Any] = self._control("GET", "refunds")
        return refunds

    def stop(self) -> None:
        self.simulator.stop()
        self.aws.stop()

    def processes(self) -> list[Process]:
        return [self.aws, self.simulator]


def start_servers(log_dir: Path, api_key: str, *, verbose: bool = False, seed: int = 1) -> Servers:
    """The AWS server (the product's, reditus_local.awsserver) and the simulator on free
    ports (the simulator knows no demo payments)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    parent = str(os.getpid())
    server = "reditus_local.awsserver"
    aws = Process(
        "aws",
        _python(server, "--port", "0", "--parent-pid", parent, *(["--verbose"] if verbose else [])),
        base_env(),
        log_dir,
        AWS_READY,
    )
    simulator_env = base_env()
    simulator_env["REDITUS_API_KEY"] = api_key  # by environment, as `local up` does: never on a command line
    simulator = Process(
        "reditus",
        _python(
            "reditus_local.child",
            "--parent-pid",
            parent,
            "reditus_local.simulator",
            "--port",
            "0",
            "--no-demo",
            "--seed",
            str(seed),
            *(["--verbose"] if verbose else []),
        ),
        simulator_env,
        log_dir,
        SIMULATOR_READY,
    )
    try:
        endpoint = aws.start().split(AWS_READY, 1)[1].strip()
        reditus_url = simulator.start().split(SIMULATOR_READY, 1)[1].strip().rstrip("/")
    except BaseException:
        simulator.stop()
        aws.stop()
        raise
    return Servers(aws, simulator, endpoint, reditus_url, api_key)


@dataclass(frozen=True)
class SystemSettings:
    """How one system is set up: what the template says, except what is overridden here."""

    visibility_timeout: int | None = None  # None: the template's (360 s)
    function_timeout: float | None = None  # None: the template's (60 s)
    max_receive_count: int | None = None  # None: the template's (5)
    parameters: dict[str, Any] = field(default_factory=dict)  # template parameters
    function_env: dict[str, str] = field(default_factory=dict)  # variables the template leaves alone
    workers: int = 1
    quiet: bool = True  # no per-message lines from the worker (they cost a read each)
    wait_time: int = 2  # the worker's long poll
    # tests/soak/faulty_worker.py: report every delivery (events), abandon a share of invocations
    # part-way like a Lambda timeout (timeout_rate, timeout_cut: seconds into the invocation).
    events: bool = False
    timeout_rate: float = 0.0
    timeout_cut: tuple[float, float] = (0.1, 1.0)

    def describe(self, local: LocalSystem) -> dict[str, Any]:
        return {
            "visibility_timeout": local.visibility_timeout,
            "function_timeout": self.function_timeout or local.function.timeout_seconds,
            "max_receive_count": local.max_receive_count,
            "batch_size": local.function.batch_size,
            "batching_window": local.function.batching_window_seconds,
            "workers": self.workers,
            "function_env": dict(self.function_env),
            "parameters": dict(self.parameters),
            **(
                {"timeout_rate": self.timeout_rate, "timeout_cut_seconds": list(self.timeout_cut)}
                if self.timeout_rate
                else {}
            ),
        }


@dataclass(frozen=True)
class StoreFaults:
    """DynamoDB write failures for the workers (tests/soak/faulty_worker.py): on while `flag` exists."""

    flag: Path
    stats: Path

    def on(self, kinds: Sequence[str], rate: float = 1.0, target: str = "writes") -> None:
        """Fail `rate` of the write calls (target "writes") or of the counter settlements ("counters")."""
        staged = self.flag.with_name(self.flag.name + ".new")
        staged.write_text(json.dumps({"kinds": list(kinds), "rate": rate, "target": target}))
        os.replace(staged, self.flag)  # the workers never read half a file

    def off(self) -> None:
        self.flag.unlink(missing_ok=True)

    def injected(self) -> list[list[str]]:
        """One [operation, kind, time, refund_id] per injected fault."""
        lines = self.stats.read_text().splitlines() if self.stats.is_file() else []
        return [line.split() for line in lines if line.strip()]


@dataclass(frozen=True)
class Kill:
    at: float  # time.time() just before the signal (or when an invocation was abandoned)
    worker: str
    pid: int


TIMED_OUT = 75  # tests/soak/faulty_worker.py's exit status for an abandoned invocation


class System:
    """One copy of the template's resources on the servers, and the workers that drain its queue."""

    def __init__(
        self,
        servers: Servers,
        name: str,
        settings: SystemSettings,
        log_dir: Path,
        *,
        secret_value: str | None = None,
        store_faults: StoreFaults | None = None,
    ):
        self.servers = servers
        self.name = name
        self.settings = settings
        self.log_dir = log_dir
        self.store_faults = store_faults
        log_dir.mkdir(parents=True, exist_ok=True)
        overrides = dict(settings.parameters)
        if settings.max_receive_count is not None:
            overrides["MaxReceiveCount"] = settings.max_receive_count
        model = TemplateModel.load(overrides=overrides)
        model.stack_name = f"soak-{name}"
        session = moto_session()
        self._session = session
        self.local: LocalSystem = create_resources(
            model,
            self.client,
            api_key=servers.api_key if secret_value is None else secret_value,
            visibility_timeout=settings.visibility_timeout,
        )
        config = self.local.config
        self.table, self.queue_url, self.dlq_url = config.table_name, config.queue_url, config.dlq_url
        self.sqs = self.client("sqs")
        self.dynamodb = self.client("dynamodb")
        self.store = HistoryReader(self.table, self.dynamodb)
        self.writer = HistoryWriter(self.table, self.dynamodb)
        self.events_dir = log_dir / f"{name}.events"
        self.workers = [
            Process(f"{name}-worker{i}", self.worker_argv(i), self.worker_env(), log_dir, WORKER_READY)
            for i in range(settings.workers)
        ]
        self.kills: list[Kill] = []
        self.restarts_after_timeout: list[Kill] = []
        self._lock = threading.Lock()
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def client(self, service: str) -> Any:
        return self._session.client(service, endpoint_url=self.servers.endpoint)  # type: ignore[call-overload]

    # ---- the workers ------------------------------------------------------------------------
    def worker_env(self) -> dict[str, str]:
        env = base_env(self.servers.endpoint)
        env.update(self.local.function.environment)  # the template's: the secret, the table, the queue...
        env.update(
            {
                "HISTORY_TABLE_NAME": self.table,
                "REFUND_QUEUE_URL": self.queue_url,
                "REDITUS_API_BASE_URL": self.servers.reditus_url,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "PYTHONWARNINGS": "ignore:No application metrics to publish",
            }
        )
        env.update(self.settings.function_env)
        return env

    def worker_argv(self, index: int) -> list[str]:
        args = ["--queue-url", self.queue_url, "--wait-time", str(self.settings.wait_time)]
        args += ["--parent-pid", str(os.getpid())]
        # The first STREAM_APPLIERS workers also read the table's stream and apply it to the day
        # counters (as the template's CounterStreamFunction): two appliers at once, each restarted
        # one reading the stream from its start again; the counters' marks must make all that count
        # once. Not every worker: each applier reads the whole stream (AWS runs one per shard), and
        # ten of them spent the queue's time on it (the full faults scenario timed out).
        if index >= STREAM_APPLIERS:
            args.append("--no-stream")
        if self.settings.function_timeout is not None:
            args += ["--timeout", str(self.settings.function_timeout)]
        if self.settings.quiet:
            args.append("--quiet")
        harness: list[str] = []
        if self.store_faults is not None:
            harness += [
                "--fault-file",
                str(self.store_faults.flag),
                "--stats-file",
                str(self.store_faults.stats),
            ]
        if self.settings.events:
            harness += ["--events-dir", str(self.events_dir)]
        if self.settings.timeout_rate:
            low, high = self.settings.timeout_cut
            harness += ["--timeout-rate", str(self.settings.timeout_rate), "--timeout-cut", f"{low}:{high}"]
        if not harness:
            return _python("reditus_local.worker", *args)
        return _python("tests.soak.faulty_worker", *harness, "--", *args)

    def start_workers(self) -> None:
        for worker in self.workers:
            worker.start()
        if self.settings.timeout_rate:
            self._stop_watching.clear()
            self._watcher = threading.Thread(target=self._restart_timed_out, name="revive", daemon=True)
            self._watcher.start()

    def kill_and_restart(self, index: int) -> Kill:
        worker = self.workers[index]
        with self._lock:
            at = time.time()
            pid = worker.kill()
            kill = Kill(at, worker.name, pid)
            self.kills.append(kill)
            worker.start()
        return kill

    def _restart_timed_out(self) -> None:
        """Lambda starts a new execution environment after a timeout: so does this, for each worker
        that abandoned an invocation (exit status TIMED_OUT). Any other exit is left for the
        drain wait to report, with the worker's output."""
        while not self._stop_watching.wait(0.2):  # the polling interval, not a synchronisation
            for worker in self.workers:
                with self._lock:
                    proc = worker.proc
                    if self._stop_watching.is_set() or proc is None or proc.poll() != TIMED_OUT:
                        continue
                    self.restarts_after_timeout.append(Kill(time.time(), worker.name, proc.pid))
                    worker.start()

    def stop(self) -> None:
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(START_TIMEOUT + 5)
            self._watcher = None
        for worker in self.workers:
            worker.stop()

    def events(self) -> list[dict[str, Any]]:
        """What the workers reported (tests/soak/faulty_worker.py --events-dir), every process."""
        found: list[dict[str, Any]] = []
        for path in sorted(self.events_dir.glob("events.*.jsonl")):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):  # a line cut by a SIGKILL
                    found.append(json.loads(line))
        return found

    def timeouts(self) -> list[Kill]:
        """The invocations abandoned as Lambda timeouts, when they were abandoned."""
        return [
            Kill(float(e["t"]), "worker", int(e.get("pid", 0))) for e in self.events() if e["e"] == "timeout"
        ]

    def processes(self) -> list[Process]:
        return list(self.workers)

    # ---- the queues -------------------------------------------------------------------------
    def depth(self) -> dict[str, int]:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)[
            "Attributes"
        ]
        return {name.removeprefix("ApproximateNumberOf"): int(attributes.get(name, 0)) for name in names}

    def drained(self) -> bool:
        """Nothing waiting, in flight or delayed in the refund queue."""
        return sum(self.depth().values()) == 0

    def in_flight(self) -> int:
        return self.depth()["MessagesNotVisible"]

    def dead_letters(self) -> list[DeadLetter]:
        return DeadLetterQueue(self.sqs, self.dlq_url, self.queue_url).peek(limit=100_000)

    # ---- the table --------------------------------------------------------------------------
    def settle_counters(self, timeout: float = COUNTERS_TIMEOUT) -> dict[str, Any]:
        """Once the queue is drained: wait (polling, until `timeout`) for the workers to have applied
        the table's stream, i.e. the day counters equal the items; then read the whole stream once
        more here and apply it (a drained stream: every record applied, by whoever). A count the
        workers doubled stays doubled; one they lost is added here, which `caught_up` tells."""
        from reditus_local.worker import drain_stream

        from .count import counters_equal_items

        started = time.monotonic()
        caught_up = False
        while time.monotonic() - started < timeout:
            if counters_equal_items(self.scan()):
                caught_up = True
                break
            time.sleep(0.5)  # the polling interval, not a synchronisation
        waited = time.monotonic() - started
        # The whole stream once more: the full faults scenario's holds some 100,000 records, and
        # moto serves them slowly (a first full run ran out of 60 s here, after every message settled).
        records = drain_stream(
            self.dynamodb, self.client("dynamodbstreams"), self.table, timeout_seconds=STREAM_REREAD_TIMEOUT
        )
        return {"caught_up": caught_up, "seconds": round(waited, 1), "stream_records": records}

    def scan(self) -> list[dict[str, Any]]:
        """Every item of the history table (a Scan: fine for a test, never done by the product)."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self.dynamodb.scan(**kwargs)
            items += [from_item(i) for i in page.get("Items", [])]
            if not page.get("LastEvaluatedKey"):
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def raw_scan(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self.dynamodb.scan(**kwargs)
            items += page.get("Items", [])
            if not page.get("LastEvaluatedKey"):
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@contextlib.contextmanager
def running(system: System) -> Iterator[System]:
    system.start_workers()
    try:
        yield system
    finally:
        system.stop()


def dump(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
