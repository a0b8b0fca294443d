"""Save the local stack's state when it stops, and put it back when it starts again.

Saved: every item of every DynamoDB table (refund records, payment markers, day counters) and
every message of every SQS queue - including the ones in flight (waiting out a visibility
timeout after a failed attempt) and the delayed 404 re-checks, which the SQS API cannot list.
So the messages are read from the moto backend inside the moto server process
(:func:`collect`), at the moment that process is asked to stop; the items through the
DynamoDB API (a Scan: acceptable for this local backup, never used by the system itself).

Restored through the public APIs (:func:`restore`): items with BatchWriteItem (except the day
counters of a table with a stream: the worker counts the restored items again), messages sent
again (a delayed one keeps what was left of its delay; one that was in flight is visible at once,
and counts its receives from zero again: SQS has no way to set them).
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from reditus_refunds.layout import COUNTER_PREFIX, HASH_KEY
from reditus_refunds.records import iso, utc_now

from .resources import moto_session

SNAPSHOT_FILE = "snapshot.json"
PREVIOUS_SNAPSHOT_FILE = "snapshot.previous.json"
FORMAT = "reditus-refunds-local-snapshot/1"
MAX_DELAY_SECONDS = 900  # the SQS limit


class SnapshotError(RuntimeError):
    """The snapshot file cannot be read or does not fit the stack."""


@dataclass(frozen=True)
class RestoreReport:
    items: int
    messages: int
    saved_at: str
    skipped: tuple[str, ...]  # tables or queues of the snapshot the stack does not have


def _messages_of(queue: Any, now_ms: float) -> list[dict[str, Any]]:
    saved = []
    for message in list(queue._messages):  # the API cannot list in-flight messages
        attributes = {}
        for name, value in (message.message_attributes or {}).items():
            entry = {"DataType": value.get("data_type") or value.get("DataType")}
            string = value.get("string_value", value.get("StringValue"))
            binary = value.get("binary_value", value.get("BinaryValue"))
            if string is not None:
                entry["StringValue"] = string
            if binary is not None:
                entry["BinaryValue"] = (
                    binary if isinstance(binary, str) else base64.b64encode(binary).decode()
                )
            attributes[name] = entry
        saved.append(
            {
                "body": message.body,
                "message_attributes": attributes,
                "receive_count": int(message.approximate_receive_count),
                "sent_timestamp": message.sent_timestamp,
                "delay_seconds": max(0, math.ceil((float(message.delayed_until) - now_ms) / 1000)),
                "in_flight": float(message.visible_at) > now_ms,
            }
        )
    return saved


def collect(endpoint_url: str, region: str) -> dict[str, Any]:
    """The whole state of this process's moto backends (call it inside the moto server process)."""
    from moto.sqs.models import sqs_backends

    now_ms = time.time() * 1000
    queues: dict[str, list[dict[str, Any]]] = {}
    for _account, _region, backend in list(sqs_backends.iter_backends()):
        for name, queue in list(backend.queues.items()):  # type: ignore[attr-defined]
            queues[name] = _messages_of(queue, now_ms)
    session = moto_session(region)
    dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)
    tables: dict[str, list[dict[str, Any]]] = {}
    for page in dynamodb.get_paginator("list_tables").paginate():
        for table in page["TableNames"]:
            items: list[dict[str, Any]] = []
            for scanned in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
                items += scanned["Items"]
            tables[table] = items
    return {"format": FORMAT, "saved_at": iso(utc_now()), "tables": tables, "queues": queues}


def write(snapshot: dict[str, Any], path: Path) -> None:
    """Atomically: a crash while writing leaves the previous snapshot whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot))
    os.replace(tmp, path)


def read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise SnapshotError(f"cannot read {path}: {err.strerror}") from None
    except ValueError:
        raise SnapshotError(
            f"{path} is not a snapshot (not JSON); move it away or start with --fresh"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f"{path} is not a {FORMAT} snapshot; move it away or start with --fresh")
    return data


def summary(snapshot: dict[str, Any]) -> tuple[int, int]:
    """(items, messages) in a snapshot."""
    items = sum(len(v) for v in snapshot.get("tables", {}).values())
    messages = sum(len(v) for v in snapshot.get("queues", {}).values())
    return items, messages


def _is_counter(item: dict[str, Any]) -> bool:
    return str((item.get(HASH_KEY) or {}).get("S", "")).startswith(COUNTER_PREFIX)


def _write_items(dynamodb: Any, table: str, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), 25):
        pending: dict[str, Any] = {table: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]}
        for _ in range(10):
            left = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if not left:
                break
            pending = left
        else:
            raise SnapshotError(f"moto kept items of {table} unprocessed")


def _send_messages(sqs: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 10):
        entries = []
        for index, message in enumerate(messages[start : start + 10]):
            entry: dict[str, Any] = {
                "Id": str(index),
                "MessageBody": message["body"],
                "DelaySeconds": min(int(message.get("delay_seconds", 0)), MAX_DELAY_SECONDS),
            }
            if message.get("message_attributes"):
                entry["MessageAttributes"] = {
                    name: (
                        {**value, "BinaryValue": base64.b64decode(value["BinaryValue"])}
                        if "BinaryValue" in value
                        else value
                    )
                    for name, value in message["message_attributes"].items()
                }
            entries.append(entry)
        failed = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed") or []
        if failed:
            raise SnapshotError(f"moto refused restored messages: {failed[0].get('Message', failed[0])}")


def restore(snapshot: dict[str, Any], dynamodb: Any, sqs: Any) -> RestoreReport:
    """Put a snapshot's items and messages into the (freshly created, empty) local resources.

    A failure says what was refused; the snapshot file is not touched here, and the local AWS server
    does not save over a snapshot that was not restored (awsserver.py).
    """
    try:
        return _restore(snapshot, dynamodb, sqs)
    except (ClientError, BotoCoreError) as err:
        raise SnapshotError(f"{err}; the snapshot is kept as it was") from None


def _restore(snapshot: dict[str, Any], dynamodb: Any, sqs: Any) -> RestoreReport:
    existing_tables = set(dynamodb.list_tables()["TableNames"])
    skipped: list[str] = []
    items = messages = 0
    for table, table_items in snapshot.get("tables", {}).items():
        if table not in existing_tables:
            skipped.append(f"table {table}")
            continue
        if dynamodb.describe_table(TableName=table)["Table"].get("LatestStreamArn"):
            # The day counters are kept from the table's stream, which the restored refund items
            # go through again (the worker reads it from its start): restored too, they would
            # count every refund twice.
            table_items = [i for i in table_items if not _is_counter(i)]
        try:
            _write_items(dynamodb, table, table_items)
        except ClientError as err:
            raise SnapshotError(f"table {table}: {err}; the snapshot is kept as it was") from None
        items += len(table_items)
    for name, queue_messages in snapshot.get("queues", {}).items():
        if not queue_messages:
            continue
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except sqs.exceptions.QueueDoesNotExist:
            skipped.append(f"queue {name}")
            continue
        _send_messages(sqs, url, queue_messages)
        messages += len(queue_messages)
    return RestoreReport(items, messages, str(snapshot.get("saved_at", "?")), tuple(skipped))
