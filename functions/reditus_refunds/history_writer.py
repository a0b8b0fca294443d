"""HistoryWriter: what the Lambda and the producers write to the history table.

Pending records (producers), claims and leases, results, invalid and duplicate decisions (the
Lambda). Exactly-once effect rests on conditional writes on these items; no Scan anywhere. Write
calls per refund in the common case: the pending record (1), the claim (2: the refund, then its
payment) and the finish (2: the payment's mark, then the result). Single-item writes only: a
transaction bills 2 write units per item, and issue 15 asked for a quarter of the cost. Nothing
here touches the day counters: the table's stream feeds them (counter_stream.py), so a write
changes one item and its index entries, and nothing has to be settled afterwards.

A pending refund has no `outcome` attribute (records read it as pending; items from older code
may say "pending"): its first result writes one, so it enters the by_outcome index once rather
than entering as pending and moving.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .aws_errors import ConditionFailed, StoreError
from .contract import RefundRequest
from .layout import (
    HASH_KEY,
    INDEX_KEY_ATTRIBUTES,
    PAYMENT_MARKER_PREFIX,
    item_key,
    marker_key,
    to_attr,
    to_item,
)
from .outcomes import ClaimView, PaymentMarker, RefundState, ResultWrite
from .records import Attempt, Outcome, attempt_from_map, capped_attempt_log, day_of, iso, utc_now
from .table import BatchWriteFailed, HistoryTable

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
        lease_token=item.get("lease_token"),
        lease_until_ms=int(item.get("lease_until", 0)),
        recheck_token=item.get("recheck_token"),
        message_id=item.get("message_id"),
        attempt_log=tuple(attempt_from_map(a) for a in item.get("attempt_log", [])),
        attempts_dropped=int(item.get("attempts_dropped", 0)),
        attempts=None if item.get("attempts") is None else int(item["attempts"]),
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


def seen_outcome_condition(outcome: str, values: dict[str, Any]) -> str:
    """A condition that the item's outcome is still `outcome` (adds its value to `values`). A
    pending item has no outcome attribute, or "pending" if older code wrote it."""
    if outcome == Outcome.PENDING.value:
        values[":pending"] = outcome
        return "(attribute_not_exists(outcome) OR outcome = :pending)"
    values[":seen"] = outcome
    return "outcome = :seen"


# BatchWriteItem calls one record_pending has in flight at once (a group of 100 is 4 calls): the
# bulk path's records keep up with its sends.
PENDING_WRITERS = 4


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
    # One request (RefundProducer.send: the console's form, a webhook, a requeue) is recorded after
    # SQS accepted it, with a conditional PutItem (record_sent): if the Lambda got there first, its
    # item stands. Many (send_many: CSV uploads, bulk requeues) are recorded BEFORE they are sent
    # (record_pending), so the Lambda never sees a message whose record is still to come, and the
    # records of requests that were then not sent are forgotten. One write unit per record: a
    # PutItem, or a Put in a BatchWriteItem (25 per call: the bulk path's speed). A Put in a batch
    # cannot carry a condition, so the batch path first reads which of its refund_ids exist
    # (BatchGetItem, eventually consistent) and writes only the others.
    #
    # The one race this leaves: two producers send the same producer-supplied refund_id within about
    # a second (the read may miss an item written that recently), and the second's unconditional Put
    # lands after the Lambda took up the first's message. The Put replaces the item: a claim's lease
    # (or a result, if it was quick) is gone. The first delivery's result write is then refused
    # (lease_token), so SQS delivers again, and the second message comes after the Put anyway: a 200
    # is recorded from the payment's mark without a second call (outcomes.Situation.RESULT_LOST); a
    # 400 or 404 may be asked of Reditus twice, and the attempt log written before the Put is lost.
    def record_sent(self, request: RefundRequest, message_id: str, queued_at: str) -> bool:
        """Record a request SQS has accepted as pending, unless its item exists (the Lambda took it
        up first, or the refund_id was sent before): a conditional PutItem. True if recorded."""
        item = {**self._pending_record(request, queued_at), "message_id": message_id}
        try:
            self.table.put(
                {
                    "TableName": self.table.table_name,
                    "Item": to_item(item),
                    "ConditionExpression": "attribute_not_exists(refund_id)",
                }
            )
        except ConditionFailed:
            return False
        return True

    def record_pending(
        self, requests: Sequence[RefundRequest], queued_at: str, *, minted: bool = False
    ) -> set[str]:
        """Record requests about to be sent as pending; returns the refund_ids recorded.

        A record never replaces an item that exists (the refund_id was sent before): one request
        is a conditional PutItem; several are one BatchGetItem per 100 to leave out the refund_ids
        that exist, then BatchWriteItem Puts for the rest (up to PENDING_WRITERS calls at once). A
        refund_id given twice is recorded once.
        On a store failure the records this call may have written are forgotten (forget_pending)
        before the StoreError is raised, so nothing is left for a request that will not be sent.
        """
        if len(requests) == 1:
            request = requests[0]
            try:
                self.table.put(
                    {
                        "TableName": self.table.table_name,
                        "Item": to_item(self._pending_record(request, queued_at)),
                        "ConditionExpression": "attribute_not_exists(refund_id)",
                    }
                )
            except ConditionFailed:
                return set()
            return {request.refund_id}
        first: dict[str, RefundRequest] = {}
        for request in requests:
            first.setdefault(request.refund_id, request)  # BatchGetItem refuses a key given twice
        unique = list(first.values())
        if not unique:
            return set()
        # Refund_ids minted for this send (contract.new_refund_id, a uuid4) cannot exist: the read
        # that guards supplied ones (half a read unit each) is left out.
        existing = (
            {}
            if minted
            else self.table.batch_get(
                [item_key(request.refund_id) for request in unique], consistent=False, projection=HASH_KEY
            )
        )
        fresh = [request for request in unique if request.refund_id not in existing]
        try:
            self.table.batch_put(
                [to_item(self._pending_record(request, queued_at)) for request in fresh],
                writers=PENDING_WRITERS,
            )
        except BatchWriteFailed as err:
            maybe_written = {request.refund_id for request in fresh} - err.unwritten
            try:
                self.forget_pending(maybe_written)
            except StoreError as then:
                raise StoreError(
                    f"{err}; and {len(maybe_written)} pending records written before it could not be "
                    f"removed: {then}",
                    code=err.code,
                    hint=err.hint,
                ) from None
            raise StoreError(str(err), code=err.code, hint=err.hint) from None
        return {request.refund_id for request in fresh}

    @staticmethod
    def _pending_record(request: RefundRequest, queued_at: str) -> dict[str, Any]:
        # No outcome (a pending refund has none) and no message_id (not known yet: the claim
        # writes it).
        return without_empty_index_keys(
            {
                HASH_KEY: request.refund_id,
                "payment_id": request.payment_id,
                "queued_at": queued_at,
                "queued_day": day_of(queued_at),
                "requested_by": request.requested_by,
                "note": request.note,
                "source": request.source,
                "source_event_id": request.source_event_id,
                "force": request.force or None,
                "requeue_of": request.requeue_of,
                "attempts": 0,
            }
        )

    def forget_pending(self, refund_ids: Iterable[str]) -> None:
        """Delete the pending records of requests recorded but then not sent.

        Only a record nothing has touched since (no outcome, lease or claim: were it sent after
        all, e.g. by another producer, the Lambda's writes keep it); a record that changed or is
        gone is left alone. One conditional DeleteItem each (a rare path); a store failure is
        raised once all have been tried.
        """
        failure: StoreError | None = None
        for refund_id in sorted(set(refund_ids)):
            try:
                self.table.delete(
                    {
                        "TableName": self.table.table_name,
                        "Key": item_key(refund_id),
                        "ConditionExpression": "attribute_not_exists(outcome) AND "
                        "attribute_not_exists(lease_token) AND attribute_not_exists(open_claims)",
                    }
                )
            except ConditionFailed:
                continue
            except StoreError as err:
                failure = failure or err
        if failure is not None:
            raise failure

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
        view: ClaimView | None,
        *,
        message_id: str,
        queued_at: str,
        token: str,
        lease_until: datetime,
    ) -> None:
        """Take the refund and its payment for one call to Reditus, or raise ConditionFailed.

        The claim holds only if the item is still as read (outcome, lease, re-check chain, number
        of results), so two deliveries that decided on the same view cannot both call Reditus; and
        only if no other refund holds the payment or has refunded it (unless the request says
        force). `view=None` claims without reading first, only a fresh request: no item yet, or a
        pending one for the same payment that no result, re-check chain or live lease has touched
        (what a read would have led to a claim for; submitter.RefundSubmitter explains).
        """
        now = self.clock()
        values: dict[str, Any] = {
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
        if view is None:
            fresh = [
                seen_outcome_condition(Outcome.PENDING.value, values),
                "(attribute_not_exists(lease_until) OR lease_until < :now_ms)",
                "attribute_not_exists(recheck_token)",
                "(attribute_not_exists(payment_id) OR payment_id = :payment)"
                if ":payment" in values
                else "attribute_not_exists(payment_id)",
            ]
            values[":now_ms"] = _now_ms(now)
            condition = "attribute_not_exists(refund_id) OR (" + " AND ".join(fresh) + ")"
        elif view.state is None:
            condition = "attribute_not_exists(refund_id)"
        else:
            # The item exactly as read: its outcome, no live lease, the same re-check chain and as
            # many results (each result adds to `attempts`), so the attempt log the result rewrites
            # from the view is the item's (the first look may be eventually consistent).
            condition = seen_outcome_condition(view.state.outcome.value, values)
            condition += " AND (attribute_not_exists(lease_until) OR lease_until < :now_ms)"
            values[":now_ms"] = _now_ms(now)
            if view.state.recheck_token is None:
                condition += " AND attribute_not_exists(recheck_token)"
            else:
                condition += " AND recheck_token = :recheck"
                values[":recheck"] = view.state.recheck_token
            if view.state.attempts is None:
                condition += " AND attribute_not_exists(attempts)"
            else:
                condition += " AND attempts = :seen_attempts"
                values[":seen_attempts"] = view.state.attempts
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
        if request.force:
            # Force submits again a payment another refund got a 200 for, never one this refund did.
            marker_condition += " AND (attribute_not_exists(refunded_by) OR refunded_by <> :rid)"
        else:
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
            ":now_ms": _now_ms(now),
            ":zero": 0,
        }
        seen = seen_outcome_condition(state.outcome.value, values)
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
                "ConditionExpression": seen
                + " AND (attribute_not_exists(lease_until) OR lease_until < :now_ms)",
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
            plain: dict[str, Any] = {}
            condition = seen_outcome_condition(seen_outcome, plain)
            values.update({k: to_attr(v) for k, v in plain.items()})
            condition += " AND (attribute_not_exists(lease_until) OR lease_until < :now_ms)"
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

    def get_item(self, refund_id: str) -> dict[str, Any] | None:
        return self.table.get_item(refund_id, consistent=True)


__all__ = [
    "ClaimView",
    "ConditionFailed",
    "HistoryWriter",
    "StoreError",
    "marker_from_item",
    "state_from_item",
    "without_empty_index_keys",
]
