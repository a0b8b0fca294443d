"""The Streamlit console, page by page, with AppTest against moto (the app runs in this process)."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from reditus_operators.history import HistoryReader
from reditus_refunds.layout import counter_key
from reditus_refunds.records import Outcome
from tests.conftest import AwsFixture
from tests.console_support import history_item, marker_item
from ui import data

APP = str(Path(__file__).resolve().parents[1] / "ui" / "app.py")
QUEUE_PAGE = "app_pages/queue_refund.py"
BULK_PAGE = "app_pages/bulk_upload.py"
HISTORY_PAGE = "app_pages/history.py"
DEAD_LETTER_PAGE = "app_pages/dead_letters.py"
CONSOLE_ENV = (
    "CONSOLE_OPEN",
    "CONSOLE_PASSWORD",
    "CONSOLE_OPERATOR",
    "CONSOLE_SIGN_IN",
    "REDITUS_STACK_NAME",
    "AWS_ENDPOINT_URL",
    "HISTORY_TABLE_NAME",
    "REFUND_QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL",
)


def clear_console_caches() -> None:
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def console_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No console setting leaks in from the machine; no local stack state is found by accident."""
    for name in CONSOLE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "no-local-stack"))
    clear_console_caches()
    yield monkeypatch
    clear_console_caches()


@pytest.fixture
def system(aws: AwsFixture, console_env: pytest.MonkeyPatch) -> AwsFixture:
    console_env.setenv("HISTORY_TABLE_NAME", aws.table)
    console_env.setenv("REFUND_QUEUE_URL", aws.queue_url)
    console_env.setenv("DEAD_LETTER_QUEUE_URL", aws.dlq_url)
    return aws


@pytest.fixture
def open_console(system: AwsFixture, console_env: pytest.MonkeyPatch, tmp_path: Path) -> AwsFixture:
    """The open console of the local stack: it finds the system through the stack's state file (an
    open console is refused against anything else)."""
    from reditus_operators.config import SystemConfig, write_local_state

    local = SystemConfig(system.table, system.queue_url, system.dlq_url, "us-east-1", origin="local stack",
                         local=True)  # fmt: skip
    write_local_state(local, tmp_path / "local-stack")
    console_env.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "local-stack"))
    for name in ("HISTORY_TABLE_NAME", "REFUND_QUEUE_URL", "DEAD_LETTER_QUEUE_URL"):
        console_env.delenv(name, raising=False)
    console_env.setenv("CONSOLE_OPEN", "1")
    return system


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
    return at


def click(at: AppTest, label: str) -> AppTest:
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; there are {[b.label for b in at.button]}"
    matches[0].click()
    at.run()
    assert not at.exception, at.exception
    return at


def plain(markdown: str) -> str:
    """A Markdown body as read: the console escapes what it did not write itself."""
    return markdown.replace("\\", "")


def errors(at: AppTest) -> list[str]:
    return [plain(e.value) for e in at.error]


def captions(at: AppTest) -> list[str]:
    return [plain(c.value) for c in at.caption]


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def messages(queue: Any, sqs: Any) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for _ in range(5):
        response = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=30)
        for message in response.get("Messages", []):
            found[message["MessageId"]] = json.loads(message["Body"])
        if not response.get("Messages"):
            break
    return list(found.values())


def queue_depth(sqs: Any, queue: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def put_records(
    aws: AwsFixture, outcomes: list[tuple[Outcome, str]], when: datetime | None = None
) -> list[str]:
    """History items (with their day counter) as the submitter would have left them."""
    rng = random.Random()  # new refund ids on every call
    when = when or datetime.now(UTC) - timedelta(minutes=5)
    ids = []
    counts: dict[str, dict[str, int]] = {}
    for index, (outcome, payment_id) in enumerate(outcomes):
        item = history_item(when - timedelta(seconds=index), outcome, rng, payment_id)
        aws.dynamodb.put_item(TableName=aws.table, Item=item)
        ids.append(item["refund_id"]["S"])
        if outcome is Outcome.REFUNDED:
            marker = marker_item(payment_id, item["refund_id"]["S"], item["completed_at"]["S"])
            aws.dynamodb.put_item(TableName=aws.table, Item=marker)
        day = counts.setdefault(item["queued_day"]["S"], {})
        day[outcome.value] = day.get(outcome.value, 0) + 1
    for queued_day, day_counts in counts.items():
        count_in_day(aws, queued_day, day_counts)
    return ids


def count_in_day(aws: AwsFixture, day: str, counts: dict[str, int]) -> None:
    """ADD to the day's counter item, as the stream function does (a second call adds to the first:
    the Pending filter trusts the day's pending figure)."""
    names = list(counts)
    aws.dynamodb.update_item(
        TableName=aws.table,
        Key=counter_key(day),
        UpdateExpression="SET counter_day = :day ADD " + ", ".join(f"#o{n} :n{n}" for n in range(len(names))),
        ExpressionAttributeNames={f"#o{n}": name for n, name in enumerate(names)},
        ExpressionAttributeValues={
            ":day": {"S": day},
            **{f":n{n}": {"N": str(counts[name])} for n, name in enumerate(names)},
        },
    )


def store(aws: AwsFixture) -> HistoryReader:
    return HistoryReader(aws.table, aws.dynamodb)


# ---- queue one --------------------------------------------------------------------------------------
def test_queue_one_refund(open_console: AwsFixture) -> None:
    aws = open_console
    at = app()
    assert [t.value for t in at.title] == ["Queue a refund"]
    assert any("Open console: no sign-in" in w.value for w in at.warning)

    at.text_input(key="queue_payment_id").input("pay_1001")
    at.text_area(key="queue_note").input("refunded by support, ticket 4821")
    click(at, "Queue refund")

    assert [s.value for s in at.success] == ["Refund queued."]
    refund_id = at.code[0].value
    record = store(aws).get(refund_id)
    assert record is not None
    assert record.outcome is Outcome.PENDING
    assert (record.payment_id, record.requested_by, record.source) == ("pay_1001", "open-console", "console")
    assert record.note == "refunded by support, ticket 4821"
    [body] = messages(aws.queue_url, aws.sqs)
    assert body["refund_id"] == refund_id and body["payment_id"] == "pay_1001"
    # The fields are cleared for the next refund, and the link leads to the refund in History.
    assert at.text_input(key="queue_payment_id").value == ""
    links = at.get("page_link")
    assert links and refund_id in str(links[0].proto.query_string)


@pytest.mark.parametrize(
    ("payment_id", "reason"),
    [("   ", "payment_id is blank"), ("pay\u00071", "control character")],
)
def test_queue_refuses_what_breaks_the_contract(
    open_console: AwsFixture, payment_id: str, reason: str
) -> None:
    at = app()
    at.text_input(key="queue_payment_id").input(payment_id)
    click(at, "Queue refund")
    assert any("Not sent" in e.value for e in at.error)
    assert any(reason in t for t in texts(at))
    assert queue_depth(open_console.sqs, open_console.queue_url) == 0


def test_queue_warns_about_a_refunded_payment_and_needs_force(open_console: AwsFixture) -> None:
    aws = open_console
    [earlier] = put_records(aws, [(Outcome.REFUNDED, "pay_done")])
    at = app()
    at.text_input(key="queue_payment_id").input("pay_done")
    click(at, "Queue refund")
    assert any("already has a refund" in w.value for w in at.warning)
    assert any(earlier in t and "already refunded" in t for t in texts(at))
    assert queue_depth(aws.sqs, aws.queue_url) == 0

    at.checkbox(key="queue_force").check()
    click(at, "Queue refund")
    assert [s.value for s in at.success] == ["Refund queued."]
    [body] = messages(aws.queue_url, aws.sqs)
    assert body["payment_id"] == "pay_done" and body["force"] is True


def test_queue_warns_about_a_pending_request(open_console: AwsFixture) -> None:
    at = app()
    for _ in range(2):
        at.text_input(key="queue_payment_id").input("pay_twice")
        click(at, "Queue refund")
    assert any("already has a refund" in w.value for w in at.warning)
    assert any("already pending" in t for t in texts(at))
    assert queue_depth(open_console.sqs, open_console.queue_url) == 1


# ---- bulk upload ------------------------------------------------------------------------------------
def upload(at: AppTest, content: str, name: str = "refunds.csv") -> AppTest:
    at.file_uploader[0].set_value((name, content.encode("utf-8"), "text/csv"))
    at.run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_bulk_upload_with_good_and_bad_rows(open_console: AwsFixture) -> None:
    aws = open_console
    put_records(aws, [(Outcome.REFUNDED, "pay_old")])
    content = "\n".join(
        [
            "payment_id,note",
            "pay_a,first",  # line 2
            "pay_b,",  # line 3
            ",blank",  # line 4: blank payment_id
            "pay_a,again",  # line 5: repeated in the file
            "x" * 300 + ",too long",  # line 6
            "pay_old,refunded before",  # line 7: already refunded in the history
            "pay_c,=HYPERLINK(1)",  # line 8: a formula-looking note is just text
        ]
    )
    at = upload(app(BULK_PAGE), content)
    assert metric(at, "Rows") == "7"
    assert metric(at, "Ready to queue") == "3"
    assert metric(at, "Invalid") == "2"
    assert metric(at, "Repeated in the file") == "1"
    assert metric(at, "In the history") == "1"
    problems = at.dataframe[0].value
    assert list(problems["line"]) == [4, 5, 6, 7]
    reasons = dict(zip(problems["line"], problems["reason"], strict=True))
    assert reasons[4] == "payment_id is blank"
    assert reasons[5] == "same payment_id as line 2"
    assert "the limit is 255" in reasons[6]
    assert "already refunded" in reasons[7]

    click(at, "Dry run")
    assert any("nothing was sent" in i.value and "3 refund(s) would be queued" in i.value for i in at.info)
    assert queue_depth(aws.sqs, aws.queue_url) == 0

    click(at, "Queue 3 refund(s)")
    assert any(s.value.startswith("Queued 3 refund(s)") for s in at.success)
    bodies = messages(aws.queue_url, aws.sqs)
    assert sorted(b["payment_id"] for b in bodies) == ["pay_a", "pay_b", "pay_c"]
    assert all(b["source"] == "csv" and b["requested_by"] == "open-console" for b in bodies)
    # A rerun does not send anything again.
    at.run()
    assert queue_depth(aws.sqs, aws.queue_url) == 0 and len(messages(aws.queue_url, aws.sqs)) == 0
    page = store(aws).query(payment_id="pay_b")
    assert [r.outcome for r in page.records] == [Outcome.PENDING]


def test_bulk_upload_can_force_payments_the_history_has(open_console: AwsFixture) -> None:
    aws = open_console
    put_records(aws, [(Outcome.REFUNDED, "pay_old")])
    at = upload(app(BULK_PAGE), "payment_id\npay_old\npay_new\n")
    assert metric(at, "Ready to queue") == "1"
    at.checkbox(key="bulk_force_0").check()
    at.run()
    assert metric(at, "Ready to queue") == "2"
    click(at, "Queue 2 refund(s)")
    bodies = {b["payment_id"]: b for b in messages(aws.queue_url, aws.sqs)}
    assert bodies["pay_old"]["force"] is True and "force" not in bodies["pay_new"]


def test_bulk_upload_flags_payments_still_in_flight(open_console: AwsFixture) -> None:
    at = app()
    at.text_input(key="queue_payment_id").input("pay_waiting")
    click(at, "Queue refund")
    at.switch_page(BULK_PAGE)
    at.run()
    at = upload(at, "payment_id\npay_waiting\npay_fresh\n")
    assert metric(at, "In the history") == "1"
    problems = at.dataframe[0].value
    assert list(problems["payment_id"]) == ["pay_waiting"]
    assert "already pending" in problems["reason"][0]


def test_bulk_upload_maps_columns_when_the_header_differs(open_console: AwsFixture) -> None:
    at = upload(app(BULK_PAGE), "Customer,Reference,Reason\nAcme,pay_x1,chargeback\nBeta,pay_x2,\n")
    assert any("choose the column that holds the payment ids" in i.value for i in at.info)
    assert not at.metric
    at.selectbox(key="bulk_payment_column_0").select("Reference")
    at.run()
    assert at.selectbox(key="bulk_note_column_0").value == "Reason"
    assert metric(at, "Ready to queue") == "2"
    ready = at.dataframe[0].value
    assert list(ready["payment_id"]) == ["pay_x1", "pay_x2"]
    assert list(ready["note"]) == ["chargeback", ""]


def test_bulk_upload_refuses_a_file_that_is_not_csv_text(open_console: AwsFixture) -> None:
    at = app(BULK_PAGE)
    at.file_uploader[0].set_value(("refunds.csv", b"\xff\xfe\x00bad", "text/csv"))
    at.run()
    assert not at.exception
    assert any("cannot be used" in e.value for e in at.error)
    assert any("UTF-8" in t for t in texts(at))


# ---- history ----------------------------------------------------------------------------------------
def history_table(at: AppTest) -> Any:
    [table] = [d for d in at.dataframe if (d.key or "").startswith("history_table_")]
    return table


def test_history_figures_table_and_filters(open_console: AwsFixture) -> None:
    aws = open_console
    put_records(
        aws,
        [
            (Outcome.REFUNDED, "pay_1"),
            (Outcome.REFUNDED, "pay_2"),
            (Outcome.NOT_FOUND, "pay_3"),
            (Outcome.REJECTED, "pay_4"),
            (Outcome.PENDING, "pay_5"),
            (Outcome.RETRYING, "pay_6"),
            (Outcome.DEAD_LETTERED, "pay_7"),
            (Outcome.INVALID, "pay_8"),
        ],
    )
    at = app(HISTORY_PAGE)
    figures = {m.label: m.value for m in at.metric}
    assert figures == {
        "Refunded": "2",
        "Rejected": "1",
        "Not found": "1",
        "Invalid": "1",
        "Pending": "2",
        "Failed": "1",
    }
    assert len(at.get("vega_lite_chart")) == 1
    table = history_table(at).value
    assert len(table) == 8
    assert list(table["payment_id"]) == [f"pay_{n}" for n in range(1, 9)]  # newest first

    at.selectbox(key="history_outcome").select("not_found")
    at.run()
    assert list(history_table(at).value["payment_id"]) == ["pay_3"]

    at.selectbox(key="history_outcome").select("all")
    at.text_input(key="history_payment_id").input("pay_7")
    at.run()
    assert list(history_table(at).value["payment_id"]) == ["pay_7"]
    assert any("all time" in c.value for c in at.caption)

    at.text_input(key="history_payment_id").input("")
    at.text_input(key="history_requested_by").input("nobody@example.com")
    at.run()
    assert history_table(at).value.empty
    assert any("No refunds match" in i.value for i in at.info)


def test_history_period(open_console: AwsFixture) -> None:
    aws = open_console
    put_records(aws, [(Outcome.REFUNDED, "pay_recent")])
    put_records(aws, [(Outcome.NOT_FOUND, "pay_older")], when=datetime.now(UTC) - timedelta(days=12))
    at = app(HISTORY_PAGE)  # 7 days by default
    assert list(history_table(at).value["payment_id"]) == ["pay_recent"]
    assert metric(at, "Not found") == "0"
    at.get("button_group")[0].set_value("30 days")
    at.run()
    assert list(history_table(at).value["payment_id"]) == ["pay_recent", "pay_older"]
    assert metric(at, "Not found") == "1"


def test_history_pages_through_the_store(open_console: AwsFixture) -> None:
    aws = open_console
    put_records(aws, [(Outcome.REFUNDED, f"pay_{n:03d}") for n in range(60)])
    at = app(HISTORY_PAGE)
    at.selectbox(key="history_page_size").select(25)
    at.run()
    first = list(history_table(at).value["payment_id"])
    assert first == [f"pay_{n:03d}" for n in range(25)]
    click(at, "Older")
    assert list(history_table(at).value["payment_id"]) == [f"pay_{n:03d}" for n in range(25, 50)]
    click(at, "Older")
    assert list(history_table(at).value["payment_id"]) == [f"pay_{n:03d}" for n in range(50, 60)]
    assert at.button(key="history_older").disabled
    click(at, "Newer")
    assert list(history_table(at).value["payment_id"])[:1] == ["pay_025"]


def test_history_detail_shows_attempts_and_who_queued_it(open_console: AwsFixture) -> None:
    aws = open_console
    [refund_id] = put_records(aws, [(Outcome.NOT_FOUND, "pay_gone")])
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(HISTORY_PAGE)
    at.query_params["refund_id"] = refund_id
    at.run()
    assert not at.exception
    assert refund_id in [c.value for c in at.code]
    shown = texts(at)
    assert "pay_gone" in shown and "Payment not found" in shown
    attempts = [d.value for d in at.dataframe if "kind" in d.value.columns]
    assert attempts and list(attempts[0]["http_status"]) == [404]


def test_history_requeues_selected_rows(open_console: AwsFixture) -> None:
    aws = open_console
    not_found, refunded = put_records(aws, [(Outcome.NOT_FOUND, "pay_nf"), (Outcome.REFUNDED, "pay_ok")])
    at = app(HISTORY_PAGE)
    at.session_state[history_table(at).key] = {"selection": {"rows": [0, 1], "columns": [], "cells": []}}
    at.run()
    # Only the 404 can be requeued; the 200 is left alone.
    click(at, "Requeue 1 selected")
    assert any("Requeue 1 refund(s)" in w.value for w in at.warning)
    assert queue_depth(aws.sqs, aws.queue_url) == 0
    click(at, "Confirm requeue")
    assert any("Requeued 1 refund(s)" in s.value for s in at.success)
    [body] = messages(aws.queue_url, aws.sqs)
    assert body["payment_id"] == "pay_nf" and body["requeue_of"] == not_found
    assert body["refund_id"] not in (not_found, refunded)
    new = store(aws).get(body["refund_id"])
    assert new is not None and new.requeue_of == not_found and new.requested_by == "open-console"


def test_history_export_is_every_filtered_row_and_spreadsheet_safe(open_console: AwsFixture) -> None:
    aws = open_console
    put_records(aws, [(Outcome.REFUNDED, f"pay_{n}") for n in range(7)] + [(Outcome.NOT_FOUND, "=cmd|x")])
    today = datetime.now(UTC).date()
    content, rows, truncated = data.export_csv(
        store(aws), data.HistoryFilter(today - timedelta(days=1), today), limit=100
    )
    lines = content.decode().splitlines()
    assert rows == 8 and not truncated and len(lines) == 9
    assert lines[0].startswith("refund_id,payment_id,outcome,http_status")
    assert any(",'=cmd|x," in line for line in lines)
    _, rows, truncated = data.export_csv(
        store(aws), data.HistoryFilter(today - timedelta(days=1), today), limit=5
    )
    assert rows == 5 and truncated


def test_values_from_people_and_reditus_are_shown_as_text(open_console: AwsFixture) -> None:
    aws = open_console
    at = app()
    payload = "**bold** <img src=x onerror=alert(1)> [link](javascript:alert(1))"
    at.text_input(key="queue_payment_id").input("pay_<b>x</b>")
    at.text_area(key="queue_note").input(payload)
    click(at, "Queue refund")
    refund_id = at.code[0].value
    at.switch_page(HISTORY_PAGE)
    at.query_params["refund_id"] = refund_id
    at.run()
    assert payload in texts(at) and "pay_<b>x</b>" in texts(at)
    markdown = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not any("<img" in m or "**bold**" in m or "pay_<b>" in m for m in markdown)
    assert not at.get("html")
    assert store(aws).get(refund_id) is not None


# ---- dead letters -----------------------------------------------------------------------------------
def dead_letter(aws: AwsFixture, payment_id: str) -> str:
    [refund_id] = put_records(aws, [(Outcome.DEAD_LETTERED, payment_id)])
    aws.sqs.send_message(
        QueueUrl=aws.dlq_url, MessageBody=json.dumps({"refund_id": refund_id, "payment_id": payment_id})
    )
    return refund_id


def test_dead_letters_redrive_selected_then_all(open_console: AwsFixture) -> None:
    aws = open_console
    for payment in ("pay_d1", "pay_d2", "pay_d3"):
        dead_letter(aws, payment)
    aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody="not a refund <b>request</b>")
    at = app(DEAD_LETTER_PAGE)
    table = at.dataframe[0]
    letters = table.value
    assert sorted(p for p in letters["payment_id"] if p) == ["pay_d1", "pay_d2", "pay_d3"]
    assert "retries used up: 503 Service Unavailable" in set(letters["last_error"])
    assert "the message is not a readable refund request" in set(letters["last_error"])
    assert metric(at, "Messages in the dead-letter queue") == "4"

    position = list(letters["payment_id"]).index("pay_d2")
    at.session_state[table.key] = {"selection": {"rows": [position], "columns": [], "cells": []}}
    at.run()
    click(at, "Redrive 1 selected")
    assert queue_depth(aws.sqs, aws.queue_url) == 0  # not before it is confirmed
    click(at, "Redrive")
    assert any("Moved 1 message(s)" in s.value for s in at.success)
    assert [b["payment_id"] for b in messages(aws.queue_url, aws.sqs)] == ["pay_d2"]
    remaining = at.dataframe[0].value
    assert "pay_d2" not in set(remaining["payment_id"]) and len(remaining) == 3

    click(at, "Redrive all (3)")
    click(at, "Redrive")
    assert any("Moved 3 message(s)" in s.value for s in at.success)
    assert any("empty" in s.value for s in at.success)
    assert queue_depth(aws.sqs, aws.dlq_url) == 0


def test_dead_letters_delete_needs_confirmation(open_console: AwsFixture) -> None:
    aws = open_console
    dead_letter(aws, "pay_keep")
    dead_letter(aws, "pay_drop")
    at = app(DEAD_LETTER_PAGE)
    table = at.dataframe[0]
    position = list(table.value["payment_id"]).index("pay_drop")
    at.session_state[table.key] = {"selection": {"rows": [position], "columns": [], "cells": []}}
    at.run()
    click(at, "Delete 1 selected")
    assert any("permanently" in e.value for e in at.error)
    click(at, "Cancel")
    assert len(at.dataframe[0].value) == 2

    at.session_state[at.dataframe[0].key] = {"selection": {"rows": [position], "columns": [], "cells": []}}
    at.run()
    click(at, "Delete 1 selected")
    click(at, "Delete permanently")
    assert any("Deleted 1 message(s)" in s.value for s in at.success)
    assert list(at.dataframe[0].value["payment_id"]) == ["pay_keep"]
    assert queue_depth(aws.sqs, aws.queue_url) == 0


# ---- access ---------------------------------------------------------------------------------------
PASSWORD = "correct horse battery staple"


def add_account(aws: AwsFixture, name: str, role: str, password: str = PASSWORD) -> None:
    """An account as `reditus-refunds users add` makes it (argon2 hash, role, registry)."""
    from reditus_operators.access import Role
    from reditus_operators.users import UserStore

    UserStore(aws.table, aws.dynamodb).add(name, password, Role.parse(role))


def audit_entries(aws: AwsFixture) -> list[Any]:
    from reditus_operators.audit import AuditReader

    return AuditReader(aws.table, aws.dynamodb).list(limit=100).entries


def test_password_sign_in_signs_in_as_the_account(
    system: AwsFixture, console_env: pytest.MonkeyPatch
) -> None:
    """One account per person: the right password signs in as that account (its name is what is
    recorded), a wrong one is refused and audited; there is no field to type another identity."""
    add_account(system, "ana", "operator")
    console_env.setenv("CONSOLE_SIGN_IN", "password")
    console_env.setenv("CONSOLE_OPEN", "1")  # accounts win over an open console
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert not any(t.value == "Queue a refund" for t in at.title)
    assert [t.label for t in at.text_input] == ["Account", "Password"]
    name, password = at.text_input
    name.input("ana")
    password.input("wrong password, long enough")
    click(at, "Sign in")
    assert any("do not match" in e for e in errors(at)), errors(at)
    assert not any(t.value == "Queue a refund" for t in at.title)
    [failure] = audit_entries(system)
    assert (failure.who, failure.action, failure.result) == ("ana", "sign_in_failed", "refused")

    name, password = at.text_input
    password.input(PASSWORD)
    click(at, "Sign in")
    assert [t.value for t in at.title] == ["Queue a refund"]
    assert "ana" in texts(at) and any("Role: operator" in c for c in captions(at))
    assert not any("Open console" in w.value for w in at.warning)
    # Nothing on the signed-in pages lets a person say they are someone else.
    assert not any("name" in t.label.lower() or "operator" in t.label.lower() for t in at.text_input)
    at.text_input(key="queue_payment_id").input("pay_signed")
    click(at, "Queue refund")
    [body] = messages(system.queue_url, system.sqs)
    assert body["requested_by"] == "ana"


def test_password_sign_in_needs_an_account_name(system: AwsFixture, console_env: pytest.MonkeyPatch) -> None:
    add_account(system, "ana", "viewer")
    console_env.setenv("CONSOLE_SIGN_IN", "password")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.text_input[1].input(PASSWORD)
    click(at, "Sign in")
    assert any("Enter your account name" in e for e in errors(at)), errors(at)
    assert not any(t.value == "History" for t in at.title)
    # Another account's password is not this one's.
    at.text_input[0].input("ben")
    click(at, "Sign in")
    assert any("do not match" in e for e in errors(at)), errors(at)


def test_the_retired_shared_password_says_what_replaced_it(
    system: AwsFixture, console_env: pytest.MonkeyPatch
) -> None:
    console_env.setenv("CONSOLE_PASSWORD", PASSWORD)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("retired" in e and "users add" in e for e in errors(at)), errors(at)
    assert not at.text_input


OIDC_AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "s3cret",
    "client_id": "console",
    "client_secret": "x",
    "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration",
}


def test_openid_connect_sign_in_is_required_and_allow_listed(
    system: AwsFixture, console_env: pytest.MonkeyPatch
) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = OIDC_AUTH
    at.secrets["access"] = {"emails": {"ops@example.com": "operator"}, "domains": {"audit.example": "viewer"}}
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    assert not any(t.value == "Queue a refund" for t in at.title)

    # The identity provider accepts this account, the allow-list does not: a clear page, no console.
    at.user = {"is_logged_in": True, "email": "eve@other.example", "sub": "eve-1"}
    at.run()
    assert not at.exception
    assert any("eve@other.example is not allowed to use this console" in e for e in errors(at)), errors(at)
    assert [b.label for b in at.button] == ["Sign out"]
    assert not any(t.value in ("Queue a refund", "History") for t in at.title)

    at.user = {"is_logged_in": True, "email": "ops@example.com", "name": "Ops"}
    at.run()
    assert [t.value for t in at.title] == ["Queue a refund"]
    assert "ops@example.com" in texts(at)
    at.text_input(key="queue_payment_id").input("pay_oidc")
    click(at, "Queue refund")
    [body] = messages(system.queue_url, system.sqs)
    assert body["requested_by"] == "ops@example.com"

    # A domain rule gives its role (viewer: History is the first page offered, no queueing).
    at.user = {"is_logged_in": True, "email": "kim@audit.example"}
    at.run()
    assert [t.value for t in at.title] == ["History"] and "kim@audit.example" in texts(at)


def test_console_stays_closed_without_sign_in_configured(system: AwsFixture) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("Sign-in is not configured" in e.value for e in at.error)
    assert not at.text_input


# ---- failures ---------------------------------------------------------------------------------------
def point_local_stack_at(aws: AwsFixture, tmp_path: Path, **names: str) -> None:
    """Rewrite the local stack's state file (what an open console reads) with other names."""
    from reditus_operators.config import SystemConfig, write_local_state

    fields = {"table_name": aws.table, "queue_url": aws.queue_url, "dlq_url": aws.dlq_url, **names}
    config = SystemConfig(fields["table_name"], fields["queue_url"], fields["dlq_url"], "us-east-1",
                          origin="local stack", local=True)  # fmt: skip
    write_local_state(config, tmp_path / "local-stack")


def test_missing_table_is_a_message_not_a_traceback(open_console: AwsFixture, tmp_path: Path) -> None:
    point_local_stack_at(open_console, tmp_path, table_name="no-such-table")
    at = app(HISTORY_PAGE)
    assert not at.exception
    assert any("'no-such-table' does not exist" in e for e in errors(at)), errors(at)
    assert any("HISTORY_TABLE_NAME" in c for c in captions(at))


def test_missing_queue_is_a_message_not_a_traceback(open_console: AwsFixture, tmp_path: Path) -> None:
    point_local_stack_at(open_console, tmp_path, queue_url=open_console.queue_url + "-gone")
    at = app()
    at.text_input(key="queue_payment_id").input("pay_q")
    click(at, "Queue refund")
    assert any("queue" in e and "does not exist" in e for e in errors(at)), errors(at)


def test_unreachable_aws_is_a_message_not_a_traceback(console_env: pytest.MonkeyPatch) -> None:
    console_env.setenv("CONSOLE_OPEN", "1")
    console_env.setenv("HISTORY_TABLE_NAME", "history")
    console_env.setenv("REFUND_QUEUE_URL", "http://127.0.0.1:9/000000000000/refunds")
    console_env.setenv("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:9/000000000000/refunds-dlq")
    console_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    for page in (HISTORY_PAGE, DEAD_LETTER_PAGE):
        at = app(page)
        assert not at.exception
        assert any("could not be reached" in e or "unreachable" in e for e in errors(at)), errors(at)


def test_no_system_configured_says_what_to_set(console_env: pytest.MonkeyPatch) -> None:
    console_env.setenv("CONSOLE_OPEN", "1")
    at = app()
    assert any("does not know which system to use" in e for e in errors(at))
    assert any("REDITUS_STACK_NAME" in c for c in captions(at))


def test_explain_covers_expired_credentials() -> None:
    from botocore.exceptions import ClientError, NoCredentialsError

    expired = ClientError({"Error": {"Code": "ExpiredTokenException", "Message": "expired"}}, "Query")
    assert "expired" in data.explain(expired).what
    assert "credentials" in data.explain(NoCredentialsError()).what


@pytest.fixture
def moto_item_level_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto backs up the whole table (a deepcopy) once per action of every TransactWriteItems, so that
    recording 10,000 pending refunds is quadratic (minutes), which DynamoDB is not. The local stack's
    moto server saves only the touched items instead; this test does the same, and undoes it after."""
    import moto.dynamodb.models as moto_dynamodb

    from reditus_local import motoserver

    # Setting each to its own value records it, so that monkeypatch puts it back afterwards.
    monkeypatch.setattr(moto_dynamodb, "copy", moto_dynamodb.copy)
    monkeypatch.setattr(
        moto_dynamodb.DynamoDBBackend,
        "transact_write_items",
        moto_dynamodb.DynamoDBBackend.transact_write_items,
    )
    monkeypatch.setattr(motoserver, "_patched", motoserver._patched)
    motoserver.use_item_level_transaction_rollback()


class RecordingSqs:
    """The console's SQS client, except that SendMessageBatch records the messages instead of queueing
    them: moto's SQS recounts the whole queue for every message it accepts, quadratic at 10,000 (SQS
    itself is not). Everything else goes to moto."""

    def __init__(self, client: Any):
        self._client = client
        self.bodies: list[dict[str, Any]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert 1 <= len(Entries) <= 10
        self.bodies += [json.loads(entry["MessageBody"]) for entry in Entries]
        return {
            "Successful": [{"Id": e["Id"], "MessageId": str(uuid.uuid4())} for e in Entries],
            "Failed": [],
        }

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture
def recording_sqs(monkeypatch: pytest.MonkeyPatch) -> list[RecordingSqs]:
    from reditus_operators.config import SystemConfig

    made: list[RecordingSqs] = []
    original = SystemConfig.client

    def client(config: SystemConfig, service: str) -> Any:
        real = original(config, service)
        if service != "sqs":
            return real
        made.append(RecordingSqs(real))
        return made[-1]

    monkeypatch.setattr(SystemConfig, "client", client)
    return made


def test_bulk_upload_of_ten_thousand_rows_goes_through_in_chunks(
    open_console: AwsFixture, moto_item_level_rollback: None, recording_sqs: list[RecordingSqs]
) -> None:
    aws = open_console
    rows = ["payment_id,note", *(f"pay_bulk_{n:05d},month end" for n in range(10_000))]
    started = time.monotonic()
    at = upload(app(BULK_PAGE), "\n".join(rows))
    assert metric(at, "Ready to queue") == "10,000"
    click(at, "Queue 10,000 refund(s)")
    assert any(s.value.startswith("Queued 10,000 refund(s)") for s in at.success)
    [sqs] = recording_sqs
    assert sorted(b["payment_id"] for b in sqs.bodies) == [f"pay_bulk_{n:05d}" for n in range(10_000)]
    # Each has its pending record (the headline's day counters follow them through the table's
    # stream: tests/test_local_stack.py and tests/test_counter_stream.py).
    pages = aws.dynamodb.get_paginator("scan").paginate(TableName=aws.table)
    pending = [item for page in pages for item in page["Items"] if "queued_day" in item]
    assert sorted(i["payment_id"]["S"] for i in pending) == [f"pay_bulk_{n:05d}" for n in range(10_000)]
    assert not any("outcome" in i for i in pending)
    # A second look at the page sends nothing again.
    at.run()
    assert len(sqs.bodies) == 10_000
    assert time.monotonic() - started < 120


# ---- one rule for "needs force"; hostile input (issues 11 and 12) -----------------------------------
def test_cli_and_console_agree_on_which_payments_need_force(
    open_console: AwsFixture, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One check (operations.history_matches) behind the console's single and bulk queueing and the
    CLI's `enqueue` and `enqueue --csv --check-history`: the four answers are the same."""
    from reditus_operators.cli import main as cli
    from ui.bulk import start_upload

    aws = open_console
    put_records(
        aws, [(Outcome.REFUNDED, "pay_done"), (Outcome.PENDING, "pay_wait"), (Outcome.RETRYING, "pay_retry")]
    )
    put_records(aws, [(Outcome.REJECTED, "pay_rejected"), (Outcome.NOT_FOUND, "pay_gone")])
    # Queued 20 days ago and never settled: SQS has long dropped it, so it is not in flight.
    put_records(aws, [(Outcome.PENDING, "pay_stale")], when=datetime.now(UTC) - timedelta(days=20))
    payments = ["pay_done", "pay_wait", "pay_retry", "pay_rejected", "pay_gone", "pay_stale", "pay_new"]
    expected = {"pay_done", "pay_wait", "pay_retry"}

    services = data.services()
    bulk = start_upload(("payment_id\n" + "\n".join(payments)).encode(), "f.csv", {}, "t")
    bulk.check_history(services.store)
    console_bulk = set(bulk.in_history)
    results = {
        p: data.queue_refund(services, payment_id=p, note=None, force=False, requested_by="t")
        for p in payments
    }
    console_single = {p for p, result in results.items() if not result.sent}
    # What the console just queued would now count as pending: take exactly those records away again
    # (by the refund ids it answered, not by whatever a payment query lists first).
    for result in results.values():
        if result.sent:
            aws.dynamodb.delete_item(TableName=aws.table, Key={"refund_id": {"S": result.request.refund_id}})

    cli_single = {p for p in payments if cli(["enqueue", p]) != 0}
    refusals = capsys.readouterr().err
    # What the CLI just queued is pending today: the stream function counts it (here, by hand),
    # else today's counter would say fewer pending refunds than today holds.
    count_in_day(aws, datetime.now(UTC).date().isoformat(), {"pending": len(payments) - len(cli_single)})
    assert all("--force" in line for line in refusals.splitlines() if "error" in line), refusals
    path = tmp_path / "f.csv"
    path.write_text("payment_id\n" + "\n".join(expected) + "\n")
    assert cli(["enqueue", "--csv", str(path), "--check-history", "--dry-run"]) == 0
    cli_csv = {line.split(":")[0] for line in capsys.readouterr().err.splitlines() if "skipped" in line}
    assert console_single == console_bulk == cli_single == expected
    assert cli_csv == expected


HOSTILE_BODIES = [
    "[" * 100_000 + "]" * 100_000,
    '{"payment_id": ' + "9" * 10_000 + "}",
    '{"payment_id": 1e999999}',
    '{"payment_id": "\\ud800", "refund_id": "\\udfff"}',
    '{"payment_id": "pay_\\u001b[2J\\u202e", "refund_id": "r-x"}',
]


def test_dead_letters_page_survives_any_body(open_console: AwsFixture) -> None:
    aws = open_console
    for body in HOSTILE_BODIES:
        aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=body)
    at = app(DEAD_LETTER_PAGE)
    assert not at.error, errors(at)
    assert metric(at, "Messages in the dead-letter queue") == "5"
    assert len(at.dataframe[0].value) == 5


def test_dead_letters_redrive_keeps_the_refund_id(open_console: AwsFixture) -> None:
    from reditus_refunds.outcomes import REDRIVE_REFUND_ID_ATTRIBUTE

    aws = open_console
    message_id = aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody='{"payment_id": "pay_no_id"}')[
        "MessageId"
    ]
    at = app(DEAD_LETTER_PAGE)
    click(at, "Redrive all (1)")
    click(at, "Redrive")
    (moved,) = aws.sqs.receive_message(QueueUrl=aws.queue_url, MessageAttributeNames=["All"])["Messages"]
    assert moved["MessageAttributes"][REDRIVE_REFUND_ID_ATTRIBUTE]["StringValue"] == message_id


@pytest.mark.parametrize(("delimiter", "name"), [(";", "semicolon"), ("\t", "tab")])
def test_bulk_upload_reads_semicolon_and_tab_files(
    open_console: AwsFixture, delimiter: str, name: str
) -> None:
    at = upload(app(BULK_PAGE), f"payment_id{delimiter}note\npay_s1{delimiter}a, b\npay_s2{delimiter}\n")
    assert metric(at, "Ready to queue") == "2"
    assert any(f"{name}-separated" in c for c in captions(at))
    ready = at.dataframe[0].value
    assert list(ready["payment_id"]) == ["pay_s1", "pay_s2"] and list(ready["note"]) == ["a, b", ""]


def test_bulk_upload_refuses_a_file_of_newlines(open_console: AwsFixture) -> None:
    at = app(BULK_PAGE)
    at.file_uploader[0].set_value(("refunds.csv", b"payment_id\n" + b"\n" * 5_000_000, "text/csv"))
    started = time.monotonic()
    at.run()
    assert any("cannot be used" in e.value for e in at.error)
    assert any("lines" in t for t in texts(at))
    assert time.monotonic() - started < 30


# ---- sources (billing webhooks) ----------------------------------------------------------------------
SOURCES_PAGE = "app_pages/sources.py"


def webhook_events(aws: AwsFixture, *sent: tuple[str, bool]) -> list[dict[str, Any]]:
    """Signed sample events through the real receiver (as providers send them): (provider, partial)."""
    from reditus_operators.webhooks import signed_sample
    from reditus_webhooks.app import build_receiver
    from tests.webhooks.test_receiver import base_env

    env = base_env(aws)
    receiver = build_receiver(env, dynamodb=aws.dynamodb, sqs=aws.sqs, secretsmanager=lambda: aws.secrets)
    answers = []
    for provider, partial in sent:
        sample, headers = signed_sample(provider, env, partial=partial)
        answer = receiver.receive(
            "POST", f"/{provider}", {k.lower(): v for k, v in headers.items()}, sample.body
        )
        assert answer.status == 200, answer.body
        answers.append(dict(answer.body))
    return answers


def test_sources_page_shows_counts_last_events_and_reviews(
    open_console: AwsFixture, console_env: pytest.MonkeyPatch
) -> None:
    aws = open_console
    console_env.setenv("REDITUS_WEBHOOK_URL", "http://127.0.0.1:9999")
    console_env.setenv("STRIPE_WEBHOOK_SECRET", "whsec_local")
    answers = webhook_events(aws, ("stripe", False), ("stripe", True), ("paddle", True), ("polar", False))
    at = app(SOURCES_PAGE)
    assert [t.value for t in at.title] == ["Sources"]
    [frame] = [d.value for d in at.dataframe if "provider" in d.value.columns]
    table = frame.set_index("provider")
    assert table.loc["stripe", "queued"] == 1 and table.loc["stripe", "needs_review"] == 1
    assert table.loc["paddle", "needs_review"] == 1 and table.loc["polar", "queued"] == 1
    assert table.loc["chargebee"][["queued", "needs_review", "ignored"]].sum() == 0
    assert table.loc["stripe", "url"] == "http://127.0.0.1:9999/stripe"
    assert table.loc["stripe", "configured"] == "yes" and table.loc["paddle", "configured"] == "no secret"
    assert table.loc["stripe", "last_decision"] == "needs_review"
    assert pd_isna(table.loc["lemonsqueezy", "last_received_at"])
    reviews = {a["refund_id"] for a in answers if a["status"] == "needs_review"}
    shown = {t for t in texts(at) if t.startswith("wh:")}
    assert shown == reviews
    assert [b.label for b in at.button].count("Submit") == 2


def pd_isna(value: object) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_sources_submit_queues_the_reviewed_refund_as_the_operator(
    open_console: AwsFixture, console_env: pytest.MonkeyPatch
) -> None:
    aws = open_console
    console_env.setenv("CONSOLE_OPERATOR", "ana@example.com")
    [answer] = webhook_events(aws, ("stripe", True))
    at = app(SOURCES_PAGE)
    at.button(key=f"submit_{answer['refund_id']}").click()
    at.run()
    assert not at.exception, at.exception
    assert any("Queued refund" in s.value for s in at.success)
    [body] = messages(aws.queue_url, aws.sqs)
    assert body["refund_id"] == answer["refund_id"] and body["source"] == "stripe"
    record = store(aws).get(answer["refund_id"])
    assert record is not None and record.outcome is Outcome.PENDING
    assert record.requested_by == at.sidebar.text[0].value
    assert record.source_event_id == body["source_event_id"]
    assert [b.label for b in at.button].count("Submit") == 0
    assert any("No partial refund awaits" in s.value for s in at.success)


def test_sources_dismiss_queues_nothing_and_records_the_operator(open_console: AwsFixture) -> None:
    aws = open_console
    [answer] = webhook_events(aws, ("paddle", True))
    at = app(SOURCES_PAGE)
    at.button(key=f"dismiss_{answer['refund_id']}").click()
    at.run()
    assert not at.exception, at.exception
    assert any("nothing was queued" in s.value for s in at.success)
    assert messages(aws.queue_url, aws.sqs) == []
    assert store(aws).get(answer["refund_id"]) is None
    from reditus_webhooks.events import EventStore

    review = EventStore(aws.table, aws.dynamodb).get_review(answer["refund_id"])
    assert review is not None and review.state == "dismissed" and review.decided_by == "open-console"


def test_sources_without_a_receiver_says_not_deployed(open_console: AwsFixture) -> None:
    at = app(SOURCES_PAGE)
    [frame] = [d.value for d in at.dataframe if "provider" in d.value.columns]
    assert set(frame["url"]) == {"not deployed"}
    assert any("No webhook receiver URL is known" in c for c in captions(at))
    assert any("No partial refund awaits" in s.value for s in at.success)


def test_history_shows_a_webhook_refunds_source_and_event(open_console: AwsFixture) -> None:
    aws = open_console
    [answer] = webhook_events(aws, ("stripe", False))
    record = store(aws).get(answer["refund_id"])
    assert record is not None and record.source == "stripe" and record.source_event_id
    at = app(HISTORY_PAGE)
    [frame] = [d.value for d in at.dataframe if "source_event_id" in d.value.columns]
    row = frame.set_index("refund_id").loc[answer["refund_id"]]
    assert (row["source"], row["source_event_id"]) == ("stripe", record.source_event_id)
    at.query_params["refund_id"] = answer["refund_id"]
    at.run()
    assert record.source_event_id in texts(at)


def test_sources_of_the_local_stack_read_configured_from_its_state(
    open_console: AwsFixture, console_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The local stack's console has the system's variables, never the signing secrets."""
    from reditus_operators.config import SystemConfig, write_local_state

    config = SystemConfig("t", "q", "d", "us-east-1", local=True)
    secrets = {"REDITUS_WEBHOOK_URL": "http://127.0.0.1:8200", "POLAR_WEBHOOK_SECRET": "whsec_x"}
    write_local_state(config, tmp_path / "stack", {"webhook_env": secrets})
    console_env.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "stack"))
    console_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5005")  # as the local stack's console has
    rows = data.read_sources(
        data.WebhookReader(open_console.table, open_console.dynamodb),
        data.resolve(),
        *data.default_period(days=7),
    )
    by_provider = {r.provider: r for r in rows}
    assert by_provider["polar"].configured is True and by_provider["stripe"].configured is False
    assert by_provider["polar"].url == "http://127.0.0.1:8200/polar"
