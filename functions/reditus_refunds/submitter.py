"""Domain logic: what to do with one refund message. Pure of Lambda and Powertools wiring.

The record handler calls `RefundSubmitter.process`; it returns the outcome it recorded
for terminal (and deliberately deferred) cases and raises `RetryLater` when SQS must
deliver the message again.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from aws_lambda_powertools import Logger

from .contract import ContractError, RefundRequest, parse_body
from .history_writer import ClaimView, ConditionFailed, HistoryWriter, Settlement, StoreError
from .records import CLAIMABLE, Attempt, ErrorKind, Outcome, iso, parse_iso, utc_now
from .reditus import ReditusAnswer, Verdict

logger = Logger()  # same service name as the handler's: one underlying logger


@contextmanager
def record_log_keys(**keys: str | None) -> Iterator[None]:
    """Keys on every log line of one record. Records run on several threads at once, so the
    keys live in the record's own context (Powertools' thread-safe keys), not on the logger."""
    logger.thread_safe_append_keys(**keys)
    try:
        yield
    finally:
        logger.thread_safe_remove_keys(keys)


# Time kept back from the invocation's deadline to record the result after the call.
WRITE_MARGIN_SECONDS = 2.0
LEASE_MARGIN_SECONDS = 5.0
# Retrying the result write after Reditus answered (see _write_result).
RESULT_RETRY_FIRST_PAUSE = 0.1
RESULT_RETRY_MAX_PAUSE = 2.0
RESULT_RETRY_RESERVE = 0.5


class RetryLater(Exception):
    """SQS must deliver the message again (a batch item failure)."""


class Refunder(Protocol):
    def refund(self, payment_id: str, deadline: float) -> ReditusAnswer: ...


class DelayedSender(Protocol):
    def send(self, request: RefundRequest, delay_seconds: int = 0) -> str: ...


class Telemetry(Protocol):
    def outcome(self, outcome: Outcome) -> None: ...
    def reditus_call(self, answer: ReditusAnswer) -> None: ...
    def auth_error(self) -> None: ...
    def unidentified_invalid(self) -> None: ...
    def span(self, name: str) -> AbstractContextManager[object]: ...


class NoTelemetry:
    def span(self, name: str) -> AbstractContextManager[object]:
        return nullcontext()

    def outcome(self, outcome: Outcome) -> None:
        return None

    def reditus_call(self, answer: ReditusAnswer) -> None:
        return None

    def auth_error(self) -> None:
        return None

    def unidentified_invalid(self) -> None:
        return None


@dataclass(frozen=True)
class InboundMessage:
    """The parts of an SQS record the domain needs."""

    message_id: str
    body: str | None
    receive_count: int = 1
    sent_at: str | None = None  # ISO timestamp from SentTimestamp


@dataclass
class Ledger:
    """Counter settlements collected over one batch (records run concurrently)."""

    entries: dict[str, Settlement] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, settlement: Settlement | None) -> None:
        if settlement is None:
            return
        with self._lock:
            previous = self.entries.get(settlement.refund_id)
            # Two changes of one item in a batch: count from the first old to the last new.
            old = previous.old if previous else settlement.old
            self.entries[settlement.refund_id] = Settlement(
                settlement.refund_id, settlement.day, old, settlement.new
            )

    def drain(self) -> list[Settlement]:
        with self._lock:
            items = list(self.entries.values())
            self.entries.clear()
        return items


@dataclass(frozen=True)
class SubmitterConfig:
    not_found_grace_seconds: int = 900
    not_found_recheck_delay_seconds: int = 60
    max_receive_count: int = 5


def excerpt(body: str | None, limit: int = 300) -> str:
    if body is None:
        return ""
    text = body if len(body) <= limit else body[:limit] + f"... ({len(body)} characters)"
    return json.dumps(text)[1:-1]  # escaped: control characters and surrogates become visible and safe


class RefundSubmitter:
    def __init__(
        self,
        store: HistoryWriter,
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

    def process(self, message: InboundMessage, deadline: float, ledger: Ledger) -> Outcome:
        """Handle one message; `deadline` is the time.monotonic() the invocation ends at."""
        queued_at = message.sent_at or iso(self.clock())
        try:
            request = parse_body(message.body, default_refund_id=message.message_id)
        except ContractError as err:
            return self._invalid(message, err, queued_at, ledger)
        with record_log_keys(refund_id=request.refund_id, payment_id=request.payment_id):
            try:
                outcome = self._process_valid(request, message, queued_at, deadline, ledger)
            except StoreError as err:
                logger.warning(
                    "history store unavailable; the message will be retried", extra={"error": str(err)}
                )
                raise RetryLater(f"history store: {err}") from None
            self.telemetry.outcome(outcome)
            return outcome

    # ---- the valid path -------------------------------------------------------------------
    def _process_valid(
        self, request: RefundRequest, message: InboundMessage, queued_at: str, deadline: float, ledger: Ledger
    ) -> Outcome:
        for _ in range(3):
            with self.telemetry.span("history read"):
                view = self.store.read_for_claim(request.refund_id, request.payment_id)
            decided = self._decide_without_reditus(request, message, view, queued_at, ledger)
            if decided is not None:
                return decided
            token = uuid.uuid4().hex
            lease_until = self.clock() + timedelta(
                seconds=max(0.0, deadline - time.monotonic()) + LEASE_MARGIN_SECONDS
            )
            try:
                with self.telemetry.span("history claim"):
                    self.store.claim(
                        request,
                        view,
                        message_id=message.message_id,
                        queued_at=queued_at,
                        token=token,
                        lease_until=lease_until,
                    )
            except ConditionFailed:
                continue  # someone changed it between our read and our claim: decide again
            return self._submit(request, message, view, token, deadline, ledger)
        raise RetryLater("the refund kept changing under us; trying again later")

    def _decide_without_reditus(
        self, request: RefundRequest, message: InboundMessage, view: ClaimView, queued_at: str, ledger: Ledger
    ) -> Outcome | None:
        now_ms = int(self.clock().timestamp() * 1000)
        item, marker = view.item, view.marker
        if item is not None:
            if item.get("payment_id") not in (None, request.payment_id):
                err = ContractError(
                    f"refund_id {request.refund_id!r} was already used for another payment; "
                    "each refund request needs its own refund_id"
                )
                return self._invalid(message, err, queued_at, ledger, force_message_key=True)
            outcome = Outcome(item.get("outcome", Outcome.PENDING))
            if outcome not in CLAIMABLE:
                logger.info(
                    "already settled; this delivery changes nothing", extra={"outcome": outcome.value}
                )
                ledger.add(self.store.settlement_for(item))
                return outcome
            if int(item.get("lease_until", 0)) > now_ms:
                raise RetryLater("another delivery of this refund is in progress")
        if marker is not None:
            refunded_by = marker.get("refunded_by")
            if refunded_by and refunded_by != request.refund_id and not request.force:
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
                            seen_outcome=None if item is None else item.get("outcome"),
                        )
                except ConditionFailed:
                    raise RetryLater("the refund changed meanwhile") from None
                ledger.add(
                    Settlement(
                        request.refund_id,
                        queued_at[:10] if item is None else str(item["queued_at"])[:10],
                        view.counted,
                        Outcome.DUPLICATE.value,
                    )
                )
                logger.info(
                    "payment already refunded; recorded as duplicate", extra={"duplicate_of": refunded_by}
                )
                return Outcome.DUPLICATE
            holder = marker.get("lease_holder")
            if holder and holder != request.refund_id and int(marker.get("lease_until", 0)) > now_ms:
                raise RetryLater(f"another refund of this payment ({holder}) is in progress")
        return None

    def _submit(
        self,
        request: RefundRequest,
        message: InboundMessage,
        view: ClaimView,
        token: str,
        deadline: float,
        ledger: Ledger,
    ) -> Outcome:
        item_queued_at = str(view.item["queued_at"]) if view.item else (message.sent_at or iso(self.clock()))
        day = item_queued_at[:10]
        with self.telemetry.span("Reditus refund"):
            answer = self.reditus.refund(request.payment_id, deadline - WRITE_MARGIN_SECONDS)
        self.telemetry.reditus_call(answer)
        attempt = Attempt(
            at=iso(self.clock()),
            http_status=answer.http_status,
            kind=answer.verdict.value,
            detail=answer.detail,
            latency_ms=answer.latency_ms,
        )
        final_receive = message.receive_count >= self.config.max_receive_count

        def record(outcome: Outcome, error_kind: str | None = None) -> Outcome:
            self._write_result(
                lambda: self.store.finish(
                    request.refund_id,
                    token,
                    outcome,
                    attempt,
                    detail=answer.detail,
                    http_status=answer.http_status,
                    error_kind=error_kind,
                    latency_ms=answer.latency_ms,
                    payment_id=request.payment_id,
                ),
                request.refund_id,
                outcome,
                deadline,
            )
            ledger.add(Settlement(request.refund_id, day, view.counted, outcome.value))
            return outcome

        verdict = answer.verdict
        try:
            if verdict is Verdict.REFUNDED:
                logger.info("refunded", extra={"latency_ms": answer.latency_ms})
                return record(Outcome.REFUNDED)
            if verdict is Verdict.REJECTED:
                logger.info("rejected by Reditus", extra={"detail": answer.detail})
                return record(Outcome.REJECTED)
            if verdict is Verdict.FAILED:
                logger.warning("unexpected answer from Reditus", extra={"http_status": answer.http_status})
                return record(Outcome.FAILED)
            if verdict is Verdict.NOT_FOUND:
                return self._not_found(request, item_queued_at, record)
            if verdict is Verdict.AUTH_ERROR:
                self.telemetry.auth_error()
                logger.error(
                    "Reditus refused the API key: fix the key in Secrets Manager, "
                    "then redrive the dead letters",
                    extra={"http_status": answer.http_status},
                )
            else:
                logger.warning(
                    "transient failure; SQS will deliver it again", extra={"detail": answer.detail}
                )
            kind = ErrorKind.AUTH if verdict is Verdict.AUTH_ERROR else ErrorKind.TRANSIENT
            record(Outcome.DEAD_LETTERED if final_receive else Outcome.RETRYING, kind.value)
        except ConditionFailed:
            # Our lease expired and another delivery took over: its result stands.
            logger.warning("lease lost before the result was stored; the other delivery records it")
            raise RetryLater("lease lost") from None
        raise RetryLater(answer.detail)

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
                    item = self.store.get_item(refund_id)
                    if item and item.get("outcome") == outcome.value and "lease_token" not in item:
                        return
                raise
            except StoreError as err:
                uncertain = True
                if time.monotonic() + pause >= deadline - RESULT_RETRY_RESERVE:
                    raise
                logger.warning("storing the result failed; retrying", extra={"error": str(err)})
                time.sleep(pause)
                pause = min(pause * 2, RESULT_RETRY_MAX_PAUSE)

    def _not_found(self, request: RefundRequest, queued_at: str, record: Callable[..., Outcome]) -> Outcome:
        grace = self.config.not_found_grace_seconds
        age = (self.clock() - parse_iso(queued_at)).total_seconds()
        if grace <= 0 or age >= grace or self.requeue is None:
            logger.info("payment not found", extra={"age_seconds": int(age)})
            return record(Outcome.NOT_FOUND)
        delay = min(self.config.not_found_recheck_delay_seconds, 900)
        record(Outcome.RETRYING, ErrorKind.AWAITING_PAYMENT.value)
        # A delayed copy re-checks later without spending this message's receive count.
        try:
            self.requeue.send(request, delay_seconds=delay)
        except Exception as err:
            raise RetryLater(f"could not schedule the re-check: {err}") from None
        logger.info(
            "payment not found yet; re-checking later",
            extra={"delay_seconds": delay, "age_seconds": int(age)},
        )
        return Outcome.RETRYING

    # ---- invalid input ---------------------------------------------------------------------
    def _invalid(
        self,
        message: InboundMessage,
        err: ContractError,
        queued_at: str,
        ledger: Ledger,
        force_message_key: bool = False,
    ) -> Outcome:
        refund_id = message.message_id if force_message_key else (err.refund_id or message.message_id)
        with record_log_keys(refund_id=refund_id, payment_id=err.payment_id):
            logger.warning("invalid refund request; not sent to Reditus", extra={"reason": err.reason})
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
                    existing = self.store.get_item(key)
                    if existing is not None and existing.get("message_id") == message.message_id:
                        ledger.add(self.store.settlement_for(existing))
                        break  # a redelivery of a message already recorded as invalid
                    continue
                except StoreError as store_err:
                    raise RetryLater(f"history store: {store_err}") from None
                ledger.add(Settlement(key, queued_at[:10], None, Outcome.INVALID.value))
                break
            else:
                self.telemetry.unidentified_invalid()
                logger.error(
                    "invalid message could not be recorded under any id", extra={"reason": err.reason}
                )
        self.telemetry.outcome(Outcome.INVALID)
        return Outcome.INVALID
