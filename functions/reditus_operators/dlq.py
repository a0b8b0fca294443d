"""DeadLetterQueue: list, redrive and delete the messages SQS gave up on."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reditus_refunds.aws_errors import BotoCoreError, ClientError
from reditus_refunds.contract import REFUND_ID_PATTERN
from reditus_refunds.outcomes import REDRIVE_REFUND_ID_ATTRIBUTE
from reditus_refunds.producer import QueueError, queue_error


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    body: str
    receive_count: int
    sent_at_ms: int
    payment_id: str | None
    refund_id: str | None
    receipt_handle: str


def _peek_ids(body: str) -> tuple[str | None, str | None]:
    """(payment_id, refund_id) of a body, when it has them as text; never raises, whatever the body.

    A dead letter is whatever a producer sent: the parser refuses deep nesting with RecursionError,
    long numbers with ValueError, and may hand back lone surrogates that no page or terminal can
    show; all of them read as "no ids".
    """
    try:
        data = json.loads(body)
    except Exception:  # any body at all: RecursionError, ValueError, MemoryError, TypeError...
        return None, None
    if not isinstance(data, dict):
        return None, None
    return _text(data.get("payment_id")), _text(data.get("refund_id"))


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        return None
    return value


def original_refund_id(message_id: str, body: str) -> str:
    """The refund_id the Lambda used for this message: the body's, if valid, else the MessageId."""
    refund_id = _peek_ids(body)[1]
    if refund_id is not None and REFUND_ID_PATTERN.fullmatch(refund_id):
        return refund_id
    return message_id


class DeadLetterQueue:
    """Works on any SQS queue pair; redrive is receive, send, delete (moto lacks StartMessageMoveTask,
    and this keeps per-message selection possible on AWS too)."""

    def __init__(self, sqs: Any, dlq_url: str, queue_url: str, visibility_timeout: int = 30):
        self.sqs = sqs
        self.dlq_url = dlq_url
        self.queue_url = queue_url
        self.visibility_timeout = visibility_timeout

    def _receive(self, max_messages: int = 10, visibility: int | None = None) -> list[dict[str, Any]]:
        try:
            response = self.sqs.receive_message(
                QueueUrl=self.dlq_url,
                MaxNumberOfMessages=max_messages,
                AttributeNames=["All"],
                VisibilityTimeout=self.visibility_timeout if visibility is None else visibility,
                WaitTimeSeconds=0,
            )
        except (ClientError, BotoCoreError) as err:
            raise queue_error(err, self.dlq_url) from None
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    @staticmethod
    def _to_letter(message: dict[str, Any]) -> DeadLetter:
        attrs = message.get("Attributes", {})
        payment, refund = _peek_ids(message.get("Body", ""))
        return DeadLetter(
            message_id=message["MessageId"],
            body=message.get("Body", ""),
            receive_count=int(attrs.get("ApproximateReceiveCount", 0)),
            sent_at_ms=int(attrs.get("SentTimestamp", 0)),
            payment_id=payment,
            refund_id=refund,
            receipt_handle=message["ReceiptHandle"],
        )

    def count(self) -> int:
        try:
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
        except (ClientError, BotoCoreError) as err:
            raise queue_error(err, self.dlq_url) from None
        return int(attrs.get("ApproximateNumberOfMessages", 0))

    def peek(self, limit: int = 1000) -> list[DeadLetter]:
        """Peek at the dead letters: they are received with a short visibility and released at once."""
        seen: dict[str, DeadLetter] = {}
        handles: list[str] = []
        empty_rounds = 0
        while len(seen) < limit and empty_rounds < 2:
            batch = self._receive(visibility=30)
            if not batch:
                empty_rounds += 1
                continue
            new = 0
            for message in batch:
                letter = self._to_letter(message)
                handles.append(letter.receipt_handle)
                if letter.message_id not in seen:
                    seen[letter.message_id] = letter
                    new += 1
            if new == 0:
                break
        self._release(handles)
        return list(seen.values())

    def _release(self, handles: Iterable[str]) -> None:
        batch = list(handles)
        for start in range(0, len(batch), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(batch[start : start + 10])
            ]
            try:
                self.sqs.change_message_visibility_batch(QueueUrl=self.dlq_url, Entries=entries)
            except (ClientError, BotoCoreError):
                continue  # they come back by themselves after the visibility timeout

    def redrive(self, message_ids: Iterable[str] | None = None) -> list[str]:
        """Move the chosen dead letters (all when None) back to the refund queue; returns their ids."""
        wanted = None if message_ids is None else set(message_ids)
        moved: list[str] = []
        skipped: list[str] = []
        while True:
            batch = self._receive()
            if not batch:
                break
            progress = False
            for message in batch:
                if wanted is not None and message["MessageId"] not in wanted:
                    skipped.append(message["ReceiptHandle"])
                    continue
                # The copy gets a new MessageId; without the attribute that would become a new
                # refund_id (when the body names none) and orphan the dead-lettered record.
                refund_id = original_refund_id(message["MessageId"], message["Body"])
                try:
                    self.sqs.send_message(
                        QueueUrl=self.queue_url,
                        MessageBody=message["Body"],
                        MessageAttributes={
                            REDRIVE_REFUND_ID_ATTRIBUTE: {"DataType": "String", "StringValue": refund_id}
                        },
                    )
                    self.sqs.delete_message(QueueUrl=self.dlq_url, ReceiptHandle=message["ReceiptHandle"])
                except (ClientError, BotoCoreError) as err:
                    self._release(skipped)
                    raise queue_error(err, self.queue_url) from None
                moved.append(message["MessageId"])
                progress = True
            if wanted is not None and wanted <= set(moved):
                break
            if not progress:
                break
        self._release(skipped)
        return moved

    def delete(self, message_ids: Iterable[str]) -> list[str]:
        wanted = set(message_ids)
        deleted: list[str] = []
        skipped: list[str] = []
        while wanted - set(deleted):
            batch = self._receive()
            if not batch:
                break
            progress = False
            for message in batch:
                if message["MessageId"] in wanted:
                    try:
                        self.sqs.delete_message(QueueUrl=self.dlq_url, ReceiptHandle=message["ReceiptHandle"])
                    except (ClientError, BotoCoreError) as err:
                        raise queue_error(err, self.dlq_url) from None
                    deleted.append(message["MessageId"])
                    progress = True
                else:
                    skipped.append(message["ReceiptHandle"])
            if not progress:
                break
        self._release(skipped)
        return deleted


__all__ = ["DeadLetter", "DeadLetterQueue", "QueueError", "original_refund_id"]
