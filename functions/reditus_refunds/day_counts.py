"""The day counters' arithmetic on a batch of the history table's stream records (pure).

Each refund item is counted once, under its queued UTC day and its outcome (absent = pending). A
stream record moves one count: -1 from what its old image counted under, +1 to what its new image
counts under (nothing when both are the same). `reditus_refunds.counter_stream` reads a day's
counter item, keeps only the records past the high-water mark that item stores for the stream
shard (`applied#<shardId>`), and ADDs their sum with one conditional write; this module is the
sum and the marks, with no AWS import, so it is tested as a table.

Each counter item also lists the day's pending refunds, as long as they are few: one attribute per
refund, `pending#<refund_id>` = its queued_at, SET when a record makes the refund pending and
REMOVEd when one makes it leave pending, in the same conditional write as the counts (each refund
is one attribute of its own, so writers of other shards never overwrite each other's). At most
PENDING_LIST_CAP are listed: a refund that would go past it is counted but not listed. The list is
therefore always a subset of the day's pending refunds, and it is all of them exactly when it is
as long as the pending count (`pending_listed`): then the History's Pending filter reads those
refunds by key instead of walking the day.

A mark's value is the padded sequence number of the last record applied, then `@` and that
record's creation time (epoch seconds, when the record says it): strings still compare as the
sequence numbers do, and a mark whose record is older than the stream keeps records can be removed
(no record at or before it can be delivered again), so the marks of shards long closed do not pile
up on a counter item that is written for days (every write of an item pays for its size).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .layout import HASH_KEY, to_attr
from .records import Outcome

# A stream record's SequenceNumber is a decimal string of up to 40 digits; padded to 40, strings
# compare as the numbers do (the marks are compared as strings, in code and in a condition).
SEQUENCE_DIGITS = 40
MARK_PREFIX = "applied#"
# The stream keeps records 24 hours; a mark whose record is twice that old can never matter again.
MARK_MAX_AGE_SECONDS = 2 * 24 * 3600
# The day's pending refunds listed on its counter item: one BatchGetItem reads them all, and the
# item stays a few KB (a listed refund costs about 70 bytes; the largest ids, 128 characters, 170).
PENDING_PREFIX = "pending#"
PENDING_LIST_CAP = 100
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_OUTCOMES = frozenset(o.value for o in Outcome)


def padded(sequence_number: str) -> str:
    """The sequence number as a 40-digit string; ValueError for anything that is not one."""
    text = str(sequence_number)
    if not text.isdigit() or not text.isascii() or len(text) > SEQUENCE_DIGITS:
        raise ValueError(f"not a stream sequence number: {sequence_number!r}")
    return text.zfill(SEQUENCE_DIGITS)


def mark_name(shard_id: str) -> str:
    """The counter item's attribute holding the last sequence number of `shard_id` it has applied."""
    if not shard_id:
        raise ValueError("a stream shard id is needed to count each record once")
    return MARK_PREFIX + shard_id


def mark_value(sequence: str, created: int | None) -> str:
    """What a mark holds: the padded sequence number, and the record's creation time if known."""
    return sequence if created is None else f"{sequence}@{created}"


def mark_sequence(value: str) -> str:
    """The padded sequence number a mark holds."""
    return value.partition("@")[0]


def mark_time(value: str) -> int | None:
    """The creation time of the record a mark holds, None if it does not say."""
    _, at, created = value.partition("@")
    return int(created) if at and created.isdigit() else None


def stale_marks(item: Mapping[str, Any], own: str, now: int | None) -> dict[str, str]:
    """The other shards' marks on a counter item whose record is older than MARK_MAX_AGE_SECONDS
    before `now` (the newest record of the batch): attribute -> value as read. None: keep all."""
    if now is None:
        return {}
    stale: dict[str, str] = {}
    for name, value in item.items():
        if name.startswith(MARK_PREFIX) and name != own and isinstance(value, str):
            created = mark_time(value)
            if created is not None and created < now - MARK_MAX_AGE_SECONDS:
                stale[name] = value
    return dict(sorted(stale.items()))


def counted_under(key: str | None, image: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(day, outcome) an item image (DynamoDB JSON) is counted under, or None if it is not counted.

    Only refund items count: refund ids never contain '#' (payment markers, counters, webhook,
    audit and user items all do), and a refund item has `queued_day` (moto's transaction writes an
    INSERT holding only the key first). A pending refund has no `outcome` (older items may say
    "pending"); an outcome this code does not know is not counted rather than written as an
    attribute of the counter item.
    """
    if not key or "#" in key or not image:
        return None
    day = (image.get("queued_day") or {}).get("S")
    if not isinstance(day, str) or not _DAY.fullmatch(day):
        return None
    outcome = (image.get("outcome") or {}).get("S", Outcome.PENDING.value)
    if outcome not in _OUTCOMES:
        return None
    return day, str(outcome)


@dataclass(frozen=True)
class Move:
    """One record's effect on one day: outcome -> delta (never all zero)."""

    sequence: str  # padded
    deltas: Mapping[str, int]
    created: int | None = None  # the record's ApproximateCreationDateTime, epoch seconds
    # (refund_id, queued_at) when the record makes the refund pending on this day,
    # (refund_id, None) when it makes it leave pending; None when pending is not involved.
    pending: tuple[str, str | None] | None = None


@dataclass
class DayMoves:
    """A batch's records that move one day's counts, in stream order."""

    moves: list[Move] = field(default_factory=list)

    def past(self, mark: str | None) -> tuple[dict[str, int], str | None]:
        """The summed deltas of the moves past `mark` (zeros left out) and the new mark's value
        (the last of them); ({}, None) when none is past it. A range whose moves sum to nothing
        is not written: the counts the item holds are already right for it."""
        applied = None if mark is None else mark_sequence(mark)
        newer = [m for m in self.moves if applied is None or m.sequence > applied]
        if not newer:
            return {}, None
        totals: dict[str, int] = defaultdict(int)
        for move in newer:
            for outcome, delta in move.deltas.items():
                totals[outcome] += delta
        last = max(newer, key=lambda m: m.sequence)
        return {k: v for k, v in sorted(totals.items()) if v}, mark_value(last.sequence, last.created)

    def pending_past(self, mark: str | None) -> dict[str, str | None]:
        """What the moves past `mark` leave of each refund that entered or left pending:
        refund_id -> its queued_at if it ends the range pending, None if it ends it not pending."""
        applied = None if mark is None else mark_sequence(mark)
        ends: dict[str, str | None] = {}
        for move in self.moves:  # in stream order: the last move of a refund decides
            if move.pending is not None and (applied is None or move.sequence > applied):
                refund_id, queued_at = move.pending
                ends[refund_id] = queued_at
        return ends


@dataclass
class Fold:
    days: dict[str, DayMoves] = field(default_factory=dict)
    records: int = 0  # records read
    counted: int = 0  # records that move a count
    newest: int | None = None  # the latest creation time of a record, epoch seconds


def pending_attr(refund_id: str) -> str:
    """The counter item's attribute that lists `refund_id` as pending."""
    return PENDING_PREFIX + refund_id


def listed_pending(item: Mapping[str, Any]) -> dict[str, str]:
    """refund_id -> queued_at of the refunds a counter item (plain values) lists as pending."""
    return {
        name[len(PENDING_PREFIX) :]: value
        for name, value in item.items()
        if name.startswith(PENDING_PREFIX) and isinstance(value, str)
    }


def pending_listed(item: Mapping[str, Any]) -> dict[str, str] | None:
    """The day's pending refunds (refund_id -> queued_at) if the counter item lists them all,
    i.e. lists as many as its pending count (the list is never more than the pending refunds);
    None if it lists fewer (more than PENDING_LIST_CAP were pending at some point, or the counter
    predates the list) or the two disagree: the reader then walks the day."""
    listed = listed_pending(item)
    count = item.get(Outcome.PENDING.value, 0)
    if isinstance(count, bool) or not isinstance(count, int | Decimal):
        return None
    return listed if count == len(listed) else None


@dataclass(frozen=True)
class PendingPlan:
    """What one write does to a counter item's list of pending refunds."""

    listed: dict[str, str]  # attribute -> queued_at, to SET
    unlisted: list[str]  # attributes to REMOVE

    def __bool__(self) -> bool:
        return bool(self.listed or self.unlisted)

    def clauses(self, names: dict[str, str], values: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The UpdateExpression's SET and REMOVE clauses that carry out the plan, with their
        placeholders added to `names` and `values` (#p/:p and #u, which no other clause uses)."""
        sets = []
        for i, (name, queued_at) in enumerate(self.listed.items()):
            names[f"#p{i}"] = name
            values[f":p{i}"] = to_attr(queued_at)
            sets.append(f"#p{i} = :p{i}")
        names.update({f"#u{i}": name for i, name in enumerate(self.unlisted)})
        return sets, [f"#u{i}" for i in range(len(self.unlisted))]


def plan_pending(
    item: Mapping[str, Any], ends: Mapping[str, str | None], cap: int = PENDING_LIST_CAP
) -> PendingPlan:
    """The list changes that bring the counter item (as read) to `ends` (DayMoves.pending_past):
    a refund that left pending is removed if listed; one that is pending is listed if it is not
    yet and the list has room (newest first), so the list never grows past `cap`."""
    present = listed_pending(item)
    unlisted = sorted(rid for rid, at in ends.items() if at is None and rid in present)
    room = cap - (len(present) - len(unlisted))
    entering = sorted(
        ((at, rid) for rid, at in ends.items() if at is not None and rid not in present), reverse=True
    )
    listed = {pending_attr(rid): at for at, rid in entering[: max(0, room)]}
    return PendingPlan(listed, [pending_attr(rid) for rid in unlisted])


def created_at(record: Mapping[str, Any]) -> int | None:
    """A record's ApproximateCreationDateTime (epoch seconds, as Lambda gives it), None if absent."""
    value = (record.get("dynamodb") or {}).get("ApproximateCreationDateTime")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def record_moves(record: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, int]]]:
    """(padded sequence number, day -> outcome -> delta) of one stream record (Lambda's shape)."""
    sequence, moves, _ = record_changes(record)
    return sequence, moves


def record_changes(
    record: Mapping[str, Any],
) -> tuple[str, dict[str, dict[str, int]], dict[str, tuple[str, str | None]]]:
    """record_moves, and per day the refund entering pending ((refund_id, queued_at)) or leaving
    it ((refund_id, None)) with this record."""
    data = record.get("dynamodb") or {}
    sequence = padded(str(data.get("SequenceNumber", "")))
    key = ((data.get("Keys") or {}).get(HASH_KEY) or {}).get("S")
    new_image = data.get("NewImage")
    old = counted_under(key, data.get("OldImage"))
    new = counted_under(key, new_image)
    moves: dict[str, dict[str, int]] = {}
    pending: dict[str, tuple[str, str | None]] = {}
    if old != new:
        for place, delta in ((old, -1), (new, 1)):
            if place is not None:
                day, outcome = place
                moves.setdefault(day, {})
                moves[day][outcome] = moves[day].get(outcome, 0) + delta
                if outcome == Outcome.PENDING.value:
                    queued_at = ((new_image or {}).get("queued_at") or {}).get("S") if delta > 0 else None
                    pending[day] = (str(key), str(queued_at or "") if delta > 0 else None)
    return sequence, moves, pending


def fold(records: Iterable[Mapping[str, Any]]) -> Fold:
    """The batch's moves per day, each day's in stream order."""
    result = Fold()
    for record in records:
        result.records += 1
        sequence, moves, pending = record_changes(record)
        created = created_at(record)
        if created is not None:
            result.newest = created if result.newest is None else max(result.newest, created)
        if moves:
            result.counted += 1
        for day, deltas in moves.items():
            move = Move(sequence, deltas, created, pending.get(day))
            result.days.setdefault(day, DayMoves()).moves.append(move)
    for moved in result.days.values():
        moved.moves.sort(key=lambda m: m.sequence)
    return result


__all__ = [
    "MARK_MAX_AGE_SECONDS",
    "MARK_PREFIX",
    "PENDING_LIST_CAP",
    "PENDING_PREFIX",
    "SEQUENCE_DIGITS",
    "DayMoves",
    "Fold",
    "Move",
    "PendingPlan",
    "counted_under",
    "created_at",
    "fold",
    "listed_pending",
    "mark_name",
    "mark_sequence",
    "mark_time",
    "mark_value",
    "padded",
    "pending_attr",
    "pending_listed",
    "plan_pending",
    "record_changes",
    "record_moves",
    "stale_marks",
]
