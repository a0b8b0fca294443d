"""The real Lambda handler, with moto for AWS and the Reditus simulator on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from reditus_local.simulator import DEMO_INVALID, DEMO_REFUNDABLE
from reditus_refunds.app import inbound_from_record
from reditus_refunds.outcomes import RECHECK_ATTRIBUTE, REDRIVE_REFUND_ID_ATTRIBUTE
from reditus_refunds.records import Outcome

from .conftest import API_KEY
from .lambda_rig import Lambda, free_port, make_lambda


def test_refunded_rejected_and_not_found(lam: Lambda) -> None:
    _, failures = lam.run(
        {"payment_id": DEMO_REFUNDABLE[0], "refund_id": "ok-1"},
        {"payment_id": DEMO_INVALID[0], "refund_id": "bad-1"},
        {"payment_id": "pay_nobody_knows", "refund_id": "nf-1"},
    )
    assert failures == set()
    ok, bad, nf = lam.record("ok-1"), lam.record("bad-1"), lam.record("nf-1")
    assert (ok.outcome, ok.http_status, ok.detail) == (Outcome.REFUNDED, 200, "ok")
    assert (bad.outcome, bad.http_status) == (Outcome.REJECTED, 400)
    assert "Validation failed" in bad.detail
    assert (nf.outcome, nf.http_status, nf.detail) == (Outcome.NOT_FOUND, 404, "Payment not found")
    assert ok.latency_ms is not None and ok.completed_at and ok.attempt_log[0].http_status == 200


def test_not_found_inside_the_grace_window_is_rechecked_with_a_delay(aws, simulator, monkeypatch) -> None:
    lam = make_lambda(
        aws, simulator, monkeypatch, NOT_FOUND_GRACE_SECONDS="600", NOT_FOUND_RECHECK_DELAY_SECONDS="30"
    )
    _, failures = lam.run({"payment_id": "pay_late", "refund_id": "late-1"})
    assert failures == set()  # the original is done with; a delayed copy re-checks
    record = lam.record("late-1")
    assert record.outcome is Outcome.RETRYING and record.error_kind == "awaiting_payment"
    attrs = aws.sqs.get_queue_attributes(QueueUrl=aws.queue_url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"
    assert len(simulator.records()) == 1  # no busy retries


def test_wrong_key_is_a_configuration_error_never_a_verdict(
    aws, simulator, monkeypatch, capfd, captured_logs
) -> None:
    lam = make_lambda(aws, simulator, monkeypatch)
    wrong = "sk_wrong_0123456789abcdef"
    aws.secrets.update_secret(SecretId=lam.service.settings.reditus_api_key_secret, SecretString=wrong)
    lam.service.reditus._api_key(True)  # the cache would otherwise keep the right key for 5 minutes
    event, failures = lam.run({"payment_id": DEMO_REFUNDABLE[0], "refund_id": "auth-1"})
    assert failures == {event["Records"][0]["messageId"]}
    record = lam.record("auth-1")
    assert (
        record.outcome is Outcome.RETRYING and record.error_kind == "auth_error" and record.http_status == 401
    )
    out = capfd.readouterr()
    logs = captured_logs.getvalue()
    assert "Reditus refused the API key" in logs and '"refund_id":"auth-1"' in logs
    assert "ReditusAuthError" in out.out  # the metric
    for text in (out.out, out.err, logs, json.dumps(lam.items())):
        assert wrong not in text and API_KEY not in text


@pytest.mark.parametrize("fault", ["429", "500", "503"])
def test_transient_answers_are_retried_then_reported_as_failures(lam: Lambda, fault: str) -> None:
    lam.sim.configure(fault_rate=1.0, faults=(fault,), retry_after=0)
    event, failures = lam.run({"payment_id": DEMO_REFUNDABLE[1], "refund_id": f"t-{fault}"})
    assert failures == {event["Records"][0]["messageId"]}
    record = lam.record(f"t-{fault}")
    assert record.outcome is Outcome.RETRYING and record.error_kind == "transient"
    assert record.http_status == int(fault)
    assert len(lam.sim.records()) == 4  # REDITUS_MAX_ATTEMPTS inside one invocation
    lam.sim.configure(fault_rate=0.0)
    # SQS delivers it again (here: straight away) and it now succeeds.
    lam.aws.sqs.change_message_visibility(
        QueueUrl=lam.aws.queue_url, ReceiptHandle=event["Records"][0]["receiptHandle"], VisibilityTimeout=0
    )
    _, failures = lam.run()
    assert failures == set() and lam.record(f"t-{fault}").outcome is Outcome.REFUNDED


def test_retry_after_is_honoured(lam: Lambda) -> None:
    lam.sim.configure(fault_rate=1.0, faults=("429",), retry_after=1)
    lam.service.reditus.max_attempts = 2
    lam.run({"payment_id": DEMO_REFUNDABLE[1], "refund_id": "ra-1"})
    first, second = lam.sim.records()
    assert second.at - first.at >= 1.0


def test_retries_never_run_past_the_invocation(lam: Lambda) -> None:
    lam.sim.configure(fault_rate=1.0, faults=("429",), retry_after=30)
    event, failures = lam.run({"payment_id": DEMO_REFUNDABLE[1], "refund_id": "dl-1"}, remaining_ms=10_000)
    assert failures == {event["Records"][0]["messageId"]}
    assert len(lam.sim.records()) == 1  # waiting 30 s would pass the deadline: give it back to SQS


def test_read_timeout_is_transient(aws, simulator, monkeypatch) -> None:
    lam = make_lambda(aws, simulator, monkeypatch, REDITUS_READ_TIMEOUT="0.3", REDITUS_MAX_ATTEMPTS="1")
    simulator.configure(fault_rate=1.0, faults=("slow",), slow_seconds=2.0)
    event, failures = lam.run({"payment_id": DEMO_REFUNDABLE[2], "refund_id": "slow-1"})
    assert failures == {event["Records"][0]["messageId"]}
    record = lam.record("slow-1")
    assert record.outcome is Outcome.RETRYING and record.detail == "Reditus did not answer in time"


def test_connection_refused_is_transient(aws, simulator, monkeypatch) -> None:
    lam = make_lambda(
        aws,
        simulator,
        monkeypatch,
        REDITUS_API_BASE_URL=f"http://127.0.0.1:{free_port()}",
        REDITUS_MAX_ATTEMPTS="2",
    )
    event, failures = lam.run({"payment_id": DEMO_REFUNDABLE[2], "refund_id": "cr-1"})
    assert failures == {event["Records"][0]["messageId"]}
    assert "connection to Reditus failed" in lam.record("cr-1").detail


def test_dropped_connection_is_transient(lam: Lambda) -> None:
    lam.sim.configure(fault_rate=1.0, faults=("drop",))
    lam.service.reditus.max_attempts = 1
    event, failures = lam.run({"payment_id": DEMO_REFUNDABLE[2], "refund_id": "drop-1"})
    assert failures == {event["Records"][0]["messageId"]}
    assert lam.record("drop-1").outcome is Outcome.RETRYING


def test_duplicate_delivery_and_the_same_refund_id_queued_twice(lam: Lambda) -> None:
    body = {"payment_id": DEMO_REFUNDABLE[3], "refund_id": "twice-1"}
    _, failures = lam.run(body)
    assert failures == set()
    # The same message again (SQS at-least-once) and the same refund_id in a new message.
    lam.send(body)
    _, failures = lam.run(body)
    assert failures == set()
    assert lam.sim.applied_count(DEMO_REFUNDABLE[3]) == 1
    assert lam.record("twice-1").outcome is Outcome.REFUNDED


def test_already_refunded_payment_with_and_without_force(lam: Lambda) -> None:
    lam.run({"payment_id": DEMO_REFUNDABLE[4], "refund_id": "first"})
    lam.run({"payment_id": DEMO_REFUNDABLE[4], "refund_id": "again"})
    again = lam.record("again")
    assert again.outcome is Outcome.DUPLICATE and again.duplicate_of == "first"
    assert lam.sim.applied_count(DEMO_REFUNDABLE[4]) == 1
    lam.run({"payment_id": DEMO_REFUNDABLE[4], "refund_id": "forced", "force": True})
    assert lam.record("forced").outcome is Outcome.REFUNDED
    assert lam.sim.applied_count(DEMO_REFUNDABLE[4]) == 2


BAD_BODIES = [
    "not json",
    "",
    "[]",
    "42",
    "null",
    '"pay"',
    "{}",
    '{"payment_id": ""}',
    '{"payment_id": "   "}',
    '{"payment_id": 5}',
    '{"payment_id": null}',
    '{"payment_id": {"a": 1}}',
    '{"payment_id": "x", "amount": 10}',
    '{"payment_id": "' + "x" * 10_000 + '"}',
    '{"payment_id": "a\\u0007b"}',
    '{"payment_id": "\\ud83d"}',
    '{"payment_id": "p", "note": 5}',
    '{"payment_id": "p", "force": "true"}',
]


def test_a_batch_mixing_good_and_every_kind_of_bad_input(lam: Lambda) -> None:
    good = [{"payment_id": p, "refund_id": f"good-{i}"} for i, p in enumerate(DEMO_REFUNDABLE[:2])]
    _, failures = lam.run(*good, *BAD_BODIES[:8])
    assert failures == set()
    _, failures2 = lam.run(*BAD_BODIES[8:])
    assert failures2 == set()
    assert all(lam.record(f"good-{i}").outcome is Outcome.REFUNDED for i in range(2))
    invalid = [i for i in lam.items() if i.get("outcome", {}).get("S") == "invalid"]
    assert len(invalid) == len(BAD_BODIES)
    assert all(i["detail"]["S"] for i in invalid)
    assert len(lam.sim.records()) == 2  # only the good ones reached Reditus


def test_batch_calls_to_reditus_overlap(lam: Lambda) -> None:
    latency = 2.0  # each answer leaves this long after its request arrived (room for a loaded machine)
    lam.sim.configure(latency=latency)
    payments = [f"pay_batch_{i}" for i in range(10)]
    for p in payments:
        lam.sim.add_payment(p)
    _, failures = lam.run(*({"payment_id": p, "refund_id": f"b-{p}"} for p in payments))
    assert failures == set()
    arrivals = sorted(r.at for r in lam.sim.records())
    # All ten arrived before the first answer left: they ran concurrently (one after the other, the
    # tenth would arrive nine answers, 18 s, after the first).
    assert arrivals[-1] < arrivals[0] + latency


def test_the_key_never_appears_in_logs_or_items(lam: Lambda, capfd, captured_logs) -> None:
    lam.sim.configure(fault_rate=0.5, retry_after=0, faults=("429", "500", "503"))
    lam.run(*({"payment_id": p} for p in DEMO_REFUNDABLE), "not json", {"payment_id": "unknown"})
    out = capfd.readouterr()
    assert API_KEY not in out.out + out.err + captured_logs.getvalue()
    assert '"payment_id":"pay_demo_1001"' in captured_logs.getvalue()
    assert API_KEY not in json.dumps(lam.items())
    assert API_KEY not in repr(lam.service.reditus.__dict__)


def test_the_sqs_client_is_made_at_the_first_recheck_not_at_a_cold_start(aws, simulator, monkeypatch) -> None:
    """SQS is only called to queue a 404's re-check: a cold start does not pay for its client."""
    import boto3

    from reditus_refunds.app import SubmitterService
    from reditus_refunds.settings import Settings

    lam = make_lambda(
        aws, simulator, monkeypatch, NOT_FOUND_GRACE_SECONDS="600", NOT_FOUND_RECHECK_DELAY_SECONDS="30"
    )
    made: list[str] = []
    make_client = boto3.session.Session.client

    def client(self: boto3.session.Session, service_name: str, *args: object, **kwargs: object) -> object:
        made.append(service_name)
        return make_client(self, service_name, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(boto3.session.Session, "client", client)
    # As in Lambda: only the SQS client is the service's own (the others are moto's, handed in).
    lam.service = SubmitterService(
        Settings.from_env(), dynamodb=aws.dynamodb, secrets=aws.secrets, telemetry=lam.service.telemetry
    )
    monkeypatch.setattr(lam.handler, "service", lam.service)
    assert made == []
    _, failures = lam.run({"payment_id": DEMO_REFUNDABLE[0], "refund_id": "lazy-1"})
    assert failures == set() and lam.record("lazy-1").outcome is Outcome.REFUNDED
    assert made == []
    _, failures = lam.run({"payment_id": "pay_late", "refund_id": "lazy-2"})
    assert failures == set() and lam.record("lazy-2").outcome is Outcome.RETRYING
    assert made == ["sqs"]
    attrs = aws.sqs.get_queue_attributes(QueueUrl=aws.queue_url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"  # the re-check, through the client made then


def test_the_api_key_is_read_from_secrets_manager_once_per_max_age(aws) -> None:
    from reditus_refunds.app import SecretKeyProvider

    arn = aws.secrets.create_secret(Name="key-cache", SecretString=" sk_first_0123\n")["ARN"]
    calls: list[str] = []
    aws.secrets.meta.events.register(
        "before-call.secrets-manager.GetSecretValue", lambda **kwargs: calls.append("get")
    )
    cached = SecretKeyProvider(arn, aws.secrets, max_age=300)
    assert cached() == "sk_first_0123" and cached() == "sk_first_0123" and len(calls) == 1
    aws.secrets.update_secret(SecretId=arn, SecretString="sk_second_4567")
    assert cached() == "sk_first_0123"  # cached for max_age
    assert cached(True) == "sk_second_4567" and len(calls) == 2  # a 401 fetches it again
    uncached = SecretKeyProvider(arn, aws.secrets, max_age=0)
    assert uncached() == "sk_second_4567" and uncached() == "sk_second_4567" and len(calls) == 4
    binary = aws.secrets.create_secret(Name="key-binary", SecretBinary=b"sk_bytes_89ab")["ARN"]
    assert SecretKeyProvider(binary, aws.secrets, max_age=300)() == "sk_bytes_89ab"
    assert "sk_" not in repr(cached)


def test_every_log_line_of_a_record_carries_its_ids_while_records_run_at_once(
    lam: Lambda, captured_logs
) -> None:
    lam.sim.configure(fault_rate=1.0, faults=("503",), retry_after=0)
    lam.service.reditus.max_attempts = 1
    bodies = [{"payment_id": f"pay_log_{i}", "refund_id": f"log-{i}"} for i in range(8)]
    lam.run(*bodies)
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line.strip()]
    domain = [line for line in lines if line.get("message") == "transient failure; SQS will deliver it again"]
    assert len(domain) == len(bodies)
    expected = {b["refund_id"]: b["payment_id"] for b in bodies}
    for line in lines:
        if "refund_id" in line:
            assert expected.get(line["refund_id"]) == line["payment_id"], line
    assert all("refund_id" in line and line["level"] == "WARNING" for line in domain)
    assert {line["refund_id"] for line in domain} == set(expected)


def test_an_unexpected_error_in_a_record_is_logged_and_retried(
    lam: Lambda, captured_logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(lam.service.submitter, "process", broken)
    event, failures = lam.run({"payment_id": "pay_bug", "refund_id": "bug-1"})
    assert failures == {event["Records"][0]["messageId"]}
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line.strip()]
    logged = [line for line in lines if line.get("message", "").startswith("unexpected error")]
    assert len(logged) == 1 and "KeyError" in logged[0]["exception"]
    assert logged[0]["message_id"] == event["Records"][0]["messageId"]


def test_the_record_reads_its_message_attributes() -> None:
    record = {
        "messageId": "m-1",
        "body": "{}",
        "attributes": {"ApproximateReceiveCount": "2"},
        "messageAttributes": {
            RECHECK_ATTRIBUTE: {"stringValue": "chain-1", "dataType": "String"},
            REDRIVE_REFUND_ID_ATTRIBUTE: {"stringValue": "orig-1", "dataType": "String"},
            "binary": {"binaryValue": "AAE=", "dataType": "Binary"},
        },
    }
    message = inbound_from_record(record)
    assert (message.recheck_token, message.redrive_refund_id, message.receive_count) == (
        "chain-1",
        "orig-1",
        2,
    )
    assert "binary" not in message.attributes


def test_a_redriven_message_settles_the_original_record(lam: Lambda) -> None:
    lam.sim.configure(fault_rate=1.0, faults=("503",), retry_after=0)
    lam.service.reditus.max_attempts = 1
    event, _ = lam.run({"payment_id": DEMO_REFUNDABLE[0]})
    original = event["Records"][0]["messageId"]
    assert lam.record(original).outcome is Outcome.RETRYING
    lam.aws.sqs.change_message_visibility(
        QueueUrl=lam.aws.queue_url, ReceiptHandle=event["Records"][0]["receiptHandle"], VisibilityTimeout=0
    )
    lam.aws.sqs.receive_message(QueueUrl=lam.aws.queue_url)  # drop it: the redrive sends a copy
    lam.aws.sqs.purge_queue(QueueUrl=lam.aws.queue_url)
    lam.sim.configure(fault_rate=0.0)
    lam.send({"payment_id": DEMO_REFUNDABLE[0]}, attributes={REDRIVE_REFUND_ID_ATTRIBUTE: original})
    event, failures = lam.run()
    assert failures == set() and event["Records"][0]["messageId"] != original
    assert lam.record(original).outcome is Outcome.REFUNDED
    assert lam.record(event["Records"][0]["messageId"]) is None
