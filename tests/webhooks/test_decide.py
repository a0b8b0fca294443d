"""Decisions: which refund request (if any) a signal becomes, and the receiver's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from reditus_refunds.contract import REFUND_ID_PATTERN, validate
from reditus_webhooks.decide import (
    DEFAULT_MAX_BODY_BYTES,
    Decision,
    IdMapping,
    PartialPolicy,
    SettingsError,
    WebhookSettings,
    decide_event,
    derive_refund_id,
)
from reditus_webhooks.providers import parse_event
from tests.webhooks import samples as s

REVIEW = PartialPolicy()
DEFAULT = IdMapping()
POLAR_HEADERS = {"webhook-id": "msg_1"}


def decided(provider, doc, mapping=DEFAULT, policy=REVIEW, headers=None) -> Decision:
    (decision,) = decide_event(parse_event(provider, s.dumps(doc), headers or POLAR_HEADERS), mapping, policy)
    return decision


def stripe_refund(refunded: int, amount: int = 1000, event_id: str = "evt_1", **kw) -> dict:
    return s.stripe_event("charge.refunded", s.stripe_charge(refunded, amount=amount, **kw), event_id)


# ---- refund_id -----------------------------------------------------------------------------


def test_refund_id_is_readable_deterministic_and_fits_the_contract():
    assert (
        derive_refund_id("stripe", "ch_3MmlLrLkdIwHu7ix0snN0B15") == "wh:stripe:ch_3MmlLrLkdIwHu7ix0snN0B15"
    )
    odd = derive_refund_id("lemonsqueezy", "order #1/ü" + "x" * 300)
    assert odd == derive_refund_id("lemonsqueezy", "order #1/ü" + "x" * 300)
    assert odd.startswith("wh:lemonsqueezy:sha256:")
    for rid in (odd, derive_refund_id("polar", s.POLAR_ORDER_ID), derive_refund_id("chargebee", "a:b")):
        assert REFUND_ID_PATTERN.fullmatch(rid)
    # A raw id can never be mistaken for a hashed one, nor collide across providers.
    assert derive_refund_id("chargebee", "sha256:abc") != "wh:chargebee:sha256:abc"
    assert derive_refund_id("stripe", "x") != derive_refund_id("paddle", "x")


# ---- queue / review / policy ---------------------------------------------------------------


def test_full_refund_is_queued_with_a_contract_request():
    decision = decided("stripe", stripe_refund(1000))
    assert decision.action == "queue"
    request = decision.request
    assert request is not None and request == validate(request.to_message())
    assert request.source == "stripe"
    assert request.payment_id == decision.payment_id == "ch_3MmlLrLkdIwHu7ix0snN0B15"
    assert request.refund_id == decision.refund_id == "wh:stripe:ch_3MmlLrLkdIwHu7ix0snN0B15"
    assert "evt_1" in (request.note or "") and request.requested_by == "webhook:stripe"


@pytest.mark.parametrize(
    ("policy", "refunded", "action"),
    [
        ("review", 400, "needs_review"),
        ("reject", 1, "queue"),
        ("threshold:50", 500, "queue"),
        ("threshold:50", 499, "needs_review"),
        ("threshold:33.3", 332, "needs_review"),
        ("threshold:33.3", 333, "queue"),  # exactly the threshold reaches it
        ("threshold:33.3", 334, "queue"),
    ],
)
def test_partial_refund_policy(policy, refunded, action):
    decision = decided("stripe", stripe_refund(refunded), policy=PartialPolicy.parse(policy))
    assert decision.action == action
    assert decision.request is not None  # what an operator's Submit would queue
    assert (
        policy.split(":")[0] in decision.reason or "reaches" in decision.reason or "below" in decision.reason
    )


def test_threshold_cannot_be_told_without_amounts_goes_to_review():
    doc = s.polar_event("refund.created", s.polar_refund(900))
    assert decided("polar", doc, policy=PartialPolicy.parse("threshold:10")).action == "needs_review"
    assert decided("polar", doc, policy=PartialPolicy.parse("reject")).action == "queue"


def test_dispute_lost_is_queued():
    decision = decided("stripe", s.stripe_event("charge.dispute.closed", s.stripe_dispute("lost"), "evt_d"))
    assert decision.action == "queue"
    assert decision.payment_id == "ch_3MmlLrLkdIwHu7ix0snN0B15"


def test_ignored_event_gives_one_ignored_decision():
    decision = decided("stripe", s.stripe_event("charge.dispute.closed", s.stripe_dispute("won")))
    assert decision.action == "ignored" and decision.refund_id is None and decision.request is None
    assert decision.event_id == "evt_3QxyZ2LkdIwHu7ix1a2b3c4d"


# ---- exactly one request per real-world refund ---------------------------------------------


PARTIAL_THEN_FULL = [
    ("stripe", stripe_refund(400, event_id="evt_a"), stripe_refund(1000, event_id="evt_b")),
    (
        "paddle",
        s.paddle_event(
            "adjustment.updated", s.paddle_adjustment(kind="partial", adjustment_id="adj_1"), "evt_a"
        ),
        s.paddle_event(
            "adjustment.updated", s.paddle_adjustment(kind="full", adjustment_id="adj_2"), "evt_b"
        ),
    ),
    (
        "chargebee",
        s.chargebee_event(
            "credit_note_created",
            {"credit_note": s.chargebee_credit_note(2000), "invoice": s.chargebee_invoice(5000)},
            "ev_a",
        ),
        s.chargebee_event(
            "payment_refunded",
            {"transaction": s.chargebee_refund_transaction(5000), "invoice": s.chargebee_invoice(5000)},
            "ev_b",
        ),
    ),
    ("lemonsqueezy", s.lemonsqueezy_order_event(100), s.lemonsqueezy_order_event(1199)),
    (
        "polar",
        s.polar_event("order.refunded", s.polar_order(300)),
        s.polar_event("order.refunded", s.polar_order(1000)),
    ),
]


@pytest.mark.parametrize(
    ("provider", "first", "second"), PARTIAL_THEN_FULL, ids=[p[0] for p in PARTIAL_THEN_FULL]
)
def test_partial_then_completing_refund_is_the_same_request(provider, first, second):
    review = decided(provider, first)
    done = decided(provider, second)
    assert review.action == "needs_review"
    assert done.action == "queue"
    assert review.refund_id == done.refund_id
    assert review.request is not None and done.request is not None
    assert review.request.payment_id == done.request.payment_id


@pytest.mark.parametrize(
    ("provider", "first", "second"),
    [
        (
            "polar",
            s.polar_event("order.refunded", s.polar_order(1000)),
            s.polar_event("refund.created", s.polar_refund()),
        ),
        (
            "chargebee",
            s.chargebee_event("credit_note_created", {"credit_note": s.chargebee_credit_note(5000)}, "ev_a"),
            s.chargebee_event(
                "payment_refunded", {"transaction": s.chargebee_refund_transaction(5000)}, "ev_b"
            ),
        ),
        ("stripe", stripe_refund(1000), s.stripe_event("charge.dispute.closed", s.stripe_dispute(), "evt_d")),
    ],
    ids=["polar", "chargebee", "stripe"],
)
def test_one_refund_announced_by_two_event_types_has_one_refund_id(provider, first, second):
    a, b = decided(provider, first), decided(provider, second)
    assert a.event_type != b.event_type
    assert a.refund_id == b.refund_id and a.payment_id == b.payment_id


def test_replayed_event_decides_identically():
    doc = s.lemonsqueezy_order_event(1199)
    assert decided("lemonsqueezy", doc) == decided("lemonsqueezy", doc)


# ---- payment id mapping --------------------------------------------------------------------


def test_metadata_mapping_and_other_candidates():
    doc = stripe_refund(1000, metadata={"reditus_payment_id": "pay_42", "n": 7})
    assert decided("stripe", doc, IdMapping.parse("metadata:reditus_payment_id")).payment_id == "pay_42"
    assert decided("stripe", doc, IdMapping.parse("metadata:n")).payment_id == "7"
    assert (
        decided("stripe", doc, IdMapping.parse("id:payment_intent")).payment_id
        == "pi_3MmlLrLkdIwHu7ix0uke3Ezy"
    )
    ls = s.lemonsqueezy_order_event(1199, custom_data={"idempotency_key": "ord-77"})
    assert decided("lemonsqueezy", ls, IdMapping.parse("metadata:idempotency_key")).payment_id == "ord-77"


@pytest.mark.parametrize(
    ("provider", "doc", "mapping"),
    [
        ("stripe", stripe_refund(1000), "metadata:reditus_payment_id"),
        ("stripe", stripe_refund(1000), "id:invoice"),
        (
            "chargebee",
            s.chargebee_event(
                "credit_note_created", {"credit_note": s.chargebee_credit_note(reference_invoice_id=None)}
            ),
            "default",
        ),
        ("stripe", stripe_refund(1000, metadata={"k": "bad\u0007id"}), "metadata:k"),
        ("stripe", stripe_refund(1000, metadata={"k": "x" * 300}), "metadata:k"),
    ],
)
def test_unmappable_is_recorded_with_a_refund_id_and_a_reason(provider, doc, mapping):
    decision = decided(provider, doc, IdMapping.parse(mapping))
    assert decision.action == "unmappable"
    assert decision.request is None and decision.payment_id is None
    assert decision.refund_id and decision.reason


def test_unmappable_takes_precedence_over_partial_review():
    doc = stripe_refund(10)
    assert decided("stripe", doc, IdMapping.parse("metadata:missing")).action == "unmappable"


# ---- settings ------------------------------------------------------------------------------


def test_settings_defaults_and_values():
    settings = WebhookSettings.from_env({})
    assert settings.partial_policy == PartialPolicy("review")
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert not any(p.configured for p in settings.providers.values())
    env = {
        "STRIPE_WEBHOOK_SECRET": s.STRIPE_SECRET,
        "STRIPE_WEBHOOK_SECRET_PREVIOUS": "whsec_old",
        "POLAR_WEBHOOK_SECRET": s.POLAR_SECRET,
        "CHARGEBEE_WEBHOOK_USERNAME": s.CHARGEBEE_USER,
        "CHARGEBEE_WEBHOOK_PASSWORD": s.CHARGEBEE_PASSWORD,
        "REDITUS_WEBHOOK_STRIPE_PAYMENT_ID": "metadata:reditus_payment_id",
        "REDITUS_WEBHOOK_PARTIAL_REFUNDS": "threshold:50",
        "REDITUS_WEBHOOK_MAX_BODY_BYTES": "65536",
    }
    settings = WebhookSettings.from_env(env)
    stripe = settings.providers["stripe"]
    assert stripe.secrets == (s.STRIPE_SECRET, "whsec_old") and stripe.configured
    assert stripe.payment_id == IdMapping("metadata", "reditus_payment_id")
    assert settings.providers["chargebee"].basic_auth == ((s.CHARGEBEE_USER, s.CHARGEBEE_PASSWORD),)
    assert settings.providers["chargebee"].configured and not settings.providers["paddle"].configured
    assert settings.partial_policy == PartialPolicy("threshold", Decimal(50))
    assert settings.max_body_bytes == 65536
    assert s.STRIPE_SECRET not in repr(settings) and s.CHARGEBEE_PASSWORD not in repr(settings)


def test_settings_errors_are_collected_and_name_the_variable():
    env = {
        "REDITUS_WEBHOOK_PARTIAL_REFUNDS": "sometimes",
        "REDITUS_WEBHOOK_PADDLE_PAYMENT_ID": "custom_data.x",
        "REDITUS_WEBHOOK_MAX_BODY_BYTES": "10GB",
        "CHARGEBEE_WEBHOOK_USERNAME": "user-only",
        "POLAR_WEBHOOK_SECRET_PREVIOUS": "whsec_secret_value",
    }
    with pytest.raises(SettingsError) as info:
        WebhookSettings.from_env(env)
    message = str(info.value)
    for name in (
        "REDITUS_WEBHOOK_PARTIAL_REFUNDS",
        "REDITUS_WEBHOOK_PADDLE_PAYMENT_ID",
        "REDITUS_WEBHOOK_MAX_BODY_BYTES",
        "CHARGEBEE_WEBHOOK_PASSWORD",
        "POLAR_WEBHOOK_SECRET",
    ):
        assert name in message
    assert "whsec_secret_value" not in message


@pytest.mark.parametrize(
    "text", ["threshold:0", "threshold:101", "threshold:abc", "threshold:", "threshold:nan"]
)
def test_bad_thresholds(text):
    with pytest.raises(SettingsError, match="threshold"):
        PartialPolicy.parse(text)


@pytest.mark.parametrize("text", ["metadata:", "id:", "field:x", "metadata"])
def test_bad_mappings(text):
    with pytest.raises(SettingsError, match="mapping"):
        IdMapping.parse(text)


def test_core_imports_no_aws_http_or_provider_sdk():
    # A fresh interpreter: in this one the tests themselves have imported the SDKs.
    code = (
        "import sys, reditus_webhooks.decide, reditus_webhooks.signatures, reditus_webhooks.providers\n"
        "banned = ('boto3', 'botocore', 'requests', 'aws_lambda_powertools', 'stripe', 'paddle_billing',\n"
        "          'standardwebhooks', 'svix', 'chargebee', 'polar_sdk')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
    )
    functions = str(Path(__file__).resolve().parents[2] / "functions")
    env = {**os.environ, "PYTHONPATH": functions + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
