"""The outcome rules: what one refund message leads to. Read it top to bottom.

Two tables decide everything the submitter does with a message:

1. BEFORE the call (`situation` then `BEFORE_CALL`): what history holds for the refund and its
   payment decides whether Reditus is asked at all.
2. AFTER the call (`ANSWER_RULES`): Reditus's answer, whether this is the message's final receive
   and whether the refund is still inside the 404 grace window decide the outcome recorded and
   what happens next.

Pure: only the standard library and the project's records. The value types are NamedTuples, not
frozen dataclasses: immutable all the same, and on Python 3.12 each costs about 0.1 ms to create
at import against 0.8 ms (a dataclass compiles its generated methods), which the Lambda's cold
start pays (issue 15; bench/startup.py). The orchestration (submitter.py)
reads history, claims, calls Reditus and writes what these tables say.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from .records import CLAIMABLE, Attempt, ErrorKind, Outcome, parse_iso

# SQS message attributes that carry identity beside the body (the published body contract is
# unchanged): the 404 re-check chain a delayed copy belongs to, and the refund_id a dead letter
# had when an operator redrives it (its body may have none: it then went by its first message id).
RECHECK_ATTRIBUTE = "reditus_recheck"
REDRIVE_REFUND_ID_ATTRIBUTE = "reditus_refund_id"

# ---- defaults and limits, defined once -------------------------------------------------------
SQS_MAX_DELAY_SECONDS = 900  # SQS refuses a longer DelaySeconds
DEFAULT_NOT_FOUND_GRACE_SECONDS = 900  # a payment may reach Reditus this long after its refund
DEFAULT_RECHECK_DELAY_SECONDS = 60  # between two re-checks of a payment not found yet
DEFAULT_MAX_RECEIVE_COUNT = 5  # the queue's redrive policy: receives before the dead-letter queue
LEASE_MARGIN_SECONDS = 5.0  # a claim outlives the invocation by this much
WRITE_MARGIN_SECONDS = 2.0  # kept back from the deadline to record the result after the call


class Answer(StrEnum):
    """What Reditus said (the values of reditus.Verdict)."""

    REFUNDED = "refunded"  # 200
    REJECTED = "rejected"  # 400
    NOT_FOUND = "not_found"  # 404
    AUTH_ERROR = "auth_error"  # 401/403
    TRANSIENT = "transient"  # 429, 5xx, timeout, connection error
    FAILED = "failed"  # any other answer


class Next(StrEnum):
    """What happens after the decision."""

    CALL_REDITUS = "call_reditus"  # claim the refund and its payment, then ask Reditus
    DONE = "done"  # nothing more for this message
    RECHECK_LATER = "recheck_later"  # a delayed copy of the request asks Reditus again
    SQS_RETRY = "sqs_retry"  # SQS delivers this message again after its visibility timeout
    DEAD_LETTER = "dead_letter"  # this was the final receive: SQS moves it to the dead-letter queue


class RefundState(NamedTuple):
    """What history holds for one refund_id (the typed view of its item)."""

    refund_id: str
    outcome: Outcome
    payment_id: str | None
    queued_at: str
    lease_token: str | None = None
    lease_until_ms: int = 0
    # The re-check chain this refund waits on: only a re-check carrying this token may go on.
    recheck_token: str | None = None
    message_id: str | None = None
    attempt_log: tuple[Attempt, ...] = ()
    attempts_dropped: int = 0
    # Results written so far (each result adds at least one): a claim holds only over the item as
    # read, attempt log included, and this is how the condition tells one log from another.
    attempts: int | None = None

    def leased(self, now_ms: int) -> bool:
        return self.lease_until_ms > now_ms


class PaymentMarker(NamedTuple):
    """What history holds for one payment_id: who refunded it, who is submitting it now."""

    refunded_by: str | None = None
    lease_holder: str | None = None
    lease_until_ms: int = 0
    refunded_at: str | None = None


class ClaimView(NamedTuple):
    """What history holds for a refund_id and its payment, read together before a claim."""

    state: RefundState | None
    marker: PaymentMarker | None


class ResultWrite(NamedTuple):
    """What one claimed attempt ends in, as the store records it (ClaimStore.finish).

    `previous` is the item as read before the claim (the lease kept anyone else from changing it
    since): the attempt log is rewritten from it, capped. `recheck_token` starts the next link of a
    404 re-check chain; `keep_recheck` leaves the current one (SQS delivers the same message
    again); otherwise the chain ends here.
    """

    refund_id: str
    token: str
    outcome: Outcome
    attempt: Attempt
    detail: str
    http_status: int | None
    error_kind: str | None = None
    latency_ms: int | None = None
    payment_id: str | None = None
    previous: RefundState | None = None
    recheck_token: str | None = None
    keep_recheck: bool = False


class Situation(StrEnum):
    """The request's state in history, as far as deciding goes."""

    REUSED_REFUND_ID = "reused_refund_id"  # the refund_id was used for another payment
    SETTLED = "settled"  # the refund already has a final outcome
    LEASED = "leased"  # another delivery of this refund is calling Reditus now
    STALE_RECHECK = "stale_recheck"  # a re-check from a chain that is no longer the current one
    CHAIN_LIVE = "chain_live"  # a producer's copy while a re-check chain waits for the payment
    # The payment is marked refunded by this very refund_id but its item has no result: Reditus
    # answered 200 and the result write after the mark was lost (history_writer.finish writes the
    # mark first). Recorded as refunded from the mark; Reditus is not asked again.
    RESULT_LOST = "result_lost"
    ALREADY_REFUNDED = "already_refunded"  # another refund_id got a 200 for this payment
    PAYMENT_LEASED = "payment_leased"  # another refund of this payment is calling Reditus now
    FORCED = "forced"  # the payment was refunded already, and the request says force
    NEW = "new"  # nothing stands in the way


class Incoming(NamedTuple):
    """The message being decided on."""

    refund_id: str
    payment_id: str
    force: bool = False
    recheck_token: str | None = None  # set on a 404 re-check (an SQS message attribute)


def grace_left(queued_at: str, now: datetime, grace_seconds: int) -> bool:
    """Inside the 404 grace window: the payment may still reach Reditus."""
    return grace_seconds > 0 and (now - parse_iso(queued_at)).total_seconds() < grace_seconds


def situation(
    message: Incoming,
    state: RefundState | None,
    marker: PaymentMarker | None,
    *,
    now: datetime,
    grace_seconds: int,
) -> Situation:
    """The first rule that matches, top to bottom."""
    now_ms = int(now.timestamp() * 1000)
    if state is not None:
        if state.payment_id not in (None, message.payment_id):
            return Situation.REUSED_REFUND_ID
        if state.outcome not in CLAIMABLE:
            return Situation.SETTLED
        if state.leased(now_ms):
            return Situation.LEASED
        # Each 404 re-check carries its chain's token; the item keeps the current one. A re-check
        # whose token was replaced belongs to a chain that was superseded (a redelivery, a retry
        # after a lost write): it must not ask again, or two chains would poll Reditus.
        if message.recheck_token is not None and state.recheck_token not in (None, message.recheck_token):
            return Situation.STALE_RECHECK
        if (
            message.recheck_token is None
            and state.recheck_token is not None
            and state.outcome is Outcome.RETRYING
            and grace_left(state.queued_at, now, grace_seconds)
        ):
            return Situation.CHAIN_LIVE
    if marker is not None:
        refunded_by = marker.refunded_by
        if state is not None and refunded_by == message.refund_id:
            return Situation.RESULT_LOST
        refunded_by_another = bool(refunded_by) and refunded_by != message.refund_id
        if refunded_by_another and not message.force:
            return Situation.ALREADY_REFUNDED
        if (
            marker.lease_holder
            and marker.lease_holder != message.refund_id
            and marker.lease_until_ms > now_ms
        ):
            return Situation.PAYMENT_LEASED
        if refunded_by_another:
            return Situation.FORCED
    return Situation.NEW


class Decision(NamedTuple):
    """The outcome to record (None: record nothing, the item keeps its own) and what happens next."""

    outcome: Outcome | None
    next: Next
    error_kind: ErrorKind | None = None


# ---- 1. before the call: the request's state in history -> decision -----------------------------
BEFORE_CALL: dict[Situation, Decision] = {
    Situation.REUSED_REFUND_ID: Decision(Outcome.INVALID, Next.DONE),  # recorded under the message id
    Situation.SETTLED: Decision(None, Next.DONE),  # a redelivery: changes nothing
    Situation.LEASED: Decision(None, Next.SQS_RETRY),  # "in progress": ask again later
    Situation.STALE_RECHECK: Decision(None, Next.DONE),  # changes nothing, is not sent on
    Situation.CHAIN_LIVE: Decision(None, Next.DONE),  # the live chain re-checks; no second chain
    Situation.RESULT_LOST: Decision(Outcome.REFUNDED, Next.DONE),  # from the mark, not asked again
    Situation.ALREADY_REFUNDED: Decision(Outcome.DUPLICATE, Next.DONE),  # not sent again
    Situation.PAYMENT_LEASED: Decision(None, Next.SQS_RETRY),
    Situation.FORCED: Decision(None, Next.CALL_REDITUS),
    Situation.NEW: Decision(None, Next.CALL_REDITUS),
}


# ---- 2. after the call: Reditus's answer, final receive?, inside the grace window? -> decision ---
class AnswerRule(NamedTuple):
    answer: Answer
    final_receive: bool | None  # None: either
    inside_grace: bool | None  # None: either
    decision: Decision


ANSWER_RULES: tuple[AnswerRule, ...] = (
    # answer              final  grace   outcome recorded        next                 error kind
    AnswerRule(Answer.REFUNDED, None, None, Decision(Outcome.REFUNDED, Next.DONE)),
    AnswerRule(Answer.REJECTED, None, None, Decision(Outcome.REJECTED, Next.DONE)),
    AnswerRule(
        Answer.NOT_FOUND,
        None,
        True,
        Decision(Outcome.RETRYING, Next.RECHECK_LATER, ErrorKind.AWAITING_PAYMENT),
    ),
    AnswerRule(Answer.NOT_FOUND, None, False, Decision(Outcome.NOT_FOUND, Next.DONE)),
    AnswerRule(Answer.FAILED, None, None, Decision(Outcome.FAILED, Next.DONE)),
    AnswerRule(Answer.AUTH_ERROR, False, None, Decision(Outcome.RETRYING, Next.SQS_RETRY, ErrorKind.AUTH)),
    AnswerRule(
        Answer.AUTH_ERROR, True, None, Decision(Outcome.DEAD_LETTERED, Next.DEAD_LETTER, ErrorKind.AUTH)
    ),
    AnswerRule(
        Answer.TRANSIENT, False, None, Decision(Outcome.RETRYING, Next.SQS_RETRY, ErrorKind.TRANSIENT)
    ),
    AnswerRule(
        Answer.TRANSIENT,
        True,
        None,
        Decision(Outcome.DEAD_LETTERED, Next.DEAD_LETTER, ErrorKind.TRANSIENT),
    ),
)

# A 404 inside the window whose re-check could not be queued: SQS delivers the message again, and
# the chain it belongs to stays the current one (its token is kept), so nothing is stranded.
RECHECK_NOT_SENT = Decision(Outcome.RETRYING, Next.SQS_RETRY, ErrorKind.AWAITING_PAYMENT)
RECHECK_NOT_SENT_FINAL = Decision(Outcome.DEAD_LETTERED, Next.DEAD_LETTER, ErrorKind.AWAITING_PAYMENT)


def after_answer(answer: Answer, *, final_receive: bool, inside_grace: bool) -> Decision:
    """The first row of ANSWER_RULES that matches."""
    for rule in ANSWER_RULES:
        if (
            rule.answer is answer
            and rule.final_receive in (None, final_receive)
            and rule.inside_grace in (None, inside_grace)
        ):
            return rule.decision
    raise AssertionError(f"no rule for {answer}")  # every Answer has rows: tests/test_outcomes.py


def recheck_not_sent(*, final_receive: bool) -> Decision:
    return RECHECK_NOT_SENT_FINAL if final_receive else RECHECK_NOT_SENT


def recheck_delay(configured: int) -> int:
    return max(0, min(configured, SQS_MAX_DELAY_SECONDS))
