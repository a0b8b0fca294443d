"""Authenticate a webhook request the way each billing provider signs it.

Every check compares in constant time (``hmac.compare_digest`` on bytes) and fails with one
exception type, ``SignatureError``, whose ``code`` is one of ``CODES`` and whose ``reason`` is
short, safe to log and to return to the caller: it never holds a secret or an expected
signature (an expected signature is a valid signature for an attacker-chosen body).

Headers are looked up case-insensitively: Lambda Function URLs lower-case them, local servers
and the providers' own CLIs may not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

# Distinct causes, so metrics and the record can tell a misconfigured endpoint (bad_signature
# on every event) from an attack (bursts) or a clock problem (stale_timestamp).
CODES = ("not_configured", "missing_header", "malformed_header", "stale_timestamp", "bad_signature")

# Stripe's libraries reject events older than 300 s (stripe-python DEFAULT_TOLERANCE). stripe-python
# only looks backwards; we also refuse timestamps more than 300 s in the future, because a future
# timestamp would stretch the window in which a captured request can be replayed.
STRIPE_TOLERANCE_S = 300

# Paddle's own Verifier (paddle-python-sdk 1.16, Notifications/Verifier.py) defaults to
# maximum_variance=5 s. We deliberately use 300 s instead:
# - 5 s must absorb Paddle's send latency, a Lambda cold start and clock skew; a genuine event
#   rejected with 400 is retried by Paddle, and reports (not confirmed by Paddle's docs) say a
#   retry keeps the original ``ts``, so a 5 s window could reject it for good.
# - A replay inside the window cannot cause a second refund: the refund_id is derived from the
#   provider's own ids (see decide.derive_refund_id), so a replay is a duplicate, not a new request.
# - 300 s is the window Stripe's and Standard Webhooks' libraries use, so every timestamped
#   provider here has the same replay exposure.
PADDLE_TOLERANCE_S = 300

# standardwebhooks.Webhook rejects timestamps more than 5 minutes old or in the future.
POLAR_TOLERANCE_S = 300

# Timestamps are Unix seconds; anything longer is not one (and int() of thousands of digits is
# refused by Python itself).
_MAX_TIMESTAMP_DIGITS = 12


class SignatureError(Exception):
    """The request is not authenticated; ``reason`` says why, without secrets."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of a header whatever its case, or None."""
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value if isinstance(value, str) else None
    return None


def _require(headers: Mapping[str, str], name: str) -> str:
    value = header(headers, name)
    if value is None or not value.strip():
        raise SignatureError("missing_header", f"missing {name} header")
    return value.strip()


def _secrets(secrets: Sequence[str]) -> list[str]:
    usable = [s for s in secrets if isinstance(s, str) and s.strip()]
    if not usable:
        raise SignatureError("not_configured", "no signing secret is configured for this provider")
    return usable


def _timestamp(value: str, name: str) -> int:
    value = value.strip()
    if not value or len(value) > _MAX_TIMESTAMP_DIGITS or not (value.isascii() and value.isdigit()):
        raise SignatureError("malformed_header", f"malformed {name} header: bad timestamp")
    return int(value)


def _check_age(timestamp: int, tolerance: int, now: float | None) -> None:
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(
            "stale_timestamp", f"timestamp outside the tolerance of {tolerance} s (replay or clock skew)"
        )


def _same(expected: bytes, given: str) -> bool:
    # Header values may hold any text; compare_digest refuses non-ASCII str, so compare bytes.
    return hmac.compare_digest(expected, given.strip().encode("utf-8", "replace"))


def _hex_hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode("ascii")


def verify_stripe(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance: int = STRIPE_TOLERANCE_S,
) -> None:
    """``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>][,v0=...]``: HMAC-SHA256 of ``"{t}.{body}"``.

    The endpoint secret ``whsec_...`` is used as-is (its UTF-8 bytes), as Stripe's libraries do.
    Any matching ``v1`` accepts: Stripe signs with every active secret while one is rolled.
    """
    keys = _secrets(secrets)
    value = _require(headers, "Stripe-Signature")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        name, sep, part = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed_header", "malformed Stripe-Signature header")
        if name == "t":
            timestamp = _timestamp(part, "Stripe-Signature")
        elif name == "v1":
            signatures.append(part)
    if timestamp is None or not signatures:
        raise SignatureError("malformed_header", "malformed Stripe-Signature header: needs t and v1")
    signed = str(timestamp).encode("ascii") + b"." + body
    expected = [_hex_hmac(key.encode("utf-8"), signed) for key in keys]
    if not any(_same(e, s) for e in expected for s in signatures):
        raise SignatureError("bad_signature", "Stripe signature does not match")
    _check_age(timestamp, tolerance, now)


def verify_paddle(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance: int = PADDLE_TOLERANCE_S,
) -> None:
    """``Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>]``: HMAC-SHA256 of ``"{ts}:{body}"``.

    The notification destination's secret key (``pdl_ntfset_...``) is used as-is. Several
    ``h1`` may appear while Paddle rotates a secret; any match accepts.
    """
    keys = _secrets(secrets)
    value = _require(headers, "Paddle-Signature")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(";"):
        name, sep, part = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed_header", "malformed Paddle-Signature header")
        if name == "ts":
            timestamp = _timestamp(part, "Paddle-Signature")
        elif name == "h1":
            signatures.append(part)
        # Unknown keys are skipped (paddle-python-sdk raises), so a future h2 does not break us.
    if timestamp is None or not signatures:
        raise SignatureError("malformed_header", "malformed Paddle-Signature header: needs ts and h1")
    signed = str(timestamp).encode("ascii") + b":" + body
    expected = [_hex_hmac(key.encode("utf-8"), signed) for key in keys]
    if not any(_same(e, s) for e in expected for s in signatures):
        raise SignatureError("bad_signature", "Paddle signature does not match")
    _check_age(timestamp, tolerance, now)


def verify_lemonsqueezy(body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> None:
    """``X-Signature: <hex>``: HMAC-SHA256 of the raw body with the signing secret.

    Lemon Squeezy signs no timestamp, so there is no replay window to check: a replayed event
    maps to the same refund_id (order id + refunded amount) and is a duplicate.
    """
    keys = _secrets(secrets)
    value = _require(headers, "X-Signature")
    given = value.lower()
    if not all(c in "0123456789abcdef" for c in given):
        raise SignatureError("malformed_header", "malformed X-Signature header: not hex")
    if not any(_same(_hex_hmac(key.encode("utf-8"), body), given) for key in keys):
        raise SignatureError("bad_signature", "Lemon Squeezy signature does not match")


def verify_chargebee(headers: Mapping[str, str], credentials: Sequence[tuple[str, str]]) -> None:
    """HTTP Basic Auth on the webhook URL: Chargebee signs nothing.

    Without a signature there is no timestamp and no replay window: anyone who saw one request
    can resend it. That is tolerable only because a resent event maps to the same refund_id
    (derived from Chargebee's ids) and is recorded as a duplicate.
    """
    pairs = [(u, p) for u, p in credentials if u and p]
    if not pairs:
        raise SignatureError("not_configured", "no Basic Auth credentials are configured for Chargebee")
    value = _require(headers, "Authorization")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        raise SignatureError("malformed_header", "malformed Authorization header: expected Basic")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise SignatureError("malformed_header", "malformed Authorization header: bad base64") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise SignatureError("malformed_header", "malformed Authorization header: no user:password")
    matched = False
    for expected_user, expected_password in pairs:
        # Both halves are always compared, so timing does not reveal which one was wrong.
        user_ok = hmac.compare_digest(expected_user.encode("utf-8"), user.encode("utf-8"))
        password_ok = hmac.compare_digest(expected_password.encode("utf-8"), password.encode("utf-8"))
        matched |= user_ok & password_ok
    if not matched:
        raise SignatureError("bad_signature", "Chargebee Basic Auth credentials do not match")


def polar_keys(secret: str) -> list[bytes]:
    """The HMAC keys a Polar secret may stand for.

    Standard Webhooks: ``whsec_<base64 key>``. Polar endpoints created before 2026-09-08 sign
    with the secret string's own UTF-8 bytes. Which one a customer pasted cannot be told from
    the text, so every plausible key is tried (each is still a full HMAC key: no weaker check).
    """
    keys: list[bytes] = []
    remainder = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        # Decoded like the standardwebhooks library: extra padding tolerated.
        decoded = base64.b64decode(remainder + "==")
    except (binascii.Error, ValueError):
        decoded = b""
    for key in (decoded, secret.encode("utf-8"), remainder.encode("utf-8")):
        if key and key not in keys:
            keys.append(key)
    return keys


def verify_polar(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance: int = POLAR_TOLERANCE_S,
) -> None:
    """Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

    The signature header holds space-separated ``v1,<base64 HMAC-SHA256 of "{id}.{ts}.{body}">``.
    """
    keys = [key for secret in _secrets(secrets) for key in polar_keys(secret.strip())]
    message_id = _require(headers, "webhook-id")
    timestamp = _timestamp(_require(headers, "webhook-timestamp"), "webhook-timestamp")
    value = _require(headers, "webhook-signature")
    given: list[bytes] = []
    for item in value.split():
        version, sep, encoded = item.partition(",")
        if not sep:
            raise SignatureError("malformed_header", "malformed webhook-signature header")
        if version != "v1":
            continue
        try:
            given.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise SignatureError(
                "malformed_header", "malformed webhook-signature header: bad base64"
            ) from None
    if not given:
        raise SignatureError("malformed_header", "malformed webhook-signature header: no v1 signature")
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in keys]
    if not any(hmac.compare_digest(e, g) for e in expected for g in given):
        raise SignatureError("bad_signature", "Polar signature does not match")
    _check_age(timestamp, tolerance, now)


def verify(
    provider: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    secrets: Sequence[str] = (),
    basic_auth: Sequence[tuple[str, str]] = (),
    now: float | None = None,
) -> None:
    """Authenticate a request for ``provider`` (its name as in its path); raise SignatureError."""
    if provider == "stripe":
        verify_stripe(body, headers, secrets, now=now)
    elif provider == "paddle":
        verify_paddle(body, headers, secrets, now=now)
    elif provider == "lemonsqueezy":
        verify_lemonsqueezy(body, headers, secrets)
    elif provider == "polar":
        verify_polar(body, headers, secrets, now=now)
    elif provider == "chargebee":
        verify_chargebee(headers, basic_auth)
    else:
        raise ValueError(f"unknown provider {provider!r}")


# ---- signing, as each provider signs (for ``webhooks send-sample`` and the local stack) -----------
# The inverse of the verifiers above, on the providers' documented schemes; the tests check them
# against the providers' own libraries (stripe, standardwebhooks, paddle-python-sdk).


def _now_s(timestamp: int | None) -> int:
    return int(time.time()) if timestamp is None else timestamp


def sign_stripe(body: bytes, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    t = _now_s(timestamp)
    signature = _hex_hmac(secret.encode("utf-8"), f"{t}.".encode("ascii") + body).decode("ascii")
    return {"Stripe-Signature": f"t={t},v1={signature}"}


def sign_paddle(body: bytes, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    ts = _now_s(timestamp)
    signature = _hex_hmac(secret.encode("utf-8"), f"{ts}:".encode("ascii") + body).decode("ascii")
    return {"Paddle-Signature": f"ts={ts};h1={signature}"}


def sign_lemonsqueezy(body: bytes, secret: str) -> dict[str, str]:
    return {"X-Signature": _hex_hmac(secret.encode("utf-8"), body).decode("ascii")}


def sign_chargebee(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def sign_polar(body: bytes, secret: str, *, message_id: str, timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks with a ``whsec_`` secret (its base64 key); an older Polar secret (any
    other form) is its own UTF-8 key, as those endpoints sign."""
    ts = _now_s(timestamp)
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[len("whsec_") :] + "==")
        except (binascii.Error, ValueError):
            raise ValueError("the Polar secret is not whsec_ followed by base64") from None
    else:
        key = secret.encode("utf-8")
    digest = hmac.new(key, f"{message_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
    }
