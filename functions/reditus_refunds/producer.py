"""RefundProducer: puts refund requests on the queue (console, CLI, CSV, webhooks), each recorded
pending in the history first.

A request's pending record is written BEFORE its message is sent, so the Lambda never takes up a
message whose record is still to come (the producer knows the refund_id beforehand: the request
carries it). That order is what lets the bulk path write records as BatchWriteItem Puts, 25 per
call and 1 write unit each, which cannot carry a condition: nobody else can have written the item
yet (HistoryWriter's producer side says which race remains). A request recorded but then not
queued (SQS refused it, the send failed, the upload stopped) has its record forgotten before the
call returns or raises, so the records a call leaves are exactly the requests SQS accepted. A
process killed between the two leaves a pending record with no message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .aws_errors import AwsError, QueueError, StoreError, aws_error
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
PENDING_GROUP = 100  # requests recorded pending at once: BatchGetItem's limit of keys per call
SQS_IN_FLIGHT = 4  # SendMessageBatch calls send_many has in flight at once
# Groups whose records send_many writes ahead of the group being sent, at once: more keeps the
# table busier but leaves more records to forget after a failure (up to this many groups' worth).
RECORDED_AHEAD = 2


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


NOT_WRITTEN = "the pending records were not written"
NOT_REMOVED = "the pending records of the requests not queued were not removed"


def _both(first: BaseException, then: BaseException, what: str) -> BaseException:
    """The first failure, saying the second too: people see str(err), so a note would be lost."""
    if isinstance(first, AwsError):
        return type(first)(f"{first}; and {what}: {then}", code=first.code, hint=first.hint)
    first.add_note(f"and {what}: {then}")
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

        A request sent now is recorded pending once SQS has accepted it (a conditional PutItem:
        HistoryWriter.record_sent; if the Lambda got there first, its item stands), so a record
        always stands for a message that exists: the webhook receiver reads an existing record as
        "already sent". A delayed send, a 404 re-check, records nothing: its refund has a record.
        `attributes` become String message attributes (e.g. RECHECK_ATTRIBUTE on a 404 re-check,
        REDRIVE_REFUND_ID_ATTRIBUTE on a redriven dead letter); the body is the published
        contract, unchanged.
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
        message_id = str(response["MessageId"])
        if self.store is not None and delay_seconds == 0:
            self.store.record_sent(request, message_id, iso(self.clock()))
        return message_id

    def send_many(
        self,
        requests: Sequence[RefundRequest],
        progress: Callable[[int, int], None] | None = None,
        *,
        minted_ids: bool = False,
        into: SendReport | None = None,
    ) -> SendReport:
        """Queue many requests, ten per SQS call, each recorded pending before it is sent.

        `minted_ids=True` is the caller's word that every refund_id was minted for this send
        (contract.new_refund_id: a CSV row, a requeue): none can exist yet, so the read that keeps
        a record from replacing an existing item is left out (half a read unit per request, and a
        BatchGetItem per group). Requests with ids someone supplied go without it.

        `into`: the report to fill in (returned), as each SQS answer is taken. Its holder still
        knows what was queued when this raises: a caller that resumes a stopped send (the console's
        bulk upload after a rerun or a failure) must not send those again, since a second send of
        a minted refund_id would be a second message and would record it pending over its item.

        The requests go in groups of PENDING_GROUP: a group's pending records are written (one
        BatchGetItem, then BatchWriteItem Puts: HistoryWriter.record_pending) before any of it is
        sent. The records of the RECORDED_AHEAD groups after the one being sent are written while
        its sends go on, on threads of their own (with moto, the pending records are what limits
        the pace: bench/bulk.py). Up to SQS_IN_FLIGHT SendMessageBatch calls are in flight at once
        (each mostly waits on the network; the client is thread-safe); their answers are taken in
        order, on the caller's thread, so the report and `progress` read as if the calls took
        turns.

        A failure (the queue, the store, `progress` raising, Ctrl-C) stops new sends at once: the
        calls in flight finish, and a group whose records failed is not sent at all. Before this
        returns or raises, the records of requests that were not queued (refused entries, groups
        recorded but not sent) are forgotten: the records this call leaves are exactly the
        requests SQS accepted.
        """
        report = SendReport() if into is None else into
        store = self.store
        groups = [requests[start : start + PENDING_GROUP] for start in range(0, len(requests), PENDING_GROUP)]
        chunks = [
            (number, group[start : start + SQS_BATCH])
            for number, group in enumerate(groups)
            for start in range(0, len(group), SQS_BATCH)
        ]
        recorded: set[str] = set()  # refund_ids whose pending record this call wrote
        accepted: set[str] = set()  # refund_ids SQS accepted
        failure: BaseException | None = None
        ready = len(groups) if store is None else 0  # groups recorded, so free to send
        asked: set[str] = set()  # refund_ids handed to record_pending
        with (
            ThreadPoolExecutor(max_workers=SQS_IN_FLIGHT, thread_name_prefix="sqs-send") as senders,
            ThreadPoolExecutor(max_workers=RECORDED_AHEAD, thread_name_prefix="pending-records") as recorder,
        ):
            in_flight: deque[tuple[Sequence[RefundRequest], Future[Any]]] = deque()
            recordings: deque[Future[set[str]]] = deque()  # of groups[ready], groups[ready + 1]...
            queued = 0  # chunks handed to a sender

            def record_next() -> None:
                """Start the records of the groups after those being sent, RECORDED_AHEAD at most
                (so a failure leaves few records to forget)."""
                while store is not None and failure is None and ready + len(recordings) < len(groups):
                    following = ready + len(recordings)
                    begun = chunks[queued - 1][0] + 1 if queued else 0  # groups that began to go
                    if following - begun >= RECORDED_AHEAD:
                        return
                    # A refund_id this call asked for already is not recorded (nor forgotten) again.
                    todo = [r for r in groups[following] if r.refund_id not in asked]
                    asked.update(r.refund_id for r in todo)
                    recordings.append(
                        recorder.submit(self._record, store, todo, iso(self.clock()), minted_ids)
                    )

            def take_recordings() -> None:
                """The records that are written, in group order: those groups may go."""
                nonlocal ready, failure
                while recordings and recordings[0].done():
                    try:
                        recorded.update(recordings.popleft().result())
                    except BaseException as err:  # record_pending forgot what it wrote before raising
                        failure = err if failure is None else _both(failure, err, NOT_WRITTEN)
                        continue
                    if failure is None:
                        ready += 1

            while True:
                try:
                    take_recordings()
                    while (
                        failure is None
                        and queued < len(chunks)
                        and chunks[queued][0] < ready
                        and len(in_flight) < SQS_IN_FLIGHT
                    ):
                        chunk = chunks[queued][1]
                        in_flight.append((chunk, senders.submit(self._send_batch, chunk)))
                        queued += 1
                    record_next()
                    if not in_flight:
                        if not recordings:
                            break
                        wait([recordings[0]])
                        continue
                    chunk, sending = in_flight[0]
                    if recordings and not sending.done():
                        # Whichever comes first: the oldest answer, or the next group ready to send.
                        wait([sending, recordings[0]], return_when=FIRST_COMPLETED)
                        continue
                    in_flight.popleft()
                    try:
                        response = sending.result()
                    except (ClientError, BotoCoreError) as err:
                        if failure is None:
                            failure = queue_error(err, self.queue_url)
                        continue
                    report.send_calls += 1
                    for ok in response.get("Successful", []):
                        request = chunk[int(ok["Id"])]
                        accepted.add(request.refund_id)
                        report.sent.append(request)
                    for bad in response.get("Failed", []):
                        report.failed.append(
                            (chunk[int(bad["Id"])], f"{bad.get('Code')}: {bad.get('Message', '')}")
                        )
                    if progress and failure is None:
                        progress(min(report.send_calls * SQS_BATCH, len(requests)), len(requests))
                except BaseException as err:  # progress raising (Streamlit stopping), Ctrl-C, a bug
                    if failure is None:
                        failure = err
        unsent = recorded - accepted
        if unsent and store is not None:
            try:
                store.forget_pending(unsent)
            except StoreError as err:
                if failure is None:
                    failure = StoreError(
                        f"{len(unsent)} requests were not queued and their pending records were "
                        f"not all removed: {err}",
                        code=err.code,
                        hint=err.hint,
                    )
                else:
                    failure = _both(failure, err, NOT_REMOVED)
        if failure is not None:
            raise failure
        return report

    def _send_batch(self, chunk: Sequence[RefundRequest]) -> Any:
        entries = [{"Id": str(i), "MessageBody": r.to_body()} for i, r in enumerate(chunk)]
        return self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]

    @staticmethod
    def _record(
        store: HistoryWriter, requests: Sequence[RefundRequest], queued_at: str, minted: bool
    ) -> set[str]:
        return store.record_pending(requests, queued_at, minted=minted) if requests else set()
