"""Who may do what (issue 14): per role, what the console offers, and that the server side refuses
the rest whatever the browser sends (AppTest setting widget state directly, the use cases called
directly). Accounts are password mode's, made as `reditus-refunds users add` makes them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from reditus_operators import actions
from reditus_operators.access import AccessDenied, Action, Actor, Role
from reditus_operators.audit import REFUSED, AuditWriter
from reditus_operators.dlq import DeadLetterQueue
from reditus_operators.operations import build_request
from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer
from reditus_refunds.records import Outcome
from reditus_webhooks.events import EventStore
from tests.conftest import AwsFixture
from tests.test_console import (
    APP,
    BULK_PAGE,
    CONSOLE_ENV,
    DEAD_LETTER_PAGE,
    HISTORY_PAGE,
    PASSWORD,
    QUEUE_PAGE,
    SOURCES_PAGE,
    add_account,
    audit_entries,
    clear_console_caches,
    click,
    errors,
    messages,
    put_records,
    queue_depth,
    store,
    texts,
    upload,
    webhook_events,
)

AUDIT_PAGE = "app_pages/audit.py"
ALL_PAGES = {
    QUEUE_PAGE: "Queue a refund",
    BULK_PAGE: "Bulk upload",
    HISTORY_PAGE: "History",
    DEAD_LETTER_PAGE: "Dead letters",
    SOURCES_PAGE: "Sources",
    AUDIT_PAGE: "Audit",
}
OFFERED = {
    "viewer": [HISTORY_PAGE, SOURCES_PAGE],
    "operator": [QUEUE_PAGE, BULK_PAGE, HISTORY_PAGE, SOURCES_PAGE],
    "admin": list(ALL_PAGES),
}


@pytest.fixture
def accounts(aws: AwsFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AwsFixture]:
    """A deployed-like system (names from the environment) in password mode, one account per role."""
    for name in CONSOLE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "no-local-stack"))
    monkeypatch.setenv("HISTORY_TABLE_NAME", aws.table)
    monkeypatch.setenv("REFUND_QUEUE_URL", aws.queue_url)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", aws.dlq_url)
    monkeypatch.setenv("CONSOLE_SIGN_IN", "password")
    for role in Role:
        add_account(aws, role.value, role.value)
    clear_console_caches()
    yield aws
    clear_console_caches()


def signed_in(role: str, page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    name, password = at.text_input
    name.input(role)
    password.input(PASSWORD)
    click(at, "Sign in")
    assert any(f"Role: {role}" in c.value for c in at.sidebar.caption), errors(at)
    if page:
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
    return at


def offered(at: AppTest) -> list[str]:
    """The pages the navigation offers: switch_page finds only those (a URL to another page lands on
    the default page, as the browser test shows)."""
    found = []
    for page in ALL_PAGES:
        try:
            at.switch_page(page)
        except ValueError:
            continue
        found.append(page)
    return found


def refusals(aws: AwsFixture) -> list[tuple[str, str]]:
    return [(e.who, e.action) for e in audit_entries(aws) if e.result == REFUSED]


# ---- what each role is offered --------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_each_role_is_offered_only_its_pages(accounts: AwsFixture, role: str) -> None:
    at = signed_in(role)
    assert offered(at) == OFFERED[role]
    for page in OFFERED[role]:
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
        assert [t.value for t in at.title][:1] == [ALL_PAGES[page]], (page, errors(at))


def test_force_is_offered_to_admins_only(accounts: AwsFixture) -> None:
    assert "queue_force" not in [c.key for c in signed_in("operator", QUEUE_PAGE).checkbox]
    assert "queue_force" in [c.key for c in signed_in("admin", QUEUE_PAGE).checkbox]
    # The bulk upload's "also queue what the history has (with force)" likewise.
    put_records(accounts, [(Outcome.REFUNDED, "pay_done")])
    operator = upload(signed_in("operator", BULK_PAGE), "payment_id\npay_done\npay_new\n")
    assert not [c for c in operator.checkbox if c.key.startswith("bulk_force")]
    assert any("Only an admin" in c.value for c in operator.caption)
    admin = upload(signed_in("admin", BULK_PAGE), "payment_id\npay_done\npay_new\n")
    assert [c for c in admin.checkbox if c.key.startswith("bulk_force")]


def test_requeue_is_not_offered_to_viewers(accounts: AwsFixture) -> None:
    [refund_id] = put_records(accounts, [(Outcome.NOT_FOUND, "pay_gone")])
    for role, expected in (("viewer", False), ("operator", True)):
        at = signed_in(role, HISTORY_PAGE)
        assert ("history_requeue_selected" in [b.key for b in at.button]) is expected
        at.query_params["refund_id"] = refund_id
        at.run()
        assert ("Requeue this refund" in [b.label for b in at.button]) is expected
        assert "Export CSV" in [b.label for b in at.get("download_button")]


def test_partial_refund_decisions_are_not_offered_to_viewers(accounts: AwsFixture) -> None:
    [answer] = webhook_events(accounts, ("stripe", True))
    viewer = signed_in("viewer", SOURCES_PAGE)
    assert answer["refund_id"] in texts(viewer)
    assert not {"Submit", "Dismiss"} & {b.label for b in viewer.button}
    operator = signed_in("operator", SOURCES_PAGE)
    assert {"Submit", "Dismiss"} <= {b.label for b in operator.button}


# ---- forged requests, refused server-side ----------------------------------------------------------------
def test_a_forged_force_on_the_queue_page_is_refused_and_audited(accounts: AwsFixture) -> None:
    put_records(accounts, [(Outcome.REFUNDED, "pay_done")])
    at = signed_in("operator", QUEUE_PAGE)
    at.text_input(key="queue_payment_id").input("pay_done")
    at.session_state["queue_force"] = True  # the checkbox an operator is not shown
    click(at, "Queue refund")
    assert any("operator (operator) may not force" in t for t in texts(at)), texts(at)
    assert queue_depth(accounts.sqs, accounts.queue_url) == 0
    assert ("operator", "force") in refusals(accounts)


def test_a_forged_requeue_by_a_viewer_is_refused_and_audited(accounts: AwsFixture) -> None:
    [refund_id] = put_records(accounts, [(Outcome.NOT_FOUND, "pay_gone")])
    at = signed_in("viewer", HISTORY_PAGE)
    at.session_state["history_pending_requeue"] = (refund_id,)  # what the hidden button would set
    at.run()
    click(at, "Confirm requeue")
    assert any("may not requeue" in e for e in errors(at)), errors(at)
    assert queue_depth(accounts.sqs, accounts.queue_url) == 0
    assert ("viewer", "requeue") in refusals(accounts)


def test_a_forged_bulk_force_is_refused_and_sends_nothing(accounts: AwsFixture) -> None:
    put_records(accounts, [(Outcome.REFUNDED, "pay_done")])
    at = upload(signed_in("operator", BULK_PAGE), "payment_id\npay_done\npay_new\n")
    at.session_state["bulk_force_0"] = True  # the admin's checkbox, set by hand
    at.run()
    click(at, "Queue 2 refund(s)")
    assert any("may not force" in e for e in errors(at)), errors(at)
    assert queue_depth(accounts.sqs, accounts.queue_url) == 0
    assert ("operator", "force") in refusals(accounts)


def test_a_page_the_role_is_not_offered_cannot_be_reached(accounts: AwsFixture) -> None:
    at = signed_in("operator")
    for page in (DEAD_LETTER_PAGE, AUDIT_PAGE):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(page)


# ---- the use cases themselves ------------------------------------------------------------------------------
def request(payment_id: str, force: bool = False) -> RefundRequest:
    return build_request(payment_id, requested_by="x", source="console", force=force)


def producer(aws: AwsFixture) -> RefundProducer:
    return RefundProducer(aws.sqs, aws.queue_url, HistoryWriter(aws.table, aws.dynamodb))


def dead_letter_queue(aws: AwsFixture) -> DeadLetterQueue:
    return DeadLetterQueue(aws.sqs, aws.dlq_url, aws.queue_url)


def _requeue(aws: AwsFixture, forced: bool) -> Callable[[actions.Acting], Any]:
    [refund_id] = put_records(aws, [(Outcome.NOT_FOUND, "pay_gone")])
    record = store(aws).get(refund_id)
    assert record is not None
    if forced:
        record = dataclasses.replace(record, force=True)
    return lambda ctx: actions.requeue_records(ctx, producer(aws), [record], source="console")


def _review(aws: AwsFixture, decide: str) -> Callable[[actions.Acting], Any]:
    [answer] = webhook_events(aws, ("stripe", True))
    events = EventStore(aws.table, aws.dynamodb)
    if decide == "submit":
        return lambda ctx: actions.submit(ctx, answer["refund_id"], events=events, producer=producer(aws))
    return lambda ctx: actions.dismiss(ctx, answer["refund_id"], events=events)


OPERATIONS: dict[str, tuple[str, str, Callable[[AwsFixture], Callable[[actions.Acting], Any]]]] = {
    # name: (the role that is refused, the action it is refused, the call)
    "queue": (
        "viewer",
        "queue",
        lambda aws: lambda ctx: actions.queue_one(ctx, producer(aws), request("p1")),
    ),
    "force": (
        "operator",
        "force",
        lambda aws: lambda ctx: actions.queue_one(ctx, producer(aws), request("p1", force=True)),
    ),
    "bulk_upload": (
        "viewer",
        "bulk_upload",
        lambda aws: (
            lambda ctx: actions.bulk_upload(
                ctx,
                lambda chosen, into: producer(aws).send_many(chosen, into=into),
                [request("p1"), request("p2")],
                {"file_name": "f.csv"},
            )
        ),
    ),
    "bulk_force": (
        "operator",
        "force",
        lambda aws: (
            lambda ctx: actions.bulk_upload(
                ctx,
                lambda chosen, into: producer(aws).send_many(chosen, into=into),
                [request("p1", force=True)],
                {"file_name": "f.csv"},
            )
        ),
    ),
    "requeue": ("viewer", "requeue", lambda aws: _requeue(aws, forced=False)),
    "requeue_forced": ("operator", "force", lambda aws: _requeue(aws, forced=True)),
    "submit": ("viewer", "submit", lambda aws: _review(aws, "submit")),
    "dismiss": ("viewer", "dismiss", lambda aws: _review(aws, "dismiss")),
    "redrive": (
        "operator",
        "redrive",
        lambda aws: lambda ctx: actions.redrive(ctx, dead_letter_queue(aws), None),
    ),
    "delete": (
        "operator",
        "delete",
        lambda aws: lambda ctx: actions.delete_dead_letters(ctx, dead_letter_queue(aws), ["m-1"]),
    ),
    "audit": ("operator", "audit", lambda aws: lambda ctx: actions.check_audit(ctx)),
}


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_each_operation_refuses_a_lower_role_and_audits_the_refusal(aws: AwsFixture, name: str) -> None:
    role, action, make = OPERATIONS[name]
    aws.sqs.send_message(QueueUrl=aws.dlq_url, MessageBody=json.dumps({"payment_id": "pay_dead"}))
    call = make(aws)
    before_main = queue_depth(aws.sqs, aws.queue_url)
    ctx = actions.Acting(
        Actor(f"{role}@example.com", Role(role), "console"), AuditWriter(aws.table, aws.dynamodb)
    )
    with pytest.raises(AccessDenied) as denied:
        call(ctx)
    assert denied.value.action == Action(action)
    assert "needs the" in str(denied.value)
    # Nothing happened: no message sent, the dead letter still there.
    assert queue_depth(aws.sqs, aws.queue_url) == before_main
    assert queue_depth(aws.sqs, aws.dlq_url) == 1
    [entry] = [e for e in audit_entries(aws) if e.result == REFUSED]
    assert (entry.who, entry.role, entry.action, entry.channel) == (
        f"{role}@example.com",
        role,
        action,
        "console",
    )
    assert entry.reason == str(denied.value)
    # The next role up may.
    higher = Role.OPERATOR if role == "viewer" else Role.ADMIN
    allowed = actions.Acting(Actor("boss", higher, "console"), ctx.audit)
    call(allowed)
    if action != "audit":  # reading the audit log is not itself recorded; everything else is
        assert [e for e in audit_entries(aws) if e.who == "boss" and e.result == "done"]


def test_viewers_may_export(aws: AwsFixture) -> None:
    ctx = actions.Acting(Actor("v", Role.VIEWER, "console"), AuditWriter(aws.table, aws.dynamodb))
    actions.check_export(ctx, "history")
    assert not refusals(aws)
    assert not messages(aws.queue_url, aws.sqs)


# ---- the open console, and a session whose account changes ----------------------------------------------
def test_the_open_console_is_refused_against_a_system_that_is_not_the_local_stack(
    accounts: AwsFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployed-like system (named by the environment, AWS's own endpoints): no open console."""
    monkeypatch.delenv("CONSOLE_SIGN_IN")
    monkeypatch.setenv("CONSOLE_OPEN", "1")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("only allowed against the local stack" in e for e in errors(at)), errors(at)
    assert not any(t.value in ALL_PAGES.values() for t in at.title)
    assert not at.text_input and not at.button


@pytest.mark.parametrize("change", ["removed", "locked", "demoted"])
def test_a_session_follows_its_account(accounts: AwsFixture, change: str) -> None:
    """The account is read again (at most every few seconds) on every page load: a removed or locked
    account loses its session, a changed role applies."""
    from reditus_operators.users import UserStore
    from ui import data

    users = UserStore(accounts.table, accounts.dynamodb)
    at = signed_in("operator", QUEUE_PAGE)
    if change == "removed":
        users.remove("operator")
    elif change == "locked":
        for _ in range(5):
            users.sign_in("operator", "somebody guessing wrong")
    else:
        users.remove("operator")
        users.add("operator", PASSWORD, Role.VIEWER)
    data._account.clear()  # the few seconds are up
    at.run()
    assert not at.exception, at.exception
    if change == "demoted":
        assert offered(at) == OFFERED["viewer"]
        return
    assert [t.label for t in at.text_input] == ["Account", "Password"]
    assert any("was removed or locked" in w.value for w in at.warning)
    assert not any(t.value == "Queue a refund" for t in at.title)
