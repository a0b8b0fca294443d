"""The textbook handler, for comparison: Powertools' BatchProcessor, one record after the other.

The same domain work as reditus_refunds.handler (a SubmitterService built from the same settings,
`handle` per record, the counters settled once at the end), the same Powertools decorators; only
the records run in sequence instead of concurrently. Not part of the product.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from reditus_refunds.app import PowertoolsTelemetry, SubmitterService, inbound_from_record
from reditus_refunds.settings import Settings

Handler = Callable[[dict[str, Any], Any], Any]


def build() -> tuple[Handler, SubmitterService]:
    """A textbook handler and its service, built from the environment like the real one."""
    logger = Logger()
    tracer = Tracer()
    metrics = Metrics()
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    service = SubmitterService(Settings.from_env(), telemetry=PowertoolsTelemetry(metrics, tracer))

    @tracer.capture_method
    def record_handler(record: SQSRecord) -> str:
        return service.handle(inbound_from_record(record.raw_event)).value

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics(capture_cold_start_metric=True)
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
        with service.invocation(context.get_remaining_time_in_millis()):
            return process_partial_response(
                event=event, record_handler=record_handler, processor=processor, context=context
            )

    return lambda_handler, service
