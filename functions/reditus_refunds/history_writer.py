"""HistoryWriter: what the Lambda and the producers write to the history table.

Pending records (producers), claims and leases, results, invalid and duplicate decisions, and
the day counters (the Lambda). Exactly-once effect rests on conditional writes on these items;
no Scan anywhere. Write calls per refund in the common case: claim (2: the refund, then its
payment) + finish (2: the payment's mark, then the result) + a share of the once-per-batch counter
settlement. Single-item writes where a transaction buys nothing: a transaction bills 2 write units
per item, and issue 15 asked for a quarter of the cost.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from .aws_errors import ConditionFailed, StoreError
from .contract import RefundRequest
from .layout import (
    GSI_BY_DAY,
    HASH_KEY,
    INDEX_KEY_ATTRIBUTES,
    PAYMENT_MARKER_PREFIX,
    counter_key,
    from_item,
    item_key,
    marker_key,
    to_attr,
    to_item,
)
from .outcomes import ClaimView, PaymentMarker, RefundState, ResultWrite, unsettled
from .records import Attempt, Outcome, Settlement, attempt_from_map, capped_attempt_log, day_of, iso, utc_now
from .table import HistoryTable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any


def state_from_item(item: dict[str, Any]) -> RefundState:
    """The typed view of a refund item (parsed here, so the domain never reads raw items)."""
    return RefundState(
        refund_id=str(item[HASH_KEY]),
        outcome=Outcome(item.get("outcome", Outcome.PENDING)),
        payment_id=item.get("payment_id"),
        queued_at=str(item.get("queued_at", "")),
        counted_outcome=item.get("counted_outcome"),
        lease_token=item.get("lease_token"),
        lease_until_ms=int(item.get("lease_until", 0)),
        recheck_token=item.get("recheck_token"),
        message_id=item.get("message_id"),
        attempt_log=tuple(attempt_from_map(a) for a in item.get("attempt_log", [])),
        attempts_dropped=int(item.get("attempts_dropped", 0)),
    )


def marker_from_item(item: dict[str, Any]) -> PaymentMarker:
    return PaymentMarker(
        refunded_by=None if item.get("refunded_by") is None else str(item["refunded_by"]),
        lease_holder=item.get("lease_holder"),
        lease_until_ms=int(item.get("lease_until", 0)),
        refunded_at=None if item.get("refunded_at") is None else str(item["refunded_at"]),
    )


def without_empty_index_keys(data: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB refuses an empty string in any attribute that keys an index (moto misses it on
    some write paths): such a value is left out, so the item is simply not in that index."""
    return {k: v for k, v in data.items() if not (k in INDEX_KEY_ATTRIBUTES and v == "")}


# A result counts the attempts its refund's claims made (the claim counts them in open_claims, which
# no index holds): ours, and any whose invocation ended before its result was written.
_COUNT_CLAIMS = (
    "attempts = if_not_exists(attempts, :zero) + if_not_exists(open_claims, :zero)",
    "open_claims = :zero",
)


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
            data = without_empty_index_keys(
                {
                    HASH_KEY: request.refund_id,
                    "payment_id": request.payment_id,
                    "outcome": Outcome.PENDING.value,
                    "counted_outcome": Outcome.PENDING.value,
                    "queued_at": queued_at,
                    "queued_day": day_of(queued_at),
                    "requested_by": request.requested_by,
                    "note": request.note,
                    "source": request.source,
                    "source_event_id": request.source_event_id,
                    "force": request.force or None,
                    "requeue_of": request.requeue_of,
                    "message_id": message_id,
                    "attempts": 0,
                }
            )
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
        item = found.get(refund_id)
        marker = found.get(PAYMENT_MARKER_PREFIX + payment_id)
        return ClaimView(
            state=None if item is None else state_from_item(item),
            marker=None if marker is None else marker_from_item(marker),
        )

    def get_state(self, refund_id: str) -> RefundState | None:
        item = self.table.get_item(refund_id, consistent=True)
        return None if item is None else state_from_item(item)

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
        """Take the refund and its payment for one call to Reditus, or raise ConditionFailed.

        The claim holds only if the item is still as read (outcome, lease, re-check chain), so
        two deliveries that decided on the same view cannot both call Reditus; and only if no
        other refund holds the payment or has refunded it (unless the request says force).
        """
        now = self.clock()
        values: dict[str, Any] = {
            ":pending": Outcome.PENDING.value,
            ":queued_at": queued_at,
            ":day": day_of(queued_at),
            ":message_id": message_id,
            ":token": token,
            ":lease": _now_ms(lease_until),
            ":now": iso(now),
            ":zero": 0,
            ":one": 1,
        }
        sets = [
            "outcome = if_not_exists(outcome, :pending)",
            "queued_at = if_not_exists(queued_at, :queued_at)",
            "queued_day = if_not_exists(queued_day, :day)",
            "message_id = :message_id",
            "lease_token = :token",
            "lease_until = :lease",
            "last_attempt_at = :now",
            # Counted on an attribute no index holds, so the claim writes no index entry; the
            # result moves it into `attempts` (which the list pages show).
            "open_claims = if_not_exists(open_claims, :zero) + :one",
        ]
        if without_empty_index_keys({"payment_id": request.payment_id}):
            sets.insert(0, "payment_id = :payment")
            values[":payment"] = request.payment_id
        names: dict[str, str] = {}
        for name in ("requested_by", "note", "source", "requeue_of", "source_event_id"):
            value = getattr(request, name)
            # An empty index key is refused by DynamoDB (moto lets it through on this path).
            if value is not None and not (name in INDEX_KEY_ATTRIBUTES and value == ""):
                sets.append(f"#{name} = if_not_exists(#{name}, :{name})")
                names[f"#{name}"] = name
                values[f":{name}"] = value
        if request.force:
            sets.append("#force = :force")
            names["#force"] = "force"
            values[":force"] = True
        if view.state is None:
            condition = "attribute_not_exists(refund_id)"
        else:
            condition = "outcome = :seen AND (attribute_not_exists(lease_until) OR lease_until < :now_ms)"
            values[":seen"] = view.state.outcome.value
            values[":now_ms"] = _now_ms(now)
            if view.state.recheck_token is None:
                condition += " AND attribute_not_exists(recheck_token)"
            else:
                condition += " AND recheck_token = :recheck"
                values[":recheck"] = view.state.recheck_token
        # Two conditional single-item writes, the refund's first: a transaction of the two would
        # cost twice as much (2 write units per item) and buys nothing here. Only the holder of the
        # refund's lease goes on to the payment, so two deliveries of one refund never race for
        # the marker; if the payment is taken, our lease is handed back before deciding again.
        self.table.update(
            {
                "TableName": self.table.table_name,
                "Key": item_key(request.refund_id),
                "UpdateExpression": "SET " + ", ".join(sets),
                "ConditionExpression": condition,
                "ExpressionAttributeValues": {k: to_attr(v) for k, v in values.items()},
                **({"ExpressionAttributeNames": names} if names else {}),
            }
        )
        # A payment marked refunded by this refund is not taken again: its 200 is on the mark and
        # the decision (outcomes.Situation.RESULT_LOST) records it without asking Reditus.
        marker_condition = (
            "(attribute_not_exists(lease_until) OR lease_until < :now_ms OR lease_holder = :rid)"
        )
        if not request.force:
            marker_condition += " AND attribute_not_exists(refunded_by)"
        try:
            self.table.update(
                {
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
            )
        except StoreError:  # ConditionFailed included: the payment is taken, or the store failed
            with contextlib.suppress(StoreError):
                self._release_refund_lease(request.refund_id, token)
            raise

    def _release_refund_lease(self, refund_id: str, token: str) -> None:
        """Hand back the refund's lease after the payment could not be taken (nobody was asked). If
        this write fails too, the lease simply expires (the delivery is retried either way)."""
        self.table.update(
            {
                "TableName": self.table.table_name,
                "Key": item_key(refund_id),
                "UpdateExpression": "REMOVE lease_token, lease_until ADD open_claims :minus_one",
                "ConditionExpression": "lease_token = :token",
                "ExpressionAttributeValues": {":token": to_attr(token), ":minus_one": to_attr(-1)},
            }
        )

    def finish(self, result: ResultWrite) -> None:
        """Record what a claimed attempt ended in and release the lease (see ResultWrite).

        A 200 first marks the payment as refunded by this refund, then writes the result: two
        single writes, half the cost of a transaction of the two. Should the second be lost, the
        mark is the record of the 200: no later request for the payment is submitted without
        `force`, and the next delivery of this refund records it as refunded from the mark
        without asking Reditus (outcomes.Situation.RESULT_LOST). Any other terminal outcome then
        releases our lease on the payment, so another refund of it need not wait for it to expire.
        """
        now = self.clock()
        r = result
        values: dict[str, Any] = {
            ":outcome": r.outcome.value,
            ":detail": r.detail,
            ":token": r.token,
            ":zero": 0,
        }
        sets = ["outcome = :outcome", "detail = :detail", *_COUNT_CLAIMS]
        if r.previous is None:
            values[":attempt"] = [self._attempt_map(r.attempt)]
            values[":empty"] = []
            sets.append("attempt_log = list_append(if_not_exists(attempt_log, :empty), :attempt)")
        else:
            log, dropped = capped_attempt_log(r.previous.attempt_log, r.previous.attempts_dropped, r.attempt)
            values[":log"] = [self._attempt_map(a) for a in log]
            sets.append("attempt_log = :log")
            if dropped:
                values[":dropped"] = dropped
                sets.append("attempts_dropped = :dropped")
        removes = ["lease_token", "lease_until"]
        if r.recheck_token is not None:
            sets.append("recheck_token = :recheck")
            values[":recheck"] = r.recheck_token
        elif not r.keep_recheck:
            removes.append("recheck_token")
        for name, value in (
            ("http_status", r.http_status),
            ("error_kind", r.error_kind),
            ("latency_ms", r.latency_ms),
        ):
            if value is None:
                removes.append(name)
            else:
                sets.append(f"{name} = :{name}")
                values[f":{name}"] = value
        if r.outcome.terminal:
            sets.append("completed_at = :now")
            values[":now"] = iso(now)
        if r.outcome is Outcome.REFUNDED and r.payment_id is not None:
            self.table.update(
                {
                    "TableName": self.table.table_name,
                    "Key": marker_key(r.payment_id),
                    "UpdateExpression": "SET lease_until = :zero, refunded_by = :rid, refunded_at = :now",
                    "ExpressionAttributeValues": {
                        ":zero": to_attr(0),
                        ":rid": to_attr(r.refund_id),
                        ":now": to_attr(iso(now)),
                    },
                }
            )
        self.table.update(
            {
                "TableName": self.table.table_name,
                "Key": item_key(r.refund_id),
                "UpdateExpression": "SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
                "ConditionExpression": "lease_token = :token",
                "ExpressionAttributeValues": {k: to_attr(v) for k, v in values.items()},
            }
        )
        if r.outcome.terminal and r.outcome is not Outcome.REFUNDED and r.payment_id is not None:
            self._release_payment_lease(r.payment_id, r.token)

    def record_lost_result(self, state: RefundState, marker: PaymentMarker, message_id: str) -> None:
        """Record a 200 that only the payment's mark holds (outcomes.Situation.RESULT_LOST): the
        attempt is appended to the item's log, any lease or re-check chain ends. Only over the item
        as read, and not while someone holds its lease; else ConditionFailed."""
        now = self.clock()
        detail = (
            "Reditus answered 200 (the payment was marked refunded by this refund"
            + (f" at {marker.refunded_at}" if marker.refunded_at else "")
            + "); the result write after it was lost and is recorded from the mark"
        )
        attempt = Attempt(at=iso(now), http_status=200, kind=Outcome.REFUNDED.value, detail=detail)
        log, dropped = capped_attempt_log(state.attempt_log, state.attempts_dropped, attempt)
        values: dict[str, Any] = {
            ":outcome": Outcome.REFUNDED.value,
            ":detail": detail,
            ":status": 200,
            ":log": [self._attempt_map(a) for a in log],
            ":done": marker.refunded_at or iso(now),
            ":message_id": message_id,
            ":seen": state.outcome.value,
            ":now_ms": _now_ms(now),
            ":zero": 0,
        }
        sets = [
            *_COUNT_CLAIMS,
            "outcome = :outcome",
            "detail = :detail",
            "http_status = :status",
            "attempt_log = :log",
            "completed_at = :done",
            "message_id = :message_id",
        ]
        if dropped:
            values[":dropped"] = dropped
            sets.append("attempts_dropped = :dropped")
        self.table.update(
            {
                "TableName": self.table.table_name,
                "Key": item_key(state.refund_id),
                "UpdateExpression": "SET "
                + ", ".join(sets)
                + " REMOVE lease_token, lease_until, recheck_token, error_kind, latency_ms",
                "ConditionExpression": "outcome = :seen AND (attribute_not_exists(lease_until) OR "
                "lease_until < :now_ms)",
                "ExpressionAttributeValues": {k: to_attr(v) for k, v in values.items()},
            }
        )

    def _release_payment_lease(self, payment_id: str, token: str) -> None:
        """Let the next refund of the payment go now rather than when our lease expires.

        Only our own lease (the claim wrote our token on the marker): if it expired and another
        refund took the payment over, theirs stands. Two single writes cost half a transaction of
        two, and a failure here loses nothing: the lease still expires by itself.
        """
        try:
            self.table.update(
                {
                    "TableName": self.table.table_name,
                    "Key": marker_key(payment_id),
                    "UpdateExpression": "SET lease_until = :zero",
                    "ConditionExpression": "lease_token = :token",
                    "ExpressionAttributeValues": {":zero": to_attr(0), ":token": to_attr(token)},
                }
            )
        except StoreError:
            return

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
                source_event_id=request.source_event_id,
                force=request.force or None,
                requeue_of=request.requeue_of,
            )
        data = without_empty_index_keys(data)
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
                # A decision without a call is final: any re-check chain ends, any lease goes.
                "UpdateExpression": "SET "
                + ", ".join(sets)
                + " REMOVE recheck_token, lease_token, lease_until ADD attempts :one",
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

    def settle(self, settlements: Iterable[Settlement]) -> list[Settlement]:
        """Move the day counters for items whose outcome changed, once per item change.

        Each item remembers which outcome it is counted under (counted_outcome); the
        counter update and that mark are written in one transaction, so a crash can
        neither lose nor double a count. Call once per batch.

        Returns the settlements that could not be written (the store failed): their items stay
        marked (outcome != counted_outcome) and settle later, by a retry or by `settle_days`.
        """
        pending = [s for s in settlements if s.old != s.new]
        failed: list[Settlement] = []
        for start in range(0, len(pending), 80):
            chunk = pending[start : start + 80]
            try:
                try:
                    self.table.transact(self._settle_actions(chunk))
                except ConditionFailed:
                    for item in chunk:
                        self._settle_one(item.refund_id)
            except StoreError:
                failed += chunk
        return failed

    def settle_days(self, days: Iterable[date | str]) -> int:
        """Repair: settle every item of the given days (UTC, e.g. "2026-11-30") whose counted
        outcome lags its outcome, walking the by_day index. Returns how many were settled;
        raises StoreError if some could not be (run it again)."""
        settled = 0
        for day in days:
            key = day if isinstance(day, str) else day.isoformat()
            # The index does not hold counted_outcome (settling would write index entries): the
            # day's items are read by key, consistently, and the lagging ones settled.
            query: dict[str, Any] = {
                "IndexName": GSI_BY_DAY,
                "KeyConditionExpression": "queued_day = :day",
                "ProjectionExpression": HASH_KEY,
                "ExpressionAttributeValues": {":day": to_attr(key)},
            }
            while True:
                response = self.table.query(query)
                ids = [str(from_item(raw)[HASH_KEY]) for raw in response.get("Items", [])]
                items = self.table.batch_get([item_key(i) for i in ids], consistent=True)
                found = [state_from_item(items[i]) for i in ids if i in items]
                due = [s for s in map(self.settlement_for, found) if s is not None]
                failed = self.settle(due)
                if failed:
                    raise StoreError(
                        f"could not settle the day counters of {len(failed)} item(s) of {key}; "
                        "run the repair again"
                    )
                settled += len(due)
                last = response.get("LastEvaluatedKey")
                if not last:
                    break
                query["ExclusiveStartKey"] = last
        return settled

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
            state = self.get_state(refund_id)
            settlement = None if state is None else self.settlement_for(state)
            if settlement is None:
                return
            try:
                self.table.transact(self._settle_actions([settlement]))
                return
            except ConditionFailed:
                continue
        raise StoreError(f"could not settle the day counters for {refund_id}")

    @staticmethod
    def settlement_for(state: RefundState) -> Settlement | None:
        """The settlement an item read from the table still needs, if any."""
        return unsettled(state)

    def get_item(self, refund_id: str) -> dict[str, Any] | None:
        return self.table.get_item(refund_id, consistent=True)


__all__ = [
    "ClaimView",
    "ConditionFailed",
    "HistoryWriter",
    "Settlement",
    "StoreError",
    "marker_from_item",
    "state_from_item",
    "without_empty_index_keys",
]
