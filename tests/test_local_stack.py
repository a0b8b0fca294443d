"""End to end: `reditus-refunds local up` as its own process, driven through the CLI.

The stack runs with the template's resources on free ports of 127.0.0.1; only the waits that
would take minutes are shortened through documented flags (visibility timeout 2 s, 2 receives
before the dead-letter queue, an 8 s 404 grace window re-checked every second). Every wait polls
with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from reditus_local import snapshot
from reditus_local.resources import LOCAL_STACK_NAME
from reditus_local.simulator import DEMO_INVALID, DEMO_REFUNDABLE, DEMO_UNKNOWN
from reditus_operators.cli import main as cli_main

from .webhooks.samples import dumps, stripe_charge, stripe_event, stripe_header

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CLI = Path(sys.executable).with_name("reditus-refunds")
MOTO_CALLER = "arn:aws:sts::123456789012:user/moto"  # what moto answers to GetCallerIdentity
GRACE_SECONDS = 8
VISIBILITY_SECONDS = 2
MAX_RECEIVES = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str, describe: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}\n--- stack output ---\n{describe()}"
            )
        time.sleep(0.1)  # polling interval, not synchronisation


class Stack:
    """One `local up` process and the CLI pointed at it."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.moto_port = free_port()
        self.simulator_port = free_port()
        self.env = {
            **os.environ,
            "REDITUS_LOCAL_WEBHOOK_PORT": str(free_port()),
            "REDITUS_MAX_ATTEMPTS": "1",  # one Reditus call per delivery: transient faults show at once
            "REDITUS_LOCAL_DATA_DIR": str(data_dir),
        }
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.state: dict[str, Any] = {}

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def argv(self, fresh: bool) -> list[str]:
        return [
            str(CLI),
            "local",
            "up",
            "--no-console",
            "--data-dir",
            str(self.data_dir),
            "--moto-port",
            str(self.moto_port),
            "--simulator-port",
            str(self.simulator_port),
            "--visibility-timeout",
            str(VISIBILITY_SECONDS),
            "--max-receive-count",
            str(MAX_RECEIVES),
            "--parameter",
            f"NotFoundGraceSeconds={GRACE_SECONDS}",
            "--parameter",
            "NotFoundRecheckDelaySeconds=1",
            *(["--fresh"] if fresh else []),
        ]

    def start(self, fresh: bool) -> None:
        argv = self.argv(fresh)
        self.lines = []
        proc = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.proc = proc

        def relay() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.append(line.rstrip())

        threading.Thread(target=relay, daemon=True).start()
        state_file = self.data_dir / "stack.json"

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                pytest.fail(f"local up exited with {proc.returncode}\n{self.output()}")
            if not state_file.is_file():
                return None
            state: dict[str, Any] = json.loads(state_file.read_text())
            return state if state.get("pid") == proc.pid else None

        self.state = wait_until(ready, 60, "the stack to be ready", self.output)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), "--data-dir", str(self.data_dir), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def enqueue(self, payment_id: str) -> str:
        done = self.cli("enqueue", payment_id, "--requested-by", "e2e")
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def run_in_process(self, *args: str) -> list[dict[str, Any]]:
        """The CLI's main() in this process (cheap enough to poll with), JSON lines out."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli_main(["--data-dir", str(self.data_dir), *args])
        assert code == 0
        return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]

    def record(self, refund_id: str) -> dict[str, Any] | None:
        found = self.run_in_process("history", "--refund-id", refund_id, "--json")
        return found[0] if found else None

    def wait_for(self, refund_id: str, outcomes: set[str], timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            record = self.record(refund_id)
            return record if record and record["outcome"] in outcomes else None

        return wait_until(reached, timeout, f"{refund_id} to be {' or '.join(sorted(outcomes))}", self.output)

    def simulator(self, **changes: Any) -> dict[str, Any]:
        response = requests.post(f"{self.state['simulator_control_url']}/config", json=changes, timeout=5)
        response.raise_for_status()
        config: dict[str, Any] = response.json()
        return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert CLI.is_file(), f"the console script is not installed: {CLI}"
    running = Stack(tmp_path_factory.mktemp("local-stack"))
    running.start(fresh=True)
    try:
        yield running
    finally:
        if running.proc is not None and running.proc.poll() is None:
            running.stop()


SETTLED: dict[str, str] = {}  # payment_id -> refund_id, for the restart test


def test_every_outcome_through_the_cli(stack: Stack) -> None:
    late = "pay_e2e_late"
    stack.simulator(add_late={late: 4})  # 404 for 4 s, then found: inside the 8 s grace window
    ids = {late: stack.enqueue(late)}
    for payment_id in (DEMO_REFUNDABLE[0], DEMO_INVALID[0], DEMO_UNKNOWN[0]):
        ids[payment_id] = stack.enqueue(payment_id)
    stack.wait_for(ids[DEMO_REFUNDABLE[0]], {"refunded"})
    stack.wait_for(ids[DEMO_INVALID[0]], {"rejected"})
    stack.wait_for(ids[late], {"refunded"})
    stack.wait_for(ids[DEMO_UNKNOWN[0]], {"not_found"}, timeout=GRACE_SECONDS + 20)

    # The assertions read what the CLI prints, in a process of its own.
    done = stack.cli("history", "--json", "--limit", "100")
    assert done.returncode == 0, done.stderr
    records = {r["refund_id"]: r for r in map(json.loads, done.stdout.splitlines())}
    expected = {
        DEMO_REFUNDABLE[0]: ("refunded", 200),
        DEMO_INVALID[0]: ("rejected", 400),
        DEMO_UNKNOWN[0]: ("not_found", 404),
        late: ("refunded", 200),
    }
    for payment_id, (outcome, status) in expected.items():
        record = records[ids[payment_id]]
        for field in ("refund_id", "payment_id", "outcome", "http_status", "detail", "attempts",
                      "requested_by", "queued_at", "completed_at"):  # fmt: skip
            assert field in record
        assert (record["payment_id"], record["outcome"], record["http_status"]) == (
            payment_id,
            outcome,
            status,
        )
        # The CLI's identity is its AWS identity (moto's STS caller); --as/--requested-by names it.
        assert record["requested_by"] == MOTO_CALLER and record["completed_at"]
    queued = [json.loads(line) for line in stack.cli("audit", "--json").stdout.splitlines()]
    named = {r for a in queued if a["action"] == "queue" and a["who_name"] == "e2e" for r in a["refund_ids"]}
    assert {ids[p] for p in expected} <= named and all(a["who"] == MOTO_CALLER for a in queued)
    late_record = records[ids[late]]
    assert late_record["attempts"] >= 2
    assert late_record["attempt_log"][0]["http_status"] == 404
    assert records[ids[DEMO_UNKNOWN[0]]]["attempts"] >= 2  # re-checked within the grace window

    by_code = stack.cli("history", "--outcome", "404", "--json")
    by_name = stack.cli("history", "--outcome", "not_found", "--json")
    assert by_code.returncode == by_name.returncode == 0
    assert by_code.stdout == by_name.stdout
    assert ids[DEMO_UNKNOWN[0]] in by_code.stdout and ids[late] not in by_code.stdout
    SETTLED.update({DEMO_REFUNDABLE[0]: ids[DEMO_REFUNDABLE[0]], DEMO_INVALID[0]: ids[DEMO_INVALID[0]]})


def test_the_day_counters_follow_the_history_through_the_tables_stream(stack: Stack) -> None:
    """The worker plays the template's CounterStreamFunction on the table's stream: the counters the
    console's charts read reach what the history holds (the worker reads the stream between queue
    polls, at least every 10 s)."""
    from reditus_operators.config import from_local_state, read_local_state
    from reditus_operators.history import HistoryReader
    from reditus_refunds.records import utc_now

    state = read_local_state(stack.data_dir)
    assert state is not None
    config = from_local_state(state)
    reader = HistoryReader(config.table_name, config.client("dynamodb"))
    today = utc_now().date()

    def history() -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in stack.run_in_process("history", "--json", "--limit", "1000"):
            counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
        return counts

    def counted() -> dict[str, int] | None:
        counts = {k: v for k, v in reader.daily_counts(today, today)[today.isoformat()].items() if v}
        return counts if counts and counts == history() else None

    assert wait_until(counted, 40, "the day counters to equal the history", stack.output)


def test_a_transient_fault_is_retried_until_it_succeeds(stack: Stack) -> None:
    payment = "pay_e2e_flaky"
    stack.simulator(add_payments=[payment], outage=True)
    try:
        refund_id = stack.enqueue(payment)
        failed = stack.wait_for(refund_id, {"retrying"})
        assert failed["http_status"] == 503 and failed["error_kind"] == "transient"
    finally:
        stack.simulator(outage=False)
    record = stack.wait_for(refund_id, {"refunded"})
    statuses = [a["http_status"] for a in record["attempt_log"]]
    assert statuses[0] == 503 and statuses[-1] == 200


def test_a_message_that_keeps_failing_is_dead_lettered_then_redriven(stack: Stack) -> None:
    payment = "pay_e2e_dlq"
    stack.simulator(add_payments=[payment], outage=True)
    try:
        refund_id = stack.enqueue(payment)

        def in_dlq() -> list[dict[str, Any]]:
            return [m for m in stack.run_in_process("dlq", "list", "--json") if m["refund_id"] == refund_id]

        letters = wait_until(in_dlq, 30, "the message to reach the dead-letter queue", stack.output)
        assert letters[0]["receive_count"] >= MAX_RECEIVES
        record = stack.record(refund_id)
        assert record is not None and record["outcome"] == "dead_lettered"
        assert record["attempts"] == MAX_RECEIVES
    finally:
        stack.simulator(outage=False)

    redrive = stack.cli("dlq", "redrive", "--all")
    assert redrive.returncode == 0, redrive.stderr
    assert letters[0]["message_id"] in redrive.stdout.split()
    stack.wait_for(refund_id, {"refunded"})
    listed = stack.cli("dlq", "list", "--json")
    assert listed.returncode == 0 and refund_id not in listed.stdout


WEBHOOK_EXPORTS = {
    "REDITUS_WEBHOOK_URL",
    "STRIPE_WEBHOOK_SECRET",
    "PADDLE_WEBHOOK_SECRET",
    "LEMONSQUEEZY_WEBHOOK_SECRET",
    "POLAR_WEBHOOK_SECRET",
    "CHARGEBEE_WEBHOOK_USERNAME",
    "CHARGEBEE_WEBHOOK_PASSWORD",
}


def local_env(stack: Stack) -> dict[str, str]:
    done = stack.cli("local", "env")
    assert done.returncode == 0, done.stderr
    exports: dict[str, str] = {}
    for line in done.stdout.splitlines():
        (assignment,) = shlex.split(line.removeprefix("export "))
        name, _, value = assignment.partition("=")
        exports[name] = value
    return exports


def post_stripe(url: str, body: bytes, secret: str) -> requests.Response:
    # Signed now: the receiver refuses a timestamp more than 300 s away.
    headers = {**stripe_header(body, secret, t=int(time.time())), "content-type": "application/json"}
    return requests.post(f"{url}/stripe", data=body, headers=headers, timeout=10)


def test_a_signed_stripe_refund_through_the_webhook_receiver_is_refunded_once(stack: Stack) -> None:
    env = local_env(stack)
    assert set(env) >= WEBHOOK_EXPORTS
    url = env["REDITUS_WEBHOOK_URL"]
    assert url == f"http://127.0.0.1:{stack.env['REDITUS_LOCAL_WEBHOOK_PORT']}"
    assert f"webhooks     {url}" in stack.output()  # the banner names it
    assert len({env[name] for name in WEBHOOK_EXPORTS - {"REDITUS_WEBHOOK_URL"}}) == 6

    # A bad signature: 400, and nothing is queued (a queued request is recorded pending at once).
    forged_charge = "ch_e2e_webhook_forged"
    forged = dumps(
        stripe_event("charge.refunded", stripe_charge(1099, charge_id=forged_charge), "evt_e2e_forged")
    )
    refused = post_stripe(url, forged, "whsec_not_the_stacks_secret")
    assert refused.status_code == 400 and refused.json()["status"] == "rejected"
    assert stack.record(f"wh:stripe:{forged_charge}") is None

    charge = "ch_e2e_webhook"
    stack.simulator(add_payments=[charge])
    body = dumps(stripe_event("charge.refunded", stripe_charge(1099, charge_id=charge), "evt_e2e_refund"))
    answer = post_stripe(url, body, env["STRIPE_WEBHOOK_SECRET"])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "queued", "refund_id": f"wh:stripe:{charge}"}
    record = stack.wait_for(f"wh:stripe:{charge}", {"refunded"})
    assert record["payment_id"] == charge and record["attempt_log"][-1]["http_status"] == 200

    # Stripe's retry of the same event, freshly signed: answered, and nothing more is queued.
    replay = post_stripe(url, body, env["STRIPE_WEBHOOK_SECRET"])
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    rows = [
        r for r in stack.run_in_process("history", "--json") if r["payment_id"] in (charge, forged_charge)
    ]
    assert [r["refund_id"] for r in rows] == [f"wh:stripe:{charge}"]
    assert stack.record(f"wh:stripe:{forged_charge}") is None


def test_history_and_unprocessed_messages_survive_a_restart(stack: Stack) -> None:
    assert SETTLED, "runs after test_every_outcome_through_the_cli"
    payment = DEMO_REFUNDABLE[1]  # a demo payment: the restarted simulator knows it too
    stack.simulator(outage=True)
    refund_id = stack.enqueue(payment)
    stack.wait_for(refund_id, {"retrying"})  # its message is now waiting out a visibility timeout

    assert stack.stop() == 0
    assert (stack.data_dir / "snapshot.json").is_file()
    assert not (stack.data_dir / "stack.json").exists()
    stopped = stack.cli("history")
    assert stopped.returncode == 1 and "make run" in stopped.stderr and "Traceback" not in stopped.stderr

    stack.start(fresh=False)
    for payment_id, settled_id in SETTLED.items():
        record = stack.record(settled_id)
        assert record is not None and record["payment_id"] == payment_id
    record = stack.wait_for(refund_id, {"refunded"})
    assert record["attempt_log"][0]["http_status"] == 503


def test_a_snapshot_that_fails_to_restore_is_kept_as_it_was(tmp_path: Path) -> None:
    """The start fails and says how to go on; the snapshot is not replaced by the part restored."""
    table = f"{LOCAL_STACK_NAME}-HistoryTable"

    def record(n: int, payment_id: str) -> dict[str, Any]:
        return {
            "refund_id": {"S": f"r-{n}"},
            "payment_id": {"S": payment_id},
            "outcome": {"S": "refunded"},
            "queued_at": {"S": f"2026-11-29T00:00:{n:02d}.000Z"},
            "queued_day": {"S": "2026-11-29"},
        }

    # A first batch of 25 is restored, then DynamoDB refuses an empty index key (as an older version
    # of the store wrote them for a whitespace-only payment_id).
    items = [record(n, f"pay_{n}") for n in range(25)] + [record(25, "")]
    state = {"format": snapshot.FORMAT, "saved_at": "2026-11-29T12:00:00.000Z", "tables": {table: items}}
    path = tmp_path / snapshot.SNAPSHOT_FILE
    snapshot.write(state, path)
    saved = path.read_bytes()

    stack = Stack(tmp_path)
    done = subprocess.run(stack.argv(fresh=False), env=stack.env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "could not restore the saved state" in output and "IndexKey: payment_id" in output, output
    assert "--fresh" in output, output
    assert path.read_bytes() == saved, "the snapshot was replaced by what was restored of it"
    (copy,) = tmp_path.glob("snapshot.unrestored-*.json")
    assert copy.read_bytes() == saved
    assert str(copy) in output
    assert not (tmp_path / snapshot.PREVIOUS_SNAPSHOT_FILE).exists()
