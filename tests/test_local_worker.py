"""The local stack's pieces in-process: resources from template.yaml, the event source mapping
emulator driving the real handler, and the snapshot that carries state across restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from reditus_local import snapshot
from reditus_local.motoserver import MotoServer
from reditus_local.resources import (
    ResourceError,
    TemplateModel,
    create_resources,
    function_settings,
    moto_session,
)
from reditus_local.simulator import DEMO_INVALID, DEMO_REFUNDABLE, ReditusSimulator
from reditus_local.worker import (
    REPAIR_EVERY_SECONDS,
    EventSourceMapping,
    FakeLambdaContext,
    MappingSettings,
    ScheduledFunction,
    build_parser,
    failed_ids,
    repair_schedule,
)
from reditus_operators.audit import AUDIT_INDEXES
from reditus_operators.dlq import DeadLetterQueue
from reditus_refunds.layout import HASH_KEY, INDEXES
from reditus_refunds.records import Outcome
from reditus_webhooks import PROVIDERS, events
from reditus_webhooks.credentials import secret_variable

from .conftest import API_KEY, AwsFixture
from .lambda_rig import make_lambda, simulator  # noqa: F401 - the fixture

TEMPLATE = TemplateModel.load()


def template_props(logical_id: str) -> dict[str, Any]:
    props: dict[str, Any] = TEMPLATE.template["Resources"][logical_id]["Properties"]
    return props


@dataclass
class Local:
    aws: AwsFixture
    model: TemplateModel
    system: Any


@pytest.fixture
def local() -> Iterator[Local]:
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        model = TemplateModel.load(overrides={"MaxReceiveCount": 2})
        system = create_resources(model, session.client, api_key=API_KEY, visibility_timeout=1)
        aws = AwsFixture(
            session.client("dynamodb"),
            session.client("sqs"),
            session.client("secretsmanager"),
            system.config.table_name,
            system.config.queue_url,
            system.config.dlq_url,
        )
        yield Local(aws, model, system)


# ---- resources ---------------------------------------------------------------------------------


def test_resources_follow_the_template() -> None:
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        system = create_resources(TemplateModel.load(), session.client, api_key=API_KEY)
        sqs, dynamodb = session.client("sqs"), session.client("dynamodb")
        queue = sqs.get_queue_attributes(QueueUrl=system.config.queue_url, AttributeNames=["All"])[
            "Attributes"
        ]
        dlq = sqs.get_queue_attributes(QueueUrl=system.config.dlq_url, AttributeNames=["All"])["Attributes"]
        refund_queue = template_props("RefundQueue")
        visibility = TemplateModel.load().resolve(refund_queue["VisibilityTimeout"])
        assert int(queue["VisibilityTimeout"]) == visibility == system.visibility_timeout
        # 6 x the function timeout + the batching window (the template's default: 1 s).
        assert visibility == 6 * system.function.timeout_seconds + system.function.batching_window_seconds
        assert int(queue["MessageRetentionPeriod"]) == refund_queue["MessageRetentionPeriod"]
        assert (
            int(dlq["MessageRetentionPeriod"]) == template_props("DeadLetterQueue")["MessageRetentionPeriod"]
        )
        redrive = json.loads(queue["RedrivePolicy"])
        default_receives = TEMPLATE.template["Parameters"]["MaxReceiveCount"]["Default"]
        assert int(redrive["maxReceiveCount"]) == default_receives == system.max_receive_count
        assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]

        table = dynamodb.describe_table(TableName=system.config.table_name)["Table"]
        history = template_props("HistoryTable")
        assert table["KeySchema"] == history["KeySchema"] == [{"AttributeName": HASH_KEY, "KeyType": "HASH"}]
        assert {(d["AttributeName"], d["AttributeType"]) for d in table["AttributeDefinitions"]} == {
            (d["AttributeName"], d["AttributeType"]) for d in history["AttributeDefinitions"]
        }
        indexes = {
            i["IndexName"]: [k["AttributeName"] for k in i["KeySchema"]]
            for i in table["GlobalSecondaryIndexes"]
        }
        webhook_indexes = {
            events.EVENT_DAY_INDEX: [events.EVENT_DAY_ATTRIBUTE, events.EVENT_TIME_ATTRIBUTE],
            events.OPEN_REVIEW_INDEX: [events.REVIEW_OPEN_ATTRIBUTE, events.REVIEW_TIME_ATTRIBUTE],
        }
        audit_indexes = {name: list(keys) for name, keys in AUDIT_INDEXES.items()}
        assert (
            indexes == {name: list(keys) for name, keys in INDEXES.items()} | webhook_indexes | audit_indexes
        )
        # The sparse indexes keep the template's lean projection.
        projections = {i["IndexName"]: i["Projection"] for i in table["GlobalSecondaryIndexes"]}
        for declared in history["GlobalSecondaryIndexes"]:
            assert projections[declared["IndexName"]] == declared["Projection"]

        secret = session.client("secretsmanager").get_secret_value(SecretId=system.secret_arn)
        assert secret["SecretString"] == API_KEY
        function = system.function
        assert function.environment["REDITUS_API_KEY_SECRET"] == system.secret_arn
        assert function.environment["HISTORY_TABLE_NAME"] == system.config.table_name
        assert function.environment["REFUND_QUEUE_URL"] == system.config.queue_url
        assert function.environment["MAX_RECEIVE_COUNT"] == str(default_receives)
        event = template_props("RefundSubmitterFunction")["Events"]["RefundQueueMessages"]["Properties"]
        parameters = TEMPLATE.template["Parameters"]
        assert function.batch_size == parameters[event["BatchSize"]["Ref"]]["Default"]
        assert (
            function.batching_window_seconds
            == parameters[event["MaximumBatchingWindowInSeconds"]["Ref"]]["Default"]
        )
        assert function.timeout_seconds == template_props("RefundSubmitterFunction")["Timeout"]
        assert function.report_batch_item_failures
        assert function.handler == "reditus_refunds.handler.lambda_handler"

        # The webhook receiver: its settings from the template, and each provider's secret as the
        # template creates it ("not configured") unless the stack gives it a value.
        receiver = system.receiver
        assert receiver is not None and receiver.handler == "reditus_webhooks.handler.lambda_handler"
        assert receiver.timeout_seconds == template_props("WebhookReceiverFunction")["Timeout"]
        assert receiver.environment["HISTORY_TABLE_NAME"] == system.config.table_name
        assert receiver.environment["REFUND_QUEUE_URL"] == system.config.queue_url
        assert receiver.environment["REDITUS_WEBHOOK_PARTIAL_REFUNDS"] == "review"
        secrets = session.client("secretsmanager")
        for provider in PROVIDERS:
            arn = receiver.environment[secret_variable(provider)]
            assert arn != system.secret_arn
            value = json.loads(secrets.get_secret_value(SecretId=arn)["SecretString"])
            assert set(value.values()) == {""}


def test_parameters_override_the_defaults(local: Local) -> None:
    attributes = local.aws.sqs.get_queue_attributes(QueueUrl=local.aws.queue_url, AttributeNames=["All"])
    assert json.loads(attributes["Attributes"]["RedrivePolicy"])["maxReceiveCount"] == 2
    assert attributes["Attributes"]["VisibilityTimeout"] == "1"
    assert local.system.function.environment["MAX_RECEIVE_COUNT"] == "2"
    with pytest.raises(ResourceError, match="no parameter NoSuchThing"):
        TemplateModel.load(overrides={"NoSuchThing": 1})


def test_the_visibility_timeout_follows_the_batching_window() -> None:
    """The template's Fn::FindInMap, resolved by the local stack as CloudFormation does."""
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        model = TemplateModel.load(overrides={"MaximumBatchingWindowInSeconds": "300"})
        system = create_resources(model, session.client, api_key=API_KEY)
        attributes = session.client("sqs").get_queue_attributes(
            QueueUrl=system.config.queue_url, AttributeNames=["VisibilityTimeout"]
        )["Attributes"]
        assert int(attributes["VisibilityTimeout"]) == system.visibility_timeout == 6 * 60 + 300
    unlisted = TemplateModel.load(overrides={"MaximumBatchingWindowInSeconds": 7})
    with pytest.raises(ResourceError, match="VisibilityTimeoutByBatchingWindow has no value for '7'"):
        unlisted.resolve(unlisted.resources["RefundQueue"]["Properties"]["VisibilityTimeout"])


def test_function_settings_need_no_aws() -> None:
    function = function_settings(TemplateModel.load())
    assert "HISTORY_TABLE_NAME" in function.skipped_environment  # a table that does not exist yet
    assert function.environment["NOT_FOUND_GRACE_SECONDS"] == str(
        TEMPLATE.template["Parameters"]["NotFoundGraceSeconds"]["Default"]
    )


# ---- the event source mapping ------------------------------------------------------------------


class Recorder:
    """A fake handler: records events and contexts, fails the bodies it is told to."""

    def __init__(self, fail: set[str] | None = None, raise_error: bool = False, response: Any = None):
        self.fail = fail or set()
        self.raise_error = raise_error
        self.response = response
        self.events: list[dict[str, Any]] = []
        self.remaining: list[int] = []

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        self.remaining.append(context.get_remaining_time_in_millis())
        assert context.function_name and context.aws_request_id and context.memory_limit_in_mb
        if self.raise_error:
            raise RuntimeError("boom")
        if self.response is not None:
            return self.response
        return {
            "batchItemFailures": [
                {"itemIdentifier": r["messageId"]} for r in event["Records"] if r["body"] in self.fail
            ]
        }


def mapping(local: Local, handler: Any, **settings: Any) -> EventSourceMapping:
    values = {"queue_url": local.aws.queue_url, "timeout_seconds": 5, "wait_time_seconds": 1, **settings}
    return EventSourceMapping(local.aws.sqs, MappingSettings(**values), handler)


def send(local: Local, *bodies: str) -> None:
    for body in bodies:
        local.aws.sqs.send_message(QueueUrl=local.aws.queue_url, MessageBody=body)


def counts(local: Local) -> tuple[int, int, int]:
    """(visible, in flight, in the dead-letter queue)."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    queue = local.aws.sqs.get_queue_attributes(QueueUrl=local.aws.queue_url, AttributeNames=names)[
        "Attributes"
    ]
    dlq = DeadLetterQueue(local.aws.sqs, local.aws.dlq_url, local.aws.queue_url).count()
    return int(queue[names[0]]), int(queue[names[1]]), dlq


def test_only_successes_are_deleted_and_failures_come_back_then_go_to_the_dlq(local: Local) -> None:
    handler = Recorder(fail={"b"})
    esm = mapping(local, handler)
    send(local, "a", "b", "c")
    result = esm.poll_once()
    assert result is not None and len(result.records) == 3
    record = handler.events[0]["Records"][0]
    arn = local.aws.sqs.get_queue_attributes(QueueUrl=local.aws.queue_url, AttributeNames=["QueueArn"])
    assert record["eventSource"] == "aws:sqs" and record["awsRegion"] == "us-east-1"
    assert record["eventSourceARN"] == arn["Attributes"]["QueueArn"]
    assert record["attributes"]["ApproximateReceiveCount"] == "1" and record["attributes"]["SentTimestamp"]
    assert record["md5OfBody"] and record["receiptHandle"] and record["messageAttributes"] == {}
    assert 0 < handler.remaining[0] <= 5000
    assert sorted(r["body"] for r in handler.events[0]["Records"] if r["messageId"] in result.deleted) == [
        "a",
        "c",
    ]
    assert counts(local) == (0, 1, 0)

    again = esm.poll_once(wait_seconds=5)  # visible again after the 1 s visibility timeout
    assert again is not None and [r["body"] for r in again.records] == ["b"]
    assert again.records[0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert again.failed == [again.records[0]["messageId"]]
    # maxReceiveCount (2) is used up: SQS moves it to the dead-letter queue on the next receive.
    assert esm.poll_once(wait_seconds=3) is None
    assert counts(local) == (0, 0, 1)


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (Recorder(raise_error=True), "raised RuntimeError"),
        (Recorder(response={"batchItemFailures": [{"itemIdentifier": "not-in-batch"}]}), "unknown message"),
        (Recorder(response={"batchItemFailures": [{"itemIdentifier": ""}]}), "unknown message"),
        (Recorder(response="nonsense"), "not a batchItemFailures list"),
    ],
)
def test_a_failed_invocation_fails_the_whole_batch(local: Local, handler: Recorder, reason: str) -> None:
    send(local, "a", "b")
    result = mapping(local, handler).poll_once()
    assert result is not None and result.deleted == [] and len(result.failed) == 2
    assert result.error is not None and reason in result.error
    assert counts(local) == (0, 2, 0)


def test_a_run_past_the_timeout_fails_the_batch(local: Local) -> None:
    now = [0.0]

    def slow(event: dict[str, Any], context: FakeLambdaContext) -> dict[str, Any]:
        now[0] += 6  # past the 5 s timeout
        return {"batchItemFailures": []}

    esm = EventSourceMapping(
        local.aws.sqs,
        MappingSettings(queue_url=local.aws.queue_url, timeout_seconds=5, wait_time_seconds=1),
        slow,
        clock=lambda: now[0],
    )
    send(local, "a")
    result = esm.poll_once()
    assert result is not None and result.deleted == [] and "timed out" in str(result.error)


def test_batch_size_and_window(local: Local) -> None:
    send(local, *"abcde")
    handler = Recorder()
    esm = mapping(local, handler, batch_size=3, batching_window_seconds=1)
    first, second = esm.poll_once(), esm.poll_once()
    assert first is not None and second is not None
    assert (len(first.records), len(second.records)) == (3, 2)
    assert counts(local) == (0, 0, 0)


def test_the_context_counts_down() -> None:
    now = [100.0]
    context = FakeLambdaContext("fn", 60, clock=lambda: now[0])
    assert context.get_remaining_time_in_millis() == 60_000
    now[0] += 59.5
    assert context.get_remaining_time_in_millis() == 500
    now[0] += 5
    assert context.get_remaining_time_in_millis() == 0
    assert context.invoked_function_arn == "arn:aws:lambda:us-east-1:123456789012:function:fn"


def test_failed_ids_rules() -> None:
    ids = ["m1", "m2"]
    assert failed_ids(None, ids) == (set(), None)
    assert failed_ids({}, ids) == (set(), None)
    assert failed_ids({"batchItemFailures": []}, ids) == (set(), None)
    assert failed_ids({"batchItemFailures": [{"itemIdentifier": "m2"}]}, ids) == ({"m2"}, None)
    assert failed_ids({"batchItemFailures": [{"itemIdentifier": None}]}, ids)[0] == {"m1", "m2"}


def test_the_real_handler_behind_the_mapping(
    local: Local,
    simulator: ReditusSimulator,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lam = make_lambda(local.aws, simulator, monkeypatch, MAX_RECEIVE_COUNT="2", REDITUS_MAX_ATTEMPTS="1")
    esm = mapping(local, lam.handler.lambda_handler, timeout_seconds=60)
    lam.send(
        {"payment_id": DEMO_REFUNDABLE[0], "refund_id": "w-ok"},
        {"payment_id": DEMO_INVALID[0], "refund_id": "w-400"},
        "not json",
    )
    result = esm.poll_once()
    assert result is not None and len(result.deleted) == 3 and result.failed == []
    assert lam.record("w-ok").outcome is Outcome.REFUNDED
    assert lam.record("w-400").outcome is Outcome.REJECTED

    simulator.configure(fault_rate=1.0, faults=("503",))
    lam.send({"payment_id": DEMO_REFUNDABLE[1], "refund_id": "w-503"})
    first = esm.poll_once()
    assert first is not None and len(first.failed) == 1
    assert lam.record("w-503").outcome is Outcome.RETRYING
    second = esm.poll_once(wait_seconds=5)
    assert second is not None and second.records[0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert lam.record("w-503").outcome is Outcome.DEAD_LETTERED
    assert esm.poll_once(wait_seconds=3) is None
    assert counts(local) == (0, 0, 1)

    simulator.configure(fault_rate=0.0)
    DeadLetterQueue(local.aws.sqs, local.aws.dlq_url, local.aws.queue_url).redrive()
    assert esm.poll_once() is not None
    assert lam.record("w-503").outcome is Outcome.REFUNDED


# ---- the scheduled function: the counter repair ----------------------------------------------------


def test_a_scheduled_function_runs_at_start_then_once_per_interval_of_its_clock() -> None:
    now = [1000.0]
    seen: list[tuple[dict[str, Any], int, str]] = []
    results: list[Any] = []

    def handler(event: dict[str, Any], context: FakeLambdaContext) -> dict[str, Any]:
        seen.append((event, context.get_remaining_time_in_millis(), context.function_name))
        return {"settled": 0, "days": []}

    schedule = ScheduledFunction(
        handler,
        600,
        function_name="repair",
        timeout_seconds=300,
        clock=lambda: now[0],
        on_result=results.append,
    )
    assert schedule.run_if_due()  # once at start
    assert not schedule.run_if_due()
    now[0] += 599.5
    assert not schedule.run_if_due()
    now[0] += 0.5
    assert schedule.run_if_due() and not schedule.run_if_due()
    assert schedule.runs == 2 and len(results) == 2
    event, remaining, name = seen[0]
    # What an EventBridge schedule sends; the context counts down from the function's timeout.
    assert (event["source"], event["detail-type"], event["detail"]) == ("aws.events", "Scheduled Event", {})
    assert (remaining, name) == (300_000, "repair")


def test_a_failed_scheduled_run_is_logged_and_waits_for_its_next_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    calls: list[float] = []

    def failing(event: dict[str, Any], context: FakeLambdaContext) -> None:
        calls.append(now[0])
        raise RuntimeError("the table is unavailable")

    schedule = ScheduledFunction(
        failing, 600, function_name="repair", timeout_seconds=300, clock=lambda: now[0]
    )
    with caplog.at_level("WARNING", logger="reditus_local.worker"):
        assert schedule.run_if_due()
    assert schedule.failures == 1 and "the table is unavailable" in caplog.text
    now[0] += 10
    assert not schedule.run_if_due()
    now[0] += 600
    assert schedule.run_if_due() and calls == [0.0, 610.0]


def test_the_mapping_runs_its_schedules_before_every_poll(local: Local) -> None:
    handler = Recorder()
    steps: list[int] = []

    def step() -> None:
        steps.append(len(handler.events))  # batches handled so far
        if len(steps) == 3:
            esm.stopping.set()

    class Sqs:
        """The queue, and a bound on the loop should the steps never stop it."""

        def __init__(self) -> None:
            self.receives = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(local.aws.sqs, name)

        def receive_message(self, **kwargs: Any) -> Any:
            self.receives += 1
            if self.receives >= 10:
                esm.stopping.set()
            return local.aws.sqs.receive_message(**kwargs)

    settings = MappingSettings(queue_url=local.aws.queue_url, timeout_seconds=5, wait_time_seconds=0)
    esm = EventSourceMapping(Sqs(), settings, handler, between_polls=[step])
    send(local, "a")
    esm.run()
    # Before the first poll (the start), after the batch, after an empty poll; then stopped.
    assert steps == [0, 1, 1]
    assert [r["body"] for r in handler.events[0]["Records"]] == ["a"]


def test_the_worker_repairs_the_day_counters_with_the_templates_scheduled_function(
    local: Local, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The template's CounterRepairFunction, run by the worker's schedule against the local table:
    an item whose outcome moved while its counter did not (a submitter environment that went away)
    is counted where it belongs."""
    from reditus_refunds import repair
    from reditus_refunds.contract import RefundRequest
    from reditus_refunds.history_writer import HistoryWriter
    from reditus_refunds.producer import RefundProducer
    from reditus_refunds.records import day_of, iso, utc_now

    monkeypatch.setenv("HISTORY_TABLE_NAME", local.aws.table)
    monkeypatch.setattr(repair, "_repair", None)
    writer = HistoryWriter(local.aws.table, local.aws.dynamodb)
    producer = RefundProducer(local.aws.sqs, local.aws.queue_url, store=writer)
    producer.send_many([RefundRequest(payment_id="pay-1", refund_id="r-lost")])
    # The result was stored, the settlement of its counter lost with the environment.
    local.aws.dynamodb.update_item(
        TableName=local.aws.table,
        Key={HASH_KEY: {"S": "r-lost"}},
        UpdateExpression="SET outcome = :o",
        ExpressionAttributeValues={":o": {"S": "refunded"}},
    )
    day = day_of(iso(utc_now()))

    def counter() -> dict[str, str]:
        item = local.aws.dynamodb.get_item(TableName=local.aws.table, Key={HASH_KEY: {"S": f"counter#{day}"}})
        return {k: v["N"] for k, v in item["Item"].items() if k in {o.value for o in Outcome}}

    assert counter() == {"pending": "1"}
    capsys.readouterr()

    schedule = repair_schedule(local.model, REPAIR_EVERY_SECONDS, "us-east-1")
    assert schedule is not None
    assert schedule.function_name == local.model.physical_name("CounterRepairFunction")
    assert schedule.timeout_seconds == template_props("CounterRepairFunction")["Timeout"]
    assert schedule.run_if_due() and schedule.failures == 0
    assert counter() == {"pending": "0", "refunded": "1"}
    assert "counter repair: settled the day counters of 1 refund(s)" in capsys.readouterr().out


def test_the_worker_repairs_every_ten_minutes_unless_told_not_to() -> None:
    assert build_parser().parse_args([]).repair_every == REPAIR_EVERY_SECONDS == 600
    assert build_parser().parse_args(["--no-repair"]).no_repair


# ---- the snapshot --------------------------------------------------------------------------------


def test_snapshot_keeps_items_and_every_message() -> None:
    with MotoServer() as server:
        session = moto_session()

        def client(service: str) -> Any:
            return session.client(service, endpoint_url=server.endpoint_url)  # type: ignore[call-overload]

        model = TemplateModel.load()
        model.stack_name = "snapshot-test"
        system = create_resources(model, client, api_key=API_KEY)
        sqs, dynamodb = client("sqs"), client("dynamodb")
        queue = system.config.queue_url
        table = system.config.table_name
        dynamodb.put_item(TableName=table, Item={HASH_KEY: {"S": "r-1"}, "outcome": {"S": "pending"}})
        dynamodb.put_item(
            TableName=table, Item={HASH_KEY: {"S": "counter#2026-11-26"}, "pending": {"N": "1"}}
        )
        sqs.send_message(
            QueueUrl=queue,
            MessageBody="visible",
            MessageAttributes={"kind": {"DataType": "String", "StringValue": "test"}},
        )
        sqs.send_message(QueueUrl=queue, MessageBody="delayed", DelaySeconds=120)
        sqs.send_message(QueueUrl=system.config.dlq_url, MessageBody="dead")
        in_flight = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1, VisibilityTimeout=300)
        assert in_flight["Messages"][0]["Body"] == "visible"
        sqs.send_message(QueueUrl=queue, MessageBody="also visible")

        saved = snapshot.collect(server.endpoint_url, "us-east-1")
        name = queue.rsplit("/", 1)[1]
        by_body = {m["body"]: m for m in saved["queues"][name]}
        assert set(by_body) == {"visible", "delayed", "also visible"}
        assert by_body["visible"]["in_flight"] and by_body["visible"]["receive_count"] == 1
        assert 100 < by_body["delayed"]["delay_seconds"] <= 120
        assert len(saved["tables"][table]) == 2

        # A fresh start: the same resources, empty.
        for url in (queue, system.config.dlq_url):
            sqs.delete_queue(QueueUrl=url)
        dynamodb.delete_table(TableName=table)
        fresh = TemplateModel.load()
        fresh.stack_name = "snapshot-test"
        create_resources(fresh, client, api_key=API_KEY)
        report = snapshot.restore(saved, dynamodb, sqs)
        assert report.items >= 2 and report.messages >= 4  # >=: moto's state is per process

        attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "2"  # the in-flight one is visible again
        assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        restored = {m["Body"]: m for m in got["Messages"]}
        assert restored["visible"]["MessageAttributes"]["kind"]["StringValue"] == "test"
        assert (
            dynamodb.get_item(TableName=table, Key={HASH_KEY: {"S": "r-1"}})["Item"]["outcome"]["S"]
            == "pending"
        )


def test_a_snapshot_that_is_not_one_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text("{}")
    with pytest.raises(snapshot.SnapshotError, match="--fresh"):
        snapshot.read(path)
