"""The audit log (issue 14): a record for every action, through the real use cases against moto, with
who, when, what, how many and the refund ids; appended only; read by person, action and period with
a page of reads plus a small constant; `reditus-refunds audit --json`."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reditus_operators import actions
from reditus_operators.access import Action, Actor, Role
from reditus_operators.audit import AUDIT_PREFIX, DONE, REFUSED, AuditEntry, AuditReader, AuditWriter
from reditus_operators.users import UserStore
from reditus_refunds.aws_errors import ConditionFailed
from reditus_refunds.layout import HASH_KEY
from reditus_refunds.records import Outcome
from tests import test_access, test_cli
from tests.conftest import AwsFixture
from tests.test_access import signed_in
from tests.test_cli import System
from tests.test_console import (
    BULK_PAGE,
    DEAD_LETTER_PAGE,
    HISTORY_PAGE,
    QUEUE_PAGE,
    SOURCES_PAGE,
    audit_entries,
    click,
    dead_letter,
    history_table,
    messages,
    put_records,
    store,
    upload,
    webhook_events,
)
from ui import data

# The fixtures these tests share with the access and CLI tests.
accounts = test_access.accounts
system = test_cli.system


def only(aws: AwsFixture, action: str, result: str = DONE) -> AuditEntry:
    [entry] = [e for e in audit_entries(aws) if e.action == action and e.result == result]
    return entry


def for_refund(aws: AwsFixture, refund_id: str) -> list[str]:
    return [e.action for e in AuditReader(aws.table, aws.dynamodb).for_refund(refund_id)]


# ---- a record for each action, by who did it ---------------------------------------------------------------
def test_queue_and_force_are_audited_with_their_refund(accounts: AwsFixture) -> None:
    put_records(accounts, [(Outcome.REFUNDED, "pay_done")])
    at = signed_in("admin", QUEUE_PAGE)
    at.text_input(key="queue_payment_id").input("pay_new")
    click(at, "Queue refund")
    queued = at.code[0].value
    at.text_input(key="queue_payment_id").input("pay_done")
    at.checkbox(key="queue_force").check()
    click(at, "Queue refund")
    forced = at.code[0].value
    entry = only(accounts, "queue")
    assert (entry.who, entry.role, entry.channel, entry.count, entry.refund_ids) == (
        "admin",
        "admin",
        "console",
        1,
        [queued],
    )
    assert entry.details == {"payment_id": "pay_new"} and entry.at.startswith(str(datetime.now(UTC).date()))
    assert only(accounts, "force").refund_ids == [forced]
    # A refund's detail lists the actions that touched it.
    assert for_refund(accounts, forced) == ["force"]


def test_a_bulk_upload_is_audited_with_the_file(accounts: AwsFixture) -> None:
    content = "payment_id,note\npay_b1,a\npay_b2,\n,blank\npay_b1,again\n"
    at = upload(signed_in("operator", BULK_PAGE), content, name="month-end.csv")
    click(at, "Queue 2 refund(s)")
    entry = only(accounts, "bulk_upload")
    sent = {b["refund_id"] for b in messages(accounts.queue_url, accounts.sqs)}
    assert entry.who == "operator" and entry.count == 2 and set(entry.refund_ids) == sent
    assert entry.details == {
        "file_name": "month-end.csv",
        "size": len(content.encode()),
        "sha256": hashlib.sha256(content.encode()).hexdigest(),
        "rows": 4,
        "invalid": 1,
        "duplicates": 1,
        "queued": 2,
        "refused_by_queue": 0,
        "forced": 0,
    }
    assert all(for_refund(accounts, r) == ["bulk_upload"] for r in sent)


def test_a_requeue_is_audited_with_old_and_new_ids(accounts: AwsFixture) -> None:
    [old] = put_records(accounts, [(Outcome.NOT_FOUND, "pay_nf")])
    at = signed_in("operator", HISTORY_PAGE)
    at.session_state[history_table(at).key] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    click(at, "Requeue 1 selected")
    click(at, "Confirm requeue")
    [body] = messages(accounts.queue_url, accounts.sqs)
    entry = only(accounts, "requeue")
    assert entry.who == "operator" and entry.count == 1
    assert entry.refund_ids == [old, body["refund_id"]]
    assert entry.details["requeued"] == {old: body["refund_id"]}
    assert for_refund(accounts, old) == ["requeue"]


def test_partial_refund_decisions_are_audited(accounts: AwsFixture) -> None:
    submitted, dismissed = webhook_events(accounts, ("stripe", True), ("paddle", True))
    at = signed_in("operator", SOURCES_PAGE)
    at.button(key=f"submit_{submitted['refund_id']}").click()
    at.run()
    at.button(key=f"dismiss_{dismissed['refund_id']}").click()
    at.run()
    assert (only(accounts, "submit").who, only(accounts, "submit").refund_ids) == (
        "operator",
        [submitted["refund_id"]],
    )
    assert only(accounts, "dismiss").refund_ids == [dismissed["refund_id"]]


def test_dead_letter_actions_record_the_operator(accounts: AwsFixture) -> None:
    for payment in ("pay_d1", "pay_d2"):
        dead_letter(accounts, payment)
    at = signed_in("admin", DEAD_LETTER_PAGE)
    letters = at.dataframe[0].value
    first = list(letters["payment_id"]).index("pay_d1")
    at.session_state[at.dataframe[0].key] = {"selection": {"rows": [first], "columns": [], "cells": []}}
    at.run()
    click(at, "Delete 1 selected")
    click(at, "Delete permanently")
    click(at, "Redrive all (1)")
    click(at, "Redrive")
    deleted, redriven = only(accounts, "delete"), only(accounts, "redrive")
    assert (deleted.who, deleted.count, redriven.who, redriven.count) == ("admin", 1, "admin", 1)
    assert deleted.refund_ids == [letters["refund_id"][first]]
    assert redriven.refund_ids == [r for r in letters["refund_id"] if r != letters["refund_id"][first]]
    assert redriven.details["all"] is True and len(redriven.details["message_ids"]) == 1


def test_an_export_is_audited_with_its_rows(accounts: AwsFixture) -> None:
    ids = put_records(accounts, [(Outcome.REFUNDED, "pay_x1"), (Outcome.NOT_FOUND, "pay_x2")])
    ctx = actions.Acting(
        Actor("viewer", Role.VIEWER, "console"), AuditWriter(accounts.table, accounts.dynamodb)
    )
    today = datetime.now(UTC).date()
    _, rows, _ = data.export_csv(
        store(accounts), data.HistoryFilter(today - timedelta(days=1), today), ctx=ctx
    )
    entry = only(accounts, "export")
    assert (entry.who, entry.count, sorted(entry.refund_ids)) == ("viewer", rows, sorted(ids))
    assert entry.details["what"] == "history"


def test_sign_in_failures_and_the_lockout_are_audited(accounts: AwsFixture) -> None:
    for _ in range(5):
        assert data.sign_in("operator", "not the password at all") is None
    assert data.sign_in("operator", test_access.PASSWORD) is None  # locked now
    assert data.sign_in("nobody", "not the password at all") is None
    failed = [e for e in audit_entries(accounts) if e.action == "sign_in_failed"]
    assert sorted(e.who for e in failed) == ["nobody"] + ["operator"] * 5
    assert sum(e.reason == "account locked" for e in failed) == 1
    lockout = only(accounts, "lockout", REFUSED)
    assert lockout.who == "operator" and lockout.details["locked_until"]
    # The password never reaches the log.
    assert "not the password" not in json.dumps([e.to_json() for e in audit_entries(accounts)])


# ---- appended only --------------------------------------------------------------------------------------
def test_the_audit_writer_cannot_change_or_delete_a_record(aws: AwsFixture) -> None:
    writer = AuditWriter(aws.table, aws.dynamodb)
    entry = writer.record(Actor("ana", Role.ADMIN, "cli"), Action.DELETE, refund_ids=["r-1"], count=1)
    key = {HASH_KEY: {"S": AUDIT_PREFIX + entry.audit_id}}
    original = aws.dynamodb.get_item(TableName=aws.table, Key=key)["Item"]
    forged = {**original, "audit_who": {"S": "somebody-else"}, "count": {"N": "0"}}
    with pytest.raises(ConditionFailed, match="append-only"):
        writer.append(forged)
    assert aws.dynamodb.get_item(TableName=aws.table, Key=key)["Item"] == original
    # The writer offers nothing else to touch a record with.
    public = {name for name in vars(AuditWriter) if not name.startswith("_")}
    assert public == {"record", "append"}


@pytest.mark.parametrize("policy", ["ViewerPolicy", "OperatorPolicy", "AdminPolicy"])
def test_peoples_policies_deny_updating_or_deleting_audit_records(policy: str) -> None:
    from reditus_local.resources import TemplateModel

    statements = TemplateModel.load().template["Resources"][policy]["Properties"]["PolicyDocument"][
        "Statement"
    ]
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert any(
        {"dynamodb:UpdateItem", "dynamodb:DeleteItem"} <= set(s["Action"])
        and "audit#*" in s["Condition"]["ForAnyValue:StringLike"]["dynamodb:LeadingKeys"]
        for s in denies
    ), denies
    # Nothing in the policy allows deleting audit items: only the admin's user# accounts, or keys
    # without '#' (refund items: the pending records of requests SQS refused).
    for statement in statements:
        if statement["Effect"] == "Allow" and "dynamodb:DeleteItem" in statement["Action"]:
            condition = statement["Condition"]
            assert condition in (
                {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["user#*"]}},
                {"ForAllValues:StringNotLike": {"dynamodb:LeadingKeys": ["*#*"]}},
            ), condition


# ---- reading it ------------------------------------------------------------------------------------------
class CountingClient:
    """Counts the items DynamoDB reads for the reader (what a Query evaluates, filtered out or not) and
    the calls, as tests/test_console_speed.py counts reads."""

    def __init__(self, client: Any):
        self._client = client
        self.items = 0
        self.calls = 0

    def query(self, **kwargs: Any) -> Any:
        response = self._client.query(**kwargs)
        self.calls += 1
        self.items += int(response.get("ScannedCount", len(response.get("Items", []))))
        return response

    def batch_get_item(self, **kwargs: Any) -> Any:
        response = self._client.batch_get_item(**kwargs)
        self.calls += 1
        self.items += sum(len(v) for v in response.get("Responses", {}).values())
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_filters_read_a_page_plus_a_small_constant(aws: AwsFixture) -> None:
    start = datetime.now(UTC) - timedelta(days=5)
    ticks = iter(start + timedelta(seconds=n * 37) for n in range(10_000))
    writer = AuditWriter(aws.table, aws.dynamodb, clock=lambda: next(ticks))
    people = [Actor(f"p{n}@example.com", Role.OPERATOR, "console") for n in range(4)]
    kinds = [Action.QUEUE, Action.REQUEUE, Action.EXPORT]
    for n in range(300):
        writer.record(people[n % 4], kinds[n % 3], refund_ids=[f"r-{n}"])
    counting = CountingClient(aws.dynamodb)
    reader = AuditReader(aws.table, counting)  # type: ignore[arg-type]
    # (filter, at most how many calls): by person or action one Query per page; by period one per
    # day of the period at most (records of 5 days ago, default period 30 days: it walks back to them).
    cases: list[tuple[dict[str, Any], int]] = [
        ({"who": "p1@example.com"}, 2),
        ({"action": "requeue"}, 2),
        ({"since": start + timedelta(hours=1), "until": start + timedelta(hours=2)}, 2),
        ({}, 7),
    ]
    for case, calls in cases:
        counting.items = counting.calls = 0
        page = reader.list(limit=10, **case)
        assert len(page.entries) == 10, case
        assert all(
            case.get("who", e.who) == e.who and case.get("action", e.action) == e.action for e in page.entries
        )
        if "since" in case:
            assert all(
                case["since"].isoformat()[:19] <= e.at[:19] <= case["until"].isoformat()[:19]
                for e in page.entries
            )
        assert [e.at for e in page.entries] == sorted((e.at for e in page.entries), reverse=True)
        assert counting.items <= 10 + 2 and counting.calls <= calls, (case, counting.items, counting.calls)
    # Person and action together: the person's index, filtered by action; it reads the person's records
    # until a page matches (here one in three), never the rest of the log.
    counting.items = 0
    page = reader.list(limit=10, who="p2@example.com", action="export")
    assert len(page.entries) == 10 and {(e.who, e.action) for e in page.entries} == {
        ("p2@example.com", "export")
    }
    assert counting.items <= 3 * 10 + 2, counting.items


def test_audit_json_lines_carry_who_what_when_and_the_refunds(system: System) -> None:
    run = system.run("enqueue", "pay_audit", "--as", "Ana")
    refund_id = run.out.strip()
    assert system.run("enqueue", "pay_audit").code != 0  # it is in flight now: refused, not audited
    lines = system.run("audit", "--json", "--action", "queue").out.splitlines()
    [entry] = map(json.loads, lines)
    assert {"at", "who", "action", "count", "refund_ids"} <= set(entry)
    assert (entry["action"], entry["count"], entry["refund_ids"], entry["who_name"]) == (
        "queue",
        1,
        [refund_id],
        "Ana",
    )
    assert entry["who"].startswith("arn:aws:sts::")
    by_person = system.run("audit", "--json", "--who", entry["who"], "--since", "1h").out.splitlines()
    assert [json.loads(line)["refund_ids"] for line in by_person] == [[refund_id]]
    assert system.run("audit", "--json", "--who", "someone-else").out == ""
    csv_out = system.run("audit", "--csv").out
    assert csv_out.splitlines()[0].startswith("at,who,who_name") and refund_id in csv_out


def test_users_store_and_audit_share_the_table_without_colliding(aws: AwsFixture) -> None:
    """Accounts, audit records and refunds live side by side: none of them shows up as another."""
    UserStore(aws.table, aws.dynamodb).add("ana", "a long enough password", Role.ADMIN)
    AuditWriter(aws.table, aws.dynamodb).record(
        Actor("ana", Role.ADMIN, "console"), Action.QUEUE, refund_ids=["r"]
    )
    today = datetime.now(UTC).date()
    assert data.read_history_page(store(aws), data.HistoryFilter(today, today)).records == []
    assert [e.who for e in AuditReader(aws.table, aws.dynamodb).list().entries] == ["ana"]
