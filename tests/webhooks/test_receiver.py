"""The webhook receiver end to end through its Function URL interface, on moto's DynamoDB and SQS.

Signatures are made by the providers' own libraries where they publish one (stripe,
standardwebhooks) and the documented way otherwise (Paddle, Lemon Squeezy, Chargebee), as in
test_signatures.py. Time is the wall clock: the receiver checks timestamps against it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks
import stripe
from botocore.exceptions import ClientError

from reditus_webhooks.app import BAD_SIGNATURE_METRIC, WebhookReceiver, build_receiver
from reditus_webhooks.events import REVIEW_PREFIX, EventStore, event_key, review_key
from tests.webhooks import samples as s

CHARGE = "ch_3MmlLrLkdIwHu7ix0snN0B15"
PADDLE_TXN = "txn_01hvcc93znj3mpqt1tenkjb04y"


@dataclass
class Metrics:
    names: list[str] = field(default_factory=list)

    def count(self, metric: str) -> None:
        self.names.append(metric)


def base_env(aws: Any) -> dict[str, str]:
    return {
        "HISTORY_TABLE_NAME": aws.table,
        "REFUND_QUEUE_URL": aws.queue_url,
        "STRIPE_WEBHOOK_SECRET": s.STRIPE_SECRET,
        "PADDLE_WEBHOOK_SECRET": s.PADDLE_SECRET,
        "LEMONSQUEEZY_WEBHOOK_SECRET": s.LEMONSQUEEZY_SECRET,
        "POLAR_WEBHOOK_SECRET": s.POLAR_SECRET,
        "CHARGEBEE_WEBHOOK_USERNAME": s.CHARGEBEE_USER,
        "CHARGEBEE_WEBHOOK_PASSWORD": s.CHARGEBEE_PASSWORD,
    }


@dataclass
class Rig:
    aws: Any
    receiver: WebhookReceiver
    metrics: Metrics

    def post(
        self,
        provider: str,
        body: bytes,
        headers: dict[str, str],
        *,
        method: str = "POST",
        path: str | None = None,
        base64_body: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        event = {
            "version": "2.0",
            "rawPath": path if path is not None else f"/{provider}",
            "headers": {k.lower(): v for k, v in headers.items()},
            "requestContext": {"http": {"method": method, "path": f"/{provider}"}},
            "body": base64.b64encode(body).decode() if base64_body else body.decode("utf-8"),
            "isBase64Encoded": base64_body,
        }
        answer = self.receiver.handle(event).to_function_url()
        assert answer["headers"]["content-type"] == "application/json"
        return answer["statusCode"], json.loads(answer["body"])

    def messages(self) -> list[dict[str, Any]]:
        """Every message on the refund queue (received once, at the end of a test)."""
        found: list[dict[str, Any]] = []
        while True:
            got = self.aws.sqs.receive_message(
                QueueUrl=self.aws.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600
            ).get("Messages", [])
            if not got:
                return found
            found += [json.loads(m["Body"]) for m in got]

    def item(self, key: str) -> dict[str, Any] | None:
        return EventStore(self.aws.table, self.aws.dynamodb).raw(key)

    def webhook_items(self) -> list[dict[str, Any]]:
        items = self.aws.dynamodb.scan(TableName=self.aws.table)["Items"]
        return [i for i in items if i["refund_id"]["S"].startswith("webhook")]


def make_rig(aws: Any, env: dict[str, str] | None = None, **clients: Any) -> Rig:
    metrics = Metrics()
    receiver = build_receiver(
        env or base_env(aws),
        dynamodb=clients.get("dynamodb", aws.dynamodb),
        sqs=clients.get("sqs", aws.sqs),
        secretsmanager=lambda: aws.secrets,
        telemetry=metrics,
    )
    return Rig(aws, receiver, metrics)


@pytest.fixture
def rig(aws: Any) -> Iterator[Rig]:
    yield make_rig(aws)


# ---- signing -------------------------------------------------------------------------------


def now() -> int:
    return int(time.time())


def sign(
    provider: str,
    doc: dict,
    *,
    ts: int | None = None,
    secret: str | None = None,
    msg_id: str = "msg_2m3UnqPnXcVMLy0uSvcvMfkvPZG",
) -> tuple[bytes, dict[str, str]]:
    body = s.dumps(doc)
    ts = now() if ts is None else ts
    if provider == "stripe":
        header = stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret or s.STRIPE_SECRET, timestamp=ts
        )
        return body, {"Stripe-Signature": header}
    if provider == "paddle":
        return body, s.paddle_header(body, secret=secret or s.PADDLE_SECRET, ts=ts)
    if provider == "lemonsqueezy":
        return body, s.lemonsqueezy_header(body, secret=secret or s.LEMONSQUEEZY_SECRET)
    if provider == "chargebee":
        return body, s.chargebee_header(password=secret or s.CHARGEBEE_PASSWORD)
    signed = standardwebhooks.Webhook(secret or s.POLAR_SECRET).sign(
        msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode()
    )
    return body, {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signed}


def full_refund(provider: str) -> tuple[dict, str, str]:
    """A full-refund event of ``provider``, its refund_id and its payment_id."""
    if provider == "stripe":
        return s.stripe_event("charge.refunded", s.stripe_charge(1099)), f"wh:stripe:{CHARGE}", CHARGE
    if provider == "paddle":
        doc = s.paddle_event("adjustment.updated", s.paddle_adjustment())
        return doc, f"wh:paddle:{PADDLE_TXN}", PADDLE_TXN
    if provider == "chargebee":
        content = {"credit_note": s.chargebee_credit_note(), "invoice": s.chargebee_invoice()}
        return s.chargebee_event("credit_note_created", content), "wh:chargebee:inv_1042", "inv_1042"
    if provider == "lemonsqueezy":
        return s.lemonsqueezy_order_event(), "wh:lemonsqueezy:1", "1"
    doc = s.polar_event("order.refunded", s.polar_order())
    return doc, f"wh:polar:{s.POLAR_ORDER_ID}", s.POLAR_ORDER_ID


def unknown_event(provider: str) -> dict:
    if provider == "stripe":
        return s.stripe_event("customer.created", {"id": "cus_1", "email": "a@example.com"})
    if provider == "paddle":
        return s.paddle_event("customer.created", {"id": "ctm_1"})
    if provider == "chargebee":
        return s.chargebee_event("customer_created", {"customer": {"id": "c1"}})
    if provider == "lemonsqueezy":
        return s.lemonsqueezy_order_event(event_name="order_created")
    return s.polar_event("checkout.created", {"id": "co_1"})


PROVIDERS = ("stripe", "paddle", "chargebee", "lemonsqueezy", "polar")


def event_id_of(provider: str, doc: dict, msg_id: str = "msg_2m3UnqPnXcVMLy0uSvcvMfkvPZG") -> str:
    if provider == "paddle":
        return doc["event_id"]
    if provider in ("stripe", "chargebee"):
        return doc["id"]
    if provider == "polar":
        return msg_id
    attributes = doc["data"]["attributes"]
    return f"{doc['meta']['event_name']}:{doc['data']['id']}:{attributes['refunded_amount']}"


# ---- per provider: valid, bad authentication, replay, unknown --------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_valid_full_refund_is_queued_recorded_pending_and_as_an_event(rig: Rig, provider: str):
    doc, refund_id, payment_id = full_refund(provider)
    body, headers = sign(provider, doc)
    status, answer = rig.post(provider, body, headers)
    assert (status, answer["status"], answer["refund_id"]) == (200, "queued", refund_id)
    [message] = rig.messages()
    assert message["refund_id"] == refund_id
    assert message["payment_id"] == payment_id
    assert message["source"] == provider
    pending = rig.item(refund_id)
    assert pending is not None
    # Pending: no outcome yet (the first result writes one), queued by this provider.
    assert "outcome" not in pending and (pending["source"], pending["payment_id"]) == (provider, payment_id)
    event = rig.item(event_key(provider, event_id_of(provider, doc)))
    assert event is not None
    assert event["decision"] == "queued"
    assert event["target_refund_id"] == refund_id
    assert event["target_payment_id"] == payment_id
    assert event["provider"] == provider
    assert event["event_type"]
    assert event["received_at"].endswith("Z")
    assert "full refund" in event["reason"]
    # An event record is not a refund: none of the refunds' index attributes.
    assert not {"outcome", "queued_at", "queued_day", "payment_id"} & set(event)
    assert rig.metrics.names == ["WebhookQueued"]


BAD_AUTH = [
    ("stripe", "tampered"),
    ("stripe", "wrong_secret"),
    ("stripe", "stale"),
    ("stripe", "missing"),
    ("paddle", "tampered"),
    ("paddle", "wrong_secret"),
    ("paddle", "stale"),
    ("lemonsqueezy", "tampered"),
    ("lemonsqueezy", "wrong_secret"),
    ("polar", "tampered"),
    ("polar", "wrong_secret"),
    ("polar", "stale"),
    ("chargebee", "wrong_secret"),
    ("chargebee", "missing"),
]


@pytest.mark.parametrize(("provider", "how"), BAD_AUTH)
def test_bad_authentication_is_400_counted_and_queues_nothing(rig: Rig, provider: str, how: str):
    doc, _, _ = full_refund(provider)
    if how == "wrong_secret":
        other = "whsec_" + base64.b64encode(b"another-key-0123456789").decode()
        body, headers = sign(provider, doc, secret=other if provider == "polar" else "wrong-secret")
    else:
        body, headers = sign(provider, doc, ts=now() - 301 if how == "stale" else None)
    if how == "tampered":
        body = body.replace(b'"id"', b'"id" ', 1)
    if how == "missing":
        headers = {}
    status, answer = rig.post(provider, body, headers)
    assert status == 400
    assert answer["status"] == "rejected"
    assert answer["reason"]
    for secret in (s.STRIPE_SECRET, s.PADDLE_SECRET, s.POLAR_SECRET, s.CHARGEBEE_PASSWORD, "wrong-secret"):
        assert secret not in json.dumps(answer)
    assert rig.metrics.names == [BAD_SIGNATURE_METRIC]
    assert rig.messages() == []
    # Only the day count: nothing keyed by the unauthenticated body's ids.
    assert [i["refund_id"]["S"].split("#")[0] for i in rig.webhook_items()] == ["webhook_count"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_replayed_event_is_a_duplicate_and_sends_one_message(rig: Rig, provider: str):
    doc, refund_id, _ = full_refund(provider)
    body, headers = sign(provider, doc)
    assert rig.post(provider, body, headers)[1]["status"] == "queued"
    body, headers = sign(provider, doc)  # redelivered: signed anew, same event
    status, answer = rig.post(provider, body, headers)
    assert (status, answer) == (200, {"status": "duplicate"})
    assert [m["refund_id"] for m in rig.messages()] == [refund_id]
    assert rig.metrics.names == ["WebhookQueued", "WebhookDuplicate"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_event_type_is_200_ignored_counted_and_recorded(rig: Rig, provider: str):
    doc = unknown_event(provider)
    body, headers = sign(provider, doc)
    status, answer = rig.post(provider, body, headers)
    assert (status, answer) == (200, {"status": "ignored"})
    assert rig.metrics.names == ["WebhookIgnored"]
    assert rig.messages() == []
    event = rig.item(event_key(provider, event_id_of(provider, doc)))
    assert event is not None and event["decision"] == "ignored"
    # Redelivered: a duplicate, counted as one, the ignored decision counted once.
    assert rig.post(provider, *sign(provider, doc)) == (200, {"status": "duplicate"})
    counts = EventStore(rig.aws.table, rig.aws.dynamodb).counts(provider, [event["received_day"]])
    assert counts[event["received_day"]]["ignored"] == 1
    assert counts[event["received_day"]]["duplicate"] == 1


# ---- one refund, several events ---------------------------------------------------------------


def test_polar_order_refunded_and_refund_created_are_one_refund(rig: Rig):
    order = s.polar_event("order.refunded", s.polar_order())
    refund = s.polar_event("refund.created", s.polar_refund())
    first = rig.post("polar", *sign("polar", order, msg_id="msg_order"))
    second = rig.post("polar", *sign("polar", refund, msg_id="msg_refund"))
    refund_id = f"wh:polar:{s.POLAR_ORDER_ID}"
    assert first == (200, {"status": "queued", "refund_id": refund_id})
    assert second[0] == 200
    assert second[1]["status"] == "duplicate_refund"
    assert second[1]["refund_id"] == refund_id
    assert [m["refund_id"] for m in rig.messages()] == [refund_id]
    # Both events are recorded, the second as a duplicate of the refund.
    assert rig.item(event_key("polar", "msg_refund"))["decision"] == "duplicate_refund"


def test_chargebee_credit_note_and_payment_refunded_are_one_refund(rig: Rig):
    note = s.chargebee_event(
        "credit_note_created",
        {"credit_note": s.chargebee_credit_note(), "invoice": s.chargebee_invoice()},
        event_id="ev_note",
    )
    refunded = s.chargebee_event(
        "payment_refunded",
        {"transaction": s.chargebee_refund_transaction(), "invoice": s.chargebee_invoice()},
        event_id="ev_refunded",
    )
    assert rig.post("chargebee", *sign("chargebee", note))[1]["status"] == "queued"
    assert rig.post("chargebee", *sign("chargebee", refunded))[1]["status"] == "duplicate_refund"
    assert [m["refund_id"] for m in rig.messages()] == ["wh:chargebee:inv_1042"]


def test_stripe_refund_then_lost_dispute_is_one_refund(rig: Rig):
    refunded = s.stripe_event("charge.refunded", s.stripe_charge(1099), event_id="evt_refund")
    lost = s.stripe_event("charge.dispute.closed", s.stripe_dispute("lost"), event_id="evt_dispute")
    assert rig.post("stripe", *sign("stripe", refunded))[1]["status"] == "queued"
    assert rig.post("stripe", *sign("stripe", lost))[1]["status"] == "duplicate_refund"
    assert [m["refund_id"] for m in rig.messages()] == [f"wh:stripe:{CHARGE}"]


# ---- disputes and chargebacks -------------------------------------------------------------------


def test_stripe_lost_dispute_queues_and_won_dispute_is_ignored(rig: Rig):
    won = s.stripe_event("charge.dispute.closed", s.stripe_dispute("won"), event_id="evt_won")
    lost = s.stripe_event("charge.dispute.closed", s.stripe_dispute("lost"), event_id="evt_lost")
    assert rig.post("stripe", *sign("stripe", won)) == (200, {"status": "ignored"})
    assert rig.post("stripe", *sign("stripe", lost)) == (
        200,
        {"status": "queued", "refund_id": f"wh:stripe:{CHARGE}"},
    )
    [message] = rig.messages()
    assert message["payment_id"] == CHARGE


def test_paddle_approved_chargeback_queues(rig: Rig):
    doc = s.paddle_event("adjustment.created", s.paddle_adjustment(action="chargeback", kind=None))
    assert rig.post("paddle", *sign("paddle", doc))[1] == {
        "status": "queued",
        "refund_id": f"wh:paddle:{PADDLE_TXN}",
    }
    assert len(rig.messages()) == 1


# ---- partial refunds and review -------------------------------------------------------------------


def partial_then_full(provider: str) -> tuple[dict, dict, str]:
    if provider == "stripe":
        partial = s.stripe_event("charge.refunded", s.stripe_charge(500), event_id="evt_partial")
        full = s.stripe_event("charge.refunded", s.stripe_charge(1099), event_id="evt_full")
        return partial, full, f"wh:stripe:{CHARGE}"
    if provider == "lemonsqueezy":
        return s.lemonsqueezy_order_event(500), s.lemonsqueezy_order_event(1199), "wh:lemonsqueezy:1"
    partial = s.polar_event("order.refunded", s.polar_order(refunded=400))
    return partial, s.polar_event("order.refunded", s.polar_order()), f"wh:polar:{s.POLAR_ORDER_ID}"


@pytest.mark.parametrize("provider", ["stripe", "lemonsqueezy", "polar"])
def test_partial_refund_needs_review_then_completing_event_queues_it(rig: Rig, provider: str):
    partial, full, refund_id = partial_then_full(provider)
    status, answer = rig.post(provider, *sign(provider, partial, msg_id="msg_partial"))
    assert (status, answer["status"], answer["refund_id"]) == (200, "needs_review", refund_id)
    assert rig.item(refund_id) is None  # nothing queued, no pending record
    review = EventStore(rig.aws.table, rig.aws.dynamodb).get_review(refund_id)
    assert review is not None and review.state == "open"
    assert review.request.refund_id == refund_id and review.request.source == provider
    status, answer = rig.post(provider, *sign(provider, full, msg_id="msg_full"))
    assert (status, answer["status"], answer["refund_id"]) == (200, "queued", refund_id)
    assert [m["refund_id"] for m in rig.messages()] == [refund_id]
    review = EventStore(rig.aws.table, rig.aws.dynamodb).get_review(refund_id)
    assert review is not None and review.state == "completed"
    assert rig.metrics.names == ["WebhookNeedsReview", "WebhookQueued"]


class ReviewWrites:
    """A real (moto) DynamoDB client that notes every UpdateItem on a review item."""

    def __init__(self, client: Any):
        self._client = client
        self.review_updates: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def update_item(self, **kwargs: Any) -> Any:
        key = kwargs["Key"]["refund_id"]["S"]
        if key.startswith(REVIEW_PREFIX):
            self.review_updates.append(key)
        return self._client.update_item(**kwargs)


def test_a_refund_without_an_open_review_sends_no_review_write(aws: Any):
    """Nearly every refund has no review: closing one it does not have would be a refused write,
    billed all the same. The receiver reads the refund and its review together and writes only
    when the review is open (the partial-then-full test above shows that one closed)."""
    dynamodb = ReviewWrites(aws.dynamodb)
    rig = make_rig(aws, dynamodb=dynamodb)
    doc, refund_id, _ = full_refund("stripe")
    assert rig.post("stripe", *sign("stripe", doc))[1]["status"] == "queued"
    assert [m["refund_id"] for m in rig.messages()] == [refund_id]
    assert dynamodb.review_updates == []


def test_partial_refund_under_reject_policy_queues(aws: Any):
    rig = make_rig(aws, {**base_env(aws), "REDITUS_WEBHOOK_PARTIAL_REFUNDS": "reject"})
    partial = s.stripe_event("charge.refunded", s.stripe_charge(500))
    assert rig.post("stripe", *sign("stripe", partial))[1]["status"] == "queued"
    assert len(rig.messages()) == 1


# ---- unmappable, unreadable, oversize, method, path ----------------------------------------------


def test_unmappable_event_is_recorded_answered_200_and_counted(aws: Any):
    rig = make_rig(aws, {**base_env(aws), "REDITUS_WEBHOOK_STRIPE_PAYMENT_ID": "metadata:reditus_payment"})
    doc = s.stripe_event("charge.refunded", s.stripe_charge(1099))
    status, answer = rig.post("stripe", *sign("stripe", doc))
    assert (status, answer["status"]) == (200, "unmappable")
    assert "reditus_payment" in answer["reason"]
    assert rig.messages() == []
    event = rig.item(event_key("stripe", doc["id"]))
    assert event is not None
    assert event["decision"] == "unmappable"
    assert event["target_refund_id"] == f"wh:stripe:{CHARGE}"
    assert "reditus_payment" in event["reason"]
    assert rig.metrics.names == ["WebhookUnmappable"]
    # The mapping finds the id once the customer sends it.
    doc = s.stripe_event(
        "charge.refunded", s.stripe_charge(1099, metadata={"reditus_payment": "pay-77"}), event_id="evt_2"
    )
    assert rig.post("stripe", *sign("stripe", doc))[1]["status"] == "queued"
    assert rig.messages()[0]["payment_id"] == "pay-77"


def test_oversize_body_is_413_and_queues_nothing(aws: Any):
    rig = make_rig(aws, {**base_env(aws), "REDITUS_WEBHOOK_MAX_BODY_BYTES": "2048"})
    charge = s.stripe_charge(1099, metadata={"padding": "x" * 3000})
    body, headers = sign("stripe", s.stripe_event("charge.refunded", charge))
    assert rig.post("stripe", body, headers)[0] == 413
    assert rig.post("stripe", body, headers, base64_body=True)[0] == 413
    small, small_headers = sign("stripe", s.stripe_event("charge.refunded", s.stripe_charge(1099)))
    assert rig.post("stripe", small, small_headers)[0] == 200
    assert len(rig.messages()) == 1


@pytest.mark.parametrize(
    ("provider", "body", "encoded"),
    [
        ("stripe", b"not json at all", False),
        ("lemonsqueezy", b'{"meta": {"event_name": "order_refunded"}', False),
        ("paddle", b'{"event_id": "evt_\xff\xfe"}', True),
        ("stripe", b"[1, 2, 3]", False),
    ],
)
def test_authenticated_but_unreadable_body_is_400_recorded_and_queues_nothing(
    rig: Rig, provider: str, body: bytes, encoded: bool
):
    ts = now()
    if provider == "stripe":
        headers = {
            "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
                body.decode(), s.STRIPE_SECRET, timestamp=ts
            )
        }
    elif provider == "paddle":
        headers = s.paddle_header(body, ts=ts)
    else:
        headers = s.lemonsqueezy_header(body)
    status, answer = rig.post(provider, body, headers, base64_body=encoded)
    assert (status, answer["status"]) == (400, "rejected")
    assert answer["reason"]
    assert rig.messages() == []
    [record] = [i for i in rig.webhook_items() if i["refund_id"]["S"].startswith("webhook#")]
    assert record["decision"]["S"] == "unreadable"


def test_non_utf8_body_is_400(rig: Rig):
    body = b'{"id": "evt_\xff"}'
    headers = s.lemonsqueezy_header(body)
    status, answer = rig.post("lemonsqueezy", body, headers, base64_body=True)
    assert (status, answer["reason"]) == (400, "the body is not valid UTF-8")


def test_wrong_method_is_405_and_unknown_path_is_404(rig: Rig):
    body, headers = sign("stripe", full_refund("stripe")[0])
    assert rig.post("stripe", body, headers, method="GET")[0] == 405
    event = {"rawPath": "/stripe", "requestContext": {"http": {"method": "PUT"}}, "headers": {}, "body": ""}
    assert rig.receiver.handle(event).to_function_url()["headers"]["allow"] == "POST"
    for path in ("/", "/stripe/extra", "/paypal", "/../stripe", "/STRIPE"):
        assert rig.post("stripe", body, headers, path=path)[0] == 404, path
    assert rig.messages() == []


# ---- failures: nothing half-done blocks the retry --------------------------------------------------


class FlakySqs:
    """A real (moto) SQS client whose sends fail while ``failing`` is set."""

    def __init__(self, client: Any):
        self._client = client
        self.failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def send_message(self, **kwargs: Any) -> Any:
        if self.failing:
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}}, "SendMessage")
        return self._client.send_message(**kwargs)


class FlakyDynamo:
    """A real (moto) DynamoDB client; the n-th next write (a transaction or a put, counting from 1)
    fails once."""

    def __init__(self, client: Any):
        self._client = client
        self.fail_at: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _maybe_fail(self, operation: str) -> None:
        if self.fail_at is not None:
            self.fail_at -= 1
            if self.fail_at == 0:
                self.fail_at = None
                error = {"Error": {"Code": "InternalServerError", "Message": "try again"}}
                raise ClientError(error, operation)  # type: ignore[arg-type]

    def transact_write_items(self, **kwargs: Any) -> Any:
        self._maybe_fail("TransactWriteItems")
        return self._client.transact_write_items(**kwargs)

    def put_item(self, **kwargs: Any) -> Any:
        self._maybe_fail("PutItem")
        return self._client.put_item(**kwargs)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_queue_failure_is_503_and_the_retry_queues_one_message(aws: Any, provider: str):
    sqs = FlakySqs(aws.sqs)
    rig = make_rig(aws, sqs=sqs)
    doc, refund_id, _ = full_refund(provider)
    sqs.failing = True
    status, answer = rig.post(provider, *sign(provider, doc))
    assert (status, answer["status"]) == (503, "error")
    assert aws.queue_url not in json.dumps(answer)
    assert rig.item(event_key(provider, event_id_of(provider, doc)))["decision"] == "received"
    assert rig.item(refund_id) is None
    sqs.failing = False
    status, answer = rig.post(provider, *sign(provider, doc))  # the provider's retry
    assert (status, answer["status"]) == (200, "queued")
    assert [m["refund_id"] for m in rig.messages()] == [refund_id]
    assert rig.item(event_key(provider, event_id_of(provider, doc)))["decision"] == "queued"


@pytest.mark.parametrize(
    ("fail_at", "messages"),
    [
        (1, 1),  # recording the event fails: nothing sent, the retry sends
        (2, 2),  # the pending record fails after the send: the retry sends the same refund_id again
        (3, 1),  # marking the event queued fails: the retry finds the refund and does not resend
    ],
)
def test_store_failure_is_503_and_the_retry_completes_with_the_same_refund_id(
    aws: Any, fail_at: int, messages: int
):
    dynamodb = FlakyDynamo(aws.dynamodb)
    rig = make_rig(aws, dynamodb=dynamodb)
    doc, refund_id, _ = full_refund("stripe")
    dynamodb.fail_at = fail_at
    assert rig.post("stripe", *sign("stripe", doc))[0] == 503
    status, answer = rig.post("stripe", *sign("stripe", doc))
    assert (status, answer["status"]) == (200, "queued")
    assert [m["refund_id"] for m in rig.messages()] == [refund_id] * messages
    assert "outcome" not in rig.item(refund_id)  # recorded pending
    assert rig.item(event_key("stripe", doc["id"]))["decision"] == "queued"
    # A third delivery is a duplicate.
    assert rig.post("stripe", *sign("stripe", doc))[1] == {"status": "duplicate"}


# ---- personal data ---------------------------------------------------------------------------------

PERSONAL = ("jenny.rosen@example.com", "Jenny Rosen", "221B Baker Street", "+44 20 7946 0000", "NW1 6XE")


def test_no_personal_data_from_the_payload_is_stored(rig: Rig):
    charge = s.stripe_charge(500, metadata={"customer_name": "Jenny Rosen", "phone": "+44 20 7946 0000"})
    charge["billing_details"] = {
        "email": "jenny.rosen@example.com",
        "name": "Jenny Rosen",
        "phone": "+44 20 7946 0000",
        "address": {"line1": "221B Baker Street", "postal_code": "NW1 6XE", "city": "London"},
    }
    charge["receipt_email"] = "jenny.rosen@example.com"
    charge["description"] = "Jenny Rosen, 221B Baker Street"
    partial = s.stripe_event("charge.refunded", charge, event_id="evt_personal_1")
    assert rig.post("stripe", *sign("stripe", partial))[1]["status"] == "needs_review"
    full = dict(charge, amount_refunded=1099, refunded=True)
    assert (
        rig.post(
            "stripe", *sign("stripe", s.stripe_event("charge.refunded", full, event_id="evt_personal_2"))
        )[1]["status"]
        == "queued"
    )
    stored = json.dumps(rig.aws.dynamodb.scan(TableName=rig.aws.table)["Items"]) + json.dumps(rig.messages())
    assert "evt_personal_1" in stored and review_key(f"wh:stripe:{CHARGE}") in stored
    for text in PERSONAL:
        assert text not in stored, text


# ---- the Lambda handler's wiring ---------------------------------------------------------------------


def test_lambda_handler_answers_and_emits_metrics(aws: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any):
    import importlib
    import sys

    for name, value in base_env(aws).items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("reditus_webhooks.handler", None)
    handler = importlib.import_module("reditus_webhooks.handler")
    try:
        doc, refund_id, _ = full_refund("stripe")
        body, headers = sign("stripe", doc)
        event = {
            "version": "2.0",
            "rawPath": "/stripe",
            "headers": {k.lower(): v for k, v in headers.items()},
            "requestContext": {"http": {"method": "POST", "path": "/stripe"}},
            "body": body.decode(),
            "isBase64Encoded": False,
        }

        class Context:
            function_name = "webhooks"
            memory_limit_in_mb = 256
            invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:webhooks"
            aws_request_id = "req-1"

        answer = handler.lambda_handler(event, Context())
        assert answer["statusCode"] == 200
        assert json.loads(answer["body"]) == {"status": "queued", "refund_id": refund_id}
        out = capsys.readouterr().out
        assert "WebhookQueued" in out
        assert s.STRIPE_SECRET not in out
        headers_bad = {"stripe-signature": headers["Stripe-Signature"].replace("v1=", "v1=00")}
        answer = handler.lambda_handler({**event, "headers": headers_bad}, Context())
        assert answer["statusCode"] == 400
        assert BAD_SIGNATURE_METRIC in capsys.readouterr().out
    finally:
        sys.modules.pop("reditus_webhooks.handler", None)


def test_http_server_on_loopback_serves_the_handler(rig: Rig):
    import urllib.error
    import urllib.request

    from reditus_webhooks.function_url import serve

    server = serve(lambda event, context: rig.receiver.handle(event).to_function_url())
    try:
        port = server.server_address[1]
        doc, refund_id, _ = full_refund("polar")
        body, headers = sign("polar", doc)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/polar", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            assert json.loads(response.read()) == {"status": "queued", "refund_id": refund_id}
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/polar", timeout=10)
        assert info.value.code == 405
    finally:
        server.shutdown()
        server.server_close()
    assert [m["refund_id"] for m in rig.messages()] == [refund_id]


def functions_env() -> dict[str, str]:
    import os
    from pathlib import Path

    import reditus_webhooks

    functions = str(Path(reditus_webhooks.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([functions, os.environ.get("PYTHONPATH", "")])}


def test_core_modules_do_not_import_boto3() -> None:
    import subprocess
    import sys

    code = (
        "import sys, reditus_webhooks.signatures, reditus_webhooks.providers, reditus_webhooks.decide;"
        "print(sorted(m for m in ('boto3', 'botocore', 'aws_lambda_powertools') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=functions_env()
    ).stdout
    assert out.strip() == "[]"


def test_review_module_imports_neither_powertools_nor_the_handler() -> None:
    import subprocess
    import sys

    code = (
        "import sys, reditus_webhooks.review;"
        "print(sorted(m for m in ('aws_lambda_powertools', 'reditus_webhooks.handler',"
        " 'reditus_webhooks.app') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=functions_env()
    ).stdout
    assert out.strip() == "[]"
