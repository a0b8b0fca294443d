"""Test secrets, the signing helpers the tests make headers with, and the sample events.

The event builders live in reditus_webhooks.samples (the CLI's ``webhooks send-sample`` posts
them too) and are re-exported here. The signing helpers below are written out from the
providers' documentation on purpose, not taken from reditus_webhooks.signatures: the tests check
our verifiers (and our ``sign_*``) against an independent implementation and, where a provider
publishes one, against its own library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

# NOW is a fixed "now" for verification: no test depends on the wall clock.
from reditus_webhooks.samples import (  # noqa: F401 - re-exported for the tests
    NOW,
    POLAR_ORDER_ID,
    chargebee_credit_note,
    chargebee_event,
    chargebee_invoice,
    chargebee_refund_transaction,
    dumps,
    lemonsqueezy_order_event,
    paddle_adjustment,
    paddle_event,
    polar_event,
    polar_order,
    polar_refund,
    stripe_charge,
    stripe_dispute,
    stripe_event,
    stripe_refund,
)

STRIPE_SECRET = "whsec_test_5d0a9c4f2b7e4a1d8c3f6b9e0a2d4c6e"
PADDLE_SECRET = "pdl_ntfset_01hs0t3tw21j988db1pam5xg8m_GrOWLNef+vmtjJYq4mSnHNzvc8uWoJ1I"
LEMONSQUEEZY_SECRET = "ls-signing-secret-1234"
POLAR_KEY = b"polar-test-key-0123456789abcdef!"
POLAR_SECRET = "whsec_" + base64.b64encode(POLAR_KEY).decode()  # Standard Webhooks form
POLAR_LEGACY_SECRET = "polar_whs_legacy0123456789abcdefghij"  # older endpoints: the raw string is the key
CHARGEBEE_USER = "reditus-hook"
CHARGEBEE_PASSWORD = "s3cret:with-colon"


# ---- signing, the providers' documented schemes -----------------------------------------------


def stripe_header(body: bytes, secret: str = STRIPE_SECRET, t: int = NOW, extra: str = "") -> dict[str, str]:
    sig = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={sig}{extra}"}


def paddle_signature(body: bytes, secret: str = PADDLE_SECRET, ts: int = NOW) -> str:
    return hmac.new(secret.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()


def paddle_header(body: bytes, secret: str = PADDLE_SECRET, ts: int = NOW) -> dict[str, str]:
    return {"Paddle-Signature": f"ts={ts};h1={paddle_signature(body, secret, ts)}"}


def lemonsqueezy_header(body: bytes, secret: str = LEMONSQUEEZY_SECRET) -> dict[str, str]:
    return {"X-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def chargebee_header(user: str = CHARGEBEE_USER, password: str = CHARGEBEE_PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def polar_headers(
    body: bytes, key: bytes = POLAR_KEY, msg_id: str = "msg_2m3UnqPnXcVMLy0uSvcvMfkvPZG", ts: int = NOW
) -> dict[str, str]:
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": f"v1,{sig.decode()}"}


# The paddle-python-sdk's own signature test vector (tests/Unit/Notification/test_Verifier.py and
# _fixtures/standard_payload.json): a real Paddle-signed body, signature and secret.
PADDLE_SDK_VECTOR_BODY = (
    b'{"data":{"id":"ctm_01hs0tqf76sxmp7ba5e4mw1sc8","name":"John Doe","email":'
    b'"blackhole+verification2@paddle.com","locale":"en","status":"active","created_at":'
    b'"2024-03-15T10:32:37.862Z","updated_at":"2024-03-15T10:32:37.862Z","custom_data":null,'
    b'"import_meta":null,"marketing_consent":false},"event_id":"evt_01hs0tqfme2xwb2hvwv87p8y3w",'
    b'"event_type":"customer.created","occurred_at":"2024-03-15T10:32:38.286848Z",'
    b'"notification_id":"ntf_01hs0tqfrhgkyp39x4wyvy7h6n"}'
)
PADDLE_SDK_VECTOR_HEADER = "ts=1710498758;h1=558bf93944dbeb4790c7a8af6cb2ea435c8ca9c8396aafc1a4e37424ac132744"
PADDLE_SDK_VECTOR_TS = 1710498758
