"""The operators' side of the billing webhooks: readers, Submit/Dismiss, and the CLI end to end.

`webhooks send-sample` posts to the real receiver served on 127.0.0.1 by
``reditus_webhooks.function_url.serve`` over moto's DynamoDB and SQS (the ``aws`` fixture), so
a sample goes all the way to a pending history record, as a provider's event would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import standardwebhooks
import stripe
from paddle_billing.Notifications import Secret, Verifier

from reditus_operators.cli import main
from reditus_operators.config import SystemConfig, write_local_state
from reditus_operators.console import system_env
from reditus_operators.webhooks import (
    SampleError,
    WebhookReader,
    dismiss_review,
    send_sample,
    signed_sample,
    submit_review,
)
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer
from reditus_refunds.records import Outcome
from reditus_webhooks import PROVIDERS
from reditus_webhooks.app import build_receiver
from reditus_webhooks.events import EventFacts, EventStore, event_key
from reditus_webhooks.function_url import serve
from reditus_webhooks.review import ReviewError
from reditus_webhooks.samples import sample_event
from reditus_webhooks.signatures import verify
from tests.conftest import AwsFixture
from tests.webhooks import samples as s
from tests.webhooks.test_receiver import base_env

MOTO_CALLER = "arn:aws:sts::123456789012:user/moto"  # what moto answers to GetCallerIdentity


@dataclass
class Run:
    code: int
    out: str
    err: str

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@dataclass
class Stack:
    aws: AwsFixture
    url: str
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str) -> Run:
        self.capsys.readouterr()
        code = main(list(args))
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def messages(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            got = self.aws.sqs.receive_message(
                QueueUrl=self.aws.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600
            ).get("Messages", [])
            if not got:
                return found
            found += [json.loads(m["Body"]) for m in got]

    @property
    def events(self) -> EventStore:
        return EventStore(self.aws.table, self.aws.dynamodb)

    @property
    def reader(self) -> WebhookReader:
        return WebhookReader(self.aws.table, self.aws.dynamodb)


@pytest.fixture
def stack(
    aws: AwsFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> Iterator[Stack]:
    """The receiver on 127.0.0.1 over moto, and the CLI's environment pointing at both."""
    env = base_env(aws)
    receiver = build_receiver(env, dynamodb=aws.dynamodb, sqs=aws.sqs, secretsmanager=lambda: aws.secrets)
    server = serve(lambda event, context: receiver.handle(event).to_function_url())
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", aws.dlq_url)
    monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("REDITUS_WEBHOOK_URL", url)
    try:
        yield Stack(aws, url, capsys)
    finally:
        server.shutdown()
        server.server_close()


# ---- send-sample, end to end ------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_full_sample_ends_as_a_pending_refund_with_its_source(stack: Stack, provider: str) -> None:
    sent = stack.run("webhooks", "send-sample", provider, "--payment-id", f"pay-{provider}-1")
    assert sent.code == 0, sent.err
    [answer] = sent.lines()
    assert answer["status_code"] == 200 and answer["status"] == "queued", answer
    refund_id = answer["refund_id"]
    [message] = stack.messages()
    assert message["refund_id"] == refund_id and message["payment_id"] == f"pay-{provider}-1"
    assert message["source"] == provider

    history = stack.run("history", "--refund-id", refund_id, "--json")
    [row] = history.lines()
    assert row["outcome"] == Outcome.PENDING.value
    assert row["source"] == provider  # the provider's name, as in its path
    [event] = stack.run("webhooks", "--json", "--provider", provider).lines()
    assert row["source_event_id"] == event["event_id"] == message["source_event_id"]
    assert event["decision"] == "queued" and event["refund_id"] == refund_id
    assert event["payment_id"] == f"pay-{provider}-1"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_partial_sample_awaits_review_then_submit_queues_it(stack: Stack, provider: str) -> None:
    sent = stack.run("webhooks", "send-sample", provider, "--partial")
    assert sent.code == 0, sent.err
    [answer] = sent.lines()
    assert answer["status"] == "needs_review", answer
    assert stack.messages() == []
    [review] = stack.run("webhooks", "reviews", "--json").lines()
    assert review["refund_id"] == answer["refund_id"] and review["provider"] == provider

    submitted = stack.run("webhooks", "submit", review["refund_id"], "--requested-by", "ana@example.com")
    assert submitted.code == 0, submitted.err
    [message] = stack.messages()
    assert message["refund_id"] == review["refund_id"]
    # The CLI acts as its AWS identity; --requested-by (--as) names the person next to it, in the audit.
    assert message["requested_by"] == MOTO_CALLER
    assert message["source"] == provider and message["source_event_id"] == review["event_id"]
    assert stack.run("webhooks", "reviews", "--json").lines() == []
    closed = stack.events.get_review(review["refund_id"])
    assert closed is not None and (closed.state, closed.decided_by) == ("submitted", MOTO_CALLER)
    audited = [a for a in stack.run("audit", "--json").lines() if review["refund_id"] in a["refund_ids"]]
    assert [(a["who"], a["who_name"]) for a in audited] == [(MOTO_CALLER, "ana@example.com")]


def test_dismiss_queues_nothing_and_a_second_decision_is_refused(stack: Stack) -> None:
    [answer] = stack.run("webhooks", "send-sample", "stripe", "--partial").lines()
    dismissed = stack.run("webhooks", "dismiss", answer["refund_id"], "--requested-by", "ben")
    assert dismissed.code == 0, dismissed.err
    assert stack.messages() == []
    review = stack.events.get_review(answer["refund_id"])
    assert review is not None and (review.state, review.decided_by) == ("dismissed", MOTO_CALLER)
    again = stack.run("webhooks", "submit", answer["refund_id"], "--requested-by", "ben")
    assert again.code == 1 and f"already dismissed by {MOTO_CALLER}" in again.err
    assert stack.messages() == []


def test_send_sample_refuses_without_a_secret_or_a_url(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PADDLE_WEBHOOK_SECRET")
    run = stack.run("webhooks", "send-sample", "paddle")
    assert run.code == 1 and "PADDLE_WEBHOOK_SECRET not set" in run.err
    monkeypatch.delenv("REDITUS_WEBHOOK_URL")
    run = stack.run("webhooks", "send-sample", "stripe")
    assert run.code == 2 and "no webhook URL known" in run.err
    assert stack.messages() == []


def test_a_refused_sample_exits_non_zero_and_queues_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_not_the_receivers")
    run = stack.run("webhooks", "send-sample", "stripe")
    assert run.code == 1
    [answer] = run.lines()
    assert answer["status_code"] == 400 and answer["reason"] == "Stripe signature does not match"
    assert "whsec_not_the_receivers" not in run.out + run.err
    assert stack.messages() == []


# ---- listing ---------------------------------------------------------------------------------


def test_webhooks_lists_events_newest_first_with_filters(stack: Stack) -> None:
    assert stack.run("webhooks", "send-sample", "stripe", "--payment-id", "ch_a").code == 0
    assert stack.run("webhooks", "send-sample", "paddle", "--partial").code == 0
    assert stack.run("webhooks", "send-sample", "stripe", "--payment-id", "ch_a").code == 0  # same refund
    rows = stack.run("webhooks", "--json").lines()
    assert [r["decision"] for r in rows] == ["duplicate_refund", "needs_review", "queued"]
    for row in rows:
        assert {
            "provider",
            "event_id",
            "type",
            "received_at",
            "decision",
            "refund_id",
            "payment_id",
            "reason",
        } <= set(row)
    assert [r["received_at"] for r in rows] == sorted((r["received_at"] for r in rows), reverse=True)
    assert [r["provider"] for r in stack.run("webhooks", "--json", "--provider", "paddle").lines()] == [
        "paddle"
    ]
    assert [r["decision"] for r in stack.run("webhooks", "--json", "--decision", "queued").lines()] == [
        "queued"
    ]
    assert stack.run("webhooks", "--json", "--since", "2000-01-01", "--until", "2000-01-02").lines() == []
    assert len(stack.run("webhooks", "--json", "--limit", "2").lines()) == 2

    table = stack.run("webhooks")
    assert table.code == 0 and table.out.splitlines()[0].split()[:3] == ["RECEIVED", "(UTC)", "PROVIDER"]
    assert "duplicate_refund" in table.out and "needs_review" in table.out


def test_the_table_is_terminal_safe(stack: Stack) -> None:
    # An event type is the provider's text: an ignored event may name any type, escapes included.
    facts = EventFacts("stripe", "evt_1", "charge.\x1b[2Jrefunded", event_key("stripe", "evt_1"))
    assert stack.events.record(facts, "ignored") is None
    table = stack.run("webhooks")
    assert table.code == 0
    assert "\x1b" not in table.out and "charge.\\x1b[2Jrefunded" in table.out
    [row] = stack.run("webhooks", "--json").lines()
    assert row["type"] == "charge.\x1b[2Jrefunded"


def test_readers_count_by_decision_and_know_the_last_event(stack: Stack) -> None:
    assert stack.run("webhooks", "send-sample", "polar").code == 0
    assert stack.run("webhooks", "send-sample", "polar", "--partial").code == 0
    # Signed with another secret: refused, and counted as a bad signature.
    refused = send_sample("polar", stack.url, {"POLAR_WEBHOOK_SECRET": "whsec_" + "A" * 32})
    assert refused.status == 400

    today = datetime.now(UTC).date()
    counts = stack.reader.counts(today - timedelta(days=6), today)
    assert set(counts) == set(PROVIDERS)
    assert counts["polar"]["queued"] == 1 and counts["polar"]["needs_review"] == 1
    assert counts["polar"]["bad_signature"] == 1
    assert sum(counts["stripe"].values()) == 0
    last = stack.reader.last_events()
    assert last["stripe"] is None
    assert last["polar"] is not None and last["polar"]["last_decision"] == "needs_review"


def test_reviews_are_read_from_the_open_reviews_index_oldest_first(stack: Stack) -> None:
    for provider in ("paddle", "stripe", "chargebee"):
        assert stack.run("webhooks", "send-sample", provider, "--partial").code == 0
    reviews = stack.reader.open_reviews()
    assert [r.provider for r in reviews] == ["paddle", "stripe", "chargebee"]
    assert [r.provider for r in stack.reader.open_reviews("stripe")] == ["stripe"]
    # Submit and Dismiss through the operators' layer record the operator.
    producer = RefundProducer(
        stack.aws.sqs, stack.aws.queue_url, HistoryWriter(stack.aws.table, stack.aws.dynamodb)
    )
    done = submit_review(reviews[0].refund_id, events=stack.events, producer=producer, operator="ana")
    assert done.message_id is not None
    dismiss_review(reviews[1].refund_id, events=stack.events, operator="ben")
    assert [r.refund_id for r in stack.reader.open_reviews()] == [reviews[2].refund_id]
    with pytest.raises(ReviewError):
        dismiss_review(reviews[1].refund_id, events=stack.events, operator="ben")


# ---- signing, checked against the providers' own libraries --------------------------------------


def test_our_signatures_are_what_the_providers_libraries_accept() -> None:
    env = base_env_secrets()
    for provider in PROVIDERS:
        sample, headers = signed_sample(provider, env, partial=provider == "paddle")
        body = sample.body
        verify(
            provider,
            body,
            headers,
            secrets=[env.get(f"{provider.upper()}_WEBHOOK_SECRET", "")],
            basic_auth=[(s.CHARGEBEE_USER, s.CHARGEBEE_PASSWORD)],
        )
        if provider == "stripe":
            event = stripe.Webhook.construct_event(
                body.decode(), headers["Stripe-Signature"], s.STRIPE_SECRET
            )
            assert event["id"] == sample.event_id
        elif provider == "polar":
            lowered = {k.lower(): v for k, v in headers.items()}
            assert (
                standardwebhooks.Webhook(s.POLAR_SECRET).verify(body.decode(), lowered)["type"]
                == "order.refunded"
            )
        elif provider == "paddle":
            assert Verifier(maximum_variance=300).verify(
                PaddleRequest(headers, body), Secret(s.PADDLE_SECRET)
            )


@dataclass
class PaddleRequest:
    """What paddle-python-sdk's Verifier reads from a request."""

    headers: dict[str, str]
    body: bytes


def base_env_secrets() -> dict[str, str]:
    return {
        "STRIPE_WEBHOOK_SECRET": s.STRIPE_SECRET,
        "PADDLE_WEBHOOK_SECRET": s.PADDLE_SECRET,
        "LEMONSQUEEZY_WEBHOOK_SECRET": s.LEMONSQUEEZY_SECRET,
        "POLAR_WEBHOOK_SECRET": s.POLAR_SECRET,
        "CHARGEBEE_WEBHOOK_USERNAME": s.CHARGEBEE_USER,
        "CHARGEBEE_WEBHOOK_PASSWORD": s.CHARGEBEE_PASSWORD,
    }


def test_a_legacy_polar_secret_signs_as_those_endpoints_do() -> None:
    sample, headers = signed_sample("polar", {"POLAR_WEBHOOK_SECRET": s.POLAR_LEGACY_SECRET})
    expected = s.polar_headers(
        sample.body, s.POLAR_LEGACY_SECRET.encode(), sample.event_id, int(headers["webhook-timestamp"])
    )
    assert headers["webhook-signature"] == expected["webhook-signature"]


def test_unknown_provider_and_blank_payment_id_are_refused() -> None:
    with pytest.raises(SampleError, match="unknown provider"):
        signed_sample("mollie", base_env_secrets())
    with pytest.raises(SampleError, match="blank"):
        signed_sample("stripe", base_env_secrets(), payment_id="  ")
    with pytest.raises(ValueError, match="unknown provider"):
        sample_event("mollie")


def test_samples_are_new_events_each_time() -> None:
    first, second = sample_event("stripe"), sample_event("stripe")
    assert first.event_id != second.event_id and first.payment_id != second.payment_id
    same = sample_event("stripe", payment_id="ch_1")
    assert same.payment_id == "ch_1" and json.loads(same.body)["data"]["object"]["id"] == "ch_1"


def test_send_sample_takes_url_and_secrets_from_the_running_local_stack(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """After `make run`, without `eval "$(reditus-refunds local env)"`: the state file says both."""
    webhook_env = {"REDITUS_WEBHOOK_URL": stack.url, **base_env_secrets()}
    for name in webhook_env:
        monkeypatch.delenv(name, raising=False)
    config = SystemConfig(
        stack.aws.table, stack.aws.queue_url, stack.aws.dlq_url, "us-east-1", origin="local stack", local=True
    )
    write_local_state(config, tmp_path / "stack", {"pid": os.getpid(), "webhook_env": webhook_env})
    monkeypatch.setenv("REDITUS_LOCAL_DATA_DIR", str(tmp_path / "stack"))
    sent = stack.run("webhooks", "send-sample", "lemonsqueezy", "--payment-id", "1042")
    assert sent.code == 0, sent.err
    [message] = stack.messages()
    assert message["payment_id"] == "1042" and message["source"] == "lemonsqueezy"


def test_the_console_launched_with_a_system_learns_its_webhook_url() -> None:
    config = SystemConfig("t", "q", "d", "us-east-1", webhook_url="http://127.0.0.1:8200")
    assert system_env(config)["REDITUS_WEBHOOK_URL"] == "http://127.0.0.1:8200"
    assert "REDITUS_WEBHOOK_URL" not in system_env(SystemConfig("t", "q", "d", "us-east-1"))
