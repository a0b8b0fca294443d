"""The operator's recount of the day counters (`reditus-refunds counters recount`).

The counters are kept by the stream function (counter_stream.py) from the table's DynamoDB
Stream; this sets them again from the items themselves, for the UTC days given: it walks each
day's refunds on the `by_day` index (keys only), reads the items by key (consistent, 100 a call)
and SETs each outcome number of the day's counter item to what the items say (an absent outcome,
or an old item's "pending", is pending). Outcomes no item of the day holds are set to 0. The
item's list of pending refunds is brought to what the items say as the stream function keeps it
(the ones it lists that are no longer pending removed, the others listed up to PENDING_LIST_CAP).

Its limit: the result is exact only if no refund of those days changes while the recount walks
them (a change read before the walk passes it and counted by the stream function after the SET
would be counted twice, or lost the other way round). Run it when the days are quiet: after the
migration to stream-kept counters, or after the stream function stopped for longer than the
stream keeps records (24 hours), when records were lost. The stream function's marks are left as
they are, so it goes on from where it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from .day_counts import counted_under, listed_pending, pending_attr, plan_pending
from .layout import COUNTER_PREFIX, GSI_BY_DAY, HASH_KEY, counter_key, item_key, to_attr, to_item
from .records import Outcome
from .table import HistoryTable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any

# One recount walks every refund of each day: a bound keeps a typo from walking years.
MAX_DAYS = 31


@dataclass(frozen=True)
class DayRecount:
    day: str
    counts: dict[str, int]  # outcome -> refunds, zeros left out
    before: dict[str, int]  # what the counter said before, zeros left out
    pending: dict[str, str] = field(default_factory=dict)  # refund_id -> queued_at of the pending ones

    @property
    def changed(self) -> bool:
        return self.counts != self.before


class DayRecounter:
    """The by_day walk and the counter SET, on the history table."""

    def __init__(self, table_name: str, client: DynamoDBClient):
        self.table = HistoryTable(table_name, client)

    def day_ids(self, day: str) -> list[str]:
        """The refund ids queued on `day`, from the by_day index (which holds keys only)."""
        query: dict[str, Any] = {
            "IndexName": GSI_BY_DAY,
            "KeyConditionExpression": "queued_day = :day",
            "ProjectionExpression": HASH_KEY,
            "ExpressionAttributeValues": {":day": to_attr(day)},
        }
        ids: list[str] = []
        while True:
            response = self.table.query(query)
            ids += [str(raw[HASH_KEY]["S"]) for raw in response.get("Items", [])]
            last = response.get("LastEvaluatedKey")
            if not last:
                return ids
            query["ExclusiveStartKey"] = last

    def count(self, day: str) -> tuple[dict[str, int], dict[str, str]]:
        """Outcome -> refunds of `day`, and refund_id -> queued_at of its pending refunds, read
        from the items (consistently)."""
        ids = self.day_ids(day)
        items = self.table.batch_get([item_key(i) for i in ids], consistent=True)
        tally: Counter[str] = Counter()
        pending: dict[str, str] = {}
        for refund_id, item in items.items():
            place = counted_under(refund_id, to_item(item))
            if place is not None and place[0] == day:
                tally[place[1]] += 1
                if place[1] == Outcome.PENDING.value:
                    pending[refund_id] = str(item.get("queued_at") or "")
        return {k: v for k, v in sorted(tally.items()) if v}, pending

    def current(self, day: str) -> tuple[dict[str, int], dict[str, str]]:
        """What the day's counter item says: outcome -> count (zeros left out), and the refunds
        it lists as pending."""
        item = self.table.get_item(COUNTER_PREFIX + day, consistent=True) or {}
        held = {o.value: int(item[o.value]) for o in Outcome if item.get(o.value) and int(item[o.value])}
        return dict(sorted(held.items())), listed_pending(item)

    def set_counts(
        self,
        day: str,
        counts: dict[str, int],
        pending: dict[str, str] | None = None,
        listed: dict[str, str] | None = None,
    ) -> None:
        """SET every outcome number of the day's counter (0 for those no item holds) and bring its
        list of pending refunds (`listed`, as read) to `pending` as the stream function would
        (day_counts.plan_pending: the ones no longer pending removed, the others listed up to
        PENDING_LIST_CAP); the stream function's marks (applied#...) are left alone."""
        outcomes = [o.value for o in Outcome]
        ends: dict[str, str | None] = {rid: None for rid in listed or {}}
        ends.update(pending or {})
        as_read = {pending_attr(rid): at for rid, at in (listed or {}).items()}
        plan = plan_pending(as_read, ends)
        names = {f"#o{i}": o for i, o in enumerate(outcomes)}
        values = {":day": to_attr(day)}
        values.update({f":n{i}": to_attr(counts.get(o, 0)) for i, o in enumerate(outcomes)})
        listing, unlisting = plan.clauses(names, values)
        sets = ["counter_day = :day", *(f"#o{i} = :n{i}" for i in range(len(outcomes))), *listing]
        expression = "SET " + ", ".join(sets)
        if unlisting:
            expression += " REMOVE " + ", ".join(unlisting)
        self.table.update(
            {
                "TableName": self.table.table_name,
                "Key": counter_key(day),
                "UpdateExpression": expression,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        )


def recount_days(
    recounter: DayRecounter,
    days: Iterable[date | str],
    on_day: Callable[[DayRecount], None] | None = None,
) -> list[DayRecount]:
    """Set the counters of `days` (UTC, e.g. "2026-11-30") to what their items say, one day at a
    time; at most MAX_DAYS days. Raises StoreError (nothing of the failed day written; the days
    before it are done) and ValueError for too many days."""
    keys = [d if isinstance(d, str) else d.isoformat() for d in days]
    if len(keys) > MAX_DAYS:
        raise ValueError(f"at most {MAX_DAYS} days at a time, got {len(keys)}")
    done: list[DayRecount] = []
    for day in keys:
        before, listed = recounter.current(day)
        counts, pending = recounter.count(day)
        recounter.set_counts(day, counts, pending, listed)
        result = DayRecount(day, counts, before, pending)
        done.append(result)
        if on_day is not None:
            on_day(result)
    return done


__all__ = ["MAX_DAYS", "DayRecount", "DayRecounter", "recount_days"]
