"""HistoryWriter: what the Lambda and the producers write to the history table.

Pending records (producers), claims and leases, results, invalid and duplicate decisions, and
the day counters (the Lambda). Exactly-once effect rests on conditional writes on these items;
no Scan anywhere. Write calls per refund in the common case: claim (1) + finish (1) + a share of
the once-per-batch counter settlement.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .aws_errors import ConditionFailed, StoreError
from .contract import RefundRequest
from .layout import HASH_KEY, PAYMENT_MARKER_PREFIX, counter_key, item_key, marker_key, to_attr, to_item
from .records import Attempt, Outcome, day_of, iso, utc_now
from .table import HistoryTable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any


@dataclass(frozen=True)
class Settlement:
    """An item whose counted outcome must move from `old` to `new` in the day counters."""

    refund_id: str
    day: str
    old: str | None
    new: str


@dataclass
class ClaimView:
    """What the store holds for a refund_id and its payment before a claim."""

    item: dict[str, Any] | None
    marker: dict[str, Any] | None

    @property
    def counted(self) -> str | None:
        return None if self.item is None else self.item.get("counted_outcome")


def _now_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


class HistoryWriter:
    def __init__(self, table_name: str, client: DynamoDBClient, clock: Callable[[], datetime] = utc_now):
        self.table = HistoryTable(table_name, client)
        self.clock = clock

    @property
    def reads(self) -> Any:
        return self.table.reads

    # ---- producer side ----------------------------------------------------------------
    def record_pending(self, entries: Sequence[tuple[RefundRequest, str, str]]) -> int:
        """Record requests SQS has accepted as pending: (request, message_id, queued_at).

        A pending record never overwrites one the Lambda already wrote. Returns how
        many were recorded.
        """
        recorded = 0
        for start in range(0, len(entries), 90):
            chunk = entries[start : start + 90]
            try:
                self.table.transact(self._pending_actions(chunk))
                recorded += len(chunk)
            except ConditionFailed:
                # One of them raced the Lambda: record the rest one at a time.
                for entry in chunk:
                    try:
                        self.table.transact(self._pending_actions([entry]))
                        recorded += 1
                    except ConditionFailed:
                        continue
        return recorded

    def _pending_actions(self, entries: Sequence[tuple[RefundRequest, str, str]]) -> list[dict[str, Any]]:
        actions: list[dict[str, Any]] = []
        per_day: dict[str, int] = defaultdict(int)
        for request, message_id, queued_at in entries:
            data = {
                HASH_KEY: request.refund_id,
                "payment_id": request.payment_id,
                "outcome": Outcome.PENDING.value,
                "counted_outcome": Outcome.PENDING.value,
                "queued_at": queued_at,
                "queued_day": day_of(queued_at),
                "requested_by": request.requested_by,
                "note": request.note,
                "source": request.source,
                "force": request.force or None,
                "requeue_of": request.requeue_of,
                "message_id": message_id,
                "attempts": 0,
            }
            actions.append(
                {
                    "Put": {
                        "TableName": self.table.table_name,
                        "Item": to_item(data),
                        "ConditionExpression": "attribute_not_exists(refund_id)",
                    }
                }
            )
            per_day[day_of(queued_at)] += 1
        for day, count in per_day.items():
            actions.append(self._counter_action(day, {Outcome.PENDING.value: count}))
        return actions

    # ---- submitter side ---------------------------------------------------------------
    def read_for_claim(self, refund_id: str, payment_id: str) -> ClaimView:
        keys = [item_key(refund_id), marker_key(payment_id)]
        found = self.table.batch_get(keys, consistent=True)
        return ClaimView(
            item=found.get(refund_id),
            marker=found.get(PAYMENT_MARKER_PREFIX + payment_id),
        )

    def claim(
        self,
        request: RefundRequest,
        view: ClaimView,
        *,
        message_id: str,
        queued_at: str,
        token: str,
        lease_until: datetime,
    ) -> None:
        """Take the refund and its payment for one call to Reditus, or raise ConditionFailed."""
        now = self.clock()
        values: dict[str, Any] = {
            ":pending": Outcome.PENDING.value,
            ":payment": request.payment_id,
            ":queued_at": queued_at,
            ":day": day_of(queued_at),
            ":message_id": message_id,
            ":token": token,
            ":lease": _now_ms(lease_until),
            ":now_ms": _now_ms(now),
            ":now": iso(now),
            ":zero": 0,
            ":one": 1,
        }
        sets = [
            "payment_id = :payment",
            "outcome = if_not_exists(outcome, :pending)",
            "queued_at = if_not_exists(queued_at, :queued_at)",
            "queued_day = if_not_exists(queued_day, :day)",
            "message_id = :message_id",
            "lease_token = :token",
            "lease_until = :lease",
            "last_attempt_at = :now",
            "attempts = if_not_exists(attempts, :zero) + :one",
        ]
        names: dict[str, str] = {}
        for name in ("requested_by", "note", "source", "requeue_of"):
            value = getattr(request, name)
            if value is not None:
                sets.append(f"#{name} = if_not_exists(#{name}, :{name})")
                names[f"#{name}"] = name
                values[f":{name}"] = value
        if request.force:
            sets.append("#force = :force")
            names["#force"] = "force"
            values[":force"] = True
        if view.item is None:
            condition = "attribute_not_exists(refund_id)"
        else:
            condition = "outcome = :seen AND (attribute_not_exists(lease_until) OR lease_until < :now_ms)"
            values[":seen"] = view.item.get("outcome", Outcome.PENDING.value)
        marker_condition = (
            "(attribute_not_exists(lease_until) OR lease_until < :now_ms OR lease_holder = :rid)"
        )
        if not request.force:
            marker_condition += " AND (attribute_not_exists(refunded_by) OR refunded_by = :rid)"
        actions = [
            {
                "Update": {
                    "TableName": self.table.table_name,
                    "Key": item_key(request.refund_id),
                    "UpdateExpression": "SET " + ", ".join(sets),
                    "ConditionExpression": condition,
                    "ExpressionAttributeValues": {k: to_attr(v) for k, v in values.items()},
                    **({"ExpressionAttributeNames": names} if names else {}),
                }
            },
            {
                "Update": {
                    "TableName": self.table.table_name,
                    "Key": marker_key(request.payment_id),
                    "UpdateExpression": "SET lease_token = :token, lease_until = :lease, lease_holder = :rid",
                    "ConditionExpression": marker_condition,
                    "ExpressionAttributeValues": {
                        ":token": to_attr(token),
                        ":lease": to_attr(_now_ms(lease_until)),
                        ":now_ms": to_attr(_now_ms(now)),
                        ":rid": to_attr(request.refund_id),
                    },
                }
            },
        ]
        self.table.transact(actions)

    def finish(
        self,
        refund_id: str,
        token: str,
        outcome: Outcome,
        attempt: Attempt,
        *,
        detail: str,
        http_status: int | None,
        error_kind: str | None = None,
        latency_ms: int | None = None,
        payment_id: str | None = None,
    ) -> None:
        """Record what a claimed attempt ended in and release the lease.

        A 200 also marks the payment as refunded, in the same transaction, so that no
        later request for it is submitted without `force`.
        """
        now = self.clock()
        values: dict[str, Any] = {
            ":outcome": outcome.value,
            ":detail": detail,
            ":token": token,
            ":attempt": [self._attempt_map(attempt)],
            ":empty": [],
        }
        sets = [
            "outcome = :outcome",
            "detail = :detail",
            "attempt_log = list_append(if_not_exists(attempt_log, :empty), :attempt)",
        ]
        removes = ["lease_token", "lease_until"]
        for name, value in (
            ("http_status", http_status),
            ("error_kind", error_kind),
            ("latency_ms", latency_ms),
        ):
            if value is None:
                removes.append(name)
            else:
                sets.append(f"{name} = :{name}")
                values[f":{name}"] = value
        if outcome.terminal:
            sets.append("completed_at = :now")
            values[":now"] = iso(now)
        update = {
            "TableName": self.table.table_name,
            "Key": item_key(refund_id),
            "UpdateExpression": "SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
            "ConditionExpression": "lease_token = :token",
            "ExpressionAttributeValues": {k: to_attr(v) for k, v in values.items()},
        }
        if outcome is Outcome.REFUNDED and payment_id is not None:
            marker = {
                "TableName": self.table.table_name,
                "Key": marker_key(payment_id),
                "UpdateExpression": "SET refunded_by = :rid, refunded_at = :now, lease_until = :zero",
                "ExpressionAttributeValues": {
                    ":rid": to_attr(refund_id),
                    ":now": to_attr(iso(now)),
                    ":zero": to_attr(0),
                },
            }
            self.table.transact([{"Update": update}, {"Update": marker}])
        else:
            self.table.update(update)

    @staticmethod
    def _attempt_map(attempt: Attempt) -> dict[str, Any]:
        data: dict[str, Any] = {"at": attempt.at, "kind": attempt.kind, "detail": attempt.detail}
        if attempt.http_status is not None:
            data["http_status"] = attempt.http_status
        if attempt.latency_ms is not None:
            data["latency_ms"] = attempt.latency_ms
        return data

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
    ) -> None:
        """Write a terminal decision made without calling Reditus (invalid, duplicate).

        Only over an item that does not exist yet or that a new delivery may take over.
        """
        now = self.clock()
        attempt = Attempt(at=iso(now), http_status=None, kind=outcome.value, detail=detail)
        data: dict[str, Any] = {
            "payment_id": payment_id if request is None else request.payment_id,
            "outcome": outcome.value,
            "detail": detail,
            "message_id": message_id,
            "completed_at": iso(now),
            "last_attempt_at": iso(now),
            "duplicate_of": duplicate_of,
            "body_excerpt": body_excerpt,
            "attempt_log": [self._attempt_map(attempt)],
        }
        if request is not None:
            data.update(
                requested_by=request.requested_by,
                note=request.note,
                source=request.source,
                force=request.force or None,
                requeue_of=request.requeue_of,
            )
        sets = [f"#{name} = :{name}" for name, value in data.items() if value is not None]
        names = {f"#{name}": name for name, value in data.items() if value is not None}
        values = {f":{name}": to_attr(value) for name, value in data.items() if value is not None}
        sets += [
            "queued_at = if_not_exists(queued_at, :queued_at)",
            "queued_day = if_not_exists(queued_day, :day)",
        ]
        values[":queued_at"] = to_attr(queued_at)
        values[":day"] = to_attr(day_of(queued_at))
        if seen_outcome is None:
            condition = "attribute_not_exists(refund_id)"
        else:
            condition = "outcome = :seen AND (attribute_not_exists(lease_until) OR lease_until < :now_ms)"
            values[":seen"] = to_attr(seen_outcome)
            values[":now_ms"] = to_attr(_now_ms(now))
        self.table.update(
            {
                "TableName": self.table.table_name,
                "Key": item_key(refund_id),
                "UpdateExpression": "SET " + ", ".join(sets) + " ADD attempts :one",
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {**values, ":one": to_attr(1)},
            }
        )

    # ---- counters -----------------------------------------------------------------------
    def _counter_action(self, day: str, deltas: dict[str, int]) -> dict[str, Any]:
        names = {f"#o{i}": outcome for i, outcome in enumerate(deltas)}
        values = {f":d{i}": to_attr(delta) for i, delta in enumerate(deltas.values())}
        adds = ", ".join(f"#o{i} :d{i}" for i in range(len(deltas)))
        return {
            "Update": {
                "TableName": self.table.table_name,
                "Key": counter_key(day),
                "UpdateExpression": f"SET counter_day = :day ADD {adds}",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": {**values, ":day": to_attr(day)},
            }
        }

    def settle(self, settlements: Iterable[Settlement]) -> None:
        """Move the day counters for items whose outcome changed, once per item change.

        Each item remembers which outcome it is counted under (counted_outcome); the
        counter update and that mark are written in one transaction, so a crash can
        neither lose nor double a count. Call once per batch.
        """
        pending = [s for s in settlements if s.old != s.new]
        for start in range(0, len(pending), 80):
            chunk = pending[start : start + 80]
            try:
                self.table.transact(self._settle_actions(chunk))
            except ConditionFailed:
                for item in chunk:
                    self._settle_one(item.refund_id)

    def _settle_actions(self, chunk: Sequence[Settlement]) -> list[dict[str, Any]]:
        actions: list[dict[str, Any]] = []
        per_day: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for s in chunk:
            values = {":new": to_attr(s.new)}
            if s.old is None:
                condition = "attribute_not_exists(counted_outcome) AND outcome = :new"
            else:
                condition = "counted_outcome = :old AND outcome = :new"
                values[":old"] = to_attr(s.old)
                per_day[s.day][s.old] -= 1
            per_day[s.day][s.new] += 1
            actions.append(
                {
                    "Update": {
                        "TableName": self.table.table_name,
                        "Key": item_key(s.refund_id),
                        "UpdateExpression": "SET counted_outcome = :new",
                        "ConditionExpression": condition,
                        "ExpressionAttributeValues": values,
                    }
                }
            )
        for day, deltas in per_day.items():
            nonzero = {k: v for k, v in deltas.items() if v}
            if nonzero:
                actions.append(self._counter_action(day, nonzero))
        return actions

    def _settle_one(self, refund_id: str) -> None:
        for _ in range(3):
            item = self.get_item(refund_id)
            if item is None or item.get("counted_outcome") == item.get("outcome"):
                return
            settlement = Settlement(
                refund_id, day_of(str(item["queued_at"])), item.get("counted_outcome"), str(item["outcome"])
            )
            try:
                self.table.transact(self._settle_actions([settlement]))
                return
            except ConditionFailed:
                continue
        raise StoreError(f"could not settle the day counters for {refund_id}")

    def settlement_for(self, item: dict[str, Any]) -> Settlement | None:
        """The settlement an item read from the table still needs, if any."""
        outcome = item.get("outcome")
        if outcome is None or item.get("counted_outcome") == outcome:
            return None
        return Settlement(
            str(item[HASH_KEY]), day_of(str(item["queued_at"])), item.get("counted_outcome"), outcome
        )

    def get_item(self, refund_id: str) -> dict[str, Any] | None:
        return self.table.get_item(refund_id, consistent=True)


__all__ = ["ClaimView", "ConditionFailed", "HistoryWriter", "Settlement", "StoreError"]
