"""Orchestration of one refund message: read history, decide, claim, ask Reditus, record.

What each case leads to is decided in outcomes.py (the rules, pure); this module carries the
decisions out against the store, Reditus and the queue through the small protocols below, so its
tests can hand in in-memory fakes (tests/fakes.py). The record handler calls
`RefundSubmitter.process`; it returns the outcome for terminal (and deliberately deferred) cases
and raises `RetryLater` when SQS must deliver the message again.

Logging goes through the standard library; handler.py hands the lines to Powertools' JSON logger.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from .contract import REFUND_ID_PATTERN, ContractError, RefundRequest, parse_body
from .errors import ConditionFailed, StoreError
from .outcomes import (
    BEFORE_CALL,
    DEFAULT_MAX_RECEIVE_COUNT,
    DEFAULT_NOT_FOUND_GRACE_SECONDS,
    DEFAULT_RECHECK_DELAY_SECONDS,
    LEASE_MARGIN_SECONDS,
    RECHECK_ATTRIBUTE,
    REDRIVE_REFUND_ID_ATTRIBUTE,
    WRITE_MARGIN_SECONDS,
    Answer,
    ClaimView,
    Decision,
    Incoming,
    Next,
    PaymentMarker,
    RefundState,
    ResultWrite,
    Situation,
    after_answer,
    grace_left,
    recheck_delay,
    recheck_not_sent,
    situation,
)
from .records import Attempt, Outcome, iso, parse_iso, utc_now

logger = logging.getLogger(__name__)

# Retrying the result write after Reditus answered (see _write_result).
RESULT_RETRY_FIRST_PAUSE = 0.1
RESULT_RETRY_MAX_PAUSE = 2.0
RESULT_RETRY_RESERVE = 0.5

__all__ = [
    "LEASE_MARGIN_SECONDS",
    "WRITE_MARGIN_SECONDS",
    "ClaimStore",
    "DelayedSender",
    "InboundMessage",
    "RefundSubmitter",
    "Refunder",
    "RetryLater",
    "SubmitterConfig",
]


# What a claim without a read stands on: a fresh request (no result, no chain, no live lease).
FRESH = ClaimView(None, None)


class RetryLater(Exception):
    """SQS must deliver the message again (a batch item failure)."""


class RecordLog(logging.LoggerAdapter):
    """Every line about one record carries its refund_id and payment_id. Each record has its own
    adapter, so records handled at once on several threads never share keys."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def record_log(refund_id: str | None, payment_id: str | None) -> RecordLog:
    return RecordLog(logger, {"refund_id": refund_id, "payment_id": payment_id})


# ---- what the orchestration needs from the outside world ----------------------------------------
class RefundAnswer(Protocol):
    """Reditus's answer as the client classifies it (reditus.ReditusAnswer)."""

    @property
    def verdict(self) -> str: ...
    @property
    def http_status(self) -> int | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def attempts(self) -> int: ...


class Refunder(Protocol):
    def refund(self, payment_id: str, deadline: float) -> RefundAnswer: ...


class DelayedSender(Protocol):
    def send(
        self, request: RefundRequest, delay_seconds: int = 0, attributes: Mapping[str, str] | None = None
    ) -> str: ...


class ClaimStore(Protocol):
    """The history writes and reads the submitter makes (history_writer.HistoryWriter)."""

    def read_for_claim(self, refund_id: str, payment_id: str) -> ClaimView: ...

    def get_state(self, refund_id: str) -> RefundState | None: ...

    def claim(
        self,
        request: RefundRequest,
        view: ClaimView | None,
        *,
        message_id: str,
        queued_at: str,
        token: str,
        lease_until: datetime,
    ) -> None: ...

    def finish(self, result: ResultWrite) -> None: ...

    def record_lost_result(self, state: RefundState, marker: PaymentMarker, message_id: str) -> None: ...

    def record_without_claim(
        self,
        refund_id: str,
        outcome: Outcome,
        *,
        detail: str,
        message_id: str,
        queued_at: str,
        request: RefundRequest | None = None,
        payment_id: str | None = None,
        duplicate_of: str | None = None,
        body_excerpt: str | None = None,
        seen_outcome: str | None = None,
    ) -> None: ...


class Telemetry(Protocol):
    def outcome(self, outcome: Outcome) -> None: ...
    def reditus_call(self, answer: RefundAnswer) -> None: ...
    def auth_error(self) -> None: ...
    def unidentified_invalid(self) -> None: ...
    def span(self, name: str) -> AbstractContextManager[object]: ...


class NoTelemetry:
    def span(self, name: str) -> AbstractContextManager[object]:
        return nullcontext()

    def outcome(self, outcome: Outcome) -> None:
        return None

    def reditus_call(self, answer: RefundAnswer) -> None:
        return None

    def auth_error(self) -> None:
        return None

    def unidentified_invalid(self) -> None:
        return None


class InboundMessage(NamedTuple):
    """The parts of an SQS record the domain needs. (The value types here are NamedTuples, not
    frozen dataclasses: a dataclass costs the cold start ~0.8 ms to create on Python 3.12.)"""

    message_id: str
    body: str | None
    receive_count: int = 1
    sent_at: str | None = None  # ISO timestamp from SentTimestamp
    attributes: Mapping[str, str] = MappingProxyType({})  # string message attributes (read-only)

    @property
    def recheck_token(self) -> str | None:
        return self.attributes.get(RECHECK_ATTRIBUTE)

    @property
    def redrive_refund_id(self) -> str | None:
        return self.attributes.get(REDRIVE_REFUND_ID_ATTRIBUTE)


class SubmitterConfig(NamedTuple):
    not_found_grace_seconds: int = DEFAULT_NOT_FOUND_GRACE_SECONDS
    not_found_recheck_delay_seconds: int = DEFAULT_RECHECK_DELAY_SECONDS
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT


def excerpt(body: str | None, limit: int = 300) -> str:
    if body is None:
        return ""
    text = body if len(body) <= limit else body[:limit] + f"... ({len(body)} characters)"
    return json.dumps(text)[1:-1]  # escaped: control characters and surrogates become visible and safe


class RefundSubmitter:
    def __init__(
        self,
        store: ClaimStore,
        reditus: Refunder,
        requeue: DelayedSender | None,
        config: SubmitterConfig,
        telemetry: Telemetry | None = None,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.store = store
        self.reditus = reditus
        self.requeue = requeue
        self.config = config
        self.telemetry = telemetry or NoTelemetry()
        self.clock = clock

    def process(self, message: InboundMessage, deadline: float) -> Outcome:
        """Handle one message; `deadline` is the time.monotonic() the invocation ends at."""
        queued_at = message.sent_at or iso(self.clock())
        # A redriven dead letter keeps the identity it had: its body's refund_id, else the id it
        # went by before (the attribute), never the new message id SQS gave the copy.
        default_refund_id = message.message_id
        redriven = message.redrive_refund_id
        if redriven is not None:
            if not REFUND_ID_PATTERN.fullmatch(redriven):
                err = ContractError(
                    f"the {REDRIVE_REFUND_ID_ATTRIBUTE} message attribute is not a refund_id "
                    "(1-128 letters, digits, '.', '_', ':' or '-')"
                )
                return self._invalid(message, err, queued_at, force_message_key=True)
            default_refund_id = redriven
        try:
            request = parse_body(message.body, default_refund_id=default_refund_id)
        except ContractError as err:
            return self._invalid(message, err, queued_at, default_key=default_refund_id)
        log = record_log(request.refund_id, request.payment_id)
        try:
            outcome = self._process_valid(request, message, queued_at, deadline, log)
        except StoreError as err:
            log.warning("history store unavailable; the message will be retried", extra={"error": str(err)})
            raise RetryLater(f"history store: {err}") from None
        self.telemetry.outcome(outcome)
        return outcome

    # ---- the valid path -------------------------------------------------------------------
    def _process_valid(
        self,
        request: RefundRequest,
        message: InboundMessage,
        queued_at: str,
        deadline: float,
        log: RecordLog,
    ) -> Outcome:
        incoming = Incoming(request.refund_id, request.payment_id, request.force, message.recheck_token)
        # The common case is a fresh request: no item yet, or its pending record. The table (outcomes)
        # leads such a request to a claim whatever its payment's state, and the claim's own
        # conditions are that state's rules (the payment taken or refunded: refused). So a fresh
        # request is claimed without reading first (two read units saved per refund); a refused
        # claim means it was not fresh, and it is decided the usual way, on a consistent look.
        # A re-check always looks first: its chain token must be compared.
        if message.recheck_token is None:
            try:
                token = self._claim(request, None, message, queued_at, deadline)
            except ConditionFailed:
                pass
            else:
                return self._submit(request, message, FRESH, queued_at, token, deadline, log)
        for _ in range(3):
            with self.telemetry.span("history read"):
                view = self.store.read_for_claim(request.refund_id, request.payment_id)
            found = situation(
                incoming,
                view.state,
                view.marker,
                now=self.clock(),
                grace_seconds=self.config.not_found_grace_seconds,
            )
            decision = BEFORE_CALL[found]
            if decision.next is not Next.CALL_REDITUS:
                return self._without_call(found, decision, request, message, view, queued_at, log)
            try:
                token = self._claim(request, view, message, queued_at, deadline)
            except ConditionFailed:
                continue  # someone changed it between our read and our claim: decide again
            return self._submit(request, message, view, queued_at, token, deadline, log)
        raise RetryLater("the refund kept changing under us; trying again later")

    def _claim(
        self,
        request: RefundRequest,
        view: ClaimView | None,
        message: InboundMessage,
        queued_at: str,
        deadline: float,
    ) -> str:
        """Claim the refund and its payment (ConditionFailed if refused); returns the claim's token.
        Its lease lasts to the invocation's end and a margin."""
        token = uuid.uuid4().hex
        until = self.clock() + timedelta(seconds=max(0.0, deadline - time.monotonic()) + LEASE_MARGIN_SECONDS)
        with self.telemetry.span("history claim"):
            self.store.claim(
                request,
                view,
                message_id=message.message_id,
                queued_at=queued_at,
                token=token,
                lease_until=until,
            )
        return token

    def _without_call(
        self,
        found: Situation,
        decision: Decision,
        request: RefundRequest,
        message: InboundMessage,
        view: ClaimView,
        queued_at: str,
        log: RecordLog,
    ) -> Outcome:
        state, marker = view.state, view.marker
        if found is Situation.REUSED_REFUND_ID:
            err = ContractError(
                f"refund_id {request.refund_id!r} was already used for another payment; "
                "each refund request needs its own refund_id"
            )
            return self._invalid(message, err, queued_at, force_message_key=True)
        if found is Situation.LEASED:
            raise RetryLater("another delivery of this refund is in progress")
        if found is Situation.PAYMENT_LEASED:
            holder = marker.lease_holder if marker else None
            raise RetryLater(f"another refund of this payment ({holder}) is in progress")
        if found is Situation.ALREADY_REFUNDED:
            return self._duplicate(request, message, view, queued_at, log)
        if found is Situation.RESULT_LOST:
            assert state is not None and marker is not None
            return self._record_lost_result(state, marker, message, log)
        # Settled, a stale re-check, or a copy while a re-check chain is live: nothing changes.
        assert state is not None and decision.outcome is None
        log.info(
            {
                Situation.SETTLED: "already settled; this delivery changes nothing",
                Situation.STALE_RECHECK: "a re-check of a superseded chain; changes nothing, not sent on",
                Situation.CHAIN_LIVE: "a re-check of this refund is already scheduled; this copy "
                "changes nothing",
            }[found],
            extra={"outcome": state.outcome.value},
        )
        return state.outcome

    def _record_lost_result(
        self,
        state: RefundState,
        marker: PaymentMarker,
        message: InboundMessage,
        log: RecordLog,
    ) -> Outcome:
        try:
            with self.telemetry.span("history record lost result"):
                self.store.record_lost_result(state, marker, message.message_id)
        except ConditionFailed:
            raise RetryLater("the refund changed meanwhile") from None
        log.warning(
            "Reditus's 200 is on the payment's mark but was not on the refund: recorded from the mark"
        )
        return Outcome.REFUNDED

    def _duplicate(
        self,
        request: RefundRequest,
        message: InboundMessage,
        view: ClaimView,
        queued_at: str,
        log: RecordLog,
    ) -> Outcome:
        refunded_by = view.marker.refunded_by if view.marker else None
        state = view.state
        detail = f"payment already refunded by {refunded_by}; send with force to submit again"
        try:
            with self.telemetry.span("history record duplicate"):
                self.store.record_without_claim(
                    request.refund_id,
                    Outcome.DUPLICATE,
                    detail=detail,
                    message_id=message.message_id,
                    queued_at=queued_at,
                    request=request,
                    duplicate_of=str(refunded_by),
                    seen_outcome=None if state is None else state.outcome.value,
                )
        except ConditionFailed:
            raise RetryLater("the refund changed meanwhile") from None
        log.info("payment already refunded; recorded as duplicate", extra={"duplicate_of": refunded_by})
        return Outcome.DUPLICATE

    def _submit(
        self,
        request: RefundRequest,
        message: InboundMessage,
        view: ClaimView,
        queued_at: str,
        token: str,
        deadline: float,
        log: RecordLog,
    ) -> Outcome:
        # The claim keeps an existing item's queued_at: the grace window and the day count from it.
        item_queued_at = view.state.queued_at if view.state else queued_at
        with self.telemetry.span("Reditus refund"):
            answer = self.reditus.refund(request.payment_id, deadline - WRITE_MARGIN_SECONDS)
        self.telemetry.reditus_call(answer)
        attempt = Attempt(
            at=iso(self.clock()),
            http_status=answer.http_status,
            kind=str(answer.verdict),
            detail=answer.detail,
            latency_ms=answer.latency_ms,
        )
        said = Answer(answer.verdict)
        final_receive = message.receive_count >= self.config.max_receive_count
        inside_grace = self.requeue is not None and grace_left(
            item_queued_at, self.clock(), self.config.not_found_grace_seconds
        )
        decision = after_answer(said, final_receive=final_receive, inside_grace=inside_grace)

        def record(decision: Decision, recheck_token: str | None = None) -> None:
            assert decision.outcome is not None
            outcome = decision.outcome
            self._write_result(
                lambda: self.store.finish(
                    ResultWrite(
                        request.refund_id,
                        token,
                        outcome,
                        attempt,
                        detail=answer.detail,
                        http_status=answer.http_status,
                        error_kind=None if decision.error_kind is None else decision.error_kind.value,
                        latency_ms=answer.latency_ms,
                        payment_id=request.payment_id,
                        previous=view.state,
                        recheck_token=recheck_token,
                        # SQS delivers this same message again: it stays the current link of its chain.
                        keep_recheck=decision.next is Next.SQS_RETRY,
                    )
                ),
                request.refund_id,
                outcome,
                deadline,
            )

        self._log_answer(said, decision, answer, item_queued_at, log)
        try:
            if decision.next is Next.RECHECK_LATER:
                return self._recheck_later(request, decision, final_receive, record, log)
            record(decision)
        except ConditionFailed:
            # Our lease expired and another delivery took over: its result stands.
            log.warning("lease lost before the result was stored; the other delivery records it")
            raise RetryLater("lease lost") from None
        if decision.next in (Next.SQS_RETRY, Next.DEAD_LETTER):
            raise RetryLater(answer.detail)
        assert decision.outcome is not None
        return decision.outcome

    def _recheck_later(
        self,
        request: RefundRequest,
        decision: Decision,
        final_receive: bool,
        record: Callable[..., None],
        log: RecordLog,
    ) -> Outcome:
        """A 404 inside the grace window: a delayed copy, carrying a new chain token, asks again.

        The copy is sent before the token is stored. If the send fails, the item keeps its
        current token and SQS delivers this message again, so the refund is never stranded. If
        the invocation ends between the two, the copy's token is not the item's: whichever of
        the copy and this message's redelivery claims the refund first goes on, and the other
        finds a chain that moved past it (stale) or a live one (a copy), and stops.
        """
        assert self.requeue is not None
        delay = recheck_delay(self.config.not_found_recheck_delay_seconds)
        chain = uuid.uuid4().hex
        try:
            self.requeue.send(request, delay_seconds=delay, attributes={RECHECK_ATTRIBUTE: chain})
        except Exception as err:  # any failure to queue: SQS retries this message instead
            log.warning("could not queue the re-check; SQS will deliver the message again")
            record(recheck_not_sent(final_receive=final_receive))
            raise RetryLater(f"could not schedule the re-check: {err}") from None
        record(decision, recheck_token=chain)
        log.info("re-check queued", extra={"delay_seconds": delay})
        return Outcome.RETRYING

    def _log_answer(
        self, said: Answer, decision: Decision, answer: RefundAnswer, queued_at: str, log: RecordLog
    ) -> None:
        age = int((self.clock() - parse_iso(queued_at)).total_seconds())
        if said is Answer.REFUNDED:
            log.info("refunded", extra={"latency_ms": answer.latency_ms})
        elif said is Answer.REJECTED:
            log.info("rejected by Reditus", extra={"detail": answer.detail})
        elif said is Answer.FAILED:
            log.warning("unexpected answer from Reditus", extra={"http_status": answer.http_status})
        elif said is Answer.NOT_FOUND and decision.next is Next.RECHECK_LATER:
            log.info("payment not found yet; re-checking later", extra={"age_seconds": age})
        elif said is Answer.NOT_FOUND:
            log.info("payment not found", extra={"age_seconds": age})
        elif said is Answer.AUTH_ERROR:
            self.telemetry.auth_error()
            log.error(
                "Reditus refused the API key: fix the key in Secrets Manager, then redrive the dead letters",
                extra={"http_status": answer.http_status},
            )
        else:
            log.warning("transient failure; SQS will deliver it again", extra={"detail": answer.detail})

    def _write_result(
        self, write: Callable[[], None], refund_id: str, outcome: Outcome, deadline: float
    ) -> None:
        """Store what Reditus answered, retrying a failing store until the invocation's end.

        Reditus has acted by now: giving up here would let the next delivery submit again, so a
        store that fails for a while is waited out (with backoff) rather than reported at once.
        """
        pause = RESULT_RETRY_FIRST_PAUSE
        uncertain = False
        while True:
            try:
                with self.telemetry.span("history result"):
                    write()
                return
            except ConditionFailed:
                if uncertain:
                    # An earlier try may have been applied with only its answer lost.
                    state = self.store.get_state(refund_id)
                    if state is not None and state.outcome is outcome and state.lease_token is None:
                        return
                raise
            except StoreError as err:
                uncertain = True
                if time.monotonic() + pause >= deadline - RESULT_RETRY_RESERVE:
                    raise
                logger.warning(
                    "storing the result failed; retrying", extra={"error": str(err), "refund_id": refund_id}
                )
                time.sleep(pause)
                pause = min(pause * 2, RESULT_RETRY_MAX_PAUSE)

    # ---- invalid input ---------------------------------------------------------------------
    def _invalid(
        self,
        message: InboundMessage,
        err: ContractError,
        queued_at: str,
        force_message_key: bool = False,
        default_key: str | None = None,
    ) -> Outcome:
        fallback = default_key or message.message_id
        refund_id = message.message_id if force_message_key else (err.refund_id or fallback)
        log = record_log(refund_id, err.payment_id)
        log.warning("invalid refund request; not sent to Reditus", extra={"reason": err.reason})
        for key in dict.fromkeys([refund_id, message.message_id]):
            try:
                with self.telemetry.span("history record invalid"):
                    self.store.record_without_claim(
                        key,
                        Outcome.INVALID,
                        detail=err.reason,
                        message_id=message.message_id,
                        queued_at=queued_at,
                        payment_id=err.payment_id,
                        body_excerpt=excerpt(message.body),
                    )
            except ConditionFailed:
                existing = self.store.get_state(key)
                # A redelivery of a message already recorded as invalid, or its redrive.
                if existing is not None and (
                    existing.message_id == message.message_id
                    or (key == message.redrive_refund_id and existing.outcome is Outcome.INVALID)
                ):
                    break
                continue
            except StoreError as store_err:
                raise RetryLater(f"history store: {store_err}") from None
            break
        else:
            self.telemetry.unidentified_invalid()
            log.error("invalid message could not be recorded under any id", extra={"reason": err.reason})
        self.telemetry.outcome(Outcome.INVALID)
        return Outcome.INVALID
