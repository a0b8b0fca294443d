"""The `reditus-refunds` CLI in-process, against moto resources made from template.yaml."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from reditus_local.resources import TemplateModel, create_resources
from reditus_operators.cli import json_line, main, parse_time, terminal_safe
from reditus_operators.config import SystemConfig, write_local_state
from reditus_operators.console import STREAMLIT_OPTIONS, console_app, console_argv
from reditus_operators.csv_import import MAX_BYTES, MAX_LINES, CsvError, parse_csv
from reditus_refunds.layout import HASH_KEY, PAYMENT_MARKER_PREFIX, to_item
from reditus_refunds.outcomes import REDRIVE_REFUND_ID_ATTRIBUTE
from reditus_refunds.records import Outcome, day_of, iso, utc_now

from .conftest import API_KEY
from .lambda_rig import free_port

CLI = Path(sys.executable).with_name("reditus-refunds")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@dataclass
class System:
    sqs: Any
    dynamodb: Any
    table: str
    queue_url: str
    dlq_url: str
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str) -> Run:
        self.capsys.readouterr()
        code = main(list(args))
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def messages(self, url: str | None = None) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=url or self.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60
            ).get("Messages", [])
            if not batch:
                return got
            got += batch

    def put_record(
        self, refund_id: str, payment_id: str, outcome: Outcome, status: int | None, **extra: Any
    ) -> None:
        queued_at = iso(utc_now())
        item = {
            HASH_KEY: refund_id,
            "payment_id": payment_id,
            "outcome": outcome.value,
            "queued_at": queued_at,
            "queued_day": day_of(queued_at),
            "http_status": status,
            "detail": extra.pop("detail", ""),
            "attempts": extra.pop("attempts", 1),
            "requested_by": extra.pop("requested_by", "ops"),
            "completed_at": queued_at if outcome.terminal else None,
            **extra,
        }
        self.dynamodb.put_item(TableName=self.table, Item=to_item(item))
        if outcome is Outcome.REFUNDED:  # the payment marker the submitter leaves with every 200
            marker = {
                HASH_KEY: PAYMENT_MARKER_PREFIX + payment_id,
                "refunded_by": refund_id,
                "refunded_at": queued_at,
            }
            self.dynamodb.put_item(TableName=self.table, Item=to_item(marker))


@pytest.fixture
def system(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[System]:
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        local = create_resources(TemplateModel.load(), session.client, api_key=API_KEY)
        config = local.config
        monkeypatch.setenv("HISTORY_TABLE_NAME", config.table_name)
        monkeypatch.setenv("REFUND_QUEUE_URL", config.queue_url)
        monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", config.dlq_url)
        monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "no-stack"))
        yield System(
            session.client("sqs"),
            session.client("dynamodb"),
            config.table_name,
            config.queue_url,
            config.dlq_url,
            capsys,
        )


def assert_one_line_error(run: Run, code: int = 2) -> None:
    assert run.code == code, run
    assert len(run.err_lines) == 1, run.err
    assert run.err_lines[0].startswith("reditus-refunds")
    assert "Traceback" not in run.err and run.out == ""


# ---- enqueue ---------------------------------------------------------------------------------------


def test_enqueue_prints_the_refund_id_and_records_it_pending(system: System) -> None:
    run = system.run("enqueue", "pay_123", "--note", "customer called", "--as", "alice")
    assert run.code == 0, run.err
    refund_id = run.out.strip()
    (message,) = system.messages()
    body = json.loads(message["Body"])
    assert body == {
        "refund_id": refund_id,
        "payment_id": "pay_123",
        # The caller's AWS identity (moto's STS answer), never the name given with --as.
        "requested_by": "arn:aws:sts::123456789012:user/moto",
        "note": "customer called",
        "source": "cli",
    }
    history = system.run("history", "--refund-id", refund_id, "--json")
    (record,) = map(json.loads, history.out.splitlines())
    assert record["outcome"] == "pending" and record["message_id"] == message["MessageId"]
    # The audit names both: the identity, and the readable name next to it.
    [entry] = map(json.loads, system.run("audit", "--json").out.splitlines())
    assert (entry["who"], entry["who_name"], entry["action"]) == (body["requested_by"], "alice", "queue")
    assert entry["refund_ids"] == [refund_id] and entry["count"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ("enqueue", ""),
        ("enqueue", "x" * 300),
        ("enqueue", "pay\u0000bad"),
        ("enqueue", "pay_1", "--note", "n" * 5000),
        ("enqueue",),
        ("enqueue", "pay_1", "--csv", "file.csv"),
        ("history", "--limit", "ten"),
        ("history", "--outcome", "maybe"),
        ("history", "--since", "last tuesday"),
        ("history", "--limit", "0"),
        ("dlq", "redrive"),
        ("dlq", "redrive", "--all", "some-id"),
        ("no-such-command",),
        ("local", "up", "--parameter", "NoEquals"),
        ("local", "up", "--fault-rate", "2"),
    ],
)
def test_bad_input_is_one_line_and_queues_nothing(system: System, args: tuple[str, ...]) -> None:
    assert_one_line_error(system.run(*args))
    assert system.messages() == []


def test_enqueue_refuses_a_payment_in_flight_unless_forced(system: System) -> None:
    first = system.run("enqueue", "pay_twice")
    assert first.code == 0
    again = system.run("enqueue", "pay_twice")
    assert_one_line_error(again, code=1)
    assert "already pending" in again.err and "--force" in again.err
    forced = system.run("enqueue", "pay_twice", "--force")
    assert forced.code == 0 and "warning" in forced.err
    bodies = [json.loads(m["Body"]) for m in system.messages()]
    assert [b.get("force", False) for b in bodies] == [False, True]


def test_enqueue_refuses_an_already_refunded_payment(system: System) -> None:
    system.put_record("r-done", "pay_done", Outcome.REFUNDED, 200)
    run = system.run("enqueue", "pay_done")
    assert_one_line_error(run, code=1)
    assert "already refunded by r-done" in run.err


def test_csv_reports_bad_rows_with_line_numbers_and_sends_nothing(system: System, tmp_path: Path) -> None:
    path = tmp_path / "refunds.csv"
    path.write_text("payment_id,note\npay_a,first\n" + "x" * 300 + ",too long\npay_b,\npay_a,again\n")
    run = system.run("enqueue", "--csv", str(path))
    assert run.code == 2
    assert any(line.startswith("line 3:") for line in run.err_lines)
    assert any(line.startswith("line 5: skipped") and "line 2" in line for line in run.err_lines)
    assert system.messages() == []


def test_csv_sends_valid_unique_rows_in_batches_of_ten(system: System, tmp_path: Path) -> None:
    rows = [f"pay_{i:03d},note {i}" for i in range(23)]
    path = tmp_path / "refunds.csv"
    path.write_text("\ufeffpayment_id,note\n" + "\n".join([*rows, "pay_000,dup", "bad id\u0001,x"]) + "\n")
    run = system.run("enqueue", "--csv", str(path), "--skip-invalid")
    assert run.code == 0, run.err
    assert "queued 23 of 23 refund(s) in 3 SQS call(s)" in run.out
    assert "1 duplicate row(s), 1 invalid row(s)" in run.out
    bodies = [json.loads(m["Body"]) for m in system.messages()]
    assert sorted(b["payment_id"] for b in bodies) == [f"pay_{i:03d}" for i in range(23)]
    assert {b["note"] for b in bodies if b["payment_id"] == "pay_000"} == {"note 0"}

    # The same file again, checked against the history: all are in flight now.
    again = system.run("enqueue", "--csv", str(path), "--skip-invalid", "--check-history")
    assert (
        again.code == 0
        and "queued 0 refund(s)" in again.out
        and "23 already refunded or in flight" in again.out
    )
    assert system.messages() == []


def test_csv_dry_run_and_unusable_files(system: System, tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text("payment_id\npay_x\npay_y\n")
    dry = system.run("enqueue", "--csv", str(path), "--dry-run")
    assert dry.code == 0 and "would queue 2" in dry.out
    assert system.messages() == []
    (tmp_path / "nocol.csv").write_text("id\n1\n")
    assert_one_line_error(system.run("enqueue", "--csv", str(tmp_path / "nocol.csv")))
    assert_one_line_error(system.run("enqueue", "--csv", str(tmp_path / "missing.csv")))


# ---- history ---------------------------------------------------------------------------------------


def test_history_json_lines_are_whole_records_not_only_the_list_columns(system: System) -> None:
    """Issue 15: the list indexes hold what a list row shows; `--json` still prints every field of
    each refund (its attempt log, message id, error kind), as `--refund-id` does."""
    log = [{"at": "2026-11-30T10:00:00.000Z", "http_status": 503, "kind": "transient", "detail": "busy"}]
    system.put_record(
        "r-whole", "pay_w", Outcome.RETRYING, 503, detail="busy", attempt_log=log, message_id="m-w",
        error_kind="transient", last_attempt_at="2026-11-30T10:00:00.000Z",
    )  # fmt: skip
    by_key = json.loads(system.run("history", "--refund-id", "r-whole", "--json").out)
    assert by_key["attempt_log"][0]["detail"] == "busy" and by_key["message_id"] == "m-w"
    for args in ((), ("--outcome", "retrying"), ("--payment-id", "pay_w"), ("--requested-by", "ops")):
        [listed] = map(json.loads, system.run("history", "--json", *args).out.splitlines())
        assert listed == by_key, args


def test_history_json_lines_and_outcome_aliases(system: System) -> None:
    system.put_record("r-200", "pay_ok", Outcome.REFUNDED, 200, detail="ok")
    system.put_record("r-400", "pay_bad", Outcome.REJECTED, 400, detail="payment_id is invalid")
    system.put_record("r-404", "pay_gone", Outcome.NOT_FOUND, 404, detail="Payment not found", attempts=3)
    system.put_record("r-pending", "pay_wait", Outcome.PENDING, None, attempts=0)

    everything = system.run("history", "--json")
    records = [json.loads(line) for line in everything.out.splitlines()]
    assert {r["refund_id"] for r in records} == {"r-200", "r-400", "r-404", "r-pending"}
    for record in records:
        for field in ("refund_id", "payment_id", "outcome", "http_status", "detail", "attempts",
                      "requested_by", "queued_at", "completed_at"):  # fmt: skip
            assert field in record

    for alias, name, refund_id in (
        ("200", "refunded", "r-200"),
        ("400", "rejected", "r-400"),
        ("404", "not_found", "r-404"),
    ):
        by_code = system.run("history", "--outcome", alias, "--json")
        by_name = system.run("history", "--outcome", name, "--json")
        assert by_code.out == by_name.out
        assert [json.loads(line)["refund_id"] for line in by_code.out.splitlines()] == [refund_id]
    gone = json.loads(system.run("history", "--outcome", "404", "--json").out)
    assert (gone["http_status"], gone["attempts"], gone["detail"]) == (404, 3, "Payment not found")

    pending = system.run("history", "--outcome", "pending", "--json")
    assert [json.loads(line)["refund_id"] for line in pending.out.splitlines()] == ["r-pending"]
    by_payment = system.run("history", "--payment-id", "pay_bad", "--json")
    assert [json.loads(line)["refund_id"] for line in by_payment.out.splitlines()] == ["r-400"]
    limited = system.run("history", "--json", "--limit", "2")
    assert len(limited.out.splitlines()) == 2
    future = system.run("history", "--json", "--since", "2h", "--until", "1h")
    assert future.out == ""

    table = system.run("history")
    assert table.code == 0
    assert table.out.splitlines()[0].split()[:3] == ["QUEUED", "(UTC)", "REFUND_ID"]
    assert "r-404" in table.out and "not_found" in table.out


def test_parse_time() -> None:
    now = utc_now()
    assert (now - parse_time("2h", now)).total_seconds() == 7200
    assert parse_time("2026-11-01").isoformat() == "2026-11-01T00:00:00+00:00"
    assert parse_time("2026-11-01T09:30:00Z").hour == 9
    with pytest.raises(ValueError, match="expected"):
        parse_time("soon")


# ---- dead-letter queue -----------------------------------------------------------------------------


def test_dlq_list_and_redrive(system: System) -> None:
    assert system.run("dlq", "list").err.strip() == "the dead-letter queue is empty"
    ids = [
        system.sqs.send_message(
            QueueUrl=system.dlq_url,
            MessageBody=json.dumps({"payment_id": f"pay_d{i}", "refund_id": f"r-d{i}"}),
        )["MessageId"]
        for i in range(3)
    ]
    listed = [json.loads(line) for line in system.run("dlq", "list", "--json").out.splitlines()]
    assert {(m["message_id"], m["payment_id"], m["refund_id"]) for m in listed} == {
        (ids[i], f"pay_d{i}", f"r-d{i}") for i in range(3)
    }
    table = system.run("dlq", "list")
    assert "pay_d1" in table.out and "3 message(s)" in table.err

    one = system.run("dlq", "redrive", ids[0])
    assert one.code == 0 and one.out.split() == [ids[0]]
    missing = system.run("dlq", "redrive", "no-such-message")
    assert_one_line_error(missing, code=1)
    rest = system.run("dlq", "redrive", "--all")
    assert rest.code == 0 and sorted(rest.out.split()) == sorted(ids[1:])
    assert sorted(json.loads(m["Body"])["refund_id"] for m in system.messages()) == ["r-d0", "r-d1", "r-d2"]
    assert system.messages(system.dlq_url) == []


# ---- finding the system ----------------------------------------------------------------------------


def test_local_env_prints_exports_for_the_running_stack(system: System, tmp_path: Path) -> None:
    config = SystemConfig(
        "t", "http://127.0.0.1:1/1/q", "http://127.0.0.1:1/1/d", "us-east-1", "http://127.0.0.1:1"
    )
    write_local_state(config, tmp_path, {"pid": os.getpid(), "data_dir": str(tmp_path)})
    run = system.run("--data-dir", str(tmp_path), "local", "env")
    assert run.code == 0
    exports = dict(line.removeprefix("export ").split("=", 1) for line in run.out.splitlines())
    assert exports["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert exports["HISTORY_TABLE_NAME"] == "t" and exports["REFUND_QUEUE_URL"] == config.queue_url
    assert exports["DEAD_LETTER_QUEUE_URL"] == config.dlq_url and exports["AWS_REGION"] == "us-east-1"
    assert exports["REDITUS_LOCAL_DATA_DIR"] == str(tmp_path)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_local_state(config, tmp_path, {"pid": dead.pid})
    stale = system.run("--data-dir", str(tmp_path), "local", "env")
    assert_one_line_error(stale, code=1)
    assert "not running" in stale.err
    assert_one_line_error(system.run("--data-dir", str(tmp_path / "nothing"), "local", "env"), code=1)


def test_no_system_and_an_unreachable_one_are_one_line_errors(
    system: System, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("HISTORY_TABLE_NAME", "REFUND_QUEUE_URL", "DEAD_LETTER_QUEUE_URL"):
        monkeypatch.delenv(name)
    nothing = system.run("history")
    assert_one_line_error(nothing, code=1)
    assert "make run" in nothing.err

    port = free_port()
    config = SystemConfig(
        "t",
        f"http://127.0.0.1:{port}/1/q",
        f"http://127.0.0.1:{port}/1/d",
        "us-east-1",
        f"http://127.0.0.1:{port}",
    )
    write_local_state(config, tmp_path, {"pid": os.getpid()})
    # A subprocess: moto's in-process mock would answer any endpoint.
    env = {**os.environ, "REDITUS_LOCAL_DATA_DIR": str(tmp_path)}
    done = subprocess.run([str(CLI), "history"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "cannot reach" in done.stderr


def test_the_console_script_is_installed() -> None:
    done = subprocess.run([str(CLI), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("enqueue", "history", "dlq", "console", "local"):
        assert command in done.stdout


def test_local_up_refuses_a_taken_port_before_starting_anything(system: System, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = ["--moto-port", str(port), "--simulator-port", str(free_port()), "--no-console"]
        run = system.run("local", "up", "--data-dir", str(tmp_path), *ports)
    assert_one_line_error(run, code=1)
    assert f"port {port} for the moto server is taken" in run.err and "--moto-port" in run.err
    assert not (tmp_path / "stack.json").exists()
    bad = system.run("local", "up", "--data-dir", str(tmp_path), "--no-console", "--parameter", "Nope=1",
                     "--moto-port", str(free_port()), "--simulator-port", str(free_port()))  # fmt: skip
    assert_one_line_error(bad, code=1)
    assert "no parameter Nope" in bad.err


@pytest.mark.parametrize(
    "args",
    [
        ("--stack-name", "no-such-stack", "history"),
        ("history", "--stack-name", "no-such-stack"),
        ("console", "--stack-name", "no-such-stack"),
        ("dlq", "list", "--stack-name", "no-such-stack"),
    ],
)
def test_an_unknown_stack_is_a_one_line_error(system: System, args: tuple[str, ...]) -> None:
    run = system.run(*args)
    assert_one_line_error(run, code=1)
    assert "no-such-stack" in run.err


def test_local_up_refuses_a_second_stack_on_the_same_data(system: System, tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        config = SystemConfig("t", "http://127.0.0.1:1/1/q", "http://127.0.0.1:1/1/d", "us-east-1")
        write_local_state(config, tmp_path, {"pid": other.pid})
        run = system.run("local", "up", "--data-dir", str(tmp_path), "--no-console",
                         "--moto-port", str(free_port()), "--simulator-port", str(free_port()))  # fmt: skip
        assert_one_line_error(run, code=1)
        assert f"already running from {tmp_path.resolve()} (pid {other.pid})" in run.err
    finally:
        other.kill()
        other.wait()


# ---- untrusted text on a terminal (issue 12) -------------------------------------------------------
HOSTILE_TEXT = "ok \x1b[31mred\x1b[0m \x07bell \x9b2J c1 \u202eevil\u202c \u200bzero \x00nul \r\nline \udc80"


def obeyable(text: str) -> list[str]:
    """Characters a terminal would act on instead of showing (newlines between lines excepted)."""
    import unicodedata

    return [c for c in text.replace("\n", "") if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co")]


def test_terminal_safe_shows_controls_escaped() -> None:
    shown = terminal_safe(HOSTILE_TEXT)
    assert obeyable(shown) == []
    for escaped in ("\\x1b[31m", "\\x07", "\\x9b", "\\u202e", "\\u200b", "\\x00", "\\x0d\\x0a", "\\udc80"):
        assert escaped in shown
    assert terminal_safe("pay_123 café 日本") == "pay_123 café 日本"  # readable text stays readable


def test_json_lines_escape_controls_and_stay_valid_json() -> None:
    data = {"detail": HOSTILE_TEXT.replace("\udc80", ""), "note": "café \U000e0041 tag"}
    line = json_line(data)
    assert obeyable(line) == [] and "\n" not in line
    assert json.loads(line) == data
    assert "café" in line  # not \u-escaped when harmless


def test_history_and_dlq_list_show_untrusted_text_escaped(system: System) -> None:
    system.put_record(
        "r-hostile", "pay_h", Outcome.REJECTED, 400, detail=HOSTILE_TEXT.replace("\udc80", ""),
        requested_by="mallory\x1b]0;pwned\x07",
    )  # fmt: skip
    body = json.dumps({"payment_id": "pay_\x1b[2Jx\u202e\x9b", "refund_id": "r-dl"}, ensure_ascii=False)
    system.sqs.send_message(QueueUrl=system.dlq_url, MessageBody=body)
    for args in (("history",), ("history", "--json"), ("dlq", "list"), ("dlq", "list", "--json")):
        run = system.run(*args)
        assert run.code == 0, run.err
        assert obeyable(run.out) == [] and obeyable(run.err) == [], (args, run.out)
    table = system.run("history").out
    assert "mallory\\x1b]0;pwned\\x07" in table
    (record,) = map(json.loads, system.run("history", "--json").out.splitlines())
    assert record["requested_by"] == "mallory\x1b]0;pwned\x07"  # JSON readers get the value back
    assert "pay_\\x1b[2Jx\\u202e\\x9b" in system.run("dlq", "list").out


def test_csv_problems_are_shown_escaped(system: System, tmp_path: Path) -> None:
    path = tmp_path / "refunds.csv"
    path.write_text("payment_id\npay\x1b[31m\u202e,x\n", encoding="utf-8")
    run = system.run("enqueue", "--csv", str(path))
    assert run.code == 2 and obeyable(run.err) == []


# ---- hostile dead letters ----------------------------------------------------------------------------
def test_dlq_list_survives_any_body(system: System) -> None:
    bodies = ["[" * 100_000 + "]" * 100_000, '{"payment_id": ' + "9" * 10_000 + "}",
              '{"payment_id": "\\ud800", "refund_id": "\\udfff"}', '{"payment_id": 1e99999}']  # fmt: skip
    ids = {system.sqs.send_message(QueueUrl=system.dlq_url, MessageBody=b)["MessageId"] for b in bodies}
    table = system.run("dlq", "list")
    assert table.code == 0, table.err
    assert "4 message(s)" in table.err and all(i in table.out for i in ids)
    listed = system.run("dlq", "list", "--json")
    assert listed.code == 0, listed.err
    assert {json.loads(line)["message_id"] for line in listed.out.splitlines()} == ids


def test_dlq_redrive_keeps_the_original_refund_id(system: System) -> None:
    no_id = system.sqs.send_message(QueueUrl=system.dlq_url, MessageBody='{"payment_id": "pay_r"}')[
        "MessageId"
    ]
    run = system.run("dlq", "redrive", "--all")
    assert run.code == 0 and run.out.split() == [no_id]
    (moved,) = system.sqs.receive_message(QueueUrl=system.queue_url, MessageAttributeNames=["All"])[
        "Messages"
    ]
    assert moved["MessageAttributes"][REDRIVE_REFUND_ID_ATTRIBUTE]["StringValue"] == no_id


# ---- bulk files: size, lines, delimiters ---------------------------------------------------------------
def test_a_file_of_newlines_is_refused_quickly() -> None:
    data = b"payment_id\n" + b"\n" * (MAX_BYTES - 20)
    started = time.process_time()
    with pytest.raises(CsvError, match="lines"):
        parse_csv(data)
    with pytest.raises(CsvError, match="lines"):
        parse_csv(b"payment_id\r" + b"\r\n" * (MAX_LINES + 1))
    assert time.process_time() - started < 2
    with pytest.raises(CsvError, match="MB"):
        parse_csv("payment_id\n" + "x" * MAX_BYTES)
    # Blank lines count toward the limit, not only rows.
    assert parse_csv(b"payment_id\npay_1\n" + b"\n" * (MAX_LINES - 10)).rows == 1


@pytest.mark.parametrize(("delimiter", "name"), [(",", "comma"), (";", "semicolon"), ("\t", "tab")])
def test_the_delimiter_is_read_from_the_header(
    system: System, tmp_path: Path, delimiter: str, name: str
) -> None:
    path = tmp_path / "refunds.csv"
    other = ";" if delimiter == "," else ","
    path.write_text(
        f"payment_id{delimiter}note\npay_d1{delimiter}refund{other} ticket 1\npay_d2{delimiter}\n",
        encoding="utf-8",
    )
    report = parse_csv(path.read_bytes())
    assert report.delimiter == delimiter
    assert [(r.payment_id, r.note) for r in report.requests] == [
        ("pay_d1", f"refund{other} ticket 1"),
        ("pay_d2", None),
    ]
    run = system.run("enqueue", "--csv", str(path))
    assert run.code == 0, run.err
    assert "queued 2 of 2 refund(s)" in run.out and f"{name}-separated" in run.out
    assert sorted(json.loads(m["Body"])["payment_id"] for m in system.messages()) == ["pay_d1", "pay_d2"]


# ---- one rule for "needs force", without the local stack, the console launcher -----------------------
def test_local_up_without_the_local_stack_says_so_plainly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "reditus_local" or m.startswith("reditus_local.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "reditus_local", None)  # as if not installed: import fails
    code = main(["local", "up", "--no-console"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "local stack is not installed" in err and "make run" in err


def test_the_console_launcher_carries_the_console_settings() -> None:
    """Streamlit reads .streamlit/config.toml only from its start directory: the launcher passes
    the same settings as flags, so the console is the same from anywhere."""
    import tomllib

    config = tomllib.loads((Path(__file__).parents[1] / ".streamlit" / "config.toml").read_text())
    from_file = {f"{section}.{key}": str(value).lower() if isinstance(value, bool) else str(value)
                 for section, values in config.items() for key, value in values.items()}  # fmt: skip
    assert from_file == STREAMLIT_OPTIONS
    argv = console_argv(8999)
    assert argv[:3] == ["streamlit", "run", str(console_app())]
    assert console_app() == Path(__file__).parents[1] / "ui" / "app.py"
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {**{f"--{k}": v for k, v in STREAMLIT_OPTIONS.items()}, "--server.port": "8999"}


def test_console_refuses_a_taken_port(system: System) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = system.run("console", "--port", str(port))
    assert_one_line_error(run, code=1)
    assert f"port {port} is taken" in run.err


def test_stderr_lines_show_history_text_escaped(system: System) -> None:
    """What the history holds reaches stderr too (here a marker's refunded_by): escaped there as well."""
    marker = {
        HASH_KEY: PAYMENT_MARKER_PREFIX + "pay_m",
        "refunded_by": "r\x1b[2J\u202e",
        "refunded_at": "x\x07",
    }
    system.dynamodb.put_item(TableName=system.table, Item=to_item(marker))
    run = system.run("enqueue", "pay_m")
    assert_one_line_error(run, code=1)
    assert "already refunded by r\\x1b[2J\\u202e at x\\x07" in run.err and obeyable(run.err) == []


def test_the_local_state_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """It holds the local webhook signing secrets."""
    config = SystemConfig(table_name="t", queue_url="http://127.0.0.1:9/q", dlq_url="", region="us-east-1")
    old = tmp_path / "stack.json"
    old.write_text("{}")
    old.chmod(0o644)  # a file from before: narrowed too
    path = write_local_state(config, tmp_path, {"webhook_env": {"STRIPE_WEBHOOK_SECRET": "whsec_x"}})
    assert path == old and (path.stat().st_mode & 0o777) == 0o600
