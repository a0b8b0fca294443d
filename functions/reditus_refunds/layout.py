"""The history table's item layout: keys, index names and the attribute codec.

One table holds refund items (keyed by refund_id), payment markers and per-day counters. The
writer, the operators' reader, the template tests and the local stack all read these names.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

HASH_KEY = "refund_id"
GSI_BY_OUTCOME = "by_outcome"  # outcome + queued_at
GSI_BY_DAY = "by_day"  # queued_day + queued_at
GSI_BY_PAYMENT = "by_payment"  # payment_id + queued_at
GSI_BY_REQUESTER = "by_requester"  # requested_by + queued_at
INDEXES = {
    GSI_BY_OUTCOME: ("outcome", "queued_at"),
    GSI_BY_DAY: ("queued_day", "queued_at"),
    GSI_BY_PAYMENT: ("payment_id", "queued_at"),
    GSI_BY_REQUESTER: ("requested_by", "queued_at"),
}
# What each index holds besides its keys (template.yaml declares the same; tests/test_template.py
# checks it). Every index entry written costs a write unit, and so does every change to an attribute
# an index holds, so each holds as little as its page needs:
# - by_outcome serves the outcome filter, so it holds what a list row shows (the console's table
#   and its CSV export, the CLI's table). A refund enters it with its first result: while pending,
#   the item has no `outcome` attribute at all (records read it as pending), so the producer's
#   record and the claim write no entry, and the result writes one instead of moving one.
# - by_day, by_payment and by_requester hold keys only: their entries are written once, with the
#   pending record, and never again (their keys never change and they project nothing the claim or
#   the result writes); their pages read the page's items by key (one BatchGetItem).
# One refund's detail (its attempt log, message id, error kind) is read by key.
LIST_ATTRIBUTES = (
    "payment_id",
    "outcome",
    "queued_at",
    "requested_by",
    "note",
    "source",
    "source_event_id",
    "force",
    "http_status",
    "detail",
    "attempts",
    "completed_at",
    "latency_ms",
    "duplicate_of",
    "requeue_of",
)
KEYS_ONLY = ()
INDEX_PROJECTIONS: dict[str, tuple[str, ...]] = {
    GSI_BY_OUTCOME: tuple(a for a in LIST_ATTRIBUTES if a not in INDEXES[GSI_BY_OUTCOME]),
    GSI_BY_DAY: KEYS_ONLY,
    GSI_BY_PAYMENT: KEYS_ONLY,
    GSI_BY_REQUESTER: KEYS_ONLY,
}
# Attributes that key an index: DynamoDB refuses an empty string in any of them.
INDEX_KEY_ATTRIBUTES = frozenset(a for pair in INDEXES.values() for a in pair)
# Items that are not refund requests share the table under prefixed keys; refund ids
# cannot contain '#', so they never collide, and they lack the index attributes.
PAYMENT_MARKER_PREFIX = "payment#"
COUNTER_PREFIX = "counter#"


# boto3's codec, loaded on first use: the pure modules (records, outcomes) import the names above
# and must not load boto3 and botocore with them.
@cache
def _serializer() -> TypeSerializer:
    from boto3.dynamodb.types import TypeSerializer

    return TypeSerializer()


@cache
def _deserializer() -> TypeDeserializer:
    from boto3.dynamodb.types import TypeDeserializer

    return TypeDeserializer()


def to_attr(value: Any) -> dict[str, Any]:
    return dict(_serializer().serialize(value))


def to_item(data: dict[str, Any]) -> dict[str, Any]:
    ser = _serializer()
    return {k: ser.serialize(v) for k, v in data.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    de = _deserializer()
    return {k: de.deserialize(v) for k, v in item.items()}


def item_key(refund_id: str) -> dict[str, Any]:
    return {HASH_KEY: {"S": refund_id}}


def marker_key(payment_id: str) -> dict[str, Any]:
    return {HASH_KEY: {"S": PAYMENT_MARKER_PREFIX + payment_id}}


def counter_key(day: str) -> dict[str, Any]:
    return {HASH_KEY: {"S": COUNTER_PREFIX + day}}
