"""The local stand-in for the Lambda's SQS event source mapping, invoking the real handler.

What it does, as the event source mapping does on AWS:

* long-polls the queue (``AttributeNames=All``, ``MessageAttributeNames=All``) and gathers a batch
  of up to ``BatchSize`` messages, waiting up to ``MaximumBatchingWindowInSeconds`` after the
  first one for more (or until the batch would pass Lambda's 6 MB event limit);
* builds the Lambda SQS event (``messageId``, ``receiptHandle``, ``body``, ``attributes`` with
  ``ApproximateReceiveCount``, ``SentTimestamp``..., ``messageAttributes``, ``md5OfBody``,
  ``eventSource``, ``eventSourceARN``, ``awsRegion``);
* invokes the handler in this process with a context whose remaining time counts down from the
  function's timeout;
* deletes (``DeleteMessageBatch``) only the messages not listed in ``batchItemFailures``. A
  response naming a message that is not in the batch, an exception, or a run past the timeout
  fails the whole batch, as on AWS. Failed messages are left alone: they reappear after the
  queue's visibility timeout, and the queue's redrive policy moves them to the dead-letter queue
  after maxReceiveCount receives.

One invocation at a time (one "execution environment"), which is what the handler's
per-invocation state assumes. Run it as its own process (``local up`` does)::

    python -m reditus_local.worker --queue-url URL

Settings not given on the command line come from template.yaml. The handler reads its own
configuration from the environment at import, as in Lambda.

Between polls it also plays the template's DynamoDB stream event source mapping (the day counters,
``reditus_refunds.counter_stream``, :class:`StreamMapping`): it reads the history table's stream on
the moto server (``dynamodbstreams``: DescribeStream, GetShardIterator from TRIM_HORIZON,
GetRecords), each shard in order and a parent shard before its children, and invokes the handler
with the event Lambda builds for a mapping with a tumbling window (``Records`` with
``eventSourceARN``, ``shardId``, ``window``, ``state``, ``isFinalInvokeForWindow``). A batch that
fails (an exception, or a response without ``state``) is retried from its first record at the
next poll; the shard waits meanwhile, as on AWS. A restarted worker reads the stream from
TRIM_HORIZON again: the counters' marks make that count nothing twice.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .child import watch_parent

if TYPE_CHECKING:
    from .resources import TemplateModel

logger = logging.getLogger("reditus_local.worker")

READY = "worker ready:"
MAX_RECEIVE = 10  # SQS's limit per ReceiveMessage
MAX_EVENT_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
MAX_WAIT_SECONDS = 20  # SQS's longest long poll
# The queue's long poll when the worker also reads the table's stream (between polls): the day
# counters then lag at most this long when the queue is idle (the template's batching window).
STREAM_POLL_SECONDS = 10
Handler = Callable[[dict[str, Any], Any], Any]


class FakeLambdaContext:
    """The parts of a Lambda context that Powertools and the handler read."""

    function_version = "$LATEST"
    identity = None
    client_context = None
    tenant_id = None

    def __init__(
        self,
        function_name: str,
        timeout_seconds: float,
        memory_mb: int = 128,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.function_name = function_name
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/{self.aws_request_id}"
        self._clock = clock
        self._deadline = clock() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - self._clock()) * 1000))


@dataclass(frozen=True)
class MappingSettings:
    """The event source mapping and the function, as template.yaml sets them."""

    queue_url: str
    batch_size: int = 10
    batching_window_seconds: float = 0.0
    timeout_seconds: float = 3.0
    function_name: str = "reditus-refunds-local-RefundSubmitterFunction"
    memory_mb: int = 128
    report_batch_item_failures: bool = True
    region: str = "us-east-1"
    wait_time_seconds: int = MAX_WAIT_SECONDS


@dataclass
class BatchResult:
    """One invocation: what was received, deleted and left for another delivery."""

    records: list[dict[str, Any]]
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str | None = None  # the whole batch failed: why
    duration: float = 0.0


def lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS message as Lambda hands it to the function."""
    attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        binary = value.get("BinaryValue")
        attributes[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": base64.b64encode(binary).decode() if isinstance(binary, bytes) else binary,
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": value.get("BinaryListValues", []),
            "dataType": value.get("DataType", "String"),
        }
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def failed_ids(response: Any, batch_ids: Sequence[str]) -> tuple[set[str], str | None]:
    """The message ids to leave for redelivery, by Lambda's rules for ReportBatchItemFailures."""
    if response is None or (isinstance(response, dict) and not response.get("batchItemFailures")):
        return set(), None
    if not isinstance(response, dict) or not isinstance(response.get("batchItemFailures"), list):
        return set(batch_ids), "the response is not a batchItemFailures list"
    failed: set[str] = set()
    for item in response["batchItemFailures"]:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not identifier or identifier not in batch_ids:
            # Lambda treats a failure it cannot match as a failure of the whole batch.
            return set(batch_ids), f"batchItemFailures names an unknown message {identifier!r}"
        failed.add(identifier)
    return failed, None


class _Interrupted(BaseException):
    """Raised by the signal handler to abandon an idle long poll (BaseException: botocore lets it by)."""


class EventSourceMapping:
    """Polls one queue and invokes one handler with its batches."""

    def __init__(
        self,
        sqs: Any,
        settings: MappingSettings,
        handler: Handler,
        *,
        on_batch: Callable[[BatchResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        between_polls: Sequence[Callable[[], object]] = (),
    ):
        self.sqs = sqs
        self.settings = settings
        self.handler = handler
        self.on_batch = on_batch
        self.clock = clock
        # Run before every poll, in this thread (the stream mapping, StreamStep). A step that
        # returns True has more work waiting: the next queue poll then does not wait for messages,
        # so a stream backlog is read at its own pace, not one batch per idle long poll (in AWS the
        # two mappings poll independently).
        self.between_polls = tuple(between_polls)
        self._queue_arn: str | None = None
        self.stopping = threading.Event()
        self._polling = False  # an idle long poll may be abandoned; a batch in hand may not

    @property
    def queue_arn(self) -> str:
        if self._queue_arn is None:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=self.settings.queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]
            self._queue_arn = str(attributes["QueueArn"])
        return self._queue_arn

    def _receive(self, max_messages: int, wait_seconds: int) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(
            QueueUrl=self.settings.queue_url,
            MaxNumberOfMessages=max(1, min(MAX_RECEIVE, max_messages)),
            WaitTimeSeconds=max(0, min(MAX_WAIT_SECONDS, wait_seconds)),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    def collect(self, wait_seconds: int | None = None) -> list[dict[str, Any]]:
        """One batch: a long poll for the first message, then the batching window for the rest."""
        settings = self.settings
        wait = settings.wait_time_seconds if wait_seconds is None else wait_seconds
        self._polling = True
        try:
            batch = self._receive(settings.batch_size, wait)
        finally:
            self._polling = False
        if not batch:
            return batch
        first_at = self.clock()
        size = sum(len(m.get("Body", "")) for m in batch)
        while len(batch) < settings.batch_size and not self.stopping.is_set():
            remaining = settings.batching_window_seconds - (self.clock() - first_at)
            if remaining <= 0:
                break
            more = self._receive(settings.batch_size - len(batch), math.ceil(remaining))
            for message in more:
                size += len(message.get("Body", ""))
                batch.append(message)
            if size >= MAX_EVENT_BYTES:
                break
        return batch

    def invoke(self, messages: list[dict[str, Any]]) -> BatchResult:
        """Invoke the handler with one batch and delete what it settled."""
        settings = self.settings
        records = [lambda_record(m, self.queue_arn, settings.region) for m in messages]
        ids = [r["messageId"] for r in records]
        result = BatchResult(records=records)
        context = FakeLambdaContext(
            settings.function_name, settings.timeout_seconds, settings.memory_mb, settings.region
        )
        started = self.clock()
        response: Any = None
        try:
            response = self.handler({"Records": records}, context)
        except Exception as err:  # a function error fails the batch, as in Lambda
            result.error = f"the function raised {type(err).__name__}: {err}"
            logger.debug("function error\n%s", traceback.format_exc())
        result.duration = self.clock() - started
        if result.error is None and result.duration > settings.timeout_seconds:
            # Lambda would have stopped the function and seen no response at all.
            result.error = f"Task timed out after {settings.timeout_seconds:.0f} seconds"
        failed: set[str] = set()
        if result.error is None and settings.report_batch_item_failures:
            failed, result.error = failed_ids(response, ids)
        if result.error:
            failed = set(ids)
        result.failed = [i for i in ids if i in failed]
        done = [r for r in records if r["messageId"] not in failed]
        result.deleted = self._delete(done)
        return result

    def _delete(self, records: list[dict[str, Any]]) -> list[str]:
        deleted: list[str] = []
        for start in range(0, len(records), MAX_RECEIVE):
            chunk = records[start : start + MAX_RECEIVE]
            response = self.sqs.delete_message_batch(
                QueueUrl=self.settings.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)],
            )
            for ok in response.get("Successful", []):
                deleted.append(chunk[int(ok["Id"])]["messageId"])
            for bad in response.get("Failed", []):
                logger.warning(
                    "could not delete message %s: %s", chunk[int(bad["Id"])]["messageId"], bad.get("Message")
                )
        return deleted

    def poll_once(self, wait_seconds: int | None = None) -> BatchResult | None:
        """One cycle: collect a batch (None if the queue stayed empty), invoke, delete."""
        messages = self.collect(wait_seconds)
        if not messages:
            return None
        result = self.invoke(messages)
        if self.on_batch:
            self.on_batch(result)
        return result

    def interrupt(self) -> None:
        """Ask the loop to stop after the batch in hand (from a signal handler: may raise)."""
        self.stopping.set()
        if self._polling:
            raise _Interrupted

    def run(self) -> None:
        """Poll until stopped; SQS errors (moto restarting, say) are retried with a growing pause."""
        backoff = 0.0
        while not self.stopping.is_set():
            behind = [step() is True for step in self.between_polls]
            if self.stopping.is_set():
                break
            try:
                self.poll_once(0 if any(behind) else None)
                backoff = 0.0
            except _Interrupted:
                break
            except (BotoCoreError, ClientError) as err:
                backoff = min(10.0, backoff * 2 or 0.5)
                logger.warning("cannot poll the queue (%s); trying again in %.1f s", err, backoff)
                self.stopping.wait(backoff)


# ---- the DynamoDB stream's event source mapping (the day counters) -------------------------------


@dataclass(frozen=True)
class StreamSettings:
    """The stream's event source mapping and its function, as template.yaml sets them."""

    stream_arn: str
    batch_size: int = 1000
    tumbling_window_seconds: int = 900
    timeout_seconds: float = 60.0
    function_name: str = "reditus-refunds-local-CounterStreamFunction"
    memory_mb: int = 256
    region: str = "us-east-1"


def stream_record(record: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """A record of GetRecords as Lambda hands it to the function: the stream's ARN added, the
    creation time in epoch seconds (boto3 parsed it into a datetime)."""
    data = dict(record.get("dynamodb") or {})
    created = data.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        data["ApproximateCreationDateTime"] = int(created.timestamp())
    return {
        "eventID": record.get("eventID"),
        "eventName": record.get("eventName"),
        "eventVersion": record.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": record.get("awsRegion"),
        "dynamodb": data,
        "eventSourceARN": stream_arn,
    }


def window_of(now: float, seconds: int) -> tuple[float, float]:
    """The tumbling window `now` falls in: windows start at multiples of their length."""
    start = math.floor(now / seconds) * seconds
    return start, start + seconds


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass
class _Shard:
    shard_id: str
    parent: str | None
    iterator: str | None = None
    last_sequence: str | None = None  # the last record delivered successfully
    closed: bool = False  # has an ending sequence number
    done: bool = False  # closed and read to its end
    window: tuple[float, float] | None = None
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class StreamPoll:
    """One pass over the stream's shards."""

    records: int = 0  # records delivered to successful invocations
    invocations: int = 0
    errors: list[str] = field(default_factory=list)
    behind: bool = False  # a shard gave a full batch: more records are probably waiting


class StreamMapping:
    """Reads one table's stream and invokes one handler with its records, shard by shard."""

    def __init__(
        self,
        streams: Any,
        settings: StreamSettings,
        handler: Handler,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.streams = streams
        self.settings = settings
        self.handler = handler
        self.clock = clock
        self.shards: dict[str, _Shard] = {}

    def _discover(self) -> None:
        kwargs: dict[str, Any] = {"StreamArn": self.settings.stream_arn}
        while True:
            description = self.streams.describe_stream(**kwargs)["StreamDescription"]
            for shard in description.get("Shards", []):
                known = self.shards.setdefault(
                    shard["ShardId"], _Shard(shard["ShardId"], shard.get("ParentShardId"))
                )
                known.closed = "EndingSequenceNumber" in (shard.get("SequenceNumberRange") or {})
            last = description.get("LastEvaluatedShardId")
            if not last:
                return
            kwargs["ExclusiveStartShardId"] = last

    def _iterator(self, shard: _Shard) -> str | None:
        if shard.iterator is None:
            kwargs: dict[str, Any] = {"StreamArn": self.settings.stream_arn, "ShardId": shard.shard_id}
            if shard.last_sequence is None:
                kwargs["ShardIteratorType"] = "TRIM_HORIZON"
            else:
                kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=shard.last_sequence)
            shard.iterator = self.streams.get_shard_iterator(**kwargs).get("ShardIterator")
            if shard.iterator is None:
                shard.done = True
        return shard.iterator

    def _ready(self, shard: _Shard) -> bool:
        """A child shard waits until its parent is read to its end (Lambda keeps a key's order)."""
        parent = self.shards.get(shard.parent) if shard.parent else None
        return not shard.done and (parent is None or parent.done)

    def poll_once(self) -> StreamPoll:
        """Read every ready shard once (up to one batch each) and invoke the function with what came."""
        self._discover()
        poll = StreamPoll()
        for shard in list(self.shards.values()):
            if not self._ready(shard):
                continue
            iterator = self._iterator(shard)
            if iterator is None:
                continue
            response = self.streams.get_records(ShardIterator=iterator, Limit=self.settings.batch_size)
            records = response.get("Records", [])
            following = response.get("NextShardIterator")
            if records:
                error = self._invoke(shard, records)
                if error is not None:
                    poll.errors.append(error)
                    shard.iterator = None  # retried from the batch's first record at the next poll
                    continue
                poll.records += len(records)
                poll.invocations += 1
                poll.behind = poll.behind or len(records) >= self.settings.batch_size
                shard.last_sequence = str(records[-1]["dynamodb"]["SequenceNumber"])
            else:
                self._close_window_if_due(shard, poll)
            shard.iterator = following
            if following is None:
                shard.done = True
        return poll

    def _event(self, shard: _Shard, records: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        assert shard.window is not None
        return {
            "Records": [stream_record(r, self.settings.stream_arn) for r in records],
            "window": {"start": _iso(shard.window[0]), "end": _iso(shard.window[1])},
            "state": dict(shard.state),
            "shardId": shard.shard_id,
            "eventSourceARN": self.settings.stream_arn,
            "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": False,
        }

    def _call(self, event: dict[str, Any]) -> tuple[Any, str | None]:
        settings = self.settings
        context = FakeLambdaContext(
            settings.function_name, settings.timeout_seconds, settings.memory_mb, settings.region
        )
        started = time.monotonic()
        try:
            response = self.handler(event, context)
        except Exception as err:  # a function error fails the batch, as in Lambda
            logger.debug("function error\n%s", traceback.format_exc())
            return None, f"the function raised {type(err).__name__}: {err}"
        if time.monotonic() - started > settings.timeout_seconds:
            return None, f"Task timed out after {settings.timeout_seconds:.0f} seconds"
        if not isinstance(response, dict) or not isinstance(response.get("state"), dict):
            # Lambda treats a windowed invocation whose response has no state as failed.
            return None, "the response has no state (a tumbling window needs one)"
        return response, None

    def _invoke(self, shard: _Shard, records: list[dict[str, Any]]) -> str | None:
        window = window_of(self.clock(), self.settings.tumbling_window_seconds or 1)
        if shard.window is not None and shard.window != window:
            error = self._final(shard)
            if error is not None:
                return error
        if shard.window != window:
            shard.window, shard.state = window, {}
        response, error = self._call(self._event(shard, records, final=False))
        if error is not None:
            logger.warning("%s: batch of %d record(s) failed: %s", shard.shard_id, len(records), error)
            return error
        shard.state = dict(response["state"])
        return None

    def _final(self, shard: _Shard) -> str | None:
        """The window's last invocation (no records here), then a fresh window."""
        _, error = self._call(self._event(shard, [], final=True))
        if error is not None:
            logger.warning("%s: the final invocation of its window failed: %s", shard.shard_id, error)
            return error
        shard.window, shard.state = None, {}
        return None

    def _close_window_if_due(self, shard: _Shard, poll: StreamPoll) -> None:
        if shard.window is not None and self.clock() >= shard.window[1]:
            error = self._final(shard)
            if error is None:
                poll.invocations += 1
            else:
                poll.errors.append(error)

    def drain(self, timeout_seconds: float = 60.0) -> int:
        """Poll until a whole pass finds no record (every record written so far has been applied);
        returns the records delivered. TimeoutError if the function keeps failing past the deadline."""
        deadline = time.monotonic() + timeout_seconds
        delivered = 0
        while True:
            poll = self.poll_once()
            delivered += poll.records
            if poll.records == 0 and not poll.errors:
                return delivered
            if time.monotonic() > deadline:
                why = "; ".join(poll.errors) or "records kept coming"
                raise TimeoutError(f"the stream was not drained in {timeout_seconds:g} s: {why}")


def stream_arn_of(dynamodb: Any, table_name: str) -> str:
    """The table's stream (its LatestStreamArn); ValueError if the table has none."""
    arn = dynamodb.describe_table(TableName=table_name)["Table"].get("LatestStreamArn")
    if not arn:
        raise ValueError(f"the table {table_name!r} has no stream")
    return str(arn)


def counter_handler(table_name: str, dynamodb: Any) -> Handler:
    """reditus_refunds.counter_stream's handler logic on the given client (no environment read)."""
    from reditus_refunds.counter_stream import CounterStream, DayCounterStore, apply_event

    stream = CounterStream(DayCounterStore(table_name, dynamodb))
    return lambda event, context: apply_event(stream, event)


def drain_stream(
    dynamodb: Any,
    streams: Any,
    table_name: str,
    handler: Handler | None = None,
    *,
    timeout_seconds: float = 60.0,
    batch_size: int = 1000,
) -> int:
    """Apply the table's whole stream once, from TRIM_HORIZON, to the day counters (the handler of
    reditus_refunds.counter_stream on `dynamodb` unless one is given); returns the records read.
    For tests and benchmarks against a moto server: `streams` is a `dynamodbstreams` client on the
    same endpoint. Records applied before are read again and count nothing."""
    settings = StreamSettings(stream_arn_of(dynamodb, table_name), batch_size=batch_size)
    mapping = StreamMapping(streams, settings, handler or counter_handler(table_name, dynamodb))
    return mapping.drain(timeout_seconds)


def stream_reporter() -> Callable[[StreamPoll], None]:
    """One line per poll that applied records or failed (silent otherwise)."""

    def report(poll: StreamPoll) -> None:
        if poll.records:
            print(f"day counters: applied {poll.records} stream record(s)", flush=True)
        for error in poll.errors:
            print(f"day counters: a stream batch failed, retried at the next poll - {error}", flush=True)

    return report


class StreamStep:
    """The stream mapping as a step between queue polls; stream errors are logged, never fatal."""

    def __init__(self, mapping: StreamMapping, on_poll: Callable[[StreamPoll], None] | None = None):
        self.mapping = mapping
        self.on_poll = on_poll

    def __call__(self) -> bool:
        """One pass over the stream; True if it is behind (a full batch came: read again soon)."""
        try:
            poll = self.mapping.poll_once()
        except (BotoCoreError, ClientError) as err:
            logger.warning("cannot read the table's stream (%s); trying again at the next poll", err)
            return False
        if self.on_poll is not None:
            self.on_poll(poll)
        return poll.behind


# ---- the process ---------------------------------------------------------------------------------


def stream_step(model: TemplateModel, session: Any, region: str, quiet: bool) -> StreamStep | None:
    """The template's stream-triggered function (the day counters) on the table's stream, its
    handler imported (an import failure raises, as a cold start would fail); None if the template
    has none. The table's name is the function's HISTORY_TABLE_NAME (the environment, as in Lambda)."""
    from .resources import stream_function_settings

    function = stream_function_settings(model)
    if function is None:
        return None
    table = os.environ.get("HISTORY_TABLE_NAME") or model.physical_name(function.table_logical_id)
    handler = load_handler(function.handler)
    settings = StreamSettings(
        stream_arn=stream_arn_of(session.client("dynamodb"), table),
        batch_size=function.batch_size,
        tumbling_window_seconds=function.tumbling_window_seconds,
        timeout_seconds=float(function.timeout_seconds),
        function_name=function.function_name,
        memory_mb=function.memory_mb,
        region=region,
    )
    mapping = StreamMapping(session.client("dynamodbstreams"), settings, handler)
    return StreamStep(mapping, None if quiet else stream_reporter())


def load_handler(path: str) -> Handler:
    """`package.module.attribute`, as in the template's Handler property."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"the handler must be module.function, got {path!r}")
    module = importlib.import_module(module_name)
    handler: Handler = getattr(module, attribute)
    return handler


def outcome_reporter(table_name: str | None, dynamodb: Any) -> Callable[[BatchResult], None]:
    """One line per batch, and per message the outcome the history now holds (local only: reads)."""
    store = None
    if table_name:
        from reditus_operators.history import HistoryReader

        store = HistoryReader(table_name, dynamodb)

    def report(result: BatchResult) -> None:
        counts = [r["attributes"].get("ApproximateReceiveCount", "?") for r in result.records]
        line = f"batch of {len(result.records)} ({result.duration:.2f} s): {len(result.deleted)} deleted"
        if result.failed:
            line += f", {len(result.failed)} left to come back after the visibility timeout"
        if any(c != "1" for c in counts):
            line += f" (receive counts {','.join(counts)})"
        print(line + (f" - {result.error}" if result.error else ""), flush=True)
        if store is None:
            return
        for record in result.records:
            try:
                body = json.loads(record["body"])
                refund_id = body.get("refund_id") or record["messageId"]
                payment_id = body.get("payment_id")
            except (ValueError, AttributeError):
                refund_id, payment_id = record["messageId"], None
            try:
                history = store.get(str(refund_id))
            except Exception:  # this is only a log line
                history = None
            if history is None:
                continue
            status = f" {history.http_status}" if history.http_status else ""
            detail = (
                f" - {history.detail[:120]}" if history.detail and history.outcome.value != "refunded" else ""
            )
            outcome = f"{history.outcome.value}{status}"
            print(f"  payment {payment_id or '?'}: {outcome} (refund {refund_id}){detail}", flush=True)

    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reditus_local.worker",
        description="Poll the refund queue and invoke the Lambda handler, like its SQS event source mapping.",
    )
    parser.add_argument(
        "--queue-url", default=os.environ.get("REFUND_QUEUE_URL"), help="default $REFUND_QUEUE_URL"
    )
    parser.add_argument("--template", default=None, help="template.yaml to read the defaults below from")
    parser.add_argument("--handler", help="module.function (default: the template's Handler)")
    parser.add_argument("--batch-size", type=int, help="default: the template's BatchSize")
    parser.add_argument("--batching-window", type=float, help="seconds; default: the template's")
    parser.add_argument("--timeout", type=float, help="function timeout in seconds; default: the template's")
    parser.add_argument("--memory", type=int, help="MB; default: the template's")
    parser.add_argument("--function-name", help="name the context reports")
    parser.add_argument(
        "--wait-time", type=int, default=MAX_WAIT_SECONDS, help="long poll seconds (default 20)"
    )
    parser.add_argument("--no-report-batch-item-failures", action="store_true", help="whole batches only")
    parser.add_argument("--quiet", action="store_true", help="no per-message outcome lines")
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone")
    parser.add_argument(
        "--no-stream", action="store_true", help="do not read the table's stream (no day counters)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own lines at INFO; libraries (botocore says where it found credentials) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    if not args.queue_url:
        print("error: no queue: pass --queue-url or set REFUND_QUEUE_URL", file=sys.stderr)
        return 2
    from .resources import DEFAULT_TEMPLATE, ResourceError, TemplateModel, function_settings

    try:
        model = TemplateModel.load(args.template or DEFAULT_TEMPLATE)
        function = function_settings(model)
    except ResourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    settings = MappingSettings(
        queue_url=args.queue_url,
        batch_size=args.batch_size or function.batch_size,
        batching_window_seconds=(
            function.batching_window_seconds if args.batching_window is None else args.batching_window
        ),
        timeout_seconds=args.timeout or function.timeout_seconds,
        function_name=args.function_name or function.function_name,
        memory_mb=args.memory or function.memory_mb,
        report_batch_item_failures=function.report_batch_item_failures
        and not args.no_report_batch_item_failures,
        region=region,
        wait_time_seconds=args.wait_time if args.no_stream else min(args.wait_time, STREAM_POLL_SECONDS),
    )
    try:
        # As in Lambda, the module's import is the cold start: it reads the configuration.
        handler = load_handler(args.handler or function.handler)
    except Exception as err:  # any import failure is fatal; say it in one line
        print(f"error: the handler cannot start: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    session = boto3.session.Session(region_name=region)
    try:
        stream = None if args.no_stream else stream_step(model, session, region, args.quiet)
    except Exception as err:  # an import failure is a failed cold start; say it in one line
        print(f"error: the stream function cannot start: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    client_config = Config(
        retries={"mode": "standard", "max_attempts": 3}, read_timeout=MAX_WAIT_SECONDS + 10
    )
    sqs = session.client("sqs", config=client_config)
    reporter = (
        None
        if args.quiet
        else outcome_reporter(os.environ.get("HISTORY_TABLE_NAME"), session.client("dynamodb"))
    )
    mapping = EventSourceMapping(
        sqs, settings, handler, on_batch=reporter, between_polls=[stream] if stream else []
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        mapping.interrupt()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.parent_pid:
        watch_parent(args.parent_pid)
    print(
        f"{READY} polling {settings.queue_url.rsplit('/', 1)[-1]} (batch size {settings.batch_size}, "
        f"window {settings.batching_window_seconds:g} s, timeout {settings.timeout_seconds:g} s)"
        + ("" if stream is None else f"; the table's stream for {stream.mapping.settings.function_name}"),
        flush=True,
    )
    with contextlib.suppress(_Interrupted):
        mapping.run()
    print("worker stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
