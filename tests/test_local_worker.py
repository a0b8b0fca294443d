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
    stream_function_settings,
)
from reditus_local.simulator import DEMO_INVALID, DEMO_REFUNDABLE, ReditusSimulator
from reditus_local.worker import (
    EventSourceMapping,
    FakeLambdaContext,
    MappingSettings,
    StreamMapping,
    StreamSettings,
    build_parser,
    counter_handler,
    drain_stream,
    failed_ids,
    stream_step,
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


# ---- the stream's event source mapping: the day counters ------------------------------------------


def test_the_mapping_runs_its_steps_before_every_poll(local: Local) -> None:
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


def test_a_step_that_is_behind_makes_the_next_poll_not_wait(local: Local) -> None:
    """The stream step says it has a backlog: the queue is then polled without a long poll, so the
    stream is read at its own pace (the full soak's restarted appliers read 100,000 records again)."""
    waits: list[int] = []
    behind = [True, True, False]

    class Sqs:
        def __getattr__(self, name: str) -> Any:
            return getattr(local.aws.sqs, name)

        def receive_message(self, **kwargs: Any) -> Any:
            waits.append(kwargs["WaitTimeSeconds"])
            if len(waits) == len(behind):
                esm.stopping.set()
            return local.aws.sqs.receive_message(**kwargs)

    settings = MappingSettings(queue_url=local.aws.queue_url, timeout_seconds=5, wait_time_seconds=1)
    esm = EventSourceMapping(Sqs(), settings, Recorder(), between_polls=[lambda: behind[len(waits)]])
    esm.run()
    assert waits == [0, 0, 1]


@dataclass
class Served:
    """The template's resources on a moto server (moto answers DynamoDB Streams in server mode only)."""

    model: TemplateModel
    system: Any
    dynamodb: Any
    streams: Any

    @property
    def table(self) -> str:
        return str(self.system.config.table_name)

    def put(self, refund_id: str, **attributes: str) -> None:
        item = {HASH_KEY: {"S": refund_id}, **{k: {"S": v} for k, v in attributes.items()}}
        self.dynamodb.put_item(TableName=self.table, Item=item)

    def counts(self, day: str) -> dict[str, int]:
        found = self.dynamodb.get_item(TableName=self.table, Key={HASH_KEY: {"S": f"counter#{day}"}})
        outcomes = {o.value for o in Outcome}
        return {k: int(v["N"]) for k, v in found.get("Item", {}).items() if k in outcomes and int(v["N"])}

    def stream_arn(self) -> str:
        return str(self.dynamodb.describe_table(TableName=self.table)["Table"]["LatestStreamArn"])


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def served(moto_server: MotoServer, request: pytest.FixtureRequest) -> Served:
    session = moto_session()

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=moto_server.endpoint_url)  # type: ignore[call-overload]

    model = TemplateModel.load()
    model.stack_name = f"stream-{abs(hash(request.node.nodeid)):x}"
    system = create_resources(model, client, api_key=API_KEY)
    return Served(model, system, client("dynamodb"), client("dynamodbstreams"))


DAY = "2026-11-30"


class StreamRecorder:
    """The counters' handler logic on the served table, recording each event (and able to fail)."""

    def __init__(self, served: Served, fail: int = 0, answer: Any = None):
        self.inner = counter_handler(served.table, served.dynamodb)
        self.events: list[dict[str, Any]] = []
        self.contexts: list[FakeLambdaContext] = []
        self.fail = fail
        self.answer = answer

    def __call__(self, event: dict[str, Any], context: FakeLambdaContext) -> Any:
        self.events.append(json.loads(json.dumps(event)))  # as it would cross the wire
        self.contexts.append(context)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("DynamoDB is unavailable")
        response = self.inner(event, context)
        return response if self.answer is None else self.answer


def stream_settings(served: Served, **overrides: Any) -> StreamSettings:
    return StreamSettings(stream_arn=served.stream_arn(), **overrides)


def test_the_local_table_has_the_templates_stream(served: Served) -> None:
    table = served.dynamodb.describe_table(TableName=served.table)["Table"]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert served.model.attributes[("HistoryTable", "StreamArn")] == table["LatestStreamArn"]
    function = stream_function_settings(served.model)
    assert function is not None
    assert function.handler == "reditus_refunds.counter_stream.lambda_handler"
    assert function.function_name == served.model.physical_name("CounterStreamFunction")
    mapping = template_props("CounterStreamFunction")["Events"]["HistoryStream"]["Properties"]
    assert (function.batch_size, function.tumbling_window_seconds, function.starting_position) == (
        mapping["BatchSize"],
        mapping["TumblingWindowInSeconds"],
        "TRIM_HORIZON",
    )
    assert function.environment["HISTORY_TABLE_NAME"] == served.table


def test_the_worker_applies_the_stream_with_lambdas_windowed_events(served: Served) -> None:
    served.put("r1", queued_day=DAY)
    served.put("r2", queued_day=DAY, outcome="refunded")
    served.put("payment#pay-1", lease_token="t")
    handler = StreamRecorder(served)
    clock = [1_764_500_000.0]  # 2025-11-30T10:53:20Z: inside the window 10:45-11:00
    esm = StreamMapping(
        served.streams, stream_settings(served, tumbling_window_seconds=900), handler, clock=lambda: clock[0]
    )

    poll = esm.poll_once()
    assert (poll.records, poll.invocations, poll.errors) == (3, 1, [])
    assert served.counts(DAY) == {"pending": 1, "refunded": 1}
    (event,) = handler.events
    shard = served.streams.describe_stream(StreamArn=served.stream_arn())["StreamDescription"]["Shards"][0]
    # The event Lambda builds for a stream mapping with a tumbling window.
    assert set(event) == {
        "Records", "window", "state", "shardId", "eventSourceARN", "isFinalInvokeForWindow",
        "isWindowTerminatedEarly",
    }  # fmt: skip
    assert event["shardId"] == shard["ShardId"] and event["eventSourceARN"] == served.stream_arn()
    assert event["window"] == {"start": "2025-11-30T10:45:00Z", "end": "2025-11-30T11:00:00Z"}
    assert (event["state"], event["isFinalInvokeForWindow"], event["isWindowTerminatedEarly"]) == (
        {},
        False,
        False,
    )
    first = event["Records"][0]
    assert set(first) == {
        "eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb", "eventSourceARN",
    }  # fmt: skip
    assert (first["eventName"], first["eventSource"], first["eventSourceARN"]) == (
        "INSERT",
        "aws:dynamodb",
        served.stream_arn(),
    )
    assert isinstance(first["dynamodb"]["ApproximateCreationDateTime"], int)  # epoch seconds, as Lambda
    assert first["dynamodb"]["Keys"] == {HASH_KEY: {"S": "r1"}}
    assert first["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert handler.contexts[0].get_remaining_time_in_millis() > 0

    # The counter's own write is on the stream too: read, counted as nothing.
    poll = esm.poll_once()
    assert poll.records >= 1 and served.counts(DAY) == {"pending": 1, "refunded": 1}
    assert esm.poll_once().records == 0

    # Past the window's end: the final invocation of the window, with no records.
    clock[0] += 900
    poll = esm.poll_once()
    assert (poll.records, poll.invocations) == (0, 1)
    final = handler.events[-1]
    assert final["isFinalInvokeForWindow"] is True and final["Records"] == []
    assert esm.poll_once().invocations == 0  # once per window


def test_a_full_stream_batch_says_the_stream_is_behind(served: Served) -> None:
    for n in range(3):
        served.put(f"r{n}", queued_day=DAY)
    esm = StreamMapping(served.streams, stream_settings(served, batch_size=2), StreamRecorder(served))
    first = esm.poll_once()
    assert (first.records, first.behind) == (2, True)  # as many as it asked for: more may wait
    second = esm.poll_once()
    assert second.records >= 1 and second.behind is (second.records == 2)
    while esm.poll_once().records:
        pass
    assert esm.poll_once().behind is False


def test_a_failed_batch_is_retried_from_its_first_record_and_the_shard_waits(served: Served) -> None:
    served.put("r1", queued_day=DAY)
    handler = StreamRecorder(served, fail=2)
    esm = StreamMapping(served.streams, stream_settings(served), handler)
    for _ in range(2):
        poll = esm.poll_once()
        assert poll.records == 0 and poll.errors == [
            "the function raised RuntimeError: DynamoDB is unavailable"
        ]
        assert served.counts(DAY) == {}
    served.put("r2", queued_day=DAY)  # written meanwhile: after the failed batch, in order
    poll = esm.poll_once()
    assert poll.records == 2 and not poll.errors
    assert [[r["dynamodb"]["Keys"][HASH_KEY]["S"] for r in e["Records"]] for e in handler.events] == [
        ["r1"],
        ["r1"],
        ["r1", "r2"],
    ]
    assert served.counts(DAY) == {"pending": 2}


def test_a_response_without_state_fails_the_batch(served: Served) -> None:
    """Lambda treats a windowed invocation whose response has no `state` as failed."""
    served.put("r1", queued_day=DAY)
    esm = StreamMapping(served.streams, stream_settings(served), StreamRecorder(served, answer={}))
    poll = esm.poll_once()
    assert poll.records == 0 and poll.errors == ["the response has no state (a tumbling window needs one)"]


def test_a_restarted_worker_reads_the_stream_again_and_counts_nothing_twice(served: Served) -> None:
    served.put("r1", queued_day=DAY)
    served.put("r2", queued_day=DAY, outcome="rejected")
    assert drain_stream(served.dynamodb, served.streams, served.table) >= 2
    assert served.counts(DAY) == {"pending": 1, "rejected": 1}
    served.dynamodb.update_item(
        TableName=served.table,
        Key={HASH_KEY: {"S": "r1"}},
        UpdateExpression="SET outcome = :o",
        ExpressionAttributeValues={":o": {"S": "refunded"}},
    )
    # A new worker process: a fresh mapping from TRIM_HORIZON, every record again.
    again = StreamMapping(served.streams, stream_settings(served), StreamRecorder(served))
    assert again.drain(timeout_seconds=30) > 3
    assert served.counts(DAY) == {"refunded": 1, "rejected": 1}


def test_drain_gives_up_at_its_deadline_when_the_function_keeps_failing(served: Served) -> None:
    served.put("r1", queued_day=DAY)
    esm = StreamMapping(served.streams, stream_settings(served), StreamRecorder(served, fail=10**6))
    with pytest.raises(TimeoutError, match="DynamoDB is unavailable"):
        esm.drain(timeout_seconds=0.2)


def test_the_worker_plays_the_templates_stream_function(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """stream_step: the template's CounterStreamFunction, its real handler configured from the
    environment as in Lambda (the worker's environment names the table and the endpoint)."""
    from reditus_refunds import counter_stream

    endpoint = served.dynamodb.meta.endpoint_url
    monkeypatch.setenv("HISTORY_TABLE_NAME", served.table)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setattr(counter_stream, "_stream", None)
    served.put("r1", queued_day=DAY, outcome="not_found")
    step = stream_step(served.model, moto_session(), "us-east-1", quiet=False)
    assert step is not None
    assert step.mapping.settings.function_name == served.model.physical_name("CounterStreamFunction")
    assert step.mapping.settings.tumbling_window_seconds == 900
    capsys.readouterr()
    step()
    assert served.counts(DAY) == {"not_found": 1}
    assert "day counters: applied 1 stream record(s)" in capsys.readouterr().out
    counter_stream._stream = None


def test_the_worker_reads_the_stream_unless_told_not_to() -> None:
    args = build_parser().parse_args([])
    assert args.no_stream is False
    assert build_parser().parse_args(["--no-stream"]).no_stream
    for gone in ("--no-repair", "--repair-every"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([gone, "600"] if gone == "--repair-every" else [gone])


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
        assert report.items >= 1 and report.messages >= 4  # >=: moto's state is per process
        # The day counters are not restored: they are kept from the table's stream, which the
        # restored items go through again (the worker reads it from its start).
        counter = dynamodb.get_item(TableName=table, Key={HASH_KEY: {"S": "counter#2026-11-26"}})
        assert "Item" not in counter

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
