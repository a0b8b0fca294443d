"""HistoryStore: the DynamoDB history table (refund items, payment markers, day counters).

Exactly-once effect rests on conditional writes on these items; no Scan anywhere.
Write calls per refund in the common case: claim (1) + finish (1) + a share of the
once-per-batch counter settlement.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from .contract import RefundRequest
from .records import (
    CLAIMABLE,
    COUNTER_PREFIX,
    GSI_BY_DAY,
    GSI_BY_OUTCOME,
    GSI_BY_PAYMENT,
    HASH_KEY,
    PAYMENT_MARKER_PREFIX,
    Attempt,
    HistoryRecord,
    Outcome,
    day_of,
    iso,
    utc_now,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any

_ser = TypeSerializer()
_de = TypeDeserializer()


def to_attr(value: Any) -> dict[str, Any]:
    return dict(_ser.serialize(value))


def to_item(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in data.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _de.deserialize(v) for k, v in item.items()}


class StoreError(RuntimeError):
    """The history table could not be read or written (the text says what to check)."""


class ConditionFailed(StoreError):
    """A conditional write lost a race; re-read and decide again."""


@dataclass(frozen=True)
class Settlement:
    """An item whose counted outcome must move from `old` to `new` in the day counters."""

    refund_id: str
    day: str
    old: str | None
    new: str


@dataclass
class Page:
    records: list[HistoryRecord]
    cursor: str | None
    items_read: int


@dataclass
class ClaimView:
    """What the store holds for a refund_id and its payment before a claim."""

    item: dict[str, Any] | None
    marker: dict[str, Any] | None

    @property
    def counted(self) -> str | None:
        return None if self.item is None else self.item.get("counted_outcome")


@dataclass
class ReadCounter:
    """Items read and calls made, for the speed tests and the benchmark."""

    items: int = 0
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, items: int) -> None:
        with self._lock:
            self.items += items
            self.calls += 1


def _now_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _is_condition_failure(err: ClientError) -> bool:
    code = err.response.get("Error", {}).get("Code", "")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


def encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, default=str).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        raise ValueError("the page cursor is not valid") from None
    if not isinstance(data, dict):
        raise ValueError("the page cursor is not valid")
    return data


class HistoryStore:
    def __init__(self, table_name: str, client: DynamoDBClient, clock: Callable[[], datetime] = utc_now):
        self.table_name = table_name
        self.client = client
        self.clock = clock
        self.reads = ReadCounter()

    # ---- keys -------------------------------------------------------------------------
    @staticmethod
    def _key(refund_id: str) -> dict[str, Any]:
        return {HASH_KEY: {"S": refund_id}}

    @staticmethod
    def marker_key(payment_id: str) -> dict[str, Any]:
        return {HASH_KEY: {"S": PAYMENT_MARKER_PREFIX + payment_id}}

    @staticmethod
    def counter_key(day: str) -> dict[str, Any]:
        return {HASH_KEY: {"S": COUNTER_PREFIX + day}}

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
                self._transact(self._pending_actions(chunk))
                recorded += len(chunk)
            except ConditionFailed:
                # One of them raced the Lambda: record the rest one at a time.
                for entry in chunk:
                    try:
                        self._transact(self._pending_actions([entry]))
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
                        "TableName": self.table_name,
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
        keys = [self._key(refund_id), self.marker_key(payment_id)]
        found = self._batch_get(keys, consistent=True)
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
                    "TableName": self.table_name,
                    "Key": self._key(request.refund_id),
                    "UpdateExpression": "SET " + ", ".join(sets),
                    "ConditionExpression": condition,
                    "ExpressionAttributeValues": {k: to_attr(v) for k, v in values.items()},
                    **({"ExpressionAttributeNames": names} if names else {}),
                }
            },
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": self.marker_key(request.payment_id),
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
        self._transact(actions)

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
            "TableName": self.table_name,
            "Key": self._key(refund_id),
            "UpdateExpression": "SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
            "ConditionExpression": "lease_token = :token",
            "ExpressionAttributeValues": {k: to_attr(v) for k, v in values.items()},
        }
        if outcome is Outcome.REFUNDED and payment_id is not None:
            marker = {
                "TableName": self.table_name,
                "Key": self.marker_key(payment_id),
                "UpdateExpression": "SET refunded_by = :rid, refunded_at = :now, lease_until = :zero",
                "ExpressionAttributeValues": {
                    ":rid": to_attr(refund_id),
                    ":now": to_attr(iso(now)),
                    ":zero": to_attr(0),
                },
            }
            self._transact([{"Update": update}, {"Update": marker}])
        else:
            self._update(update)

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
        self._update(
            {
                "TableName": self.table_name,
                "Key": self._key(refund_id),
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
                "TableName": self.table_name,
                "Key": self.counter_key(day),
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
                self._transact(self._settle_actions(chunk))
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
                        "TableName": self.table_name,
                        "Key": self._key(s.refund_id),
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
                self._transact(self._settle_actions([settlement]))
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

    # ---- reads ------------------------------------------------------------------------
    def get_item(self, refund_id: str) -> dict[str, Any] | None:
        try:
            response = self.client.get_item(
                TableName=self.table_name, Key=self._key(refund_id), ConsistentRead=True
            )
        except ClientError as err:
            raise self._store_error(err) from None
        item = response.get("Item")
        self.reads.add(1 if item else 0)
        return from_item(item) if item else None

    def get(self, refund_id: str) -> HistoryRecord | None:
        if "#" in refund_id:
            return None
        item = self.get_item(refund_id)
        return HistoryRecord.from_item(item) if item else None

    def payment_marker(self, payment_id: str) -> dict[str, Any] | None:
        return self._batch_get([self.marker_key(payment_id)], consistent=True).get(
            PAYMENT_MARKER_PREFIX + payment_id
        )

    def _batch_get(self, keys: list[dict[str, Any]], consistent: bool = False) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": consistent}}
        for _ in range(8):
            try:
                response = self.client.batch_get_item(RequestItems=request)
            except ClientError as err:
                raise self._store_error(err) from None
            items = response.get("Responses", {}).get(self.table_name, [])
            self.reads.add(len(items))
            for raw in items:
                item = from_item(raw)
                found[str(item[HASH_KEY])] = item
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return found
        raise StoreError("DynamoDB kept returning unprocessed keys; try again")

    def query(
        self,
        *,
        outcome: Outcome | None = None,
        payment_id: str | None = None,
        requested_by: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first, one page; never a Scan.

        payment_id uses the by_payment index, outcome the by_outcome index, and
        everything else walks the by_day index one day at a time backwards.
        """
        until = until or self.clock()
        since = since or (until - timedelta(days=30))
        low, high = iso(since), iso(until)
        state = decode_cursor(cursor) if cursor else {}
        records: list[HistoryRecord] = []
        read = 0
        filter_expr, filter_values = None, {}
        if requested_by:
            filter_expr = "requested_by = :requested_by"
            filter_values = {":requested_by": to_attr(requested_by)}
        if payment_id is not None or outcome is not None:
            if payment_id is not None:
                index, key_name, key_value = GSI_BY_PAYMENT, "payment_id", payment_id
            else:
                assert outcome is not None
                index, key_name, key_value = GSI_BY_OUTCOME, "outcome", outcome.value
            extra_filter = None
            if payment_id is not None and outcome is not None:
                extra_filter = "outcome = :outcome_filter"
                filter_values[":outcome_filter"] = to_attr(outcome.value)
            combined = " AND ".join(f for f in (filter_expr, extra_filter) if f) or None
            lek = state.get("lek")
            while len(records) < limit:
                got, lek, scanned = self._query_index(
                    index, key_name, key_value, low, high, limit - len(records), lek, combined, filter_values
                )
                records += got
                read += scanned
                if lek is None:
                    break
            next_cursor = encode_cursor({"lek": lek}) if lek else None
            return Page(records, next_cursor, read)
        day = state.get("day") or high[:10]
        lek = state.get("lek")
        first_day = low[:10]
        while len(records) < limit and day >= first_day:
            got, lek, scanned = self._query_index(
                GSI_BY_DAY,
                "queued_day",
                day,
                low,
                high,
                limit - len(records),
                lek,
                filter_expr,
                filter_values,
            )
            records += got
            read += scanned
            if lek is None:
                day = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
        more = lek is not None or day >= first_day
        return Page(records, encode_cursor({"day": day, "lek": lek}) if more else None, read)

    def _query_index(
        self,
        index: str,
        key_name: str,
        key_value: str,
        low: str,
        high: str,
        limit: int,
        lek: dict[str, Any] | None,
        filter_expr: str | None,
        filter_values: dict[str, Any],
    ) -> tuple[list[HistoryRecord], dict[str, Any] | None, int]:
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": index,
            "KeyConditionExpression": "#k = :k AND queued_at BETWEEN :low AND :high",
            "ExpressionAttributeNames": {"#k": key_name},
            "ExpressionAttributeValues": {
                ":k": to_attr(key_value),
                ":low": to_attr(low),
                ":high": to_attr(high),
            },
            "ScanIndexForward": False,
            "Limit": max(1, limit),
        }
        if filter_expr:
            kwargs["FilterExpression"] = filter_expr
            kwargs["ExpressionAttributeValues"].update(filter_values)
        if lek:
            kwargs["ExclusiveStartKey"] = lek
        try:
            response = self.client.query(**kwargs)
        except ClientError as err:
            raise self._store_error(err) from None
        scanned = int(response.get("ScannedCount", len(response.get("Items", []))))
        self.reads.add(scanned)
        records = [HistoryRecord.from_item(from_item(i)) for i in response.get("Items", [])]
        return records, response.get("LastEvaluatedKey"), scanned

    def daily_counts(self, since: date, until: date) -> dict[str, dict[str, int]]:
        """Per-day, per-outcome counts, one item read per day of the period."""
        days = []
        day = since
        while day <= until:
            days.append(day.isoformat())
            day += timedelta(days=1)
        result: dict[str, dict[str, int]] = {d: {} for d in days}
        for start in range(0, len(days), 100):
            chunk = days[start : start + 100]
            found = self._batch_get([self.counter_key(d) for d in chunk])
            for d in chunk:
                item = found.get(COUNTER_PREFIX + d)
                if item:
                    result[d] = {
                        o.value: int(item[o.value])
                        for o in Outcome
                        if isinstance(item.get(o.value), Decimal | int)
                    }
        return result

    # ---- plumbing -----------------------------------------------------------------------
    def _transact(self, actions: list[dict[str, Any]]) -> None:
        try:
            self.client.transact_write_items(TransactItems=actions)  # type: ignore[arg-type]
        except ClientError as err:
            if _is_condition_failure(err):
                raise ConditionFailed(
                    str(err.response.get("Error", {}).get("Message", "condition failed"))
                ) from None
            raise self._store_error(err) from None

    def _update(self, kwargs: dict[str, Any]) -> None:
        try:
            self.client.update_item(**kwargs)
        except ClientError as err:
            if _is_condition_failure(err):
                raise ConditionFailed("the item changed meanwhile") from None
            raise self._store_error(err) from None

    def _store_error(self, err: ClientError) -> StoreError:
        code = err.response.get("Error", {}).get("Code", "Unknown")
        message = err.response.get("Error", {}).get("Message", "")
        hints = {
            "ResourceNotFoundException": (
                f"the table {self.table_name!r} does not exist (check HISTORY_TABLE_NAME or the stack name)"
            ),
            "ExpiredTokenException": "the AWS credentials have expired",
            "UnrecognizedClientException": "the AWS credentials are not valid",
            "AccessDeniedException": f"access to the table {self.table_name!r} is denied",
        }
        hint = hints.get(code, f"DynamoDB answered {code}: {message[:200]}")
        store_error = StoreError(hint)
        store_error.code = code  # type: ignore[attr-defined]
        return store_error


__all__ = [
    "CLAIMABLE",
    "ClaimView",
    "ConditionFailed",
    "HistoryStore",
    "Page",
    "Settlement",
    "StoreError",
]
