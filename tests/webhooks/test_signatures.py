"""Signature checks, made and cross-checked the way each provider (and its library) does it."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import standardwebhooks
import stripe
from paddle_billing.Notifications import Secret, Verifier

from reditus_webhooks import signatures as sig
from reditus_webhooks.signatures import SignatureError
from tests.webhooks import samples as s

BODY = s.dumps(s.stripe_event("charge.refunded", s.stripe_charge(1099)))


def _code(fn, *args, **kwargs) -> str:
    with pytest.raises(SignatureError) as info:
        fn(*args, **kwargs)
    return info.value.code


def _no_secret_in(err: SignatureError, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in err.reason


# ---- Stripe --------------------------------------------------------------------------------


def test_stripe_valid_and_agrees_with_stripe_library():
    now = int(time.time())
    headers = s.stripe_header(BODY, t=now)
    sig.verify_stripe(BODY, headers, [s.STRIPE_SECRET], now=now)
    # Stripe's own library accepts the header we make the documented way...
    event = stripe.Webhook.construct_event(BODY, headers["Stripe-Signature"], s.STRIPE_SECRET)
    assert event["id"] == "evt_3QxyZ2LkdIwHu7ix1a2b3c4d"
    # ...and we accept the header Stripe's library makes.
    theirs = stripe.WebhookSignature.generate_signature_header(BODY.decode(), s.STRIPE_SECRET, timestamp=now)
    sig.verify_stripe(BODY, {"stripe-signature": theirs}, [s.STRIPE_SECRET], now=now)


def test_stripe_tampered_body_and_wrong_secret():
    headers = s.stripe_header(BODY)
    tampered = BODY.replace(b"1099", b"1098", 1)
    assert _code(sig.verify_stripe, tampered, headers, [s.STRIPE_SECRET], now=s.NOW) == "bad_signature"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, headers["Stripe-Signature"], s.STRIPE_SECRET, tolerance=None)
    assert _code(sig.verify_stripe, BODY, headers, ["whsec_other"], now=s.NOW) == "bad_signature"


@pytest.mark.parametrize(("offset", "ok"), [(-300, True), (300, True), (-301, False), (301, False)])
def test_stripe_tolerance_300s_both_ways(offset, ok):
    headers = s.stripe_header(BODY, t=s.NOW + offset)
    if ok:
        sig.verify_stripe(BODY, headers, [s.STRIPE_SECRET], now=s.NOW)
    else:
        assert _code(sig.verify_stripe, BODY, headers, [s.STRIPE_SECRET], now=s.NOW) == "stale_timestamp"


def test_stripe_stale_agrees_with_stripe_library():
    old = int(time.time()) - 301
    headers = s.stripe_header(BODY, t=old)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(BODY, headers["Stripe-Signature"], s.STRIPE_SECRET)
    assert _code(sig.verify_stripe, BODY, headers, [s.STRIPE_SECRET]) == "stale_timestamp"


def test_stripe_rotated_secrets():
    new, old = s.STRIPE_SECRET, "whsec_previous_0123456789abcdef"
    # While a secret is rolled, Stripe sends one v1 per active secret (and a v0 test signature).
    old_sig = s.stripe_header(BODY, secret=old)["Stripe-Signature"].split("v1=")[1]
    headers = s.stripe_header(BODY, secret=new, extra=f",v1={old_sig},v0=6ffbb59b2300aae63f2727")
    sig.verify_stripe(BODY, headers, [new], now=s.NOW)
    sig.verify_stripe(BODY, headers, [old], now=s.NOW)
    # Our side rolled first: the previous secret is still configured and accepted.
    sig.verify_stripe(BODY, s.stripe_header(BODY, secret=old), [new, old], now=s.NOW)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_header"),
        ({"Stripe-Signature": "  "}, "missing_header"),
        ({"Stripe-Signature": "garbage"}, "malformed_header"),
        ({"Stripe-Signature": "v1=abc"}, "malformed_header"),
        ({"Stripe-Signature": f"t={s.NOW}"}, "malformed_header"),
        ({"Stripe-Signature": f"t={s.NOW},v0=abc"}, "malformed_header"),
        ({"Stripe-Signature": "t=soon,v1=abc"}, "malformed_header"),
        ({"Stripe-Signature": "t=" + "9" * 5000 + ",v1=abc"}, "malformed_header"),
        ({"Stripe-Signature": f"t={s.NOW},v1=ünïcödé"}, "bad_signature"),
    ],
)
def test_stripe_missing_or_malformed_header(headers, code):
    assert _code(sig.verify_stripe, BODY, headers, [s.STRIPE_SECRET], now=s.NOW) == code


def test_reasons_never_carry_secret_or_expected_signature():
    expected = s.stripe_header(BODY)["Stripe-Signature"].split("v1=")[1]
    for headers in ({"Stripe-Signature": f"t={s.NOW},v1=00"}, s.stripe_header(BODY, t=s.NOW - 999)):
        with pytest.raises(SignatureError) as info:
            sig.verify_stripe(BODY, headers, [s.STRIPE_SECRET], now=s.NOW)
        _no_secret_in(info.value, s.STRIPE_SECRET, expected)
    with pytest.raises(SignatureError) as info:
        sig.verify_chargebee(s.chargebee_header(password="nope"), [(s.CHARGEBEE_USER, s.CHARGEBEE_PASSWORD)])
    _no_secret_in(info.value, s.CHARGEBEE_PASSWORD, s.CHARGEBEE_USER)


def test_not_configured():
    assert _code(sig.verify_stripe, BODY, s.stripe_header(BODY), [], now=s.NOW) == "not_configured"
    assert _code(sig.verify_polar, BODY, s.polar_headers(BODY), ["  "], now=s.NOW) == "not_configured"
    assert _code(sig.verify_chargebee, s.chargebee_header(), [("", "")]) == "not_configured"


# ---- Paddle --------------------------------------------------------------------------------


def test_paddle_accepts_the_sdk_test_vector():
    headers = {"paddle-signature": s.PADDLE_SDK_VECTOR_HEADER}
    sig.verify_paddle(s.PADDLE_SDK_VECTOR_BODY, headers, [s.PADDLE_SECRET], now=s.PADDLE_SDK_VECTOR_TS + 1)


def _paddle_request(body: bytes, headers: dict[str, str]) -> SimpleNamespace:
    # What paddle_billing's Verifier reads: .headers (exact names) and .body (bytes).
    return SimpleNamespace(headers=headers, body=body)


def test_paddle_valid_and_agrees_with_paddle_sdk():
    body = s.dumps(s.paddle_event("adjustment.updated", s.paddle_adjustment()))
    now = int(time.time())
    headers = s.paddle_header(body, ts=now)
    sig.verify_paddle(body, headers, [s.PADDLE_SECRET], now=now)
    assert Verifier().verify(_paddle_request(body, headers), Secret(s.PADDLE_SECRET)) is True
    assert Verifier().verify(_paddle_request(body + b" ", headers), Secret(s.PADDLE_SECRET)) is False


def test_paddle_tampered_wrong_secret_and_rotation():
    body = s.dumps(s.paddle_event("adjustment.updated", s.paddle_adjustment()))
    headers = s.paddle_header(body)
    assert _code(sig.verify_paddle, body + b" ", headers, [s.PADDLE_SECRET], now=s.NOW) == "bad_signature"
    assert _code(sig.verify_paddle, body, headers, ["pdl_ntfset_other"], now=s.NOW) == "bad_signature"
    old = "pdl_ntfset_01hs0t3tw21j988db1pam5xg8m_previousSecretKey000000"
    rotated = {"Paddle-Signature": headers["Paddle-Signature"] + f";h1={s.paddle_signature(body, old)}"}
    sig.verify_paddle(body, rotated, [old], now=s.NOW)
    sig.verify_paddle(body, rotated, [s.PADDLE_SECRET], now=s.NOW)
    sig.verify_paddle(body, s.paddle_header(body, secret=old), [s.PADDLE_SECRET, old], now=s.NOW)


def test_paddle_window_is_300s_not_the_sdk_default_5s():
    body = s.dumps(s.paddle_event("adjustment.updated", s.paddle_adjustment()))
    now = int(time.time())
    late = s.paddle_header(body, ts=now - 60)
    # The SDK's 5 s default refuses an event delivered a minute late (a retry, a cold start)...
    assert Verifier().verify(_paddle_request(body, late), Secret(s.PADDLE_SECRET)) is False
    # ...we accept it (see PADDLE_TOLERANCE_S), and refuse beyond 300 s either way.
    sig.verify_paddle(body, late, [s.PADDLE_SECRET], now=now)
    for offset in (-301, 301):
        stale = s.paddle_header(body, ts=now + offset)
        assert _code(sig.verify_paddle, body, stale, [s.PADDLE_SECRET], now=now) == "stale_timestamp"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "missing_header"),
        ("h1=abc", "malformed_header"),
        (f"ts={s.NOW}", "malformed_header"),
        ("ts=x;h1=abc", "malformed_header"),
        ("nonsense", "malformed_header"),
        (f"ts={s.NOW};h1=abc", "bad_signature"),
    ],
)
def test_paddle_missing_or_malformed_header(value, code):
    headers = {} if value is None else {"Paddle-Signature": value}
    assert _code(sig.verify_paddle, BODY, headers, [s.PADDLE_SECRET], now=s.NOW) == code


# ---- Chargebee -----------------------------------------------------------------------------

CB = [(s.CHARGEBEE_USER, s.CHARGEBEE_PASSWORD)]


def test_chargebee_basic_auth():
    sig.verify_chargebee(s.chargebee_header(), CB)
    sig.verify_chargebee(
        {"authorization": s.chargebee_header()["Authorization"].replace("Basic", "basic")}, CB
    )
    assert _code(sig.verify_chargebee, s.chargebee_header(password="wrong"), CB) == "bad_signature"
    assert _code(sig.verify_chargebee, s.chargebee_header(user="someone"), CB) == "bad_signature"
    # A second credential pair (rotation) is accepted too.
    sig.verify_chargebee(s.chargebee_header("new", "pw"), [*CB, ("new", "pw")])


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "missing_header"),
        ("Bearer abc", "malformed_header"),
        ("Basic", "malformed_header"),
        ("Basic !!!notbase64", "malformed_header"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "malformed_header"),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "malformed_header"),
    ],
)
def test_chargebee_missing_or_malformed(value, code):
    headers = {} if value is None else {"Authorization": value}
    assert _code(sig.verify_chargebee, headers, CB) == code


# ---- Lemon Squeezy -------------------------------------------------------------------------


def test_lemonsqueezy_signature():
    body = s.dumps(s.lemonsqueezy_order_event())
    headers = s.lemonsqueezy_header(body)
    sig.verify_lemonsqueezy(body, headers, [s.LEMONSQUEEZY_SECRET])
    sig.verify_lemonsqueezy(body, {"x-signature": headers["X-Signature"].upper()}, [s.LEMONSQUEEZY_SECRET])
    assert _code(sig.verify_lemonsqueezy, body + b"\n", headers, [s.LEMONSQUEEZY_SECRET]) == "bad_signature"
    assert _code(sig.verify_lemonsqueezy, body, headers, ["other-secret"]) == "bad_signature"
    sig.verify_lemonsqueezy(body, headers, ["new-secret", s.LEMONSQUEEZY_SECRET])  # rotation
    assert _code(sig.verify_lemonsqueezy, body, {}, [s.LEMONSQUEEZY_SECRET]) == "missing_header"
    assert (
        _code(sig.verify_lemonsqueezy, body, {"X-Signature": "zz"}, [s.LEMONSQUEEZY_SECRET])
        == "malformed_header"
    )


# ---- Polar (Standard Webhooks) -------------------------------------------------------------


def _standard_headers(secret: str, body: bytes, msg_id: str = "msg_p1", ts: int = s.NOW) -> dict[str, str]:
    signed = standardwebhooks.Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signed}


POLAR_BODY = s.dumps(s.polar_event("order.refunded", s.polar_order()))


def test_polar_standard_form_agrees_with_standardwebhooks():
    now = int(time.time())
    headers = _standard_headers(s.POLAR_SECRET, POLAR_BODY, ts=now)
    sig.verify_polar(POLAR_BODY, headers, [s.POLAR_SECRET], now=now)
    assert standardwebhooks.Webhook(s.POLAR_SECRET).verify(POLAR_BODY, headers)["type"] == "order.refunded"
    # Our hand-made header is the same scheme.
    mine = s.polar_headers(POLAR_BODY, ts=now)
    standardwebhooks.Webhook(s.POLAR_SECRET).verify(POLAR_BODY, mine)


def test_polar_legacy_raw_secret_form():
    # Endpoints created before 2026-09-08: the secret string itself is the HMAC key, which is what
    # Standard Webhooks computes when handed the base64 of that string.
    legacy_as_standard = base64.b64encode(s.POLAR_LEGACY_SECRET.encode()).decode()
    headers = _standard_headers(legacy_as_standard, POLAR_BODY)
    sig.verify_polar(POLAR_BODY, headers, [s.POLAR_LEGACY_SECRET], now=s.NOW)
    # A legacy secret that happens to carry the whsec_ prefix: its raw bytes are tried too.
    prefixed = "whsec_legacyRawSecret!"
    headers = s.polar_headers(POLAR_BODY, key=prefixed.encode())
    sig.verify_polar(POLAR_BODY, headers, [prefixed], now=s.NOW)
    # A prefix-less secret that is base64 of the key is also tried decoded.
    headers = s.polar_headers(POLAR_BODY, key=s.POLAR_KEY)
    sig.verify_polar(POLAR_BODY, headers, [base64.b64encode(s.POLAR_KEY).decode()], now=s.NOW)


def test_polar_tampered_wrong_secret_stale_and_rotation():
    headers = _standard_headers(s.POLAR_SECRET, POLAR_BODY)
    assert _code(sig.verify_polar, POLAR_BODY + b" ", headers, [s.POLAR_SECRET], now=s.NOW) == "bad_signature"
    other = "whsec_" + base64.b64encode(b"another key entirely").decode()
    assert _code(sig.verify_polar, POLAR_BODY, headers, [other], now=s.NOW) == "bad_signature"
    forged_id = {**headers, "webhook-id": "msg_other"}
    assert _code(sig.verify_polar, POLAR_BODY, forged_id, [s.POLAR_SECRET], now=s.NOW) == "bad_signature"
    for offset in (-301, 301):
        stale = _standard_headers(s.POLAR_SECRET, POLAR_BODY, ts=s.NOW + offset)
        assert _code(sig.verify_polar, POLAR_BODY, stale, [s.POLAR_SECRET], now=s.NOW) == "stale_timestamp"
    rotated = {
        **headers,
        "webhook-signature": _standard_headers(other, POLAR_BODY)["webhook-signature"]
        + " v2,ignored "
        + headers["webhook-signature"],
    }
    sig.verify_polar(POLAR_BODY, rotated, [s.POLAR_SECRET], now=s.NOW)
    sig.verify_polar(POLAR_BODY, rotated, [other], now=s.NOW)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"webhook-id": None}, "missing_header"),
        ({"webhook-timestamp": None}, "missing_header"),
        ({"webhook-signature": None}, "missing_header"),
        ({"webhook-timestamp": "1e9"}, "malformed_header"),
        ({"webhook-signature": "v1"}, "malformed_header"),
        ({"webhook-signature": "v1,***"}, "malformed_header"),
        ({"webhook-signature": "v2,abcd"}, "malformed_header"),
    ],
)
def test_polar_missing_or_malformed_headers(change, code):
    headers = {**_standard_headers(s.POLAR_SECRET, POLAR_BODY), **change}
    headers = {k: v for k, v in headers.items() if v is not None}
    assert _code(sig.verify_polar, POLAR_BODY, headers, [s.POLAR_SECRET], now=s.NOW) == code


def test_verify_dispatches_by_provider_name():
    sig.verify("stripe", BODY, s.stripe_header(BODY), secrets=[s.STRIPE_SECRET], now=s.NOW)
    sig.verify("chargebee", BODY, s.chargebee_header(), basic_auth=CB)
    body = s.dumps(s.lemonsqueezy_order_event())
    sig.verify("lemonsqueezy", body, s.lemonsqueezy_header(body), secrets=[s.LEMONSQUEEZY_SECRET])
    sig.verify("polar", POLAR_BODY, s.polar_headers(POLAR_BODY), secrets=[s.POLAR_SECRET], now=s.NOW)
    sig.verify("paddle", BODY, s.paddle_header(BODY), secrets=[s.PADDLE_SECRET], now=s.NOW)
    with pytest.raises(SignatureError):
        sig.verify("paddle", BODY, s.stripe_header(BODY), secrets=[s.PADDLE_SECRET], now=s.NOW)
    with pytest.raises(ValueError, match="unknown provider"):
        sig.verify("mollie", BODY, {}, secrets=["x"])
