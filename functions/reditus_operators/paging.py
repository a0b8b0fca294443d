"""Newest-first pages over the history table's time-sorted indexes, never a Scan.

Every list the operators read (refunds, webhook events, the audit log) is an index keyed by a
partition (a UTC day, a person, an outcome...) and sorted by a timestamp. `IndexQuery` is one
such Query over a time window; `page_days` walks a day-partitioned index one UTC day at a time
from the window's last day back to its first, `page_days_counted` does the same for a filter that
DynamoDB cannot answer from an index but per-day counters can bound (it skips the days whose count
is 0, reads by key the items a counter lists, and leaves a walked day once it found its count),
and `page_key` reads one partition. All stop when
the page is full and hand back an opaque cursor (the day reached and DynamoDB's
LastEvaluatedKey) that continues where the page stopped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Generic, TypeVar

from reditus_refunds.layout import HASH_KEY, INDEX_PROJECTIONS, KEYS_ONLY, from_item, item_key, to_attr
from reditus_refunds.table import HistoryTable

T = TypeVar("T")
BAD_CURSOR = "the page cursor is not valid"
BATCH = 100  # BatchGetItem's limit: counters per read, index entries per Query of a sparse walk


def encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, default=str).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        raise ValueError(BAD_CURSOR) from None
    if not isinstance(data, dict):
        raise ValueError(BAD_CURSOR)
    return data


def _start_key(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cursor's LastEvaluatedKey: an attribute map, or nothing (a forged one is refused here)."""
    lek = state.get("lek")
    if lek is None:
        return None
    if not isinstance(lek, dict) or not lek or not all(isinstance(v, dict) for v in lek.values()):
        raise ValueError(BAD_CURSOR)
    return lek


def _start_day(state: Mapping[str, Any], last_day: str) -> str:
    """The cursor's day; never after the period's last (a forged far-off day would cost a Query a day)."""
    day = state.get("day") or last_day
    try:
        valid = isinstance(day, str) and date.fromisoformat(day).isoformat() == day
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(BAD_CURSOR)
    if day > last_day:
        raise ValueError(f"{BAD_CURSOR} for this period: its day {day} is after the last, {last_day}")
    return str(day)


def _start_found(state: Mapping[str, Any]) -> int:
    """How many kept items the cursor's day already gave. A forged count can only end that day's
    walk sooner; the walk never goes past the day's end, whatever the count says."""
    found = state.get("found", 0)
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        raise ValueError(BAD_CURSOR)
    return found


def _previous(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


@dataclass
class Paged(Generic[T]):
    items: list[T]
    cursor: str | None
    items_read: int  # index entries scanned plus items read by key: what the page cost


@dataclass(frozen=True)
class IndexQuery:
    """Newest-first Queries of one index: `<key_name> = value AND <time_name> BETWEEN low AND high`.

    `filter_expression` (with `filter_values`) narrows what DynamoDB returns, not what it reads.
    An index that holds keys only (layout.INDEX_PROJECTIONS) is followed by one BatchGetItem of
    the items it names, in the index's order (one deleted meanwhile is left out).
    """

    table: HistoryTable
    index: str
    key_name: str
    time_name: str
    low: str
    high: str
    filter_expression: str | None = None
    filter_values: Mapping[str, Any] = field(default_factory=dict)

    def key_of(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """The index entry's key of an item it lists: an ExclusiveStartKey that goes on after it."""
        return {name: to_attr(item[name]) for name in (HASH_KEY, self.key_name, self.time_name)}

    def run(
        self, key_value: str, limit: int, lek: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, int]:
        """One Query of at most `limit` entries: the items, the LastEvaluatedKey, the items read."""
        kwargs: dict[str, Any] = {
            "IndexName": self.index,
            "KeyConditionExpression": "#k = :k AND #at BETWEEN :low AND :high",
            "ExpressionAttributeNames": {"#k": self.key_name, "#at": self.time_name},
            "ExpressionAttributeValues": {
                ":k": to_attr(key_value),
                ":low": to_attr(self.low),
                ":high": to_attr(self.high),
                **{name: to_attr(value) for name, value in self.filter_values.items()},
            },
            "ScanIndexForward": False,
            "Limit": max(1, limit),
        }
        if self.filter_expression:
            kwargs["FilterExpression"] = self.filter_expression
        if lek:
            kwargs["ExclusiveStartKey"] = lek
        response = self.table.query(kwargs)
        read = int(response.get("ScannedCount", len(response.get("Items", []))))
        items = [from_item(i) for i in response.get("Items", [])]
        if INDEX_PROJECTIONS.get(self.index) == KEYS_ONLY and items:
            items, fetched = self.by_key([str(item[HASH_KEY]) for item in items])
            read += fetched
        return items, response.get("LastEvaluatedKey"), read

    def by_key(self, keys: list[str]) -> tuple[list[dict[str, Any]], int]:
        """The items of `keys` in that order (one deleted meanwhile is left out), and the items read."""
        found = self.table.batch_get([item_key(k) for k in keys])
        return [found[k] for k in keys if k in found], len(found)


def page_days(
    query: IndexQuery, convert: Callable[[dict[str, Any]], T], *, limit: int, cursor: str | None
) -> Paged[T]:
    """One page of a day-partitioned index: one Query per UTC day, from the window's last day
    back to its first, until `limit` items; the cursor carries the day reached and its LEK."""
    state = decode_cursor(cursor) if cursor else {}
    first_day = query.low[:10]
    day = _start_day(state, query.high[:10])
    lek = _start_key(state)
    items: list[T] = []
    read = 0
    while len(items) < limit and day >= first_day:
        got, lek, scanned = query.run(day, limit - len(items), lek)
        items += [convert(item) for item in got]
        read += scanned
        if lek is None:
            day = _previous(day)
    more = lek is not None or day >= first_day
    return Paged(items, encode_cursor({"day": day, "lek": lek}) if more else None, read)


@dataclass(frozen=True)
class DayCount:
    """How many items of a day a filter keeps, and, when known, which: (time, key) of each."""

    count: int
    listed: tuple[tuple[str, str], ...] | None = None


# Per-day counts for some days: {day: DayCount} for the days that have a counter (a day missing
# from it has none: its count is unknown), and the items read to know.
DayCounts = Callable[[list[str]], tuple[dict[str, DayCount], int]]


def page_days_counted(
    query: IndexQuery,
    convert: Callable[[dict[str, Any]], T],
    keep: Callable[[T], bool],
    counts: DayCounts,
    *,
    limit: int,
    cursor: str | None,
) -> Paged[T]:
    """One page of the items `keep` accepts, newest first, walking a day-partitioned index as
    `page_days` does, with each day's count of such items (`counts`, read 100 days at a time):

    - a day whose count is 0 is skipped without a Query;
    - a day whose counter lists its items (time and key of each) is read by key, newest first,
      only as many as the page needs: no Query;
    - otherwise a day is walked and left as soon as it gave as many as its count says (the walk is
      newest first, so what it skips then is older than everything kept);
    - a day with no count (no counter item) is walked to its end.

    What a page reads is bounded by the period's counters plus, for a listed day, the items it
    returns (and those listed that are no longer kept: a counter that lags its items), for a
    walked day its items up to the last kept one: cheap when the kept items are few and recent, a
    whole day's items when one is that day's oldest. A count lower than the truth (a counter that
    lags its items) leaves the day early and misses its oldest; a higher one walks the day to its
    end. Never outside the period, never a day twice in one page. The cursor carries the day, the
    LEK (for a listed day, the index key of the last item given) and how many that day already
    gave (`found`).
    """
    state = decode_cursor(cursor) if cursor else {}
    first_day = query.low[:10]
    day = _start_day(state, query.high[:10])
    lek = _start_key(state)
    found = _start_found(state)
    items: list[T] = []
    read = 0
    known: dict[str, DayCount] = {}
    counted_down_to: str | None = None  # the earliest day whose counter was read
    queries_today = 0
    while len(items) < limit and day >= first_day:
        if counted_down_to is None or day < counted_down_to:
            days = [day]
            while len(days) < BATCH and _previous(days[-1]) >= first_day:
                days.append(_previous(days[-1]))
            got_counts, scanned = counts(days)
            known.update(got_counts)
            read += scanned
            counted_down_to = days[-1]
        entry = known.get(day)
        expected = None if entry is None else entry.count
        if expected is not None and found >= expected:  # 0, or all of the day's found already
            day, lek, found, queries_today = _previous(day), None, 0, 0
            continue
        if entry is not None and entry.listed is not None:
            lek, given, scanned = _page_listed(
                query, day, entry.listed, convert, keep, limit - len(items), lek
            )
            items += given
            read += scanned
            if lek is None:
                day, found, queries_today = _previous(day), 0, 0
            else:
                found += len(given)
            continue
        # The first Query of a day asks for what the page still needs (kept items are dense at
        # the top of a day in the common case); later ones for a full batch (they are sparse).
        size = min(BATCH, limit - len(items)) if queries_today == 0 else BATCH
        got, next_lek, scanned = query.run(day, size, lek)
        queries_today += 1
        read += scanned
        stopped_at: int | None = None
        for position, item in enumerate(got):
            converted = convert(item)
            if keep(converted):
                items.append(converted)
                found += 1
                if len(items) >= limit or (expected is not None and found >= expected):
                    stopped_at = position
                    break
        if stopped_at is not None and stopped_at < len(got) - 1:
            lek = query.key_of(got[stopped_at])  # the page is full mid-batch: go on after this one
        else:
            lek = next_lek
        if lek is None or (expected is not None and found >= expected):
            day, lek, found, queries_today = _previous(day), None, 0, 0
    more = lek is not None or day >= first_day
    state_out = {"day": day, "lek": lek, "found": found}
    return Paged(items, encode_cursor(state_out) if more else None, read)


def _page_listed(
    query: IndexQuery,
    day: str,
    listed: tuple[tuple[str, str], ...],
    convert: Callable[[dict[str, Any]], T],
    keep: Callable[[T], bool],
    wanted: int,
    lek: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, list[T], int]:
    """Up to `wanted` kept items of a day whose counter lists them, newest first after `lek` (an
    index key: the walk's or this function's), read by key. Returns the index key of the last one
    given when the day has more (None when it is done), the items and the items read."""
    after = None
    if lek:
        after = (lek.get(query.time_name, {}).get("S", ""), lek.get(HASH_KEY, {}).get("S", ""))
    todo = sorted(
        (
            (at, key)
            for at, key in listed
            if query.low <= at <= query.high and (after is None or (at, key) < after)
        ),
        reverse=True,
    )
    given: list[T] = []
    read = 0
    last: tuple[str, str] | None = None
    while todo and len(given) < wanted:
        size = min(BATCH, wanted - len(given))
        chunk, todo = todo[:size], todo[size:]
        got, fetched = query.by_key([key for _, key in chunk])
        read += fetched
        given += [converted for converted in map(convert, got) if keep(converted)]
        last = chunk[-1]
    if not todo or last is None:
        return None, given, read
    at, key = last
    return query.key_of({HASH_KEY: key, query.key_name: day, query.time_name: at}), given, read


def page_key(
    query: IndexQuery,
    key_value: str,
    convert: Callable[[dict[str, Any]], T],
    *,
    limit: int,
    cursor: str | None,
    keep: Callable[[T], bool] | None = None,
) -> Paged[T]:
    """One page of one partition, until `limit` items `keep` accepts; the cursor carries the LEK."""
    lek = _start_key(decode_cursor(cursor)) if cursor else None
    items: list[T] = []
    read = 0
    while len(items) < limit:
        got, lek, scanned = query.run(key_value, limit - len(items), lek)
        items += [x for x in map(convert, got) if keep is None or keep(x)]
        read += scanned
        if lek is None:
            break
    return Paged(items, encode_cursor({"lek": lek}) if lek else None, read)
