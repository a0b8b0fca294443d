"""The local stack's moto server: transactions roll back per item, DynamoDB requests are serialised,
SQS answers as moto does without its O(queue size) costs, and empty index keys are refused as
DynamoDB refuses them (there and in the tests' in-process mock_aws)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from reditus_local import motoserver
from reditus_local.motoserver import MotoServer
from reditus_operators.history import HistoryReader

from .conftest import TABLE, AwsFixture, create_history_table


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


# ---- items built in one pass ------------------------------------------------------------------------

EVERY_TYPE = {
    "refund_id": {"S": "r-1"},
    "attempts": {"N": "3"},
    "blob": {"B": b"\x00\xffbytes"},
    "flag": {"BOOL": True},
    "nothing": {"NULL": True},
    "tags": {"SS": ["a", "bb"]},
    "amounts": {"NS": ["1", "2.5"]},
    "log": {"L": [{"M": {"status": {"N": "200"}, "at": {"S": "2026-11-30T00:00:00Z"}}}, {"S": "ü"}]},
    "note": {"S": "Cancelled within 14 days ✓"},
}


@pytest.fixture
def moto_items() -> Iterator[Callable[[bool], None]]:
    """use(True) installs the one-pass build, use(False) moto's own; the process's state is put back."""
    was_linear = bool(motoserver._moto_item_init)

    def use(linear: bool) -> None:
        (motoserver.use_linear_item_build if linear else motoserver.use_moto_item_build)()

    yield use
    use(was_linear)


def built(attrs: dict[str, Any]) -> dict[str, Any] | str:
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, Item

    try:
        made = Item(DynamoType(attrs["refund_id"]), None, attrs)
    except ItemSizeTooLarge:
        return "too large"
    return {"json": made.to_json(), "size": made.size(), "dict": type(made.attrs).__name__}


def test_an_item_built_in_one_pass_is_moto_s_own(moto_items: Callable[[bool], None]) -> None:
    seen = []
    for linear in (False, True):
        moto_items(linear)
        seen.append(built(EVERY_TYPE))
    assert seen[0] == seen[1]
    assert isinstance(seen[1], dict) and seen[1]["dict"] == "LimitedSizeDict"


def test_an_item_is_refused_at_exactly_moto_s_size_limit(moto_items: Callable[[bool], None]) -> None:
    def sized(filler: int) -> dict[str, Any]:
        return {"refund_id": {"S": "r-1"}, "attempts": {"N": "1"}, "note": {"S": "x" * filler}}

    moto_items(False)
    low, high = 0, 500_000  # moto accepts `low` characters and refuses `high`
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if isinstance(built(sized(middle)), dict) else (low, middle)
    moto_items(True)
    assert isinstance(built(sized(low)), dict)
    assert built(sized(high)) == "too large"


def test_the_local_stack_s_server_builds_items_in_one_pass(server_process: str) -> None:
    """In the server's own process; and an item over 400 KB is still refused there."""
    client = boto3.client("dynamodb", endpoint_url=server_process, region_name="us-east-1")
    create_history_table(client, "one-pass")
    try:
        with pytest.raises(ClientError, match="Item size has exceeded the maximum allowed size"):
            client.put_item(
                TableName="one-pass", Item={"refund_id": {"S": "r"}, "note": {"S": "x" * 410_000}}
            )
        client.put_item(TableName="one-pass", Item=EVERY_TYPE)
        got = client.get_item(TableName="one-pass", Key={"refund_id": {"S": "r-1"}}, ConsistentRead=True)
        assert got["Item"] == EVERY_TYPE
    finally:
        client.delete_table(TableName="one-pass")
    probe = "from reditus_local import motoserver as m; m.build_server().server_close(); "
    probe += "from moto.dynamodb.models.dynamo_type import Item; print(Item.__init__.__qualname__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "use_linear_item_build.<locals>.build"


# ---- empty strings in index keys -----------------------------------------------------------------

EMPTY_INDEX_KEY = "The AttributeValue for a key attribute cannot contain an empty string value."
NAMED = "IndexName: by_payment, IndexKey: payment_id"


@pytest.fixture(scope="module")
def server_process() -> Iterator[str]:
    """The local stack's moto server as `make run` starts it: a process of its own, so only what
    motoserver.py itself installs applies there (not the patch conftest.py puts into this process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "reditus_local.motoserver", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until it listens (or exits: then the line is empty)
        assert line.startswith("moto server ready: "), line + proc.stderr.read() if proc.stderr else ""
        yield line.split(": ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(params=["mock_aws", "moto server"])
def table_client(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """A DynamoDB client and a history table (as the template declares it), in each moto we use."""
    if request.param == "mock_aws":
        aws: AwsFixture = request.getfixturevalue("aws")
        yield aws.dynamodb, TABLE
        return
    endpoint = request.getfixturevalue("server_process")
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    name = f"strict-{request.node.name.translate(str.maketrans('[]- ', '____'))}"
    create_history_table(client, name)
    try:
        yield client, name
    finally:
        client.delete_table(TableName=name)


def item(refund_id: str, payment_id: str) -> dict[str, Any]:
    return {
        "refund_id": {"S": refund_id},
        "outcome": {"S": "invalid"},
        "queued_at": {"S": "2026-11-30T00:00:00.000Z"},
        "payment_id": {"S": payment_id},
    }


def update(table: str, refund_id: str, expression: str, names: bool, value: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "TableName": table,
        "Key": {"refund_id": {"S": refund_id}},
        "UpdateExpression": expression,
        "ExpressionAttributeValues": {":p": {"S": value}, ":q": {"S": "2026-11-30T00:00:00.000Z"}},
    }
    if names:
        op["ExpressionAttributeNames"] = {"#payment_id": "payment_id", "#queued_at": "queued_at"}
    return op


PLAIN_SET = "SET payment_id = :p, queued_at = :q"
NAMED_SET = "SET #payment_id = :p, #queued_at = :q"
IF_NOT_EXISTS = "SET #payment_id = if_not_exists(#payment_id, :p), #queued_at = :q"

WRITES: dict[str, Callable[[Any, str, str, str], Any]] = {
    "PutItem": lambda c, t, r, p: c.put_item(TableName=t, Item=item(r, p)),
    "BatchWriteItem": lambda c, t, r, p: c.batch_write_item(
        RequestItems={t: [{"PutRequest": {"Item": item(r, p)}}]}
    ),
    "TransactWriteItems Put": lambda c, t, r, p: c.transact_write_items(
        TransactItems=[{"Put": {"TableName": t, "Item": item(r, p)}}]
    ),
    "UpdateItem SET attr": lambda c, t, r, p: c.update_item(**update(t, r, PLAIN_SET, False, p)),
    "UpdateItem SET #attr": lambda c, t, r, p: c.update_item(**update(t, r, NAMED_SET, True, p)),
    "UpdateItem if_not_exists": lambda c, t, r, p: c.update_item(**update(t, r, IF_NOT_EXISTS, True, p)),
    "TransactWriteItems Update SET attr": lambda c, t, r, p: c.transact_write_items(
        TransactItems=[{"Update": update(t, r, PLAIN_SET, False, p)}]
    ),
    "TransactWriteItems Update SET #attr": lambda c, t, r, p: c.transact_write_items(
        TransactItems=[{"Update": update(t, r, NAMED_SET, True, p)}]
    ),
    "UpdateItem AttributeUpdates": lambda c, t, r, p: c.update_item(
        TableName=t,
        Key={"refund_id": {"S": r}},
        AttributeUpdates={
            "payment_id": {"Value": {"S": p}, "Action": "PUT"},
            "queued_at": {"Value": {"S": "2026-11-30T00:00:00.000Z"}, "Action": "PUT"},
        },
    ),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_an_empty_index_key_is_refused_on_every_write_path(table_client: tuple[Any, str], write: str) -> None:
    client, table = table_client
    with pytest.raises(ClientError) as err:
        WRITES[write](client, table, "r-empty", "")
    error = err.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert EMPTY_INDEX_KEY in error["Message"]
    assert error["Message"].endswith(NAMED), error["Message"]
    # Nothing was written, not even the bare item an update would create.
    assert "Item" not in client.get_item(TableName=table, Key={"refund_id": {"S": "r-empty"}})

    # The same call with a payment id is written, and lands in the index.
    WRITES[write](client, table, "r-full", "pay_1")
    found = client.query(
        TableName=table,
        IndexName="by_payment",
        KeyConditionExpression="payment_id = :p",
        ExpressionAttributeValues={":p": {"S": "pay_1"}},
    )
    assert [i["refund_id"]["S"] for i in found["Items"]] == ["r-full"]


@pytest.mark.parametrize("names", [False, True], ids=["SET attr", "SET #attr"])
def test_a_refused_update_leaves_the_item_as_it_was(table_client: tuple[Any, str], names: bool) -> None:
    client, table = table_client
    client.put_item(TableName=table, Item=item("r-kept", "pay_kept"))
    expression = NAMED_SET if names else PLAIN_SET
    with pytest.raises(ClientError, match="empty string value"):
        client.update_item(**update(table, "r-kept", expression, names, ""))
    kept = client.get_item(TableName=table, Key={"refund_id": {"S": "r-kept"}})["Item"]
    assert kept["payment_id"] == {"S": "pay_kept"}
    # An attribute left out of the item (not empty) keeps it out of the index: that is allowed.
    client.put_item(
        TableName=table, Item={k: v for k, v in item("r-sparse", "").items() if k != "payment_id"}
    )
