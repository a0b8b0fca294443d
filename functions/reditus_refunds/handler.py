"""The SQS-triggered Lambda: Powertools wiring only; the work is in submitter.py."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from .app import PowertoolsTelemetry, SubmitterService, inbound_from_record
from .settings import Settings
from .submitter import RetryLater

logger = Logger()


class ToPowertools(logging.Handler):
    """Hands the package's standard-library log records (the domain logs through `logging`) to the
    Powertools logger, so they come out as its JSON lines: its handlers, formatter and Lambda
    context keys, plus each line's own `extra` keys (refund_id, payment_id)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(logger.name).handle(record)


_package_logger = logging.getLogger(__package__ or "reditus_refunds")
_package_logger.handlers = [h for h in _package_logger.handlers if type(h).__name__ != "ToPowertools"]
_package_logger.addHandler(ToPowertools())
_package_logger.setLevel(logger.log_level)
_package_logger.propagate = False  # Lambda's root handler would print each line a second time
# Only what the function calls: DynamoDB/SQS/Secrets Manager (botocore) and Reditus (requests).
# Patching every library the X-Ray SDK knows imports each one present at cold start.
tracer = Tracer(patch_modules=("botocore", "requests"))
metrics = Metrics()
# A batch where every record must be retried is still a partial response, not a function error.
processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
telemetry = PowertoolsTelemetry(metrics, tracer)
service = SubmitterService(Settings.from_env(), telemetry=telemetry)


@tracer.capture_method
def process_record(record: SQSRecord) -> str:
    """Raises for retryable failures; returns the recorded outcome for the rest."""
    try:
        return service.handle(inbound_from_record(record.raw_event)).value
    except RetryLater:
        raise  # expected: the domain logged why
    except Exception:
        # The batch processor turns it into a batch item failure and logs nothing outside debug
        # mode: without this line an on-call engineer would see retries with no cause.
        logger.exception(
            "unexpected error; SQS will deliver the message again", extra={"message_id": record.message_id}
        )
        raise


def process_record_on_worker(record: SQSRecord, trace_parent: object | None) -> str:
    telemetry.adopt_trace_parent(trace_parent)
    return process_record(record)


async def record_handler(record: SQSRecord) -> str:
    # Records of a batch run concurrently on the service's bounded thread pool; each gets
    # its own copy of the context so its log keys stay its own, and the handler's trace entity.
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        service.executor,
        contextvars.copy_context().run,
        process_record_on_worker,
        record,
        telemetry.trace_parent(),
    )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    with service.invocation(context.get_remaining_time_in_millis()):
        return async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
