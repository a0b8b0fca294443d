"""The SQS-triggered Lambda: Powertools wiring only; the work is in submitter.py.

The batch is processed here rather than by Powertools' batch utility: what it gave this function
(records concurrently, a partial batch response, no function error when every record fails) is a
dozen lines, and importing it cost about 35 ms of CPU of a 290 ms cold start on Python 3.12 (its
async processor's asyncio, every event source's data classes; bench/startup.py measures it).
"""

from __future__ import annotations

import contextvars
import logging
from typing import TYPE_CHECKING, Any, TypedDict

from aws_lambda_powertools import Logger, Metrics, Tracer

from .app import PowertoolsTelemetry, SubmitterService, inbound_from_record
from .sdk_logs import pin_sdk_logs
from .settings import Settings
from .submitter import RetryLater

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()


class ToPowertools(logging.Handler):
    """Hands the package's standard-library log records (the domain logs through `logging`) to the
    Powertools logger, so they come out as its JSON lines: its handlers, formatter and Lambda
    context keys, plus each line's own `extra` keys (refund_id, payment_id)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(logger.name).handle(record)


pin_sdk_logs()  # botocore's DEBUG lines hold secrets (sdk_logs.py)
_package_logger = logging.getLogger(__package__ or "reditus_refunds")
_package_logger.handlers = [h for h in _package_logger.handlers if type(h).__name__ != "ToPowertools"]
_package_logger.addHandler(ToPowertools())
_package_logger.setLevel(logger.log_level)
_package_logger.propagate = False  # Lambda's root handler would print each line a second time
# Only what the function calls: DynamoDB/SQS/Secrets Manager (botocore) and Reditus (requests).
# Patching every library the X-Ray SDK knows imports each one present at cold start.
tracer = Tracer(patch_modules=("botocore", "requests"))
metrics = Metrics()
telemetry = PowertoolsTelemetry(metrics, tracer)
service = SubmitterService(Settings.from_env(), telemetry=telemetry)


class BatchItemFailure(TypedDict):
    itemIdentifier: str


class PartialBatchResponse(TypedDict):
    """Lambda's partial batch response: SQS deletes every message of the batch but these."""

    batchItemFailures: list[BatchItemFailure]


@tracer.capture_method
def process_record(record: dict[str, Any]) -> str:
    """Raises for retryable failures; returns the recorded outcome for the rest."""
    try:
        return service.handle(inbound_from_record(record)).value
    except RetryLater:
        raise  # expected: the domain logged why
    except Exception:
        # The batch item failure alone says nothing: without this line an on-call engineer would
        # see retries with no cause.
        logger.exception(
            "unexpected error; SQS will deliver the message again",
            extra={"message_id": record.get("messageId")},
        )
        raise


def process_record_on_worker(record: dict[str, Any], trace_parent: object | None) -> str:
    telemetry.adopt_trace_parent(trace_parent)
    return process_record(record)


def process_batch(event: dict[str, Any]) -> PartialBatchResponse:
    """Every record of the batch at once on the service's bounded thread pool, each in its own
    copy of the context (its log keys stay its own) under the handler's trace entity. A record
    that raises is reported for SQS to deliver again; a batch where every record must be retried
    is still a partial response, not a function error."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "messageId" in r for r in records):
        raise ValueError("Invalid event format: expected an SQS event (Records, each with a messageId)")
    parent = telemetry.trace_parent()
    running = [
        service.executor.submit(contextvars.copy_context().run, process_record_on_worker, record, parent)
        for record in records
    ]
    failures: list[BatchItemFailure] = []
    for record, future in zip(records, running, strict=True):
        if future.exception() is not None:
            failures.append({"itemIdentifier": str(record["messageId"])})
    return {"batchItemFailures": failures}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialBatchResponse:
    with service.invocation(context.get_remaining_time_in_millis()):
        return process_batch(event)
