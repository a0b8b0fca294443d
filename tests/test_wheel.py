"""The operators' tool as an operator gets it: the project's wheel in a fresh venv, run outside the checkout.

Builds the wheel (`pip wheel`), installs it with the console extra from the package registries, and
runs the installed `reditus-refunds` from a temporary directory against a moto server in this
process, the system named by the usual variables and by `--stack-name` (a CloudFormation stack in
moto whose outputs name the table and queues).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import create_history_table
from tests.lambda_rig import free_port

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
TABLE = "wheel-history"
STACK = "wheel-stack"


@dataclass
class Installed:
    bin: Path
    wheel: Path
    home: Path  # outside the checkout: every command runs here

    def run(self, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "reditus-refunds"), *args],
            env=env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy: an in-tree build would reuse (and ship) a stale build/ and write into the checkout.
    source = work / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")
    source.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    for part in ("functions", "ui"):
        shutil.copytree(ROOT / part, source / part, ignore=junk)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", ".", "-w", str(work / "dist")],
        cwd=source,
        check=True,
        timeout=600,
    )
    (wheel,) = (work / "dist").glob("reditus_refunds-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=300)
    pip = work / "venv" / "bin" / "pip"
    subprocess.run(
        [str(pip), "install", "--quiet", "--disable-pip-version-check", f"{wheel}[console]"],
        cwd=work,
        check=True,
        timeout=900,
    )
    home = work / "elsewhere"
    home.mkdir()
    return Installed(work / "venv" / "bin", wheel, home)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    session = boto3.session.Session(
        region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    create_history_table(session.client("dynamodb", endpoint_url=url), TABLE)
    sqs = session.client("sqs", endpoint_url=url)
    dlq_url = sqs.create_queue(QueueName="wheel-refunds-dlq")["QueueUrl"]
    queue_url = sqs.create_queue(QueueName="wheel-refunds")["QueueUrl"]
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "HistoryTableName": {"Value": TABLE},
            "RefundQueueUrl": {"Value": queue_url},
            "DeadLetterQueueUrl": {"Value": dlq_url},
        },
    }
    session.client("cloudformation", endpoint_url=url).create_stack(
        StackName=STACK, TemplateBody=json.dumps(template)
    )
    try:
        yield url
    finally:
        server.stop()


def base_env(home: Path, moto_url: str) -> dict[str, str]:
    """Nothing of the checkout or of this test's environment: a PATH, a home, moto's fake keys."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_url,
        "REDITUS_LOCAL_DATA_DIR": str(home / "no-local-stack"),
    }


def test_the_wheel_holds_the_tool_and_the_console_and_nothing_else(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert top == {name.split(".")[0] for name in declared}, top  # what pyproject says, nothing stale
    assert {"reditus_refunds", "reditus_operators", "ui"} <= top
    assert not any("reditus_local" in name or name.startswith("tests/") for name in names)
    for needed in (
        "ui/app.py",
        "ui/app_pages/queue_refund.py",
        "ui/app_pages/bulk_upload.py",
        "ui/app_pages/history.py",
        "ui/app_pages/dead_letters.py",
        "reditus_operators/console.py",
        "reditus_refunds/schema/refund-request.schema.json",
    ):
        assert needed in names, needed


def test_the_installed_tool_works_outside_the_checkout(installed: Installed, moto_url: str) -> None:
    env = base_env(installed.home, moto_url)
    helped = installed.run(env, "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("enqueue", "history", "dlq", "console", "local"):
        assert command in helped.stdout

    # No local stack in the installed tool: said plainly, exit 2.
    local = installed.run(env, "local", "up")
    assert local.returncode == 2 and "local stack is not installed" in local.stderr, local.stderr
    assert "Traceback" not in local.stderr
    python = installed.bin / "python"
    probe = subprocess.run([str(python), "-c", "import reditus_local"], env=env, cwd=installed.home,
                           capture_output=True, timeout=60)  # fmt: skip
    assert probe.returncode != 0

    named = {
        **env,
        "HISTORY_TABLE_NAME": TABLE,
        "REFUND_QUEUE_URL": f"{moto_url}/123456789012/wheel-refunds",
        "DEAD_LETTER_QUEUE_URL": f"{moto_url}/123456789012/wheel-refunds-dlq",
    }
    queued = installed.run(named, "enqueue", "pay_wheel_1", "--requested-by", "wheel-test")
    assert queued.returncode == 0, queued.stderr
    refund_id = queued.stdout.strip()
    history = installed.run(named, "history", "--json")
    assert history.returncode == 0, history.stderr
    (record,) = map(json.loads, history.stdout.splitlines())
    assert (record["refund_id"], record["payment_id"], record["outcome"]) == (
        refund_id,
        "pay_wheel_1",
        "pending",
    )
    empty = installed.run(named, "dlq", "list")
    assert empty.returncode == 0 and "empty" in empty.stderr, empty.stderr

    # The same system through its stack's outputs.
    by_stack = installed.run(env, "--stack-name", STACK, "history", "--json")
    assert by_stack.returncode == 0, by_stack.stderr
    assert [json.loads(line)["refund_id"] for line in by_stack.stdout.splitlines()] == [refund_id]
    again = installed.run(env, "enqueue", "pay_wheel_1", "--stack-name", STACK)
    assert again.returncode == 1 and "already pending" in again.stderr
    dlq = installed.run(env, "dlq", "list", "--stack-name", STACK, "--json")
    assert dlq.returncode == 0 and dlq.stdout == "", dlq.stderr


def test_the_installed_console_starts_and_answers(installed: Installed, moto_url: str) -> None:
    port = free_port()
    env = {**base_env(installed.home, moto_url), "CONSOLE_OPEN": "1"}
    console = subprocess.Popen(
        [str(installed.bin / "reditus-refunds"), "--stack-name", STACK, "console", "--port", str(port)],
        env=env,
        cwd=installed.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: stopping it stops Streamlit too
    )
    try:
        health = f"http://127.0.0.1:{port}/_stcore/health"
        deadline = time.monotonic() + 120
        answer = ""
        while time.monotonic() < deadline and console.poll() is None:
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    answer = response.read().decode()
                    break
            except OSError:
                time.sleep(0.5)  # polling a server that is starting; no event to wait on
        assert answer == "ok", console.stdout.read() if console.poll() is not None else "no answer in time"
    finally:
        if console.poll() is None:
            os.killpg(console.pid, signal.SIGTERM)
        try:
            console.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(console.pid, signal.SIGKILL)
            console.wait()
