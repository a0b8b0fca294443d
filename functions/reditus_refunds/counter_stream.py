"""The day counters, kept from the history table's DynamoDB Stream (CounterStreamFunction).

The event source mapping hands this function the stream's records of one shard, in order, with a
tumbling window (template.yaml), because only then does the event name the shard (`shardId`):
each counter item remembers per shard the last sequence number it has applied
(`applied#<shardId>`), which makes a batch delivered twice, a retried or split batch, or two
invocations racing count every record exactly once. Per day of the batch: read the counter item
(consistent), sum the records past its mark (day_counts), then one conditional UpdateItem that
ADDs the sum and moves the mark, holding only if the mark is still the one read; if another writer
moved it first, read again and redo. The same write lists the day's pending refunds on the item,
up to day_counts.PENDING_LIST_CAP (one attribute each: SET when a refund becomes pending, REMOVE
when it leaves), and removes other shards' marks older than the stream's records can be
(day_counts.stale_marks), so a counter item stays small.

Kept light: no Reditus client, no submitter, no tracer; boto3 is imported at the first invocation.
A store failure raises: Lambda retries the batch (the days already written are skipped by their
marks) and the Errors and IteratorAge alarms see it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from .aws_errors import ConditionFailed, StoreError
from .day_counts import PENDING_LIST_CAP, PendingPlan, fold, mark_name, plan_pending, stale_marks
from .layout import COUNTER_PREFIX, counter_key, to_attr
from .sdk_logs import pin_sdk_logs
from .table import HistoryTable

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any

TABLE_ENV = "HISTORY_TABLE_NAME"
# The environment variables this function reads (template.yaml sets them).
STREAM_ENV_VARS = (TABLE_ENV,)
# Re-reads of one day's counter after another writer moved its mark first: two invocations of
# one shard at once are rare (a retry overlapping a slow run), more than a few never happen.
MAX_TRIES = 8
RECORDS_METRIC = "CounterRecordsCounted"
WRITES_METRIC = "CounterWrites"

logger = Logger()
metrics = Metrics()
pin_sdk_logs()  # botocore's DEBUG lines hold what it reads (sdk_logs.py)


class StreamSettingsError(ValueError):
    """The function's configuration (or its event source mapping's) is missing or wrong."""


class DayCounterStore:
    """The day counter items of the history table: read one, add to one under its mark."""

    def __init__(self, table_name: str, client: DynamoDBClient):
        self.table = HistoryTable(table_name, client)

    def read(self, day: str) -> dict[str, Any]:
        return self.table.get_item(COUNTER_PREFIX + day, consistent=True) or {}

    def add(
        self,
        day: str,
        mark: str,
        seen: str | None,
        new: str,
        deltas: Mapping[str, int],
        stale: Mapping[str, str] | None = None,
        pending: PendingPlan | None = None,
    ) -> None:
        """ADD the deltas, change the list of pending refunds as planned and move `mark` from
        `seen` (None: not set yet) to `new`, removing the `stale` marks of other shards (each only
        as read); ConditionFailed if any of those marks changed."""
        stale = stale or {}
        pending = pending or PendingPlan({}, [])
        names = {"#mark": mark, **{f"#o{i}": outcome for i, outcome in enumerate(deltas)}}
        values = {
            ":day": to_attr(day),
            ":new": to_attr(new),
            **{f":d{i}": to_attr(delta) for i, delta in enumerate(deltas.values())},
        }
        listing, unlisting = pending.clauses(names, values)
        sets = ["counter_day = :day", "#mark = :new", *listing]
        if seen is None:
            conditions = ["attribute_not_exists(#mark)"]
        else:
            conditions = ["#mark = :seen"]
            values[":seen"] = to_attr(seen)
        removes = unlisting
        for i, (name, value) in enumerate(stale.items()):
            names[f"#x{i}"] = name
            values[f":x{i}"] = to_attr(value)
            conditions.append(f"#x{i} = :x{i}")
            removes.append(f"#x{i}")
        expression = "SET " + ", ".join(sets)
        if deltas:
            expression += " ADD " + ", ".join(f"#o{i} :d{i}" for i in range(len(deltas)))
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        self.table.update(
            {
                "TableName": self.table.table_name,
                "Key": counter_key(day),
                "UpdateExpression": expression,
                "ConditionExpression": " AND ".join(conditions),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        )


@dataclass
class ApplyReport:
    records: int = 0  # stream records in the batch
    counted: int = 0  # of them, records that move a count
    writes: int = 0  # counter items written
    days: list[str] = field(default_factory=list)  # days whose counters changed


class CounterStream:
    def __init__(
        self, store: DayCounterStore, max_tries: int = MAX_TRIES, pending_cap: int = PENDING_LIST_CAP
    ):
        self.store = store
        self.max_tries = max_tries
        self.pending_cap = pending_cap
        self.last_report = ApplyReport()  # of the last batch applied (for the handler's log and metrics)

    def apply(self, shard_id: str, records: Iterable[Mapping[str, Any]]) -> ApplyReport:
        """Count a batch of one shard's records; raises StoreError if a day could not be written
        (its records are then counted by the retry, the days written before it are not again)."""
        mark = mark_name(shard_id)
        folded = fold(records)
        report = ApplyReport(records=folded.records, counted=folded.counted)
        for day in sorted(folded.days):
            moves = folded.days[day]
            for _ in range(self.max_tries):
                item = self.store.read(day)
                seen = item.get(mark)
                applied = None if seen is None else str(seen)
                deltas, new = moves.past(applied)
                pending = plan_pending(item, moves.pending_past(applied), self.pending_cap)
                if new is None or not (deltas or pending):
                    break  # applied before, or moves that change nothing
                stale = stale_marks(item, mark, folded.newest)
                try:
                    self.store.add(day, mark, applied, new, deltas, stale, pending)
                except ConditionFailed:
                    continue  # another writer moved a mark: read it again
                report.writes += 1
                report.days.append(day)
                break
            else:
                raise StoreError(
                    f"the day counter of {day} kept changing under this batch; the batch is retried",
                    code="ConditionFailed",
                )
        return report


def shard_of(event: Mapping[str, Any]) -> str:
    """The shard the batch comes from: in the event only when the mapping has a tumbling window."""
    shard = event.get("shardId")
    if not isinstance(shard, str) or not shard:
        raise StreamSettingsError(
            "the event names no shardId: the event source mapping must set TumblingWindowInSeconds "
            "(template.yaml), or records cannot be counted exactly once"
        )
    return shard


_stream: CounterStream | None = None


def counter_stream() -> CounterStream:
    """Built at the first invocation and kept for the environment's life (not at import: importing
    the module reads no configuration and creates no client)."""
    global _stream
    if _stream is None:
        import boto3
        from botocore.config import Config

        table = os.environ.get(TABLE_ENV, "").strip()
        if not table:
            raise StreamSettingsError(f"{TABLE_ENV} is not set")
        client = boto3.session.Session().client(
            "dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 5})
        )
        _stream = CounterStream(DayCounterStore(table, client))
    return _stream


def apply_event(stream: CounterStream, event: Mapping[str, Any]) -> dict[str, Any]:
    """The handler's work without Powertools: count the event's records, answer `{"state": {}}`
    (Lambda treats a windowed invocation without `state` as failed; no state is carried, the marks
    are in the table). Raises StoreError to have the batch retried. The local worker and the
    benchmarks call it with their own client."""
    stream.last_report = stream.apply(shard_of(event), event.get("Records") or [])
    return {"state": {}}


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Invoked by the DynamoDB stream's event source mapping with a tumbling window: the event has
    `Records`, `shardId`, `window`, `state` and `isFinalInvokeForWindow` (the final invocation of
    a window may have no records). Returns `{"state": {}}`; raises to have the batch retried."""
    runner = counter_stream()
    try:
        response = apply_event(runner, event)
    except StoreError as err:
        logger.error(
            "the day counters could not be updated; the batch is retried",
            extra={
                "error": str(err),
                "shard": event.get("shardId"),
                "records": len(event.get("Records") or []),
            },
        )
        raise
    report = runner.last_report
    metrics.add_metric(name=RECORDS_METRIC, unit=MetricUnit.Count, value=report.counted)
    metrics.add_metric(name=WRITES_METRIC, unit=MetricUnit.Count, value=report.writes)
    if report.writes:
        logger.info(
            "day counters updated",
            extra={
                "shard": event.get("shardId"),
                "records": report.records,
                "counted": report.counted,
                "days": report.days,
            },
        )
    return response
