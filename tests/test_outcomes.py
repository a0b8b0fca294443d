"""The outcome rules as a table: every row of outcomes.py is a case here."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reditus_refunds import outcomes
from reditus_refunds.outcomes import (
    ANSWER_RULES,
    BEFORE_CALL,
    Answer,
    Incoming,
    Next,
    PaymentMarker,
    RefundState,
    Situation,
    after_answer,
    recheck_delay,
    recheck_not_sent,
    situation,
)
from reditus_refunds.records import (
    MAX_ATTEMPT_LOG,
    Attempt,
    ErrorKind,
    HistoryRecord,
    Outcome,
    capped_attempt_log,
    iso,
)
from reditus_refunds.reditus import Verdict

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
GRACE = 900
FRESH = iso(NOW - timedelta(seconds=60))  # inside the grace window
OLD = iso(NOW - timedelta(seconds=GRACE + 1))  # outside it


def state(outcome: Outcome = Outcome.PENDING, **kw: object) -> RefundState:
    fields: dict[str, object] = {"refund_id": "r1", "payment_id": "pay", "queued_at": FRESH, **kw}
    return RefundState(outcome=outcome, **fields)  # type: ignore[arg-type]


MSG = Incoming("r1", "pay")
RECHECK = Incoming("r1", "pay", recheck_token="t1")
FORCED = Incoming("r1", "pay", force=True)
LIVE = NOW_MS + 60_000
EXPIRED = NOW_MS - 1

# message, the refund's item, the payment's marker -> situation (first matching rule)
SITUATIONS = [
    ("new refund", MSG, None, None, Situation.NEW),
    ("pending record from a producer", MSG, state(), None, Situation.NEW),
    (
        "refund_id reused for another payment",
        MSG,
        state(payment_id="other"),
        None,
        Situation.REUSED_REFUND_ID,
    ),
    ("already refunded (redelivery)", MSG, state(Outcome.REFUNDED), None, Situation.SETTLED),
    ("rejected earlier", MSG, state(Outcome.REJECTED), None, Situation.SETTLED),
    ("not found after grace", MSG, state(Outcome.NOT_FOUND), None, Situation.SETTLED),
    ("claimed, lease live", MSG, state(lease_until_ms=LIVE), None, Situation.LEASED),
    ("claimed, lease expired", MSG, state(lease_until_ms=EXPIRED), None, Situation.NEW),
    ("retrying after a 5xx", MSG, state(Outcome.RETRYING), None, Situation.NEW),
    ("dead-lettered, redriven", MSG, state(Outcome.DEAD_LETTERED), None, Situation.NEW),
    ("current re-check", RECHECK, state(Outcome.RETRYING, recheck_token="t1"), None, Situation.NEW),
    (
        "superseded re-check",
        RECHECK,
        state(Outcome.RETRYING, recheck_token="t2"),
        None,
        Situation.STALE_RECHECK,
    ),
    ("re-check whose token was never stored", RECHECK, state(Outcome.RETRYING), None, Situation.NEW),
    ("re-check of a settled refund", RECHECK, state(Outcome.REFUNDED), None, Situation.SETTLED),
    (
        "re-check while another delivery holds the lease",
        RECHECK,
        state(Outcome.RETRYING, recheck_token="t2", lease_until_ms=LIVE),
        None,
        Situation.LEASED,
    ),
    (
        "copy while a chain is live",
        MSG,
        state(Outcome.RETRYING, recheck_token="t1"),
        None,
        Situation.CHAIN_LIVE,
    ),
    (
        "copy after the grace window",
        MSG,
        state(Outcome.RETRYING, recheck_token="t1", queued_at=OLD),
        None,
        Situation.NEW,
    ),
    (
        "copy of a dead-lettered chain",
        MSG,
        state(Outcome.DEAD_LETTERED, recheck_token="t1"),
        None,
        Situation.NEW,
    ),
    ("payment refunded by another", MSG, None, PaymentMarker(refunded_by="r0"), Situation.ALREADY_REFUNDED),
    ("payment refunded by this one", MSG, None, PaymentMarker(refunded_by="r1"), Situation.NEW),
    # Reditus answered 200, the payment was marked, the result write after the mark was lost.
    ("200 on the mark, result lost", MSG, state(), PaymentMarker(refunded_by="r1"), Situation.RESULT_LOST),
    (
        "200 on the mark, result lost after a retry",
        MSG,
        state(Outcome.RETRYING),
        PaymentMarker(refunded_by="r1"),
        Situation.RESULT_LOST,
    ),
    (
        "200 on the mark, result lost, forced",
        FORCED,
        state(),
        PaymentMarker(refunded_by="r1"),
        Situation.RESULT_LOST,
    ),
    (
        "200 on the mark, the result write still under its lease",
        MSG,
        state(lease_until_ms=LIVE),
        PaymentMarker(refunded_by="r1"),
        Situation.LEASED,
    ),
    (
        "200 on the mark and on the refund",
        MSG,
        state(Outcome.REFUNDED),
        PaymentMarker(refunded_by="r1"),
        Situation.SETTLED,
    ),
    ("payment refunded by another, force", FORCED, None, PaymentMarker(refunded_by="r0"), Situation.FORCED),
    (
        "payment leased by another",
        MSG,
        None,
        PaymentMarker(lease_holder="r0", lease_until_ms=LIVE),
        Situation.PAYMENT_LEASED,
    ),
    (
        "payment lease expired",
        MSG,
        None,
        PaymentMarker(lease_holder="r0", lease_until_ms=EXPIRED),
        Situation.NEW,
    ),
    (
        "payment released after a rejection",
        MSG,
        None,
        PaymentMarker(lease_holder="r0", lease_until_ms=0),
        Situation.NEW,
    ),
    (
        "force while another holds the payment",
        FORCED,
        None,
        PaymentMarker(refunded_by="r0", lease_holder="r0", lease_until_ms=LIVE),
        Situation.PAYMENT_LEASED,
    ),
]


@pytest.mark.parametrize(
    ("case", "message", "item", "marker", "expected"), SITUATIONS, ids=[c[0] for c in SITUATIONS]
)
def test_situation(
    case: str, message: Incoming, item: RefundState | None, marker: PaymentMarker | None, expected: Situation
) -> None:
    assert situation(message, item, marker, now=NOW, grace_seconds=GRACE) is expected


def test_every_situation_is_reached_and_decided() -> None:
    assert {row[-1] for row in SITUATIONS} == set(Situation) == set(BEFORE_CALL)


# situation -> outcome recorded (None: the item keeps its own), what happens next
BEFORE = [
    (Situation.NEW, None, Next.CALL_REDITUS),
    (Situation.FORCED, None, Next.CALL_REDITUS),
    (Situation.REUSED_REFUND_ID, Outcome.INVALID, Next.DONE),
    (Situation.SETTLED, None, Next.DONE),
    (Situation.LEASED, None, Next.SQS_RETRY),
    (Situation.STALE_RECHECK, None, Next.DONE),
    (Situation.CHAIN_LIVE, None, Next.DONE),
    (Situation.ALREADY_REFUNDED, Outcome.DUPLICATE, Next.DONE),
    (Situation.RESULT_LOST, Outcome.REFUNDED, Next.DONE),
    (Situation.PAYMENT_LEASED, None, Next.SQS_RETRY),
]


@pytest.mark.parametrize(("found", "outcome", "next_"), BEFORE, ids=[str(b[0]) for b in BEFORE])
def test_before_the_call(found: Situation, outcome: Outcome | None, next_: Next) -> None:
    decision = BEFORE_CALL[found]
    assert (decision.outcome, decision.next) == (outcome, next_)


# Reditus's answer, final receive?, inside the grace window? -> outcome, error kind, next
AFTER = [
    (Answer.REFUNDED, False, True, Outcome.REFUNDED, None, Next.DONE),
    (Answer.REFUNDED, True, False, Outcome.REFUNDED, None, Next.DONE),
    (Answer.REJECTED, False, True, Outcome.REJECTED, None, Next.DONE),
    (Answer.REJECTED, True, False, Outcome.REJECTED, None, Next.DONE),
    (Answer.NOT_FOUND, False, True, Outcome.RETRYING, ErrorKind.AWAITING_PAYMENT, Next.RECHECK_LATER),
    (Answer.NOT_FOUND, True, True, Outcome.RETRYING, ErrorKind.AWAITING_PAYMENT, Next.RECHECK_LATER),
    (Answer.NOT_FOUND, False, False, Outcome.NOT_FOUND, None, Next.DONE),
    (Answer.NOT_FOUND, True, False, Outcome.NOT_FOUND, None, Next.DONE),
    (Answer.FAILED, False, True, Outcome.FAILED, None, Next.DONE),
    (Answer.FAILED, True, False, Outcome.FAILED, None, Next.DONE),
    (Answer.AUTH_ERROR, False, True, Outcome.RETRYING, ErrorKind.AUTH, Next.SQS_RETRY),
    (Answer.AUTH_ERROR, True, True, Outcome.DEAD_LETTERED, ErrorKind.AUTH, Next.DEAD_LETTER),
    (Answer.TRANSIENT, False, False, Outcome.RETRYING, ErrorKind.TRANSIENT, Next.SQS_RETRY),
    (Answer.TRANSIENT, True, False, Outcome.DEAD_LETTERED, ErrorKind.TRANSIENT, Next.DEAD_LETTER),
]


@pytest.mark.parametrize(("said", "final", "grace", "outcome", "kind", "next_"), AFTER)
def test_after_the_answer(
    said: Answer, final: bool, grace: bool, outcome: Outcome, kind: ErrorKind | None, next_: Next
) -> None:
    decision = after_answer(said, final_receive=final, inside_grace=grace)
    assert (decision.outcome, decision.error_kind, decision.next) == (outcome, kind, next_)


def test_every_answer_has_a_decision_for_every_input() -> None:
    for said in Answer:
        for final in (False, True):
            for grace in (False, True):
                after_answer(said, final_receive=final, inside_grace=grace)
    assert {r.answer for r in ANSWER_RULES} == set(Answer)


def test_answers_are_the_clients_verdicts() -> None:
    assert {a.value for a in Answer} == {v.value for v in Verdict}


@pytest.mark.parametrize(
    ("final", "outcome", "next_"),
    [(False, Outcome.RETRYING, Next.SQS_RETRY), (True, Outcome.DEAD_LETTERED, Next.DEAD_LETTER)],
)
def test_a_recheck_that_could_not_be_queued(final: bool, outcome: Outcome, next_: Next) -> None:
    decision = recheck_not_sent(final_receive=final)
    assert (decision.outcome, decision.next) == (outcome, next_)


@pytest.mark.parametrize(("configured", "used"), [(60, 60), (0, 0), (5000, 900), (-3, 0)])
def test_recheck_delay_is_capped_by_sqs(configured: int, used: int) -> None:
    assert recheck_delay(configured) == used


def test_the_rules_are_pure() -> None:
    tree = ast.parse(Path(outcomes.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "datetime", "enum", "records", "typing"}, imported


def test_the_attempt_log_keeps_the_first_and_the_latest() -> None:
    log: list[Attempt] = []
    dropped = 0
    for i in range(MAX_ATTEMPT_LOG + 7):
        log, dropped = capped_attempt_log(log, dropped, Attempt(at=str(i), http_status=503, kind="transient"))
    assert len(log) == MAX_ATTEMPT_LOG and dropped == 7
    assert log[0].at == "0" and log[1].at == "8" and log[-1].at == str(MAX_ATTEMPT_LOG + 6)


def test_history_record_reads_old_and_new_items() -> None:
    old = {
        "refund_id": "r",
        "outcome": "retrying",
        "queued_at": FRESH,
        "attempts": 30,
        "attempt_log": [{}] * 30,
    }
    new = {**old, "attempt_log": [{}] * MAX_ATTEMPT_LOG, "attempts_dropped": 10}
    assert HistoryRecord.from_item(old).attempts_dropped == 0 and HistoryRecord.from_item(old).attempts == 30
    record = HistoryRecord.from_item(new)
    assert (record.attempts, record.attempts_dropped, len(record.attempt_log)) == (30, 10, MAX_ATTEMPT_LOG)
