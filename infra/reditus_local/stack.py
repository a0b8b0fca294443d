"""`reditus-refunds local up`: the whole system on this machine, each part its own process.

Parts, all on 127.0.0.1, each started in its own session so that Ctrl-C reaches only this
supervisor, which then stops them in order (console, webhooks, worker, simulator, AWS last so it
can save):

* ``aws``     - moto (SQS, DynamoDB, Secrets Manager) with the resources of template.yaml;
* ``reditus`` - the Reditus API simulator (not started when REDITUS_API_BASE_URL and
  REDITUS_API_KEY are set: then the worker talks to that API, for real);
* ``worker``  - the SQS event source mapping, invoking the real Lambda handler, and the table's
  stream's, invoking the day counters' handler;
* ``webhooks`` - the webhook receiver's real handler behind a local Function URL, with signing
  secrets generated for this stack (``reditus-refunds local env`` exports them);
* ``console`` - the Streamlit console.

A part that exits on its own is reported and restarted (at most MAX_RESTARTS times). History and
unprocessed messages are saved to ``<data dir>/snapshot.json`` when the stack stops and put back
when it starts (``--fresh``: start empty). ``<data dir>/stack.json`` tells the CLI and the console
where the running stack is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from reditus_operators.config import (
    STATE_FILE_NAME,
    SystemConfig,
    data_dir,
    pid_alive,
    read_local_state,
    write_local_state,
)
from reditus_operators.console import DEFAULT_PORT as DEFAULT_CONSOLE_PORT
from reditus_operators.console import PORT_ENV as CONSOLE_PORT_ENV
from reditus_operators.console import ConsoleError, console_app, console_argv, port_is_free, system_env
from reditus_refunds.records import iso, utc_now
from reditus_refunds.settings import LAMBDA_ENV_VARS

from . import snapshot
from .awsserver import READY as AWS_READY
from .resources import (
    DEFAULT_TEMPLATE,
    LOCAL_REGION,
    PROJECT_ROOT,
    LocalSystem,
    ResourceError,
    TemplateModel,
    create_resources,
    function_variable_resources,
    moto_session,
    url_function_settings,
)
from .simulator import DEMO_INVALID, DEMO_LATE, DEMO_REFUNDABLE, DEMO_UNKNOWN
from .webhooks import READY as WEBHOOKS_READY
from .webhooks import WEBHOOK_URL_ENV, local_secrets, secret_values, secret_variables
from .worker import READY as WORKER_READY

HOST = "127.0.0.1"
DEFAULT_PORTS = {"moto": 5005, "simulator": 8100, "webhooks": 8200, "console": DEFAULT_CONSOLE_PORT}
PORT_ENV = {
    "moto": "REDITUS_LOCAL_MOTO_PORT",
    "simulator": "REDITUS_LOCAL_SIMULATOR_PORT",
    "webhooks": "REDITUS_LOCAL_WEBHOOK_PORT",
    "console": CONSOLE_PORT_ENV,
}
# The webhook receiver's port has no flag of its own: REDITUS_LOCAL_WEBHOOK_PORT sets it.
PORT_FLAGS = {
    "moto": "--moto-port",
    "simulator": "--simulator-port",
    "webhooks": PORT_ENV["webhooks"],
    "console": "--console-port",
}
PART_NAMES = {
    "moto": "moto server",
    "simulator": "Reditus simulator",
    "webhooks": "webhook receiver",
    "console": "console",
}
SIMULATOR_READY = "Reditus simulator ready:"
MAX_RESTARTS = 3
START_TIMEOUT = 60.0

# With the simulator, a 404 becomes final within a minute (the template's 900 s suits real
# payments reaching Reditus late, not a first try); --parameter puts the template's back.
SIMULATOR_PARAMETER_DEFAULTS = {"NotFoundGraceSeconds": "30", "NotFoundRecheckDelaySeconds": "5"}
# The worker prints one line per message itself; the handler's JSON logs only for warnings.
QUIET_PARAMETER_DEFAULTS = {"LogLevel": "WARNING"}
# Function variables the stack sets itself, whatever the template or the shell say.
MANAGED_ENV = {
    "HISTORY_TABLE_NAME",
    "REFUND_QUEUE_URL",
    "REDITUS_API_BASE_URL",
    "REDITUS_API_KEY_SECRET",
    "REDITUS_API_KEY",
    "MAX_RECEIVE_COUNT",
}
# Never handed to the local parts: they use moto's fake credentials.
AWS_IDENTITY_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)


class StackError(RuntimeError):
    """The stack cannot start (the text says why and what to do)."""


def port_from_env(part: str, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(PORT_ENV[part], "").strip()
    if not raw:
        return DEFAULT_PORTS[part]
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{PORT_ENV[part]} must be a port number, got {raw!r}")
    return int(raw)


@dataclass
class StackOptions:
    data_dir: Path
    moto_port: int = DEFAULT_PORTS["moto"]
    simulator_port: int = DEFAULT_PORTS["simulator"]
    console_port: int = DEFAULT_PORTS["console"]
    fresh: bool = False
    console: bool = True
    fault_rate: float = 0.0
    visibility_timeout: int | None = None
    max_receive_count: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    template: Path = DEFAULT_TEMPLATE
    verbose: bool = False
    reditus_base_url: str | None = None  # set: the real API instead of the simulator
    reditus_api_key: str | None = field(default=None, repr=False)
    # The webhook receiver's port: REDITUS_LOCAL_WEBHOOK_PORT, else 8200.
    webhook_port: int = field(default_factory=lambda: port_from_env("webhooks"))

    @property
    def simulated(self) -> bool:
        return not self.reditus_base_url


def real_reditus_from_env(env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(base URL, key) of a real Reditus API, or (None, None) for the simulator."""
    env = os.environ if env is None else env
    base = env.get("REDITUS_API_BASE_URL", "").strip()
    key = env.get("REDITUS_API_KEY", "").strip()
    if bool(base) != bool(key):
        missing = "REDITUS_API_KEY" if base else "REDITUS_API_BASE_URL"
        raise StackError(
            f"{missing} is not set: set both REDITUS_API_BASE_URL and REDITUS_API_KEY to use a real Reditus "
            "API, or neither for the simulator"
        )
    if base and not base.startswith(("https://", "http://")):
        raise StackError(f"REDITUS_API_BASE_URL must be an http(s) URL, got {base!r}")
    return (base.rstrip("/") or None, key or None)


class Output:
    """Lines from every part, prefixed with its name; one lock so lines never interleave."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def line(self, source: str, text: str) -> None:
        with self.lock:
            self.stream.write(f"[{source}]".ljust(10) + text + "\n")
            self.stream.flush()

    def block(self, text: str) -> None:
        with self.lock:
            self.stream.write(text + "\n")
            self.stream.flush()


class Child:
    """One part of the stack: a process in its own session, its output relayed line by line."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        out: Output,
        *,
        ready_marker: str | None = None,
        stop_timeout: float = 10.0,
        cwd: Path | None = None,
    ):
        self.name = name
        self.argv = argv
        self.env = env
        self.out = out
        self.ready_marker = ready_marker
        self.stop_timeout = stop_timeout
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.ready = threading.Event()
        self.ready_line = ""
        self.restarts = 0
        self.given_up = False
        self.stopping = False
        self._reader: threading.Thread | None = None
        self._tail: list[str] = []

    def start(self) -> None:
        self.ready.clear()
        self.stopping = False
        self._tail = []
        self.proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._relay, args=(self.proc,), name=self.name, daemon=True)
        self._reader.start()

    def _relay(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.rstrip()
            if not text.strip():
                continue
            self._tail = [*self._tail[-9:], text]
            if self.ready_marker and not self.ready.is_set() and self.ready_marker in text:
                self.ready_line = text
                self.ready.set()
            self.out.line(self.name, text)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def wait_ready(self, timeout: float, cancelled: threading.Event) -> str:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if cancelled.is_set():
                raise StackError("interrupted while starting")
            if not self.running:
                if self._reader:
                    self._reader.join(2)
                code = None if self.proc is None else self.proc.returncode
                last = f": {self._tail[-1]}" if self._tail else ""
                raise StackError(f"{self.name} exited with code {code} while starting{last}")
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} did not get ready within {timeout:.0f} s")
        return self.ready_line

    def _signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def stop(self) -> int | None:
        """SIGTERM to the part's process group; SIGKILL if it is not gone in stop_timeout."""
        if self.proc is None:
            return None
        self.stopping = True
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.out.line(
                    "stack", f"{self.name} did not stop within {self.stop_timeout:.0f} s; killing it"
                )
                self._signal_group(signal.SIGKILL)
                self.proc.wait(5)
        if self._reader:
            self._reader.join(2)
        return self.proc.returncode

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)


def _base_env(endpoint_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AWS_IDENTITY_ENV}
    for name in (*MANAGED_ENV, "DEAD_LETTER_QUEUE_URL", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": LOCAL_REGION,
            "AWS_DEFAULT_REGION": LOCAL_REGION,
            "PYTHONUNBUFFERED": "1",
        }
    )
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


class LocalStack:
    def __init__(self, options: StackOptions, out: Output | None = None):
        self.options = options
        self.out = out or Output()
        self.data_dir = options.data_dir.resolve()
        self.snapshot_path = self.data_dir / snapshot.SNAPSHOT_FILE
        self.api_key = options.reditus_api_key or secrets.token_urlsafe(24)
        # The providers' signing secrets for this stack (by the variable `local env` exports); one
        # set in the shell wins, so a provider's CLI signing with its own (stripe listen) works.
        self.webhook_secrets = {
            name: os.environ.get(name, "").strip() or generated for name, generated in local_secrets().items()
        }
        self.webhook_url = ""
        self.stop_requested = threading.Event()
        self.children: dict[str, Child] = {}
        self.system: LocalSystem | None = None
        self.config: SystemConfig | None = None
        self.reditus_url = options.reditus_base_url or ""
        self._signals = 0
        self._state_written = False

    # ---- checks --------------------------------------------------------------------------------
    def _ports(self) -> dict[str, int]:
        ports = {"moto": self.options.moto_port}
        if self.options.simulated:
            ports["simulator"] = self.options.simulator_port
        if self._has_receiver():
            ports["webhooks"] = self.options.webhook_port
        if self.options.console:
            ports["console"] = self.options.console_port
        return ports

    def check(self) -> None:
        state = read_local_state(self.data_dir)
        if (
            state
            and isinstance(state.get("pid"), int)
            and pid_alive(state["pid"])
            and state["pid"] != os.getpid()
        ):
            raise StackError(
                f"a local stack is already running from {self.data_dir} (pid {state['pid']}); "
                "stop it with Ctrl-C in its terminal, or use another --data-dir"
            )
        ports = self._ports()
        seen: dict[int, str] = {}
        for part, port in ports.items():
            if not 0 < port < 65536:
                raise StackError(f"{PORT_FLAGS[part]} must be between 1 and 65535, got {port}")
            if port in seen:
                raise StackError(
                    f"the {PART_NAMES[seen[port]]} and the {PART_NAMES[part]} cannot share port {port}"
                )
            seen[port] = part
        for part, port in ports.items():
            if not port_is_free(port):
                flag, variable = PORT_FLAGS[part], PORT_ENV[part]
                how = variable if flag == variable else f"{flag} or {variable}"
                raise StackError(
                    f"port {port} for the {PART_NAMES[part]} is taken on {HOST}; stop what uses it or choose "
                    f"another port with {how}"
                )
        if not self.options.template.is_file():
            raise StackError(f"the template {self.options.template} does not exist")

    def _has_receiver(self) -> bool:
        try:
            return url_function_settings(TemplateModel.load(self.options.template)) is not None
        except ResourceError:
            return False

    def model(self) -> TemplateModel:
        declared = {}
        with contextlib.suppress(ResourceError):
            declared = TemplateModel.load(self.options.template).parameters
        overrides: dict[str, Any] = {}
        defaults = {
            **QUIET_PARAMETER_DEFAULTS,
            **(SIMULATOR_PARAMETER_DEFAULTS if self.options.simulated else {}),
        }
        if self.options.verbose:
            defaults.pop("LogLevel", None)
        overrides.update({k: v for k, v in defaults.items() if k in declared})
        overrides.update(self.options.parameters)
        if self.options.max_receive_count is not None:
            overrides["MaxReceiveCount"] = self.options.max_receive_count
        try:
            return TemplateModel.load(self.options.template, overrides)
        except ResourceError as err:
            raise StackError(str(err)) from None

    # ---- starting ------------------------------------------------------------------------------
    def _python(self, module: str, *args: str, wrap: bool = False) -> list[str]:
        if wrap:
            return [
                sys.executable,
                "-m",
                "reditus_local.child",
                "--parent-pid",
                str(os.getpid()),
                module,
                *args,
            ]
        return [sys.executable, "-m", module, *args, "--parent-pid", str(os.getpid())]

    def _clients(self, endpoint_url: str) -> Callable[[str], Any]:
        session = moto_session()
        return lambda service: session.client(service, endpoint_url=endpoint_url)  # type: ignore[call-overload]

    def _start_aws(self) -> None:
        child = self.children.get("aws")
        if child is None:
            argv = self._python(
                "reditus_local.awsserver",
                "--port",
                str(self.options.moto_port),
                "--snapshot",
                str(self.snapshot_path),
                *(["--verbose"] if self.options.verbose else []),
            )
            child = Child("aws", argv, _base_env(None), self.out, ready_marker=AWS_READY, stop_timeout=60)
            self.children["aws"] = child
        child.start()
        child.wait_ready(START_TIMEOUT, self.stop_requested)
        endpoint = f"http://{HOST}:{self.options.moto_port}"
        model = self.model()
        try:
            system = create_resources(
                model,
                self._clients(endpoint),
                api_key=self.api_key,
                visibility_timeout=self.options.visibility_timeout,
                secret_values=self._webhook_secret_values(model),
            )
        except ResourceError as err:
            raise StackError(str(err)) from None
        self.system = system
        self.config = replace(system.config, endpoint_url=endpoint, webhook_url=self.webhook_url or None)

    def _webhook_secret_values(self, model: TemplateModel) -> dict[str, str]:
        """The receiver's secrets (the logical ids its variables name) with this stack's values."""
        receiver = url_function_settings(model)
        if receiver is None:
            return {}
        named = function_variable_resources(model, receiver.logical_id)
        values = secret_values(self.webhook_secrets)
        return {
            named[variable]: values[provider]
            for provider, variable in secret_variables().items()
            if variable in named
        }

    def _restore(self, fresh: bool) -> None:
        if not self.snapshot_path.is_file():
            return
        previous = self.data_dir / snapshot.PREVIOUS_SNAPSHOT_FILE
        if fresh:
            os.replace(self.snapshot_path, previous)
            self.out.line("stack", f"--fresh: starting empty (the previous state is kept in {previous})")
            return
        assert self.config is not None
        clients = self._clients(str(self.config.endpoint_url))
        try:
            report = snapshot.restore(snapshot.read(self.snapshot_path), clients("dynamodb"), clients("sqs"))
        except (snapshot.SnapshotError, ClientError, BotoCoreError) as err:
            raise StackError(f"could not restore the saved state: {err}") from None
        # Consumed: a crash later must not restore it a second time.
        os.replace(self.snapshot_path, previous)
        skipped = (
            f"; not restored (no longer in the template): {', '.join(report.skipped)}"
            if report.skipped
            else ""
        )
        self.out.line(
            "stack",
            f"restored {report.items} history items and {report.messages} messages saved at {report.saved_at}"
            + skipped,
        )

    def _start_simulator(self) -> None:
        env = _base_env(None)
        env["REDITUS_API_KEY"] = self.api_key  # by environment: command lines are visible to all users
        args = ["--port", str(self.options.simulator_port)]
        if self.options.fault_rate:
            args += ["--fault-rate", str(self.options.fault_rate)]
        child = Child(
            "reditus",
            self._python("reditus_local.simulator", *args, wrap=True),
            env,
            self.out,
            ready_marker=SIMULATOR_READY,
        )
        self.children["reditus"] = child
        child.start()
        line = child.wait_ready(START_TIMEOUT, self.stop_requested)
        self.reditus_url = line.split(SIMULATOR_READY, 1)[1].strip().rstrip("/")

    def worker_env(self) -> dict[str, str]:
        assert self.system is not None and self.config is not None
        function = self.system.function
        env = _base_env(self.config.endpoint_url)
        env.update({k: v for k, v in function.environment.items() if k not in ("REDITUS_API_KEY",)})
        # Tuning variables the template leaves to their defaults may come from the shell.
        for name in LAMBDA_ENV_VARS:
            if name not in function.environment and name not in MANAGED_ENV and name in os.environ:
                env[name] = os.environ[name]
        env.update(
            {
                "HISTORY_TABLE_NAME": self.config.table_name,
                "REFUND_QUEUE_URL": self.config.queue_url,
                "REDITUS_API_BASE_URL": self.reditus_url,
                "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
                "POWERTOOLS_METRICS_DISABLED": "true",  # no CloudWatch here
                "PYTHONWARNINGS": "ignore:No application metrics to publish",  # ... so none is the norm
            }
        )
        if self.system.max_receive_count is not None:
            env["MAX_RECEIVE_COUNT"] = str(self.system.max_receive_count)
        if self.system.secret_arn and env.get("REDITUS_API_KEY_SECRET"):
            env.pop("REDITUS_API_KEY", None)  # read from Secrets Manager, as in production
        else:
            env.pop("REDITUS_API_KEY_SECRET", None)
            env["REDITUS_API_KEY"] = self.api_key
        return env

    def _start_worker(self) -> None:
        assert self.system is not None and self.config is not None
        function = self.system.function
        args = [
            "--queue-url",
            self.config.queue_url,
            "--template",
            str(self.options.template),
            "--handler",
            function.handler,
            "--batch-size",
            str(function.batch_size),
            "--batching-window",
            str(function.batching_window_seconds),
            "--timeout",
            str(function.timeout_seconds),
            "--memory",
            str(function.memory_mb),
            "--function-name",
            function.function_name,
        ]
        if not function.report_batch_item_failures:
            args.append("--no-report-batch-item-failures")
        child = Child(
            "worker",
            self._python("reditus_local.worker", *args),
            self.worker_env(),
            self.out,
            ready_marker=WORKER_READY,
            stop_timeout=function.timeout_seconds + 10,  # lets the batch in hand finish
        )
        self.children["worker"] = child
        child.start()
        child.wait_ready(START_TIMEOUT, self.stop_requested)

    def webhooks_env(self) -> dict[str, str]:
        assert self.system is not None and self.config is not None and self.system.receiver is not None
        env = _base_env(self.config.endpoint_url)
        env.update(self.system.receiver.environment)
        env.update(
            {
                "HISTORY_TABLE_NAME": self.config.table_name,
                "REFUND_QUEUE_URL": self.config.queue_url,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "PYTHONWARNINGS": "ignore:No application metrics to publish",
            }
        )
        return env

    def _start_webhooks(self) -> None:
        assert self.system is not None and self.system.receiver is not None
        args = ["--port", str(self.options.webhook_port), "--handler", self.system.receiver.handler]
        child = Child(
            "webhooks",
            self._python("reditus_local.webhooks", *args),
            self.webhooks_env(),
            self.out,
            ready_marker=WEBHOOKS_READY,
        )
        self.children["webhooks"] = child
        child.start()
        line = child.wait_ready(START_TIMEOUT, self.stop_requested)
        self.webhook_url = line.split(WEBHOOKS_READY, 1)[1].strip().rstrip("/")
        assert self.config is not None
        self.config = replace(self.config, webhook_url=self.webhook_url)

    def _start_console(self) -> None:
        assert self.config is not None
        try:
            app = console_app()
        except ConsoleError as err:
            self.out.line("stack", f"console not started: {err}")
            return
        env = _base_env(self.config.endpoint_url)
        env.update(system_env(self.config))
        env["REDITUS_LOCAL_DATA_DIR"] = str(self.data_dir)
        # The local stack's console runs open (and says so); a CONSOLE_PASSWORD still wins.
        env.setdefault("CONSOLE_OPEN", "1")
        child = Child(
            "console",
            self._python("streamlit", *console_argv(self.options.console_port, app)[1:], wrap=True),
            env,
            self.out,
            cwd=PROJECT_ROOT,
        )
        self.children["console"] = child
        child.start()

    def _write_state(self) -> None:
        assert self.config is not None and self.system is not None
        console = self.children.get("console")
        write_local_state(
            self.config,
            self.data_dir,
            {
                "pid": os.getpid(),
                "started_at": iso(utc_now()),
                "data_dir": str(self.data_dir),
                "reditus_url": self.reditus_url,
                "simulator": self.options.simulated,
                "simulator_control_url": self._control_url() if self.options.simulated else None,
                "console_url": f"http://{HOST}:{self.options.console_port}" if console else None,
                "visibility_timeout": self.system.visibility_timeout,
                "max_receive_count": self.system.max_receive_count,
                "function_timeout": self.system.function.timeout_seconds,
                # What `local env` exports for the receiver: its URL and this stack's secrets.
                "webhook_env": (
                    {WEBHOOK_URL_ENV: self.webhook_url, **self.webhook_secrets} if self.webhook_url else {}
                ),
            },
        )
        self._state_written = True

    def _control_url(self) -> str:
        return f"http://{HOST}:{self.options.simulator_port}/_sim"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._start_aws()
        self._restore(self.options.fresh)
        if self.options.simulated:
            self._start_simulator()
        self._start_worker()
        if self.system is not None and self.system.receiver is not None:
            self._start_webhooks()
        if self.options.console:
            self._start_console()
        self._write_state()
        self.out.block(self.banner())

    # ---- running -------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # A second Ctrl-C: stop waiting for anyone.
            for child in self.children.values():
                child.kill()
            self._remove_state()
            os._exit(130)
        self.stop_requested.set()

    def supervise(self) -> None:
        while not self.stop_requested.wait(0.5):
            for child in list(self.children.values()):
                if child.running or child.given_up or child.stopping:
                    continue
                self._handle_exit(child)

    def _handle_exit(self, child: Child) -> None:
        code = None if child.proc is None else child.proc.returncode
        if child.restarts >= MAX_RESTARTS:
            child.given_up = True
            self.out.line(
                "stack",
                f"{child.name} exited (code {code}) after {MAX_RESTARTS} restarts; leaving it stopped "
                "(Ctrl-C and `make run` again to start over)",
            )
            return
        child.restarts += 1
        self.out.line(
            "stack", f"{child.name} exited (code {code}); restarting it ({child.restarts}/{MAX_RESTARTS})"
        )
        try:
            if child.name == "aws":
                self._start_aws()
                if self.snapshot_path.is_file():
                    self._restore(fresh=False)
                else:
                    self.out.line(
                        "stack", "the AWS state was lost (it stopped without saving); starting empty"
                    )
                # The new secrets have new ARNs (a random suffix, as on AWS): new cold starts.
                for name, make_env in (("worker", self.worker_env), ("webhooks", self.webhooks_env)):
                    part = self.children.get(name)
                    if part is not None and not part.given_up:
                        part.stop()
                        part.env = make_env()
                        part.start()
                        part.wait_ready(START_TIMEOUT, self.stop_requested)
            else:
                child.start()
                if child.ready_marker:
                    child.wait_ready(START_TIMEOUT, self.stop_requested)
        except StackError as err:
            self.out.line("stack", f"could not restart {child.name}: {err}")

    # ---- stopping ------------------------------------------------------------------------------
    def _remove_state(self) -> None:
        if not self._state_written:
            return
        state = read_local_state(self.data_dir)
        if state and state.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                (self.data_dir / STATE_FILE_NAME).unlink()

    def stop(self) -> None:
        self._remove_state()  # first: from now on the CLI says the stack is not running
        for name in ("console", "webhooks", "worker", "reditus", "aws"):
            child = self.children.get(name)
            if child is None or child.proc is None:
                continue
            was_running = child.running
            code = child.stop()
            if name == "aws" and was_running:
                if code == 0 and self.snapshot_path.is_file():
                    self.out.line(
                        "stack",
                        f"state saved in {self.snapshot_path} "
                        "(restored on the next start; --fresh starts empty)",
                    )
                else:
                    self.out.line("stack", "the state could not be saved (see the aws lines above)")

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            self.start()
            self.supervise()
            self.out.line("stack", "stopping")
        except StackError as err:
            self.out.line("stack", f"error: {err}")
            code = 1
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if code == 0:
            self.out.line("stack", "stopped")
        return code

    # ---- the banner ----------------------------------------------------------------------------
    def cli_command(self) -> str:
        """How to call the CLI from another terminal: plain if it is on PATH, else its path."""
        script = Path(sys.executable).with_name("reditus-refunds")
        found = shutil.which("reditus-refunds")
        command = "reditus-refunds"
        if not found or Path(found).resolve() != script.resolve():
            try:
                command = str(script.relative_to(Path.cwd()))
            except ValueError:
                command = str(script)
        if self.data_dir != data_dir().resolve():
            command += f" --data-dir {self.data_dir}"
        return command

    def banner(self) -> str:
        assert self.config is not None and self.system is not None
        config, system, function = self.config, self.system, self.system.function
        dlq = (
            f"dead-letter queue after {system.max_receive_count} receives"
            if system.max_receive_count
            else "no DLQ"
        )
        lines = [
            "",
            "reditus-refunds local stack: for trying and testing on this machine. Production runs on AWS",
            "(see docs/deploying.md); nothing here is backed up beyond the local data folder.",
            "",
            f"  AWS (moto)   {config.endpoint_url}  region {config.region}, fake credentials",
            f"               queue {config.queue_url.rsplit('/', 1)[-1]}, dead-letter queue "
            f"{config.dlq_url.rsplit('/', 1)[-1]}, table {config.table_name}",
        ]
        if self.options.simulated:
            lines.append(
                f"  Reditus      {self.reditus_url}  simulator; control API {self._control_url()}/config"
            )
        else:
            lines.append(f"  Reditus      {self.reditus_url}  REAL API: refunds are submitted for real")
        lines.append(
            f"  worker       the Lambda handler behind an SQS trigger: batch {function.batch_size}, window "
            f"{function.batching_window_seconds} s, timeout {function.timeout_seconds} s, visibility "
            f"{system.visibility_timeout} s, {dlq}; and the day counters from the table's stream"
        )
        if self.webhook_url:
            lines.append(
                f"  webhooks     {self.webhook_url}  the receiver's handler behind a Function URL: "
                f"{self.webhook_url}/stripe, /paddle, /chargebee, /lemonsqueezy, /polar"
            )
        cli = self.cli_command()
        console = self.children.get("console")
        if console:
            lines.append(f"  console      http://{HOST}:{self.options.console_port}")
        else:
            lines.append(f"  console      not started ({cli} console starts it on its own)")
        lines += [
            f"  data         {self.data_dir}",
            "               saved on Ctrl-C, restored on the next start (--fresh starts empty)",
            "",
            "Point other tools at it (AWS_ENDPOINT_URL, region, queue and table names, the webhook URL",
            "and this stack's webhook signing secrets, e.g. for stripe listen --forward-to):",
            f'  eval "$({cli} local env)"',
            f"  aws --endpoint-url {config.endpoint_url} sqs list-queues",
        ]
        if self.options.simulated:
            grace = function.environment.get("NOT_FOUND_GRACE_SECONDS", "?")
            late_id, late_after = DEMO_LATE[0]
            width = max(len(p) for p in (DEMO_REFUNDABLE[0], DEMO_INVALID[0], DEMO_UNKNOWN[0], late_id))
            lines += [
                "",
                f"Try every path, then see the outcomes with: {cli} history",
                f"  {cli} enqueue {DEMO_REFUNDABLE[0]:<{width}}  # 200: refunded",
                f"  {cli} enqueue {DEMO_INVALID[0]:<{width}}  # 400: rejected by Reditus",
                f"  {cli} enqueue {DEMO_UNKNOWN[0]:<{width}}  # 404: not_found once the {grace} s grace "
                "window ends",
                f"  {cli} enqueue {late_id:<{width}}  # 404, then 200: the payment 'arrives' "
                f"{late_after:g} s after start",
                f"  more refundable ids: {', '.join(DEMO_REFUNDABLE[1:])}",
            ]
        lines += ["", "Ready. Ctrl-C stops everything (the state is saved).", ""]
        return "\n".join(lines)


def up(options: StackOptions, out: Output | None = None) -> int:
    """Run the local stack until Ctrl-C or SIGTERM; returns the exit code.

    Raises StackError, before anything starts, for what can be checked up front: ports taken,
    a stack already running from the data folder, a bad template or parameter.
    """
    stack = LocalStack(options, out)
    stack.check()
    stack.model()  # a bad --parameter fails here
    return stack.run()
