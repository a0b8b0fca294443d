"""The day counters' arithmetic on a batch of the history table's stream records (pure).

Each refund item is counted once, under its queued UTC day and its outcome (absent = pending). A
stream record moves one count: -1 from what its old image counted under, +1 to what its new image
counts under (nothing when both are the same). `reditus_refunds.counter_stream` reads a day's
counter item, keeps only the records past the high-water mark that item stores for the stream
shard (`applied#<shardId>`), and ADDs their sum with one conditional write; this module is the
sum and the marks, with no AWS import, so it is tested as a table.

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
from typing import Any

from .layout import HASH_KEY
from .records import Outcome

# A stream record's SequenceNumber is a decimal string of up to 40 digits; padded to 40, strings
# compare as the numbers do (the marks are compared as strings, in code and in a condition).
SEQUENCE_DIGITS = 40
MARK_PREFIX = "applied#"
# The stream keeps records 24 hours; a mark whose record is twice that old can never matter again.
MARK_MAX_AGE_SECONDS = 2 * 24 * 3600
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


@dataclass
class Fold:
    days: dict[str, DayMoves] = field(default_factory=dict)
    records: int = 0  # records read
    counted: int = 0  # records that move a count
    newest: int | None = None  # the latest creation time of a record, epoch seconds


def created_at(record: Mapping[str, Any]) -> int | None:
    """A record's ApproximateCreationDateTime (epoch seconds, as Lambda gives it), None if absent."""
    value = (record.get("dynamodb") or {}).get("ApproximateCreationDateTime")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def record_moves(record: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, int]]]:
    """(padded sequence number, day -> outcome -> delta) of one stream record (Lambda's shape)."""
    data = record.get("dynamodb") or {}
    sequence = padded(str(data.get("SequenceNumber", "")))
    key = ((data.get("Keys") or {}).get(HASH_KEY) or {}).get("S")
    old = counted_under(key, data.get("OldImage"))
    new = counted_under(key, data.get("NewImage"))
    moves: dict[str, dict[str, int]] = {}
    if old != new:
        for place, delta in ((old, -1), (new, 1)):
            if place is not None:
                day, outcome = place
                moves.setdefault(day, {})
                moves[day][outcome] = moves[day].get(outcome, 0) + delta
    return sequence, moves


def fold(records: Iterable[Mapping[str, Any]]) -> Fold:
    """The batch's moves per day, each day's in stream order."""
    result = Fold()
    for record in records:
        result.records += 1
        sequence, moves = record_moves(record)
        created = created_at(record)
        if created is not None:
            result.newest = created if result.newest is None else max(result.newest, created)
        if moves:
            result.counted += 1
        for day, deltas in moves.items():
            result.days.setdefault(day, DayMoves()).moves.append(Move(sequence, deltas, created))
    for moved in result.days.values():
        moved.moves.sort(key=lambda m: m.sequence)
    return result


__all__ = [
    "MARK_MAX_AGE_SECONDS",
    "MARK_PREFIX",
    "SEQUENCE_DIGITS",
    "DayMoves",
    "Fold",
    "Move",
    "counted_under",
    "created_at",
    "fold",
    "mark_name",
    "mark_sequence",
    "mark_time",
    "mark_value",
    "padded",
    "record_moves",
    "stale_marks",
]
