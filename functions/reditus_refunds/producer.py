"""RefundProducer: puts refund requests on the queue (console, CLI, CSV) and records them pending."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .aws_errors import QueueError, aws_error
from .contract import RefundRequest
from .history_writer import HistoryWriter
from .outcomes import RECHECK_ATTRIBUTE, REDRIVE_REFUND_ID_ATTRIBUTE
from .records import iso, utc_now

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
else:
    SQSClient = Any

__all__ = [
    "RECHECK_ATTRIBUTE",
    "REDRIVE_REFUND_ID_ATTRIBUTE",
    "QueueError",
    "RefundProducer",
    "SendReport",
    "queue_error",
]

SQS_BATCH = 10
PENDING_BATCH = 90  # items per pending-record transaction (DynamoDB allows 100 actions)


@dataclass
class SendReport:
    sent: list[RefundRequest] = field(default_factory=list)
    failed: list[tuple[RefundRequest, str]] = field(default_factory=list)
    send_calls: int = 0


def queue_error(err: BaseException, queue_url: str) -> QueueError:
    mapped = aws_error(
        err,
        QueueError,
        service="SQS",
        resource=f"the queue {queue_url!r}",
        names_hint="REFUND_QUEUE_URL / DEAD_LETTER_QUEUE_URL or the stack name",
    )
    assert isinstance(mapped, QueueError)
    return mapped


class RefundProducer:
    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        store: HistoryWriter | None = None,
        clock: Callable[[], Any] = utc_now,
    ):
        self.sqs = sqs
        self.queue_url = queue_url
        self.store = store
        self.clock = clock

    def send(
        self, request: RefundRequest, delay_seconds: int = 0, attributes: Mapping[str, str] | None = None
    ) -> str:
        """Queue one request; returns the SQS message id.

        `attributes` become String message attributes (e.g. RECHECK_ATTRIBUTE on a 404
        re-check, REDRIVE_REFUND_ID_ATTRIBUTE on a redriven dead letter); the body is the
        published contract, unchanged.
        """
        extra: dict[str, Any] = {}
        if attributes:
            extra["MessageAttributes"] = {
                name: {"DataType": "String", "StringValue": value} for name, value in attributes.items()
            }
        try:
            response = self.sqs.send_message(
                QueueUrl=self.queue_url, MessageBody=request.to_body(), DelaySeconds=delay_seconds, **extra
            )
        except (ClientError, BotoCoreError) as err:
            raise queue_error(err, self.queue_url) from None
        message_id = response["MessageId"]
        if self.store is not None and delay_seconds == 0:
            self.store.record_pending([(request, message_id, iso(self.clock()))])
        return message_id

    def send_many(
        self, requests: Sequence[RefundRequest], progress: Callable[[int, int], None] | None = None
    ) -> SendReport:
        """Queue many requests, ten per SQS call, recording the accepted ones as pending.

        Pending records are written in transactions of up to PENDING_BATCH items, so a large
        upload costs about one DynamoDB call per nine SQS calls. Each transaction runs on a
        thread of its own while the next SQS calls go out (the two services' waits overlap);
        the one before is waited for first, so a store failure stops the upload within one
        transaction's worth of messages, as it did when they took turns.
        """
        report = SendReport()
        accepted: list[tuple[RefundRequest, str, str]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pending-records") as recorder:
            recording: Future[None] | None = None

            def record_behind(entries: list[tuple[RefundRequest, str, str]]) -> Future[None]:
                if recording is not None:
                    recording.result()  # raises the store's error, if any
                return recorder.submit(self._record, entries)

            for start in range(0, len(requests), SQS_BATCH):
                chunk = requests[start : start + SQS_BATCH]
                entries = [{"Id": str(i), "MessageBody": r.to_body()} for i, r in enumerate(chunk)]
                try:
                    response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]
                except (ClientError, BotoCoreError) as err:
                    if recording is not None:
                        recording.result()
                    self._record(accepted)
                    raise queue_error(err, self.queue_url) from None
                report.send_calls += 1
                now = iso(self.clock())
                for ok in response.get("Successful", []):
                    request = chunk[int(ok["Id"])]
                    accepted.append((request, ok["MessageId"], now))
                    report.sent.append(request)
                for bad in response.get("Failed", []):
                    report.failed.append(
                        (chunk[int(bad["Id"])], f"{bad.get('Code')}: {bad.get('Message', '')}")
                    )
                if len(accepted) >= PENDING_BATCH:
                    recording = record_behind(accepted)
                    accepted = []
                if progress:
                    progress(min(start + SQS_BATCH, len(requests)), len(requests))
            if recording is not None:
                recording.result()
        self._record(accepted)
        return report

    def _record(self, accepted: Sequence[tuple[RefundRequest, str, str]]) -> None:
        if self.store is not None and accepted:
            self.store.record_pending(accepted)
