"""The BUILT Lambda package, run the way Lambda runs it, handling a real SQS event end to end.

1. functions/Makefile builds the package (`sam build` runs the same target): the dependencies are
   pip-installed from the package registry as wheels for this machine's manylinux platform and
   Python 3.12 (the template's runtime), and everything is compiled to bytecode.
2. A Python 3.12 venv without pip runs ``python -s -m awslambdaric <Handler>`` (AWS's runtime
   interface client, installed into a directory of its own) with cwd and LAMBDA_TASK_ROOT = the
   package, an environment built from scratch (nothing inherited from this process), and
   AWS_LAMBDA_RUNTIME_API pointing at tests/lambda_runtime_api.py. The interpreter sees the package,
   awslambdaric and the standard library only, so a module missing from the package fails here.
3. AWS is a moto server on 127.0.0.1 (the history table as template.yaml declares it, the refund
   queue, the API key in Secrets Manager); Reditus is the simulator on 127.0.0.1.
4. An SQS event built from messages received from that queue is invoked through the Runtime API;
   the test checks the partial-batch response, the history items, the 404 re-check message, what
   the simulator received, and that the process that answered saw no development environment.

Slow (the build downloads boto3/botocore and friends) and needs the package registry: marked
``packaging``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from bench.artifact import RUNTIME, manylinux_platform, runtime_python

from .conftest import API_KEY, TABLE, create_history_table
from .lambda_runtime_api import RuntimeApi

if TYPE_CHECKING:
    # Only a type; the simulator itself comes from the `simulator` fixture (tests/lambda_rig.py, a
    # plugin tests/conftest.py registers), so the simulator's module path lives in one place.
    from .lambda_rig import ReditusSimulator

# packaging: needs the package registry (the build pip-installs the function's requirements).
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"
DEV_VENV = Path(sys.prefix).resolve()  # the interpreter running this test: must never leak into the runtime
HANDLER = "reditus_refunds.handler.lambda_handler"  # template.yaml: Handler
FUNCTION_NAME = "refund-submitter"
REGION = "us-east-1"
ACCOUNT = "123456789012"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FUNCTION_NAME}"
AWSLAMBDARIC = "awslambdaric>=3"
# A record that raises is reported in batchItemFailures, and Powertools logs the exception only in
# its debug mode: set this variable to run the function with POWERTOOLS_DEBUG=true and see it.
DEBUG_SWITCH = "LAMBDA_RUNTIME_TEST_DEBUG"

# The refunds in the event and what the simulator answers each.
REFUNDED = ("rt-refunded-1", "pay_rt_known")  # 200
REJECTED = ("rt-rejected-1", "pay_rt_invalid")  # 400 "payment_id is invalid"
NOT_YET_FOUND = ("rt-notfound-1", "pay_rt_not_arrived")  # 404 inside the grace window

# Written as sitecustomize.py into a directory on the runtime's PYTHONPATH: at start-up (before
# awslambdaric runs) it records what that interpreter can see. It imports nothing beyond the
# standard library and find_spec loads no top-level module.
PROBE = """
import importlib.util, json, os, sys
def _origin(name):
    spec = importlib.util.find_spec(name)
    return None if spec is None else (spec.origin or list(spec.submodule_search_locations or ["?"])[0])
_names = ["moto", "pytest", "yaml", "reditus_local", "reditus_operators", "reditus_refunds", "boto3",
          "botocore", "requests", "urllib3", "aws_lambda_powertools", "aws_xray_sdk", "awslambdaric"]
with open(os.environ["RUNTIME_PROBE_FILE"], "w", encoding="utf-8") as _f:
    json.dump({"pid": os.getpid(), "executable": sys.executable, "prefix": sys.prefix,
               "base_prefix": sys.base_prefix, "path": sys.path, "no_user_site": sys.flags.no_user_site,
               "version": list(sys.version_info[:2]), "origins": {n: _origin(n) for n in _names}}, _f)
"""


# -- finding and building -------------------------------------------------------------------------


def build_env() -> dict[str, str]:
    """This process's environment (the registry configuration) without what points into the dev venv."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(name, None)
    return env


def run(command: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


@dataclass(frozen=True)
class Runtime:
    python: Path  # the venv's interpreter: its site-packages is empty
    ric: Path  # awslambdaric and its own dependencies, as /var/runtime holds them in Lambda
    artifact: Path  # the built package, as /var/task holds it


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    found = runtime_python()  # the same search the bench's cold-start figure uses
    python = None if found is None else Path(found)
    if python is None:
        pytest.skip(
            f"no Python {RUNTIME} found (looked under $(pyenv root)/versions/{RUNTIME}*/bin and on PATH): "
            "the package is built and run for the function's runtime, python3.12"
        )
    work = tmp_path_factory.mktemp("lambda-runtime")
    artifact = work / "task"
    started = time.monotonic()
    built = run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(FUNCTIONS),
            "build-RefundSubmitterFunction",
            f"ARTIFACTS_DIR={artifact}",
            f"PYTHON={python}",
            f"PLATFORM={manylinux_platform()}",
        ],
        timeout=600,
        env=build_env(),
    )
    assert built.returncode == 0, f"the build failed:\n{built.stdout}\n{built.stderr}"
    assert (artifact / "reditus_refunds" / "handler.py").is_file()

    venv = work / "venv"
    made = run([str(python), "-m", "venv", "--without-pip", str(venv)], timeout=120, env=build_env())
    assert made.returncode == 0, made.stderr
    ric = work / "runtime"
    installed = run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
         "--target", str(ric), AWSLAMBDARIC],
        timeout=300,
        env=build_env(),
    )  # fmt: skip
    assert installed.returncode == 0, (
        f"installing {AWSLAMBDARIC} failed:\n{installed.stdout}\n{installed.stderr}"
    )
    print(f"\nbuilt the package and installed awslambdaric in {time.monotonic() - started:.0f} s")
    return Runtime(python=venv / "bin" / "python", ric=ric, artifact=artifact)


# -- AWS (moto server) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Aws:
    endpoint_url: str
    dynamodb: Any
    sqs: Any
    table: str
    queue_url: str
    queue_arn: str
    secret_arn: str


@pytest.fixture
def aws() -> Iterator[Aws]:  # overrides conftest's in-process `aws`: the runtime is another process
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        dynamodb = session.client("dynamodb", endpoint_url=endpoint)
        sqs = session.client("sqs", endpoint_url=endpoint)
        secrets = session.client("secretsmanager", endpoint_url=endpoint)
        create_history_table(dynamodb, TABLE)
        queue_url = sqs.create_queue(QueueName="refunds", Attributes={"VisibilityTimeout": "360"})["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        secret_arn = secrets.create_secret(Name="reditus-api-key", SecretString=API_KEY)["ARN"]
        yield Aws(endpoint, dynamodb, sqs, TABLE, queue_url, queue_arn, secret_arn)
    finally:
        server.stop()


def receive_sqs_event(aws: Aws, count: int, timeout: float = 20.0) -> dict[str, Any]:
    """Receive ``count`` messages and shape them as the event Lambda's SQS poller delivers."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        messages += aws.sqs.receive_message(
            QueueUrl=aws.queue_url,
            MaxNumberOfMessages=min(10, count - len(messages)),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=1,  # a long poll on the server, not a sleep
        ).get("Messages", [])
    assert len(messages) == count, f"received {len(messages)} of {count} messages"
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m["Attributes"],  # ApproximateReceiveCount, SentTimestamp, SenderId, ...
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": aws.queue_arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


def history_item(aws: Aws, refund_id: str) -> dict[str, Any]:
    """The refund's item, read straight from the table (the key name from the table itself)."""
    schema = aws.dynamodb.describe_table(TableName=aws.table)["Table"]["KeySchema"]
    hash_key = next(k["AttributeName"] for k in schema if k["KeyType"] == "HASH")
    item = aws.dynamodb.get_item(TableName=aws.table, Key={hash_key: {"S": refund_id}}, ConsistentRead=True)
    assert "Item" in item, f"no history item for {refund_id}"
    return {name: next(iter(value.values())) for name, value in item["Item"].items()}


# -- the runtime process --------------------------------------------------------------------------


@dataclass
class RunningFunction:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    probe: Path
    started: float  # time.monotonic() when the process was started

    def output(self) -> str:
        def tail(path: Path) -> str:
            return path.read_text(encoding="utf-8", errors="replace")[-6000:] if path.exists() else ""

        return f"--- runtime stdout ---\n{tail(self.stdout)}\n--- runtime stderr ---\n{tail(self.stderr)}"


def function_env(
    runtime: Runtime, api: RuntimeApi, aws: Aws, reditus_base_url: str, probe_dir: Path, xray_address: str
) -> dict[str, str]:
    """What Lambda sets, plus template.yaml's variables for the function; built from nothing."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PYTHONPATH": os.pathsep.join([str(runtime.artifact), str(runtime.ric), str(probe_dir)]),
        "RUNTIME_PROBE_FILE": str(probe_dir / "probe.json"),
        # Lambda's own variables.
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "LAMBDA_TASK_ROOT": str(runtime.artifact),
        "LAMBDA_RUNTIME_DIR": str(runtime.ric),
        "_HANDLER": HANDLER,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{RUNTIME}",
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_NAME}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/11/30/[$LATEST]0123456789abcdef",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        # Tracing: Active. Segments go to a UDP port the test holds (nothing reads them).
        "AWS_XRAY_DAEMON_ADDRESS": xray_address,
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        # template.yaml, Globals.Function.Environment.
        "POWERTOOLS_SERVICE_NAME": "reditus-refunds",
        "POWERTOOLS_METRICS_NAMESPACE": "ReditusRefunds",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "POWERTOOLS_LOGGER_LOG_EVENT": "false",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        # template.yaml, RefundSubmitterFunction's Environment (names: reditus_refunds/settings.py).
        "HISTORY_TABLE_NAME": aws.table,
        "REFUND_QUEUE_URL": aws.queue_url,
        "REDITUS_API_BASE_URL": reditus_base_url,
        "REDITUS_API_KEY_SECRET": aws.secret_arn,
        "NOT_FOUND_GRACE_SECONDS": "900",
        "NOT_FOUND_RECHECK_DELAY_SECONDS": "60",
        "MAX_RECEIVE_COUNT": "5",
        "REDITUS_MAX_CONCURRENCY": "10",
        "REDITUS_MAX_RPS": "0",
    }


@pytest.fixture
def xray_address() -> Iterator[str]:
    """A UDP port for the X-Ray SDK's segments (Tracing: Active), so they go nowhere else."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        host, port = sink.getsockname()[:2]
        yield f"{host}:{port}"
    finally:
        sink.close()


@pytest.fixture
def function(
    runtime: Runtime, aws: Aws, simulator: ReditusSimulator, xray_address: str, tmp_path: Path
) -> Iterator[tuple[RuntimeApi, RunningFunction]]:
    """The runtime process, started against a fresh Runtime API; terminated and reaped afterwards."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
    with RuntimeApi(FUNCTION_ARN) as api:
        env = function_env(runtime, api, aws, simulator.base_url, probe_dir, xray_address)
        if os.environ.get(DEBUG_SWITCH):
            env["POWERTOOLS_DEBUG"] = "true"
        stdout, stderr = tmp_path / "runtime.stdout", tmp_path / "runtime.stderr"
        started = time.monotonic()
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [str(runtime.python), "-s", "-m", "awslambdaric", HANDLER],
                cwd=runtime.artifact,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        watcher = threading.Thread(target=lambda: api.runtime_exited(process.wait()), daemon=True)
        watcher.start()
        try:
            yield api, RunningFunction(process, stdout, stderr, probe_dir / "probe.json", started)
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
            watcher.join(timeout=5)


# -- the test -------------------------------------------------------------------------------------


def test_the_built_package_handles_an_sqs_event_under_awslambdaric(
    runtime: Runtime, aws: Aws, simulator: ReditusSimulator, function: tuple[RuntimeApi, RunningFunction]
) -> None:
    api, fn = function
    simulator.add_payment(REFUNDED[1])
    simulator.add_invalid(REJECTED[1])
    simulator.remove_payment(NOT_YET_FOUND[1])  # unknown: 404

    # Init: the handler module is imported (settings read, clients built) before the first poll.
    polled = api.wait_for_polls(1, timeout=60)
    assert not api.init_errors, f"init error: {api.init_errors[0].payload}\n{fn.output()}"
    assert polled, f"the runtime never polled for an event (exit code {fn.process.poll()})\n{fn.output()}"
    cold_start = time.monotonic() - fn.started

    for refund_id, payment_id in (REFUNDED, REJECTED, NOT_YET_FOUND):
        aws.sqs.send_message(
            QueueUrl=aws.queue_url, MessageBody=json.dumps({"payment_id": payment_id, "refund_id": refund_id})
        )
    event = receive_sqs_event(aws, 3)
    started = time.monotonic()
    kind, payload = api.invoke(event, timeout=60)
    took = time.monotonic() - started
    print(f"\nprocess start to first poll {cold_start:.2f} s; the invocation {took:.2f} s")

    # A partial-batch response with no failures: every outcome is settled for this delivery (the
    # 404 is re-checked by a delayed copy of the message, not by an SQS retry).
    assert kind == "response", f"{kind}: {json.dumps(payload, indent=1)}\n{fn.output()}"
    assert payload == {"batchItemFailures": []}, (
        f"{fn.output()}\nrecords failed; if no cause is logged above, rerun with {DEBUG_SWITCH}=1"
    )

    # The history, read from the table the function wrote to.
    refunded = history_item(aws, REFUNDED[0])
    assert (refunded["outcome"], refunded["http_status"]) == ("refunded", "200")
    assert refunded["payment_id"] == REFUNDED[1]
    rejected = history_item(aws, REJECTED[0])
    assert (rejected["outcome"], rejected["http_status"]) == ("rejected", "400")
    assert "payment_id is invalid" in rejected["detail"]
    waiting = history_item(aws, NOT_YET_FOUND[0])
    assert (waiting["outcome"], waiting["error_kind"], waiting["http_status"]) == (
        "retrying",
        "awaiting_payment",
        "404",
    )
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=aws.queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"  # the 404's re-check, sent by the function

    # Reditus saw one call per refund, each with the right Bearer key (the secret's value).
    calls = simulator.wait_for_records(3, timeout=5)
    assert sorted((c.method, c.path, c.payment_id, c.status, c.auth_ok) for c in calls) == sorted(
        [
            ("POST", "/v1/refunds", REFUNDED[1], 200, True),
            ("POST", "/v1/refunds", REJECTED[1], 400, True),
            ("POST", "/v1/refunds", NOT_YET_FOUND[1], 404, True),
        ]
    )
    assert simulator.applied_count(REFUNDED[1]) == 1

    # What CloudWatch would get: JSON log lines carrying each refund's ids, the outcome metrics (EMF)
    # and no traceback.
    lines = [
        json.loads(line)
        for line in fn.stdout.read_text(encoding="utf-8").splitlines()
        if line.startswith("{")
    ]
    logged = {(line["refund_id"], line.get("payment_id")) for line in lines if "refund_id" in line}
    assert logged == {REFUNDED, REJECTED, NOT_YET_FOUND}, fn.output()
    emitted = {name for line in lines if "_aws" in line for name in line}
    assert {"Outcome_refunded", "Outcome_rejected", "Outcome_retrying"} <= emitted, fn.output()
    assert "Traceback" not in fn.stderr.read_text(encoding="utf-8"), fn.output()

    # The runtime answered through the API and went back for the next event, still running.
    assert api.wait_for_polls(2, timeout=10), fn.output()
    assert fn.process.poll() is None, fn.output()
    requests = api.requests
    assert requests[0] == ("GET", "/2018-06-01/runtime/invocation/next")
    assert requests[1][0] == "POST" and requests[1][1].endswith("/response"), requests
    assert requests[2] == ("GET", "/2018-06-01/runtime/invocation/next")

    # The process that answered saw the package, awslambdaric and the standard library: nothing of
    # the development venv or the checkout.
    probe = json.loads(fn.probe.read_text(encoding="utf-8"))
    assert probe["pid"] == fn.process.pid
    assert probe["version"] == [3, 12] and probe["no_user_site"] == 1
    origins = probe["origins"]
    for name in ("moto", "pytest", "reditus_local"):
        assert origins[name] is None, f"{name} importable in the runtime: {origins[name]}"
    for name in ("reditus_refunds", "boto3", "botocore", "requests", "urllib3", "aws_lambda_powertools"):
        assert origins[name] and Path(origins[name]).is_relative_to(runtime.artifact), (name, origins[name])
    assert Path(origins["awslambdaric"]).is_relative_to(runtime.ric)
    venv, base = Path(probe["prefix"]), Path(probe["base_prefix"])
    allowed = [runtime.artifact, runtime.ric, fn.probe.parent, venv, base]
    for entry in probe["path"]:
        where = Path(entry).resolve()
        assert not where.is_relative_to(DEV_VENV) and not where.is_relative_to(ROOT), f"{entry} on sys.path"
        assert any(where.is_relative_to(root.resolve()) for root in allowed), f"{entry} on sys.path"
        if where.name == "site-packages":  # only the venv's own, which holds nothing
            assert where.is_relative_to(venv.resolve()) and not any(where.iterdir()), entry
    assert not base.resolve().is_relative_to(DEV_VENV)
