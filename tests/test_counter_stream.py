"""The day counters from the history table's DynamoDB Stream (reditus_refunds.day_counts, the
fold; reditus_refunds.counter_stream, the apply and the handler) and their deployment.

The fold is checked as a table. The apply runs against moto on records taken from moto's real
stream after real writes (made with the plain client here: what counts is the items' images),
converted to Lambda's shape as the local worker does. moto's stream API answers in server mode
only (in-process, moto 5.2.5 answers DynamoDB Streams calls 404), so these tests use a moto
server, a fresh table each.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from reditus_local.motoserver import MotoServer
from reditus_local.resources import create_table_as_declared, moto_session
from reditus_local.template import load_template
from reditus_local.worker import FakeLambdaContext, stream_record
from reditus_operators.history import HistoryReader
from reditus_refunds import counter_stream as counter_stream_module
from reditus_refunds.aws_errors import ConditionFailed, StoreError
from reditus_refunds.counter_stream import (
    RECORDS_METRIC,
    STREAM_ENV_VARS,
    WRITES_METRIC,
    CounterStream,
    DayCounterStore,
    StreamSettingsError,
    apply_event,
)
from reditus_refunds.day_counts import (
    MARK_MAX_AGE_SECONDS,
    DayMoves,
    Move,
    counted_under,
    fold,
    mark_name,
    mark_sequence,
    mark_time,
    mark_value,
    padded,
    pending_attr,
    pending_listed,
    plan_pending,
    record_changes,
    record_moves,
    stale_marks,
)
from reditus_refunds.layout import COUNTER_PREFIX, HASH_KEY
from reditus_refunds.records import Outcome

from .conftest import AwsFixture
from .iam_derivation import as_list, calls_on, dynamodb_actions, entered, functions, grants, parse
from .template_support import sam_translate

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = ROOT / "template.yaml"
COUNTERS = "CounterStreamFunction"
COUNTERS_ROLE = "CounterStreamRole"
SUBMITTER = "RefundSubmitterFunction"
DAY = "2026-11-30"
DAY2 = "2026-11-29"
SHARD = "shardId-00000001700000000000-0123abcd"
OUTCOMES = {o.value for o in Outcome}


# ---- the fold, as a table ------------------------------------------------------------------------


def img(**attributes: str) -> dict[str, Any]:
    """An item image in DynamoDB JSON, as a stream record carries it."""
    return {k: {"S": v} for k, v in attributes.items()}


def rec(sequence: str, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    """A stream record as Lambda hands it to the function."""
    data: dict[str, Any] = {"Keys": {HASH_KEY: {"S": key}}, "SequenceNumber": sequence}
    for name, image in (("OldImage", old), ("NewImage", new)):
        if image is not None:
            data[name] = {HASH_KEY: {"S": key}, **image}
    event_name = "INSERT" if old is None else "REMOVE" if new is None else "MODIFY"
    return {"eventName": event_name, "eventSource": "aws:dynamodb", "dynamodb": data}


pending = img(queued_day=DAY)
FOLD = [
    # (case, key, old image, new image, day -> outcome -> delta)
    ("the pending record counts pending", "r1", None, pending, {DAY: {"pending": 1}}),
    ("the first result moves it", "r1", pending, img(queued_day=DAY, outcome="retrying"),
     {DAY: {"pending": -1, "retrying": 1}}),
    ("a result after a result", "r1", img(queued_day=DAY, outcome="retrying"),
     img(queued_day=DAY, outcome="refunded"), {DAY: {"retrying": -1, "refunded": 1}}),
    ("a claim moves nothing", "r1", pending, img(queued_day=DAY, lease_token="t"), {}),
    ("nor a change beside the outcome", "r1", img(queued_day=DAY, outcome="refunded"),
     img(queued_day=DAY, outcome="refunded", detail="x"), {}),
    ("an old item's 'pending' is an absent outcome", "r1", img(queued_day=DAY, outcome="pending"),
     pending, {}),
    ("and moves like one", "r1", img(queued_day=DAY, outcome="pending"),
     img(queued_day=DAY, outcome="rejected"), {DAY: {"pending": -1, "rejected": 1}}),
    ("moto's key-only INSERT of a transaction counts nothing", "r2", None, {}, {}),
    ("the INSERT after it counts", "r2", None, img(queued_day=DAY, outcome="invalid"),
     {DAY: {"invalid": 1}}),
    ("a decision on an item without a day yet", "r2", {}, img(queued_day=DAY, outcome="duplicate"),
     {DAY: {"duplicate": 1}}),
    ("a refund removed", "r3", img(queued_day=DAY, outcome="refunded"), None, {DAY: {"refunded": -1}}),
    ("each on its own day", "r4", img(queued_day=DAY2), img(queued_day=DAY, outcome="failed"),
     {DAY2: {"pending": -1}, DAY: {"failed": 1}}),
    ("a payment marker", "payment#pay-1", None, pending, {}),
    ("a counter item", "counter#2026-11-30", None, img(queued_day=DAY, pending="1"), {}),
    ("a webhook event", "webhook#stripe#evt_1", None, pending, {}),
    ("a webhook review", "webhook_review#stripe#evt_1", None, pending, {}),
    ("an audit entry", "audit#2026-11-30#1", None, pending, {}),
    ("a user", "user#alice", None, pending, {}),
    ("an outcome nobody knows is no attribute name", "r5", None,
     img(queued_day=DAY, outcome="applied#x"), {}),
    ("a day that is no day", "r6", None, img(queued_day="yesterday"), {}),
    ("no day at all", "r7", None, img(outcome="refunded"), {}),
]  # fmt: skip


@pytest.mark.parametrize(("key", "old", "new", "moves"), [r[1:] for r in FOLD], ids=[r[0] for r in FOLD])
def test_one_record_moves_one_count(
    key: str, old: dict[str, Any] | None, new: dict[str, Any] | None, moves: dict[str, dict[str, int]]
) -> None:
    sequence, found = record_moves(rec("42", key, old, new))
    assert sequence == "0" * 38 + "42"
    assert found == moves


PENDING_CHANGES = [
    # (case, key, old image, new image, day -> (refund_id, queued_at if it is pending now, else None))
    ("the pending record lists it", "r1", None, img(queued_day=DAY, queued_at="T1"), {DAY: ("r1", "T1")}),
    ("the first result unlists it", "r1", img(queued_day=DAY, queued_at="T1"),
     img(queued_day=DAY, queued_at="T1", outcome="retrying"), {DAY: ("r1", None)}),
    ("a result after a result: nothing", "r1", img(queued_day=DAY, outcome="retrying"),
     img(queued_day=DAY, outcome="refunded"), {}),
    ("a claim: nothing", "r1", img(queued_day=DAY, queued_at="T1"),
     img(queued_day=DAY, queued_at="T1", lease_token="t"), {}),
    ("an old item's 'pending' unlisted by its result", "r1", img(queued_day=DAY, outcome="pending"),
     img(queued_day=DAY, outcome="rejected"), {DAY: ("r1", None)}),
    ("a refund removed while pending", "r1", img(queued_day=DAY), None, {DAY: ("r1", None)}),
    ("back to pending (a requeue's reset)", "r1", img(queued_day=DAY, outcome="dead_lettered"),
     img(queued_day=DAY, queued_at="T2"), {DAY: ("r1", "T2")}),
    ("moved between days", "r4", img(queued_day=DAY2), img(queued_day=DAY, queued_at="T3"),
     {DAY2: ("r4", None), DAY: ("r4", "T3")}),
    ("not a refund", "payment#pay-1", None, img(queued_day=DAY, queued_at="T1"), {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "old", "new", "changes"), [r[1:] for r in PENDING_CHANGES], ids=[r[0] for r in PENDING_CHANGES]
)
def test_one_record_lists_or_unlists_a_pending_refund(
    key: str, old: dict[str, Any] | None, new: dict[str, Any] | None, changes: dict[str, Any]
) -> None:
    assert record_changes(rec("42", key, old, new))[2] == changes


def test_the_last_move_of_a_refund_past_the_mark_decides_its_listing() -> None:
    moves = DayMoves(
        [
            Move(padded("10"), {"pending": 1}, None, ("a", "T1")),
            Move(padded("20"), {"pending": -1, "refunded": 1}, None, ("a", None)),
            Move(padded("30"), {"pending": 1}, None, ("b", "T2")),
            Move(padded("40"), {"retrying": -1, "refunded": 1}),
            Move(padded("50"), {"pending": -1, "rejected": 1}, None, ("c", None)),
        ]
    )
    assert moves.pending_past(None) == {"a": None, "b": "T2", "c": None}
    assert moves.pending_past(padded("10")) == {"a": None, "b": "T2", "c": None}
    assert moves.pending_past(padded("20")) == {"b": "T2", "c": None}
    assert moves.pending_past(padded("50")) == {}


PLANS = [
    # (case, listed on the item, ends, cap, SET, REMOVE)
    ("list the new, unlist the gone", {"a": "T1"}, {"a": None, "b": "T2"}, 100,
     {"pending#b": "T2"}, ["pending#a"]),
    ("one that left unlisted is no change", {}, {"a": None}, 100, {}, []),
    ("one already listed is not written again", {"a": "T1"}, {"a": "T1"}, 100, {}, []),
    ("the cap keeps the newest", {"a": "T1"}, {"b": "T2", "c": "T4", "d": "T3"}, 3,
     {"pending#c": "T4", "pending#d": "T3"}, []),
    ("a full list makes room by what leaves", {"a": "T1", "b": "T2"}, {"a": None, "c": "T3"}, 2,
     {"pending#c": "T3"}, ["pending#a"]),
    ("a full list lists nothing more", {"a": "T1", "b": "T2"}, {"c": "T3"}, 2, {}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("present", "ends", "cap", "listed", "unlisted"), [r[1:] for r in PLANS], ids=[r[0] for r in PLANS]
)
def test_the_pending_list_changes_a_write_makes(
    present: dict[str, str],
    ends: dict[str, str | None],
    cap: int,
    listed: dict[str, str],
    unlisted: list[str],
) -> None:
    item = {"pending": len(present), "refunded": 3, **{pending_attr(k): v for k, v in present.items()}}
    plan = plan_pending(item, ends, cap)
    assert (plan.listed, plan.unlisted) == (listed, unlisted)
    assert bool(plan) == bool(listed or unlisted)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"pending": Decimal(2), "pending#a": "T1", "pending#b": "T2"}, {"a": "T1", "b": "T2"}),
        ({"pending": Decimal(3), "pending#a": "T1", "pending#b": "T2"}, None),  # more than it lists
        ({"pending": Decimal(1), "pending#a": "T1", "pending#b": "T2"}, None),  # disagree: walk
        ({"refunded": Decimal(4)}, {}),  # none pending
        ({"pending": Decimal(0)}, {}),
        ({"pending": Decimal(1)}, None),  # a counter written before the list existed
        ({"pending": "1", "pending#a": "T1"}, None),  # not a number
        ({"pending": True, "pending#a": "T1"}, None),
    ],
)
def test_a_counter_lists_its_days_pending_refunds_only_when_all_are_listed(
    item: dict[str, Any], expected: dict[str, str] | None
) -> None:
    assert pending_listed(item) == expected


def test_what_an_image_counts_under() -> None:
    assert counted_under("r1", img(queued_day=DAY)) == (DAY, "pending")
    assert counted_under("r1", img(queued_day=DAY, outcome="pending")) == (DAY, "pending")
    assert counted_under("r1", img(queued_day=DAY, outcome="not_found")) == (DAY, "not_found")
    assert counted_under(None, img(queued_day=DAY)) is None
    assert counted_under("r1", None) is None


def move(sequence: int, **deltas: int) -> Move:
    return Move(padded(str(sequence)), deltas)


@pytest.mark.parametrize(
    ("mark", "expected"),
    [
        (None, ({"refunded": 1}, padded("30"))),  # nothing applied yet: all
        (padded("10"), ({"pending": 1, "refunded": 1, "retrying": -1}, padded("30"))),
        (padded("9"), ({"refunded": 1}, padded("30"))),  # 9 < 10 as numbers
        (padded("20"), ({"pending": 1}, padded("30"))),
        (padded("30"), ({}, None)),  # all applied before
        (padded("99"), ({}, None)),
    ],
)
def test_only_the_moves_past_the_mark_are_summed(
    mark: str | None, expected: tuple[dict[str, int], str | None]
) -> None:
    moves = DayMoves(
        [move(10, pending=-1, retrying=1), move(20, retrying=-1, refunded=1), move(30, pending=1)]
    )
    assert moves.past(mark) == expected


def test_moves_that_sum_to_nothing_give_no_deltas_but_a_mark() -> None:
    moves = DayMoves([move(5, pending=-1, retrying=1), move(6, retrying=-1, pending=1)])
    assert moves.past(None) == ({}, padded("6"))


def test_sequence_numbers_pad_to_compare_as_numbers() -> None:
    assert padded("99") < padded("100") and len(padded("1")) == 40
    assert padded("1" * 40) == "1" * 40
    for bad in ("", "12a", "1" * 41, "-1", "\uff11\uff12"):
        with pytest.raises(ValueError, match="not a stream sequence number"):
            padded(bad)
    assert mark_name(SHARD) == f"applied#{SHARD}"
    with pytest.raises(ValueError, match="shard id"):
        mark_name("")


def test_a_mark_holds_the_sequence_number_and_when_its_record_was_made() -> None:
    value = mark_value(padded("12"), 1_800_000_000)
    assert value == "0" * 38 + "12@1800000000"
    assert (mark_sequence(value), mark_time(value)) == (padded("12"), 1_800_000_000)
    assert mark_value(padded("12"), None) == padded("12") and mark_time(padded("12")) is None
    # Still compared as the sequence numbers are.
    assert mark_value(padded("99"), 2_000_000_000) < mark_value(padded("100"), 1)
    moves = DayMoves([Move(padded("5"), {"pending": 1}, 1_800_000_000)])
    assert moves.past(mark_value(padded("4"), 1)) == ({"pending": 1}, mark_value(padded("5"), 1_800_000_000))
    assert moves.past(mark_value(padded("5"), 1_800_000_000)) == ({}, None)


def test_the_batch_knows_its_newest_record() -> None:
    first = rec("1", "r1", None, img(queued_day=DAY))
    second = rec("2", "r2", None, img(queued_day=DAY))
    first["dynamodb"]["ApproximateCreationDateTime"] = 1_800_000_100
    second["dynamodb"]["ApproximateCreationDateTime"] = 1_800_000_050.0
    assert fold([first, second]).newest == 1_800_000_100
    assert fold([rec("3", "r3", None, None)]).newest is None


NOW = 1_800_000_000
OLD = NOW - MARK_MAX_AGE_SECONDS - 1


def test_marks_older_than_the_stream_can_hold_are_stale() -> None:
    item = {
        "counter_day": DAY,
        "pending": 3,
        "applied#own": mark_value(padded("1"), OLD),  # ours: never removed here
        "applied#old": mark_value(padded("2"), OLD),
        "applied#recent": mark_value(padded("3"), NOW - MARK_MAX_AGE_SECONDS),
        "applied#untimed": padded("4"),  # says no time: kept
    }
    assert stale_marks(item, "applied#own", NOW) == {"applied#old": mark_value(padded("2"), OLD)}
    assert stale_marks(item, "applied#own", None) == {}  # the batch says no time: keep all


# ---- the apply, on moto's real stream ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    with MotoServer() as running:
        yield running


def client(server: MotoServer, service: str) -> Any:
    return moto_session().client(service, endpoint_url=server.endpoint_url)


@pytest.fixture
def aws(server: MotoServer, request: pytest.FixtureRequest) -> AwsFixture:
    """The history table as template.yaml declares it (with its stream), on the moto server."""
    dynamodb = client(server, "dynamodb")
    table = f"counters-{abs(hash(request.node.nodeid)):x}"
    create_table_as_declared(dynamodb, table)
    return AwsFixture(dynamodb, None, None, table, "", "")


def stream_records(aws: AwsFixture) -> tuple[str, list[dict[str, Any]]]:
    """(shard id, every record of the table's stream) in Lambda's shape; the test table has one shard."""
    streams = moto_session().client("dynamodbstreams", endpoint_url=aws.dynamodb.meta.endpoint_url)
    arn = aws.dynamodb.describe_table(TableName=aws.table)["Table"]["LatestStreamArn"]
    (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records: list[dict[str, Any]] = []
    while iterator:
        got = streams.get_records(ShardIterator=iterator)
        if not got["Records"]:
            break
        records += [stream_record(r, arn) for r in got["Records"]]
        iterator = got.get("NextShardIterator")
    return shard["ShardId"], records


def put(aws: AwsFixture, key: str, **attributes: str) -> None:
    aws.dynamodb.put_item(TableName=aws.table, Item={HASH_KEY: {"S": key}, **img(**attributes)})


def set_outcome(aws: AwsFixture, key: str, outcome: str) -> None:
    aws.dynamodb.update_item(
        TableName=aws.table,
        Key={HASH_KEY: {"S": key}},
        UpdateExpression="SET outcome = :o",
        ExpressionAttributeValues={":o": {"S": outcome}},
    )


def write_history(aws: AwsFixture) -> None:
    """Refunds through their life, an old item with outcome "pending", and items that are not refunds."""
    put(aws, "r1", queued_day=DAY, queued_at=f"{DAY}T10:00:00.000Z")
    put(aws, "r2", queued_day=DAY, queued_at=f"{DAY}T10:00:01.000Z")
    put(aws, "r3", queued_day=DAY, queued_at=f"{DAY}T10:00:02.000Z", outcome="pending")  # older code
    aws.dynamodb.update_item(  # a claim: no count moves
        TableName=aws.table,
        Key={HASH_KEY: {"S": "r1"}},
        UpdateExpression="SET lease_token = :t",
        ExpressionAttributeValues={":t": {"S": "tok"}},
    )
    set_outcome(aws, "r1", "retrying")
    set_outcome(aws, "r1", "refunded")
    set_outcome(aws, "r3", "rejected")
    # A decision written by a transaction on a new item (moto: a key-only INSERT, then the item).
    aws.dynamodb.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": aws.table,
                    "Key": {HASH_KEY: {"S": "r4"}},
                    "UpdateExpression": "SET queued_day = :d, queued_at = :a, outcome = :o",
                    "ExpressionAttributeValues": {
                        ":d": {"S": DAY2},
                        ":a": {"S": f"{DAY2}T23:59:59.000Z"},
                        ":o": {"S": "invalid"},
                    },
                }
            }
        ]
    )
    put(aws, "payment#pay-1", lease_token="tok", queued_day=DAY)
    put(aws, "webhook#stripe#evt_1", queued_day=DAY, outcome="refunded")
    put(aws, "audit#2026-11-30#1", queued_day=DAY)


def table_items(aws: AwsFixture) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": aws.table}
    while True:  # a test's look at the whole table; the code under test never scans
        page = aws.dynamodb.scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def counters(aws: AwsFixture) -> dict[str, dict[str, int]]:
    """day -> outcome -> count, zeros left out, as the console reads them."""
    found: dict[str, dict[str, int]] = {}
    for item in table_items(aws):
        key = item[HASH_KEY]["S"]
        if key.startswith(COUNTER_PREFIX):
            counts = {k: int(v["N"]) for k, v in item.items() if k in OUTCOMES and int(v["N"])}
            if counts:
                found[key.removeprefix(COUNTER_PREFIX)] = counts
    return found


def from_items(aws: AwsFixture) -> dict[str, dict[str, int]]:
    """What the counters must say: the refund items per queued day and outcome (absent: pending)."""
    tally: dict[str, Counter[str]] = defaultdict(Counter)
    for item in table_items(aws):
        key = item[HASH_KEY]["S"]
        if "#" not in key and "queued_day" in item:
            tally[item["queued_day"]["S"]][item.get("outcome", {}).get("S", "pending")] += 1
    return {day: dict(counts) for day, counts in tally.items()}


def listed(aws: AwsFixture) -> dict[str, dict[str, str]]:
    """day -> refund_id -> queued_at of the pending refunds the counter items list."""
    found: dict[str, dict[str, str]] = {}
    for item in table_items(aws):
        key = item[HASH_KEY]["S"]
        if key.startswith(COUNTER_PREFIX):
            of_day = {k.removeprefix("pending#"): v["S"] for k, v in item.items() if k.startswith("pending#")}
            if of_day:
                found[key.removeprefix(COUNTER_PREFIX)] = of_day
    return found


EXPECTED = {DAY: {"pending": 1, "refunded": 1, "rejected": 1}, DAY2: {"invalid": 1}}
EXPECTED_LISTED = {DAY: {"r2": f"{DAY}T10:00:01.000Z"}}  # r1 and r3 left pending, r4 never was


@pytest.fixture
def stream(aws: AwsFixture) -> CounterStream:
    return CounterStream(DayCounterStore(aws.table, aws.dynamodb))


@pytest.fixture
def history(aws: AwsFixture) -> tuple[str, list[dict[str, Any]]]:
    write_history(aws)
    return stream_records(aws)


def test_the_counters_equal_the_items_once_the_stream_is_applied(
    aws: AwsFixture, stream: CounterStream, history: tuple[str, list[dict[str, Any]]]
) -> None:
    shard, records = history
    report = stream.apply(shard, records)
    assert counters(aws) == from_items(aws) == EXPECTED
    assert listed(aws) == EXPECTED_LISTED
    assert (report.records, report.writes, sorted(report.days)) == (len(records), 2, [DAY2, DAY])
    # Each counter item remembers the last record of the shard it applied, as a 40-digit string.
    item = aws.dynamodb.get_item(TableName=aws.table, Key={HASH_KEY: {"S": COUNTER_PREFIX + DAY}})["Item"]
    last_of_day = max(
        padded(r["dynamodb"]["SequenceNumber"])
        for r in records
        if r["dynamodb"]["Keys"][HASH_KEY]["S"] in ("r1", "r2", "r3")
    )
    value = item[mark_name(shard)]["S"]
    assert mark_sequence(value) == last_of_day and mark_time(value) is not None  # and when it was made
    assert item["counter_day"] == {"S": DAY}


def test_a_batch_applied_twice_counts_once(
    aws: AwsFixture, stream: CounterStream, history: tuple[str, list[dict[str, Any]]]
) -> None:
    shard, records = history
    stream.apply(shard, records)
    again = stream.apply(shard, records)
    assert again.writes == 0
    assert counters(aws) == EXPECTED


@pytest.mark.parametrize(("first", "second"), [(4, 2), (6, 0), (3, 3), (1, 1), (9, 4)])
def test_overlapping_batches_count_each_record_once(
    aws: AwsFixture,
    stream: CounterStream,
    history: tuple[str, list[dict[str, Any]]],
    first: int,
    second: int,
) -> None:
    """A retried batch starts where the failed one did and may reach further; a restarted reader
    starts from the stream's beginning."""
    shard, records = history
    stream.apply(shard, records[:first])
    stream.apply(shard, records[second:])
    assert counters(aws) == EXPECTED
    assert listed(aws) == EXPECTED_LISTED
    for one in records:  # and one at a time, all over again
        stream.apply(shard, [one])
    assert counters(aws) == EXPECTED
    assert listed(aws) == EXPECTED_LISTED


def test_one_record_at_a_time_lists_and_unlists_each_refund_in_turn(
    aws: AwsFixture, stream: CounterStream
) -> None:
    """Applied record by record (each its own write), the list follows the items: a refund is
    listed by its pending record and unlisted by its first result."""
    write_history(aws)
    shard, records = stream_records(aws)
    for one in records:
        stream.apply(shard, [one])
    assert counters(aws) == EXPECTED and listed(aws) == EXPECTED_LISTED
    set_outcome(aws, "r2", "not_found")
    _, more = stream_records(aws)
    stream.apply(shard, more[len(records) :])
    assert listed(aws) == {} and counters(aws)[DAY] == {"refunded": 1, "rejected": 1, "not_found": 1}


def test_past_its_cap_the_list_is_short_of_the_count_until_the_backlog_drains(aws: AwsFixture) -> None:
    """Five pending where the list holds three: the counter counts five, lists three (the newest),
    and the reader is told to walk (pending_listed is None); once all have left pending it is
    complete again (empty)."""
    stream = CounterStream(DayCounterStore(aws.table, aws.dynamodb), pending_cap=3)
    for n in range(5):
        put(aws, f"b{n}", queued_day=DAY, queued_at=f"{DAY}T10:00:0{n}.000Z")
    shard, records = stream_records(aws)
    stream.apply(shard, records)
    item = DayCounterStore(aws.table, aws.dynamodb).read(DAY)
    assert item["pending"] == 5 and sorted(listed(aws)[DAY]) == ["b2", "b3", "b4"]
    assert pending_listed(item) is None
    for n in range(5):
        set_outcome(aws, f"b{n}", "refunded")
    _, more = stream_records(aws)
    stream.apply(shard, more[len(records) :])
    item = DayCounterStore(aws.table, aws.dynamodb).read(DAY)
    assert (item["pending"], item["refunded"], pending_listed(item)) == (0, 5, {})


def test_the_pending_filter_reads_what_the_stream_listed_without_a_query(
    aws: AwsFixture, stream: CounterStream, history: tuple[str, list[dict[str, Any]]]
) -> None:
    """The whole path: items written, the stream applied, the History's Pending filter."""
    shard, records = history
    stream.apply(shard, records)
    queries: list[str] = []

    class NotingClient:
        def __getattr__(self, name: str) -> Any:
            return getattr(aws.dynamodb, name)

        def query(self, **kwargs: Any) -> Any:
            queries.append(kwargs.get("IndexName", ""))
            return aws.dynamodb.query(**kwargs)

    clock = datetime(2026, 11, 30, 23, tzinfo=UTC)
    reader = HistoryReader(aws.table, NotingClient(), clock=lambda: clock)  # type: ignore[arg-type]
    page = reader.query(outcome=Outcome.PENDING, since=datetime(2026, 11, 29, tzinfo=UTC))  # DAY2, DAY
    assert [r.refund_id for r in page.records] == ["r2"]
    assert queries == []  # (a day with no counter item at all would be walked: an empty Query)
    assert page.items_read == 2 + 1  # the two days that have counter items, and r2


def test_each_shard_has_its_own_mark(aws: AwsFixture, stream: CounterStream) -> None:
    stream.apply("shard-a", [rec("7", "x1", None, img(queued_day=DAY))])
    stream.apply("shard-b", [rec("3", "x2", None, img(queued_day=DAY))])  # lower, but another shard
    assert counters(aws) == {DAY: {"pending": 2}}


def timed(sequence: str, key: str, created: int, **image: str) -> dict[str, Any]:
    record = rec(sequence, key, None, img(queued_day=DAY, **image))
    record["dynamodb"]["ApproximateCreationDateTime"] = created
    return record


def test_a_write_removes_the_marks_of_shards_long_closed(aws: AwsFixture, stream: CounterStream) -> None:
    stream.apply("shard-old", [timed("9", "x1", OLD)])
    stream.apply("shard-recent", [timed("9", "x2", NOW - 3600)])
    stream.apply("shard-new", [timed("3", "x3", NOW, outcome="refunded")])
    item = aws.dynamodb.get_item(TableName=aws.table, Key={HASH_KEY: {"S": COUNTER_PREFIX + DAY}})["Item"]
    marks = {k: v["S"] for k, v in item.items() if k.startswith("applied#")}
    assert marks == {
        "applied#shard-recent": mark_value(padded("9"), NOW - 3600),
        "applied#shard-new": mark_value(padded("3"), NOW),
    }
    assert counters(aws) == {DAY: {"pending": 2, "refunded": 1}}


def test_a_stale_mark_that_moved_meanwhile_is_not_removed(aws: AwsFixture) -> None:
    """The removal holds only if the stale mark is still as read: else read again."""
    stream = CounterStream(DayCounterStore(aws.table, aws.dynamodb))
    stream.apply("shard-old", [timed("1", "x1", OLD)])

    class MovedAfterRead(DayCounterStore):
        moved = False

        def read(self, day: str) -> dict[str, Any]:
            item = super().read(day)
            if not self.moved:  # shard-old's applier writes a newer mark after this read
                self.moved = True
                stream.apply("shard-old", [timed("2", "x2", NOW)])
            return item

    report = CounterStream(MovedAfterRead(aws.table, aws.dynamodb)).apply(
        "shard-new", [timed("5", "x3", NOW)]
    )
    assert report.writes == 1
    item = aws.dynamodb.get_item(TableName=aws.table, Key={HASH_KEY: {"S": COUNTER_PREFIX + DAY}})["Item"]
    assert item["applied#shard-old"] == {"S": mark_value(padded("2"), NOW)}  # kept: it is not stale now
    assert counters(aws) == {DAY: {"pending": 3}}


class RacingStore(DayCounterStore):
    """The store, except that the first read lets another applier run the same batch to its end
    before it returns: the two race for the same counter item, the second's write wins first."""

    def __init__(self, table_name: str, client: Any, rival: Callable[[], object]):
        super().__init__(table_name, client)
        self.rival: Callable[[], object] | None = rival
        self.conflicts = 0

    def read(self, day: str) -> dict[str, Any]:
        item = super().read(day)
        if self.rival is not None:
            rival, self.rival = self.rival, None
            rival()
        return item

    def add(self, day: str, mark: str, seen: str | None, new: str, deltas: Any, *rest: Any) -> None:
        try:
            super().add(day, mark, seen, new, deltas, *rest)
        except ConditionFailed:
            self.conflicts += 1
            raise


def test_two_appliers_racing_count_each_record_once(
    aws: AwsFixture, history: tuple[str, list[dict[str, Any]]]
) -> None:
    shard, records = history
    rival = CounterStream(DayCounterStore(aws.table, aws.dynamodb))
    store = RacingStore(aws.table, aws.dynamodb, lambda: rival.apply(shard, records))
    report = CounterStream(store).apply(shard, records)
    # Its first write found the mark moved by the rival: it read again and found nothing left to
    # add, for that day and the next.
    assert store.conflicts == 1 and report.writes == 0
    assert counters(aws) == EXPECTED


class RefusingClient:
    """The moto client, except that DynamoDB refuses the counter writes of one day, `times` times."""

    def __init__(self, client: Any, day: str, times: int = 1):
        self._client = client
        self.day = day
        self.times = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def update_item(self, **kwargs: Any) -> Any:
        if kwargs["Key"][HASH_KEY]["S"] == COUNTER_PREFIX + self.day and self.times:
            self.times -= 1
            error = {"Error": {"Code": "InternalServerError", "Message": "Internal server error"}}
            raise ClientError(error, "UpdateItem")  # type: ignore[arg-type]
        return self._client.update_item(**kwargs)


def test_a_failed_day_is_counted_by_the_retry_and_the_days_before_it_not_again(
    aws: AwsFixture, history: tuple[str, list[dict[str, Any]]]
) -> None:
    shard, records = history
    refusing: Any = RefusingClient(aws.dynamodb, DAY)
    stream = CounterStream(DayCounterStore(aws.table, refusing))
    with pytest.raises(StoreError, match="InternalServerError"):
        stream.apply(shard, records)
    assert counters(aws) == {DAY2: {"invalid": 1}}  # written before the failure, days in order
    retried = stream.apply(shard, records)  # Lambda retries the batch
    assert retried.days == [DAY]
    assert counters(aws) == EXPECTED


def test_a_counter_that_keeps_moving_fails_the_batch(aws: AwsFixture) -> None:
    class AlwaysMoved(DayCounterStore):
        def add(self, day: str, mark: str, seen: str | None, new: str, deltas: Any, *rest: Any) -> None:
            raise ConditionFailed("moved", code="ConditionFailed")

    stream = CounterStream(AlwaysMoved(aws.table, aws.dynamodb), max_tries=3)
    with pytest.raises(StoreError, match="kept changing"):
        stream.apply(SHARD, [rec("1", "r1", None, img(queued_day=DAY))])


def test_moves_that_sum_to_nothing_write_nothing(aws: AwsFixture, stream: CounterStream) -> None:
    """A day whose moves in the batch cancel out is not written (not even its mark): its counts are
    right for those records whether they are applied or not."""
    there, back = img(queued_day=DAY, outcome="retrying"), img(queued_day=DAY, outcome="dead_lettered")
    report = stream.apply(SHARD, [rec("1", "r1", there, back), rec("2", "r1", back, there)])
    assert (report.counted, report.writes) == (2, 0)
    assert "Item" not in aws.dynamodb.get_item(
        TableName=aws.table, Key={HASH_KEY: {"S": COUNTER_PREFIX + DAY}}
    )


def test_claims_and_other_items_write_no_counter(aws: AwsFixture, stream: CounterStream) -> None:
    put(aws, "r1", queued_day=DAY)
    _, first = stream_records(aws)
    stream.apply(SHARD, first)
    aws.dynamodb.update_item(
        TableName=aws.table,
        Key={HASH_KEY: {"S": "r1"}},
        UpdateExpression="SET lease_token = :t",
        ExpressionAttributeValues={":t": {"S": "tok"}},
    )
    put(aws, "payment#pay-1", lease_token="tok")
    put(aws, "webhook#stripe#evt_1", queued_day=DAY)
    _, records = stream_records(aws)
    later = records[len(first) :]
    # The claim, the marker, the webhook item, and the counter's own write: the stream has it too
    # (moto: two INSERTs for an update that creates an item).
    keys = [r["dynamodb"]["Keys"][HASH_KEY]["S"] for r in later]
    assert set(keys) == {"r1", "payment#pay-1", "webhook#stripe#evt_1", COUNTER_PREFIX + DAY}
    report = stream.apply(SHARD, later)
    assert (report.records, report.counted, report.writes) == (len(later), 0, 0)
    assert counters(aws) == {DAY: {"pending": 1}}


# ---- the handler, as Lambda invokes it ---------------------------------------------------------------


def windowed_event(shard: str, records: list[dict[str, Any]], final: bool = False) -> dict[str, Any]:
    """What the event source mapping sends with a tumbling window (reditus_local.worker builds the same)."""
    return {
        "Records": records,
        "window": {"start": "2026-11-30T11:30:00Z", "end": "2026-11-30T11:45:00Z"},
        "state": {},
        "shardId": shard,
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/history-test/stream/x",
        "isFinalInvokeForWindow": final,
        "isWindowTerminatedEarly": False,
    }


def context() -> FakeLambdaContext:
    return FakeLambdaContext("reditus-refunds-CounterStreamFunction", 60)


def emitted_metric(out: str, name: str) -> list[float]:
    values = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            if name in blob:
                value = blob[name]
                values += [float(v) for v in (value if isinstance(value, list) else [value])]
    return values


@pytest.fixture
def configured(aws: AwsFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsFixture]:
    """The function configured from the environment, as in Lambda, and built afresh for the test;
    its client finds the moto server through AWS_ENDPOINT_URL."""
    monkeypatch.setenv("HISTORY_TABLE_NAME", aws.table)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.dynamodb.meta.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(counter_stream_module, "_stream", None)
    yield aws
    counter_stream_module._stream = None


def test_the_handler_counts_a_windowed_batch_and_answers_with_state(
    configured: AwsFixture, capsys: pytest.CaptureFixture[str], captured_logs: Any
) -> None:
    aws = configured
    write_history(aws)
    shard, records = stream_records(aws)
    capsys.readouterr()

    response = counter_stream_module.lambda_handler(windowed_event(shard, records), context())

    # Lambda treats a windowed invocation whose response has no `state` as failed.
    assert response == {"state": {}}
    assert counters(aws) == EXPECTED
    out = capsys.readouterr().out
    assert emitted_metric(out, RECORDS_METRIC) == [7]  # r1 3 (not its claim), r2 1, r3 2, r4 1 (of 2)
    assert emitted_metric(out, WRITES_METRIC) == [2]
    line = json.loads(captured_logs.getvalue().strip().splitlines()[-1])
    assert line["message"] == "day counters updated" and line["shard"] == shard
    assert line["function_name"] == "reditus-refunds-CounterStreamFunction"  # Powertools' context keys

    # The window's final invocation, here with no records; then the same batch again.
    assert counter_stream_module.lambda_handler(windowed_event(shard, [], final=True), context()) == {
        "state": {}
    }
    assert counter_stream_module.lambda_handler(windowed_event(shard, records), context()) == {"state": {}}
    assert emitted_metric(capsys.readouterr().out, WRITES_METRIC) == [0, 0]
    assert counters(aws) == EXPECTED


def test_an_event_without_a_shard_is_refused(configured: AwsFixture) -> None:
    """Without a tumbling window the event names no shard: the marks cannot be kept."""
    event = windowed_event(SHARD, [rec("1", "r1", None, img(queued_day=DAY))])
    del event["shardId"]
    with pytest.raises(StreamSettingsError, match="TumblingWindowInSeconds"):
        counter_stream_module.lambda_handler(event, context())
    assert counters(configured) == {}


def test_a_store_failure_fails_the_invocation(
    configured: AwsFixture, monkeypatch: pytest.MonkeyPatch, captured_logs: Any
) -> None:
    client: Any = RefusingClient(configured.dynamodb, DAY, times=99)
    monkeypatch.setattr(
        counter_stream_module, "_stream", CounterStream(DayCounterStore(configured.table, client))
    )
    with pytest.raises(StoreError, match="InternalServerError"):
        counter_stream_module.lambda_handler(
            windowed_event(SHARD, [rec("1", "r1", None, img(queued_day=DAY))]), context()
        )
    line = json.loads(captured_logs.getvalue().strip().splitlines()[-1])
    assert line["level"] == "ERROR" and "InternalServerError" in line["error"] and line["shard"] == SHARD


def test_a_missing_table_fails_the_invocation_with_a_readable_error(
    configured: AwsFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTORY_TABLE_NAME", "no-such-table")
    with pytest.raises(StoreError, match="no-such-table"):
        counter_stream_module.lambda_handler(
            windowed_event(SHARD, [rec("1", "r1", None, img(queued_day=DAY))]), context()
        )


def test_a_misconfigured_function_says_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counter_stream_module, "_stream", None)
    monkeypatch.delenv("HISTORY_TABLE_NAME", raising=False)
    with pytest.raises(StreamSettingsError, match="HISTORY_TABLE_NAME is not set"):
        counter_stream_module.lambda_handler(windowed_event(SHARD, []), context())


def test_apply_event_is_the_handler_without_powertools(aws: AwsFixture, stream: CounterStream) -> None:
    assert apply_event(stream, windowed_event(SHARD, [rec("5", "r1", None, img(queued_day=DAY))])) == {
        "state": {}
    }
    assert stream.last_report.writes == 1 and counters(aws) == {DAY: {"pending": 1}}


# ---- the deployment ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


def props(template: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(template["Resources"][name]["Properties"])


def dynamodb_actions_the_function_calls() -> set[str]:
    """The IAM actions behind every DynamoDB call the function makes, from the source: what
    counter_stream.py calls on its store (`self.store.<m>(`) and what that reaches."""
    code = functions(parse("reditus_refunds/counter_stream.py"))
    entries = calls_on(parse("reditus_refunds/counter_stream.py"), "self.store")
    assert entries == {"read", "add"}
    return dynamodb_actions([(code, entered(code, entries, "DayCounterStore"))])


def test_the_derivation_finds_the_functions_calls() -> None:
    """Control for the role check below: one read by key and one update per day."""
    assert dynamodb_actions_the_function_calls() == {"dynamodb:GetItem", "dynamodb:UpdateItem"}


STREAM_ACTIONS = {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"}


def test_the_role_grants_exactly_what_the_function_and_its_mapping_need(template: dict[str, Any]) -> None:
    role = props(template, COUNTERS_ROLE)
    assert not role.get("ManagedPolicyArns")
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    by_service, _ = grants(statements)  # allows only, one service each, scoped, no wildcard action
    table_calls = dynamodb_actions_the_function_calls()
    assert {f"dynamodb:{a}" for a in by_service["dynamodb"]} == table_calls | STREAM_ACTIONS | {
        "dynamodb:ListStreams"
    }
    on: dict[str, list[Any]] = defaultdict(list)  # action -> resources
    conditions: dict[str, list[Any]] = defaultdict(list)
    for statement in statements:
        for action in as_list(statement["Action"]):
            on[action] += as_list(statement["Resource"])
            conditions[action].append(statement.get("Condition"))
    # The mapping reads this table's stream only; the function writes the counter items only.
    for action in STREAM_ACTIONS:
        assert on.pop(action) == [{"Fn::GetAtt": ["HistoryTable", "StreamArn"]}], action
        assert conditions[action] == [None]
    assert on.pop("dynamodb:ListStreams") == [{"Fn::Sub": "${HistoryTable.Arn}/stream/*"}]
    for action in table_calls:
        assert on.pop(action) == [{"Fn::GetAtt": ["HistoryTable", "Arn"]}], action
        assert conditions[action] == [
            {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [COUNTER_PREFIX + "*"]}}
        ]
    assert on == {
        "kms:Decrypt": [{"Fn::GetAtt": ["EncryptionKey", "Arn"]}],
        "logs:CreateLogStream": [{"Fn::GetAtt": ["CounterStreamLogGroup", "Arn"]}],
        "logs:PutLogEvents": [{"Fn::GetAtt": ["CounterStreamLogGroup", "Arn"]}],
        "xray:PutTraceSegments": ["*"],  # X-Ray has no resource-level permissions
        "xray:PutTelemetryRecords": ["*"],
    }


def test_the_table_has_a_stream_with_both_images(template: dict[str, Any]) -> None:
    assert props(template, "HistoryTable")["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_the_function_is_the_submitters_package_on_the_tables_stream(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    fn, submitter = resources[COUNTERS], resources[SUBMITTER]
    assert fn["Metadata"]["BuildMethod"] == submitter["Metadata"]["BuildMethod"] == "makefile"
    p = fn["Properties"]
    for key in ("CodeUri", "Runtime", "Architectures", "KmsKeyArn"):
        assert p[key] == submitter["Properties"][key], key
    assert p["Handler"] == "reditus_refunds.counter_stream.lambda_handler"
    module, _, attribute = p["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert p["Role"] == {"Fn::GetAtt": [COUNTERS_ROLE, "Arn"]} and "Policies" not in p
    assert p["LoggingConfig"] == {"LogGroup": {"Ref": "CounterStreamLogGroup"}}
    variables = p["Environment"]["Variables"]
    assert set(variables) == set(STREAM_ENV_VARS)
    assert variables["HISTORY_TABLE_NAME"] == {"Ref": "HistoryTable"}
    (event,) = p["Events"].values()
    assert event["Type"] == "DynamoDB"
    mapping = event["Properties"]
    assert mapping["Stream"] == {"Fn::GetAtt": ["HistoryTable", "StreamArn"]}
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    # The shard id (the marks' key) is in the event only with a tumbling window.
    assert 0 < mapping["TumblingWindowInSeconds"] <= 900
    # One batch per shard at a time, in order; retried whole, never skipped, never split.
    assert mapping["ParallelizationFactor"] == 1
    assert (mapping["MaximumRetryAttempts"], mapping["MaximumRecordAgeInSeconds"]) == (-1, -1)
    assert mapping["BisectBatchOnFunctionError"] is False
    assert "FunctionResponseTypes" not in mapping
    assert 1 <= mapping["BatchSize"] <= 10_000 and 0 <= mapping["MaximumBatchingWindowInSeconds"] <= 300
    assert template["Outputs"]["CounterStreamFunctionName"]["Value"] == {"Ref": COUNTERS}
    assert not any(name.startswith("CounterRepair") for name in resources)


def test_sam_build_has_a_target_for_the_function() -> None:
    """sam build runs `make build-<LogicalId>` in CodeUri for a makefile build: the function ships
    the submitter's package, so its target builds exactly that."""
    makefile = (ROOT / "functions" / "Makefile").read_text(encoding="utf-8")
    assert f"\nbuild-{COUNTERS}:" in makefile and "CounterRepair" not in makefile
    target = makefile.split(f"\nbuild-{COUNTERS}:", 1)[1].split("\n\n", 1)[0]
    assert "dependencies" in target and "package-code" in target and "receiver" not in target


def test_the_functions_alarms(template: dict[str, Any]) -> None:
    alarms = {
        r["Properties"]["MetricName"]: r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("Dimensions") == [{"Name": "FunctionName", "Value": {"Ref": COUNTERS}}]
    }
    assert set(alarms) == {"Errors", "IteratorAge"}
    errors, age = alarms["Errors"], alarms["IteratorAge"]
    assert (errors["Namespace"], errors["Statistic"]) == ("AWS/Lambda", "Sum")
    assert (errors["Threshold"], errors["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    assert (age["Namespace"], age["Statistic"], age["ComparisonOperator"]) == (
        "AWS/Lambda",
        "Maximum",
        "GreaterThanThreshold",
    )
    # Milliseconds: well before the stream's 24 hours run out.
    assert 0 < age["Threshold"] <= 6 * 3600 * 1000
    topic = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == alarm["OKActions"] == topic


@pytest.fixture(scope="module")
def translated(template: dict[str, Any]) -> dict[str, Any]:
    return sam_translate(template)


def test_sam_maps_the_stream_to_the_function_and_gives_it_no_role_of_its_own(
    translated: dict[str, Any],
) -> None:
    resources = translated["Resources"]
    assert resources[COUNTERS]["Properties"]["Role"] == {"Fn::GetAtt": [COUNTERS_ROLE, "Arn"]}
    (mapping,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
        and r["Properties"]["FunctionName"] == {"Ref": COUNTERS}
    ]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["HistoryTable", "StreamArn"]}
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    assert mapping["TumblingWindowInSeconds"] == 900
    assert not any(r["Type"] == "AWS::Events::Rule" for r in resources.values())  # no schedule left
    roles = [n for n, r in resources.items() if r["Type"] == "AWS::IAM::Role"]
    assert COUNTERS_ROLE in roles and not any(n.startswith(COUNTERS) for n in roles)  # none generated
