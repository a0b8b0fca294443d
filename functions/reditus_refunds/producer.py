"""RefundProducer: puts refund requests on the queue (console, CLI, CSV) and records them pending."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .aws_errors import AwsError, QueueError, aws_error
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
CHUNKS_PER_TRANSACTION = PENDING_BATCH // SQS_BATCH
SQS_IN_FLIGHT = 4  # SendMessageBatch calls send_many has in flight at once


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


def _both(first: BaseException, then: BaseException) -> BaseException:
    """The first failure, saying the second too: people see str(err), so a note would be lost."""
    if isinstance(first, AwsError):
        return type(first)(
            f"{first}; and the pending records were not written: {then}", code=first.code, hint=first.hint
        )
    first.add_note(f"and the pending records were not written: {then}")
    return first


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

        Up to SQS_IN_FLIGHT SendMessageBatch calls are in flight at once (each call mostly waits
        on the network; the client is thread-safe); their answers are taken in order, on the
        caller's thread, so the report and `progress` read as if the calls took turns. Pending
        records are written in transactions of up to PENDING_BATCH items, one at a time on a thread
        of their own while the sends go on: one at a time because each also updates the day's
        counter item, and DynamoDB cancels transactions that touch the same item concurrently.

        A failure stops new sends at once: the calls already in flight finish, every message SQS
        accepted is recorded pending (unless the store is what failed), then the error is raised.
        """
        report = SendReport()
        chunks = [requests[start : start + SQS_BATCH] for start in range(0, len(requests), SQS_BATCH)]
        accepted: list[tuple[RefundRequest, str, str]] = []
        failure: BaseException | None = None
        store_failed = False
        with (
            ThreadPoolExecutor(max_workers=SQS_IN_FLIGHT, thread_name_prefix="sqs-send") as senders,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pending-records") as recorder,
        ):
            in_flight: deque[tuple[Sequence[RefundRequest], Future[Any]]] = deque()
            recording: Future[None] | None = None
            queued = taken = 0  # chunks handed to a sender; chunks whose answer was read
            # Chunks whose pending records are written (`safe`) or being written (`mark`): sends
            # go no further than two transactions' worth past what is written, so a store failure
            # stops the upload within that, as when sends and transactions took turns.
            safe = mark = 0
            unrecorded_limit = len(chunks) if self.store is None else 2 * CHUNKS_PER_TRANSACTION
            while True:
                if failure is None and recording is not None and recording.done():
                    failure = recording.exception()
                    store_failed = failure is not None
                    safe = mark
                while (
                    failure is None
                    and queued < min(len(chunks), safe + unrecorded_limit)
                    and len(in_flight) < SQS_IN_FLIGHT
                ):
                    in_flight.append((chunks[queued], senders.submit(self._send_batch, chunks[queued])))
                    queued += 1
                if not in_flight:
                    break
                chunk, sending = in_flight.popleft()
                try:
                    response = sending.result()
                except (ClientError, BotoCoreError) as err:
                    failure = failure or queue_error(err, self.queue_url)
                    continue
                except BaseException as err:  # Ctrl-C while waiting, or a bug: stop, keep what was sent
                    failure = failure or err
                    continue
                taken += 1
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
                if taken % CHUNKS_PER_TRANSACTION == 0 and failure is None:
                    if recording is not None:
                        wait([recording])  # the one before first: one transaction at a time
                        failure = recording.exception()
                        store_failed = failure is not None
                        safe = mark
                    if failure is None and accepted and self.store is not None:
                        recording = recorder.submit(self._record, accepted)
                        mark = taken
                        accepted = []
                    elif failure is None:  # nothing to write: no store, or every entry was refused
                        safe = mark = taken
                        accepted = []
                if progress and failure is None:
                    try:
                        progress(min(report.send_calls * SQS_BATCH, len(requests)), len(requests))
                    except BaseException as err:  # e.g. Streamlit stopping the script: as a failure
                        failure = err
            last = None if recording is None or store_failed else recording.exception()  # waits for it
            if last is not None:
                store_failed = True
                failure = last if failure is None else _both(failure, last)
        if not store_failed:
            try:
                self._record(accepted)
            except Exception as err:
                if failure is None:
                    raise
                failure = _both(failure, err)
        if failure is not None:
            raise failure
        return report

    def _send_batch(self, chunk: Sequence[RefundRequest]) -> Any:
        entries = [{"Id": str(i), "MessageBody": r.to_body()} for i, r in enumerate(chunk)]
        return self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]

    def _record(self, accepted: Sequence[tuple[RefundRequest, str, str]]) -> None:
        if self.store is not None and accepted:
            self.store.record_pending(accepted)
