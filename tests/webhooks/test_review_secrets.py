"""Operators' Submit/Dismiss of partial refunds, and signing secrets from Secrets Manager."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer
from reditus_webhooks.credentials import parse_secret, secret_variable
from reditus_webhooks.decide import ProviderSettings, SettingsError
from reditus_webhooks.events import EventStore
from reditus_webhooks.review import ReviewError, dismiss_reviewed, submit_reviewed
from tests.webhooks import samples as s
from tests.webhooks.test_receiver import CHARGE, base_env, make_rig, sign

REFUND_ID = f"wh:stripe:{CHARGE}"


def partial(event_id: str, refunded: int = 500) -> dict:
    return s.stripe_event("charge.refunded", s.stripe_charge(refunded), event_id=event_id)


def deps(aws: Any) -> tuple[EventStore, RefundProducer]:
    writer = HistoryWriter(aws.table, aws.dynamodb)
    return EventStore(aws.table, aws.dynamodb), RefundProducer(aws.sqs, aws.queue_url, writer)


def test_submit_reviewed_queues_the_recorded_request_once(aws: Any):
    rig = make_rig(aws)
    assert rig.post("stripe", *sign("stripe", partial("evt_p1")))[1]["status"] == "needs_review"
    events, producer = deps(aws)
    done = submit_reviewed(REFUND_ID, events=events, producer=producer, operator="ana@ops")
    assert done.message_id
    [message] = rig.messages()
    assert message["refund_id"] == REFUND_ID and message["payment_id"] == CHARGE
    assert message["requested_by"] == "ana@ops" and message["source"] == "stripe"
    assert "outcome" not in rig.item(REFUND_ID)  # recorded pending (no result yet)
    review = events.get_review(REFUND_ID)
    assert review is not None and (review.state, review.decided_by) == ("submitted", "ana@ops")
    with pytest.raises(ReviewError, match="already submitted by ana@ops"):
        submit_reviewed(REFUND_ID, events=events, producer=producer, operator="bob")
    # A later event completing the refund is a duplicate of the submitted request.
    full = s.stripe_event("charge.refunded", s.stripe_charge(1099), event_id="evt_full")
    assert rig.post("stripe", *sign("stripe", full))[1]["status"] == "duplicate_refund"
    assert rig.messages() == []


def test_dismiss_reviewed_queues_nothing_and_a_later_partial_reopens_it(aws: Any):
    rig = make_rig(aws)
    rig.post("stripe", *sign("stripe", partial("evt_p1")))
    events, producer = deps(aws)
    dismissed = dismiss_reviewed(REFUND_ID, events=events, operator="ana")
    assert (dismissed.state, dismissed.decided_by) == ("dismissed", "ana")
    with pytest.raises(ReviewError, match="already dismissed"):
        submit_reviewed(REFUND_ID, events=events, producer=producer, operator="bob")
    assert rig.messages() == []
    # A further partial refund of the same payment asks again.
    assert rig.post("stripe", *sign("stripe", partial("evt_p2", 700)))[1]["status"] == "needs_review"
    review = events.get_review(REFUND_ID)
    assert review is not None and (review.state, review.event_id) == ("open", "evt_p2")
    assert review.decided_by is None


def test_review_errors_are_clear(aws: Any):
    events, producer = deps(aws)
    with pytest.raises(ReviewError, match="no partial refund awaits review"):
        submit_reviewed("wh:stripe:ch_nothing", events=events, producer=producer, operator="ana")
    with pytest.raises(ReviewError, match="operator"):
        dismiss_reviewed("wh:stripe:ch_nothing", events=events, operator="  ")


# ---- Secrets Manager ------------------------------------------------------------------------------


def sm_env(aws: Any, **secrets: str) -> dict[str, str]:
    env = {k: v for k, v in base_env(aws).items() if "WEBHOOK" not in k}
    for provider, value in secrets.items():
        arn = aws.secrets.create_secret(Name=f"reditus/webhooks/{provider}", SecretString=value)["ARN"]
        env[secret_variable(provider)] = arn
    return env


def test_secrets_from_secrets_manager_per_provider(aws: Any):
    env = sm_env(
        aws,
        stripe=json.dumps({"secret": "whsec_new_000", "previous": s.STRIPE_SECRET}),
        chargebee=json.dumps({"username": s.CHARGEBEE_USER, "password": s.CHARGEBEE_PASSWORD}),
        lemonsqueezy=s.LEMONSQUEEZY_SECRET,  # a plain string is the secret itself
        polar=json.dumps({"secret": ""}),  # created empty: not configured
    )
    rig = make_rig(aws, env)
    doc = s.stripe_event("charge.refunded", s.stripe_charge(1099))
    assert rig.post("stripe", *sign("stripe", doc))[1]["status"] == "queued"  # the previous secret
    note = {"credit_note": s.chargebee_credit_note(), "invoice": s.chargebee_invoice()}
    assert rig.post("chargebee", *sign("chargebee", s.chargebee_event("credit_note_created", note)))[0] == 200
    assert rig.post("lemonsqueezy", *sign("lemonsqueezy", s.lemonsqueezy_order_event()))[0] == 200
    status, answer = rig.post("polar", *sign("polar", s.polar_event("order.refunded", s.polar_order())))
    assert (status, answer["reason"]) == (400, "no signing secret is configured for this provider")
    # Paddle has no secret at all: refused, not crashed.
    assert (
        rig.post("paddle", *sign("paddle", s.paddle_event("adjustment.updated", s.paddle_adjustment())))[0]
        == 400
    )
    assert len(rig.messages()) == 3


def test_a_rolled_secret_is_fetched_again_after_a_bad_signature(aws: Any):
    env = sm_env(aws, stripe=json.dumps({"secret": "whsec_old_111"}))
    rig = make_rig(aws, env)
    doc = s.stripe_event("charge.refunded", s.stripe_charge(1099))
    assert rig.post("stripe", *sign("stripe", doc, secret="whsec_old_111"))[0] == 200
    aws.secrets.put_secret_value(
        SecretId=env[secret_variable("stripe")], SecretString='{"secret": "whsec_new_222"}'
    )
    doc2 = s.stripe_event("charge.refunded", s.stripe_charge(1099, charge_id="ch_second"), event_id="evt_2")
    # Cached for 5 minutes, but a mismatch reads it again (at most every 30 s).
    assert rig.post("stripe", *sign("stripe", doc2, secret="whsec_new_222"))[0] == 200
    doc3 = s.stripe_event("charge.refunded", s.stripe_charge(1099, charge_id="ch_third"), event_id="evt_3")
    assert rig.post("stripe", *sign("stripe", doc3, secret="whsec_forged"))[0] == 400


def test_unreadable_secret_is_503_without_its_value(aws: Any, caplog: pytest.LogCaptureFixture):
    env = sm_env(aws, stripe='{"secret": "whsec_s3cr3t_value", ')  # broken JSON holding a secret
    rig = make_rig(aws, env)
    caplog.set_level(logging.DEBUG, logger="reditus_webhooks")
    doc = s.stripe_event("charge.refunded", s.stripe_charge(1099))
    status, answer = rig.post("stripe", *sign("stripe", doc))
    assert status == 503
    logged = json.dumps(
        [r.__dict__ for r in caplog.records if r.name.startswith("reditus_webhooks")], default=str
    )
    assert "s3cr3t" not in json.dumps(answer) and "s3cr3t" not in logged
    assert "SettingsError" in logged
    assert rig.messages() == []


def test_missing_secret_is_503(aws: Any):
    env = {**sm_env(aws), secret_variable("paddle"): "reditus/webhooks/absent"}
    rig = make_rig(aws, env)
    doc = s.paddle_event("adjustment.updated", s.paddle_adjustment())
    assert rig.post("paddle", *sign("paddle", doc))[0] == 503


@pytest.mark.parametrize(
    ("provider", "text", "secrets", "basic"),
    [
        ("stripe", '{"secret": " whsec_a ", "previous": "whsec_b"}', ("whsec_a", "whsec_b"), ()),
        ("stripe", "whsec_plain", ("whsec_plain",), ()),
        ("stripe", "", (), ()),
        ("chargebee", '{"username": "u", "password": " p "}', (), (("u", " p "),)),
        ("chargebee", "", (), ()),
    ],
)
def test_parse_secret(provider: str, text: str, secrets: tuple, basic: tuple):
    parsed = parse_secret(provider, text, ProviderSettings(provider))
    assert (parsed.secrets, parsed.basic_auth) == (secrets, basic)


@pytest.mark.parametrize(
    ("provider", "text"),
    [
        ("stripe", '{"previous": "whsec_x"}'),
        ("stripe", '{"secret": 5}'),
        ("stripe", "{not json whsec_x"),
        ("chargebee", '{"username": "u"}'),
        ("chargebee", "plain-password"),
    ],
)
def test_parse_secret_refuses_without_echoing(provider: str, text: str):
    with pytest.raises(SettingsError) as info:
        parse_secret(provider, text, ProviderSettings(provider))
    assert "whsec_x" not in str(info.value) and "plain-password" not in str(info.value)
