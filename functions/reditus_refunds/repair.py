"""The scheduled counter repair: settles the day counters of the last few UTC days.

The submitter settles the day counters once per batch and keeps what it could not settle in its
execution environment's memory (app.py, SubmitterService.unsettled), retried at the next
invocation. An environment that is recycled or killed first loses that carry-over; the items stay
marked (outcome != counted_outcome) and `HistoryWriter.settle_days` settles them. This function
runs it on a schedule (template.yaml, CounterRepairFunction; the local worker runs it too).

Kept light: no Reditus client, no submitter, no tracer; boto3 is imported at the first invocation.
A store failure raises, so the schedule's retries and the Errors alarm see it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from .aws_errors import StoreError
from .history_writer import HistoryWriter
from .records import utc_now

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

TABLE_ENV = "HISTORY_TABLE_NAME"
DAYS_ENV = "COUNTER_REPAIR_DAYS"
# Today and the two days before: an outcome changes days after queueing within the 404 grace
# window, SQS retries and a redrive soon after; each item is counted on its queued day.
DEFAULT_DAYS = 3
# One invocation walks every item of each day: a bound keeps a typo from walking a year.
MAX_DAYS = 31
REPAIRED_METRIC = "CountersRepaired"
# The environment variables this function reads (template.yaml sets them).
REPAIR_ENV_VARS = (TABLE_ENV, DAYS_ENV)

logger = Logger()
metrics = Metrics()


class RepairSettingsError(ValueError):
    """The repair's configuration is missing or malformed."""


@dataclass(frozen=True)
class RepairSettings:
    history_table_name: str
    days: int = DEFAULT_DAYS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RepairSettings:
        env = os.environ if env is None else env
        table = env.get(TABLE_ENV, "").strip()
        if not table:
            raise RepairSettingsError(f"{TABLE_ENV} is not set")
        raw = env.get(DAYS_ENV, "").strip()
        if not raw:
            return cls(table)
        try:
            days = int(raw)
        except ValueError:
            raise RepairSettingsError(f"{DAYS_ENV} must be a whole number of days, got {raw!r}") from None
        if not 1 <= days <= MAX_DAYS:
            raise RepairSettingsError(f"{DAYS_ENV} must be between 1 and {MAX_DAYS}, got {days}")
        return cls(table, days)


def days_back(today: date, count: int) -> list[str]:
    """The UTC days to walk, oldest first: `count` days ending with today."""
    return [(today - timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]


@dataclass(frozen=True)
class RepairReport:
    days: tuple[str, ...]
    settled: int


class DaySettler(Protocol):
    """What the repair needs of the store (HistoryWriter)."""

    def settle_days(self, days: Iterable[date | str]) -> int: ...


class CounterRepair:
    def __init__(self, writer: DaySettler, days: int, clock: Callable[[], datetime] = utc_now):
        self.writer = writer
        self.days = days
        self.clock = clock

    def run(self) -> RepairReport:
        """Settle the lagging items of the last `days` UTC days; raises StoreError if some could not be."""
        days = days_back(self.clock().date(), self.days)
        return RepairReport(tuple(days), self.writer.settle_days(days))


_repair: CounterRepair | None = None


def repair() -> CounterRepair:
    """Built at the first invocation and kept for the environment's life (not at import: importing
    the module reads no configuration and creates no client)."""
    global _repair
    if _repair is None:
        import boto3
        from botocore.config import Config

        settings = RepairSettings.from_env()
        client = boto3.session.Session().client(
            "dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 5})
        )
        _repair = CounterRepair(HistoryWriter(settings.history_table_name, client), settings.days)
    return _repair


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Invoked by the schedule (the event is not read). Returns what it settled."""
    runner = repair()
    try:
        report = runner.run()
    except StoreError as err:
        # Raised on: the invocation fails, the schedule retries it, the Errors alarm fires.
        logger.error(
            "the day counters could not be repaired; the next run tries again", extra={"error": str(err)}
        )
        raise
    metrics.add_metric(name=REPAIRED_METRIC, unit=MetricUnit.Count, value=report.settled)
    logger.info(
        "day counters repaired" if report.settled else "day counters already settled",
        extra={"settled": report.settled, "days": list(report.days)},
    )
    return {"settled": report.settled, "days": list(report.days)}
