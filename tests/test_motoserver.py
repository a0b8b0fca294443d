"""The local stack's moto server: transactions roll back per item, DynamoDB requests are serialised,
SQS answers as moto does without its O(queue size) costs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from reditus_local import motoserver
from reditus_local.motoserver import MotoServer
from reditus_operators.history import HistoryReader

from .conftest import create_history_table


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    # moto's backends are per process: the table goes again after each test.
    with MotoServer() as server:
        client = boto3.client("dynamodb", endpoint_url=server.endpoint_url, region_name="us-east-1")
        create_history_table(client, "t")
        try:
            yield client
        finally:
            client.delete_table(TableName="t")


def put(refund_id: str, outcome: str) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": "t",
            "Item": {
                "refund_id": {"S": refund_id},
                "outcome": {"S": outcome},
                "queued_at": {"S": "2026-11-26T00:00:00.000Z"},
            },
        }
    }


def test_a_cancelled_transaction_leaves_every_item_as_it_was(dynamodb: Any) -> None:
    dynamodb.transact_write_items(TransactItems=[put("a", "pending"), put("b", "pending")])
    update_a = {
        "Update": {
            "TableName": "t",
            "Key": {"refund_id": {"S": "a"}},
            "UpdateExpression": "SET outcome = :o",
            "ExpressionAttributeValues": {":o": {"S": "refunded"}},
        }
    }
    new_c = put("c", "pending")
    failing_b = {
        "Update": {
            "TableName": "t",
            "Key": {"refund_id": {"S": "b"}},
            "UpdateExpression": "SET outcome = :o",
            "ConditionExpression": "outcome = :never",
            "ExpressionAttributeValues": {":o": {"S": "refunded"}, ":never": {"S": "nope"}},
        }
    }
    with pytest.raises(ClientError) as err:
        dynamodb.transact_write_items(TransactItems=[update_a, new_c, failing_b])
    assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
    store = HistoryReader("t", dynamodb)
    assert store.table.get_item("a")["outcome"] == "pending"
    assert store.table.get_item("c") is None
    # The indexes were put back too.
    by_outcome = dynamodb.query(
        TableName="t",
        IndexName="by_outcome",
        KeyConditionExpression="outcome = :o",
        ExpressionAttributeValues={":o": {"S": "refunded"}},
    )
    assert by_outcome["Items"] == []


def test_a_committed_transaction_applies_every_item(dynamodb: Any) -> None:
    dynamodb.transact_write_items(TransactItems=[put("x", "pending"), put("y", "refunded")])
    store = HistoryReader("t", dynamodb)
    assert (
        store.table.get_item("x")["outcome"] == "pending"
        and store.table.get_item("y")["outcome"] == "refunded"
    )


def test_sends_to_a_standard_queue_keep_every_attribute_right() -> None:
    with MotoServer() as server:
        sqs = boto3.client("sqs", endpoint_url=server.endpoint_url, region_name="us-east-1")
        url = sqs.create_queue(QueueName="linear-send")["QueueUrl"]
        for start in range(0, 300, 10):
            sqs.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{start + i}"} for i in range(10)]
            )
        sqs.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=60)
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attrs["ApproximateNumberOfMessages"] == "300"
        assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"
        sqs.delete_queue(QueueUrl=url)


def test_the_cheap_sqs_clock_counts_and_receives_as_moto_does() -> None:
    def counts(sqs: Any, url: str) -> dict[str, str]:
        names = ["ApproximateNumberOf" + n for n in ("Messages", "MessagesNotVisible", "MessagesDelayed")]
        return dict(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"])

    seen = []
    was_cheap = bool(motoserver._sqs_originals)  # an earlier server in this process installed it
    for cheap in (False, True):
        if cheap:
            motoserver.use_cheap_sqs_clock()
        else:
            motoserver.use_moto_sqs_clock()
        try:
            with mock_aws():
                sqs = boto3.client("sqs", region_name="us-east-1")
                url = sqs.create_queue(QueueName="counted")["QueueUrl"]
                sqs.send_message_batch(
                    QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": f"m{n}"} for n in range(5)]
                )
                sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
                got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)
                seen.append((counts(sqs, url), sorted(m["Body"] for m in got["Messages"])))
        finally:
            if was_cheap:
                motoserver.use_cheap_sqs_clock()
            else:
                motoserver.use_moto_sqs_clock()
    assert seen[0] == seen[1]
    assert seen[1][0] == {
        "ApproximateNumberOfMessages": "3",
        "ApproximateNumberOfMessagesNotVisible": "2",
        "ApproximateNumberOfMessagesDelayed": "1",
    }
