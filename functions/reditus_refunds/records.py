"""The history record: one item per refund request, and the outcomes it can hold.

This is the single definition shared by the Lambda, the console and the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from .layout import HASH_KEY


class Outcome(StrEnum):
    PENDING = "pending"  # queued by our producers, not yet processed
    RETRYING = "retrying"  # an attempt did not settle it; SQS will deliver it again
    REFUNDED = "refunded"  # 200: the commission was rejected
    REJECTED = "rejected"  # 400: Reditus refused the request
    NOT_FOUND = "not_found"  # 404 after the grace window
    INVALID = "invalid"  # the message broke the contract; never sent
    DUPLICATE = "duplicate"  # the payment already had a 200; not sent again
    FAILED = "failed"  # an unexpected terminal answer (other 4xx, 3xx)
    DEAD_LETTERED = "dead_lettered"  # retries exhausted; the message is in the dead-letter queue

    @property
    def terminal(self) -> bool:
        return self not in (Outcome.PENDING, Outcome.RETRYING)

    @classmethod
    def parse(cls, text: str) -> Outcome:
        """Accept outcome names and the HTTP status codes operators think in."""
        key = text.strip().lower()
        if key in STATUS_ALIASES:
            return STATUS_ALIASES[key]
        try:
            return cls(key)
        except ValueError:
            names = ", ".join([*STATUS_ALIASES, *(o.value for o in cls)])
            raise ValueError(f"unknown outcome {text!r}; use one of {names}") from None


STATUS_ALIASES = {"200": Outcome.REFUNDED, "400": Outcome.REJECTED, "404": Outcome.NOT_FOUND}

# Outcomes a new delivery of the same refund_id may take over (all others are final).
CLAIMABLE = (Outcome.PENDING, Outcome.RETRYING, Outcome.DEAD_LETTERED)
# Outcomes an operator may requeue under a new refund_id.
REQUEUEABLE = (Outcome.NOT_FOUND, Outcome.FAILED, Outcome.DEAD_LETTERED, Outcome.REJECTED)


class ErrorKind(StrEnum):
    TRANSIENT = "transient"  # 429, 5xx, timeout, connection error
    AUTH = "auth_error"  # 401/403: our key is wrong or missing
    AWAITING_PAYMENT = "awaiting_payment"  # 404 inside the grace window


# The attempt log keeps the first attempt and the latest ones, MAX_ATTEMPT_LOG in all; the item
# counts the ones left out (attempts_dropped), so a refund retried for days stays one small item.
MAX_ATTEMPT_LOG = 20
DETAIL_LIMIT = 1000
# "All of history" for queries and filters: older than any record this system can hold.
START_OF_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """Sortable UTC timestamp with milliseconds, e.g. 2026-11-26T13:45:01.123Z."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def day_of(timestamp: str) -> str:
    return timestamp[:10]


# Attempt is a NamedTuple rather than dataclasses: immutable values, and about 0.7 ms
# less each of the Lambda's cold start on Python 3.12 (a dataclass compiles its methods at import).
class Attempt(NamedTuple):
    """One call to Reditus (or one decision that stood in for it)."""

    at: str
    http_status: int | None
    kind: str
    detail: str = ""
    latency_ms: int | None = None


def capped_attempt_log(log: Sequence[Attempt], dropped: int, attempt: Attempt) -> tuple[list[Attempt], int]:
    """The log with `attempt` appended, cut to MAX_ATTEMPT_LOG entries: the first and the latest
    stay, and `dropped` grows by the number of entries left out."""
    entries = [*log, attempt]
    excess = len(entries) - MAX_ATTEMPT_LOG
    if excess <= 0:
        return entries, dropped
    return [entries[0], *entries[1 + excess :]], dropped + excess


def attempt_from_map(data: dict[str, Any]) -> Attempt:
    """One attempt_log entry as stored (numbers arrive as Decimal)."""
    return Attempt(
        at=str(data.get("at", "")),
        http_status=None if data.get("http_status") is None else int(data["http_status"]),
        kind=str(data.get("kind", "")),
        detail=str(data.get("detail", "")),
        latency_ms=None if data.get("latency_ms") is None else int(data["latency_ms"]),
    )


@dataclass
class HistoryRecord:
    refund_id: str
    payment_id: str | None
    outcome: Outcome
    queued_at: str
    requested_by: str | None = None
    note: str | None = None
    source: str | None = None
    source_event_id: str | None = None  # the billing provider's event behind a webhook's request
    force: bool = False
    http_status: int | None = None
    detail: str = ""
    error_kind: str | None = None
    attempts: int = 0
    last_attempt_at: str | None = None
    completed_at: str | None = None
    latency_ms: int | None = None
    duplicate_of: str | None = None
    requeue_of: str | None = None
    message_id: str | None = None
    attempt_log: list[Attempt] = field(default_factory=list)
    attempts_dropped: int = 0  # attempts left out of attempt_log (see MAX_ATTEMPT_LOG)

    @property
    def queued_day(self) -> str:
        return day_of(self.queued_at)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready view (the CLI's --json line and the console's export)."""
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["attempt_log"] = [a._asdict() for a in self.attempt_log]
        return data

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> HistoryRecord:
        """Build from a deserialised DynamoDB item (numbers arrive as Decimal)."""

        def opt_int(value: Any) -> int | None:
            return None if value is None else int(value)

        # Items written before the log was capped have no attempts_dropped: nothing was dropped.
        log = [attempt_from_map(a) for a in item.get("attempt_log", [])]
        return cls(
            refund_id=str(item[HASH_KEY]),
            payment_id=item.get("payment_id"),
            outcome=Outcome(item.get("outcome", Outcome.PENDING)),
            queued_at=str(item.get("queued_at", "")),
            requested_by=item.get("requested_by"),
            note=item.get("note"),
            source=item.get("source"),
            source_event_id=item.get("source_event_id"),
            force=bool(item.get("force", False)),
            http_status=opt_int(item.get("http_status")),
            detail=str(item.get("detail", "")),
            error_kind=item.get("error_kind"),
            # Claims not yet settled by a result are counted beside (history_writer: open_claims).
            attempts=int(item.get("attempts", 0)) + int(item.get("open_claims", 0)),
            last_attempt_at=item.get("last_attempt_at"),
            completed_at=item.get("completed_at"),
            latency_ms=opt_int(item.get("latency_ms")),
            duplicate_of=item.get("duplicate_of"),
            requeue_of=item.get("requeue_of"),
            message_id=item.get("message_id"),
            attempt_log=log,
            attempts_dropped=int(item.get("attempts_dropped", 0)),
        )
