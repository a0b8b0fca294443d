"""Parsing provider events into refund signals; hostile bodies only ever raise PayloadError."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from reditus_webhooks.providers import ParsedEvent, PayloadError, RefundSignal, decode, parse_event
from tests.webhooks import samples as s

POLAR_HEADERS = {"webhook-id": "msg_2m3UnqPnXcVMLy0uSvcvMfkvPZG"}


def one(parsed: ParsedEvent) -> RefundSignal:
    assert len(parsed.signals) == 1, parsed.ignored_reason
    return parsed.signals[0]


# ---- Stripe --------------------------------------------------------------------------------


def test_stripe_full_refund_without_expanded_refunds():
    event = s.stripe_event("charge.refunded", s.stripe_charge(1099, metadata={"reditus_payment_id": "pay_7"}))
    signal = one(parse_event("stripe", s.dumps(event)))
    assert signal.event_id == "evt_3QxyZ2LkdIwHu7ix1a2b3c4d"
    assert signal.event_type == "charge.refunded"
    assert signal.completeness == "full"
    assert (signal.amount_refunded, signal.amount_total, signal.currency) == (1099, 1099, "usd")
    assert signal.subject_id == "ch_3MmlLrLkdIwHu7ix0snN0B15"
    # No refund id in the payload: charge + cumulative amount names the movement.
    assert signal.refund_key == "ch_3MmlLrLkdIwHu7ix0snN0B15:1099"
    assert signal.payment_ids["charge"] == "ch_3MmlLrLkdIwHu7ix0snN0B15"
    assert signal.payment_ids["payment_intent"] == "pi_3MmlLrLkdIwHu7ix0uke3Ezy"
    assert signal.metadata == {"reditus_payment_id": "pay_7"}


def test_stripe_partial_refund_uses_newest_expanded_refund_id():
    refunds = [s.stripe_refund("re_second", 300, s.NOW - 10), s.stripe_refund("re_first", 200, s.NOW - 900)]
    signal = one(
        parse_event(
            "stripe", s.dumps(s.stripe_event("charge.refunded", s.stripe_charge(500, refunds=refunds)))
        )
    )
    assert signal.completeness == "partial"
    assert signal.refund_key == "re_second"
    assert (signal.amount_refunded, signal.amount_total) == (500, 1099)


def test_stripe_refunded_flag_marks_full():
    charge = s.stripe_charge(1000, amount=1099)
    charge["refunded"] = True
    assert (
        one(parse_event("stripe", s.dumps(s.stripe_event("charge.refunded", charge)))).completeness == "full"
    )


def test_stripe_dispute_lost_is_full_refund_of_the_charge():
    signal = one(
        parse_event("stripe", s.dumps(s.stripe_event("charge.dispute.closed", s.stripe_dispute("lost"))))
    )
    assert signal.completeness == "full"
    assert signal.refund_key == "dp_1MtJUT2eZvKYlo2CNaw2HvEv"
    assert signal.subject_id == "ch_3MmlLrLkdIwHu7ix0snN0B15"
    assert signal.payment_ids["charge"] == "ch_3MmlLrLkdIwHu7ix0snN0B15"


@pytest.mark.parametrize("status", ["won", "warning_closed"])
def test_stripe_dispute_not_lost_is_ignored(status):
    parsed = parse_event("stripe", s.dumps(s.stripe_event("charge.dispute.closed", s.stripe_dispute(status))))
    assert parsed.ignored and status in (parsed.ignored_reason or "")


def test_stripe_nothing_refunded_is_ignored():
    assert parse_event("stripe", s.dumps(s.stripe_event("charge.refunded", s.stripe_charge(0)))).ignored


# ---- Paddle --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "action", "completeness"),
    [
        ("full", "refund", "full"),
        ("partial", "refund", "partial"),
        (None, "refund", "unknown"),
        ("partial", "chargeback", "full"),
    ],
)
def test_paddle_approved_adjustments(kind, action, completeness):
    data = s.paddle_adjustment(kind=kind, action=action, total="550")
    signal = one(parse_event("paddle", s.dumps(s.paddle_event("adjustment.updated", data))))
    assert signal.completeness == completeness
    assert signal.event_id == "evt_01hvgf2sb8g6f2a4m0qj1n2p3q"
    assert signal.refund_key == "adj_01hvgf2s84dr6reszzg29zbvcm"
    assert signal.subject_id == signal.payment_ids["transaction"] == "txn_01hvcc93znj3mpqt1tenkjb04y"
    assert signal.amount_refunded == 550  # Paddle sends amounts as strings


@pytest.mark.parametrize(
    ("status", "action"), [("pending_approval", "refund"), ("rejected", "refund"), ("approved", "credit")]
)
def test_paddle_not_acted_on(status, action):
    data = s.paddle_adjustment(status=status, action=action)
    parsed = parse_event("paddle", s.dumps(s.paddle_event("adjustment.created", data)))
    assert parsed.ignored and parsed.event_type == "adjustment.created"


def test_paddle_sdk_fixture_shape_parses():
    # The SDK's own adjustment.created fixture: pending approval, so ignored, never an error.
    fixture = s.paddle_adjustment(status="pending_approval", kind=None, total="100")
    assert parse_event("paddle", s.dumps(s.paddle_event("adjustment.created", fixture))).ignored


# ---- Chargebee -----------------------------------------------------------------------------


def test_chargebee_credit_note_full_when_it_covers_the_invoice():
    content = {"credit_note": s.chargebee_credit_note(5000), "invoice": s.chargebee_invoice(5000)}
    signal = one(parse_event("chargebee", s.dumps(s.chargebee_event("credit_note_created", content))))
    assert signal.completeness == "full"
    assert signal.refund_key == "CN-17"
    assert signal.subject_id == signal.payment_ids["invoice"] == "inv_1042"
    assert signal.event_id == "ev_16BPgETyVrQbiGhA"


def test_chargebee_credit_note_partial_or_unknown():
    partial = {"credit_note": s.chargebee_credit_note(2000), "invoice": s.chargebee_invoice(5000)}
    assert one(
        parse_event("chargebee", s.dumps(s.chargebee_event("credit_note_created", partial)))
    ).completeness == ("partial")
    alone = {"credit_note": s.chargebee_credit_note(5000)}
    assert one(
        parse_event("chargebee", s.dumps(s.chargebee_event("credit_note_created", alone)))
    ).completeness == ("unknown")
    other_invoice = {
        "credit_note": s.chargebee_credit_note(5000),
        "invoice": s.chargebee_invoice(5000, "inv_9"),
    }
    signal = one(parse_event("chargebee", s.dumps(s.chargebee_event("credit_note_created", other_invoice))))
    assert signal.completeness == "unknown" and signal.subject_id == "inv_1042"


def test_chargebee_adjustment_credit_note_is_ignored():
    content = {"credit_note": s.chargebee_credit_note(kind="adjustment")}
    assert parse_event("chargebee", s.dumps(s.chargebee_event("credit_note_created", content))).ignored


def test_chargebee_payment_refunded_finds_the_invoice():
    content = {"transaction": s.chargebee_refund_transaction(5000), "invoice": s.chargebee_invoice(5000)}
    signal = one(parse_event("chargebee", s.dumps(s.chargebee_event("payment_refunded", content, "ev_2"))))
    assert signal.subject_id == signal.payment_ids["invoice"] == "inv_1042"
    assert signal.refund_key == "txn_16BPgETyVrQcmqh9"
    assert signal.payment_ids["payment_transaction"] == "txn_16BPgETyVrQY3Wh4"
    assert signal.completeness == "full"
    alone = {"transaction": s.chargebee_refund_transaction(1000)}
    signal = one(parse_event("chargebee", s.dumps(s.chargebee_event("payment_refunded", alone))))
    assert signal.subject_id == "inv_1042" and signal.completeness == "unknown"


def test_chargebee_metadata_comes_from_the_subscription():
    content = {
        "credit_note": s.chargebee_credit_note(),
        "subscription": {"id": "16BPgETyVrQVHGh1", "meta_data": {"reditus": "pay_cb_1", "nested": {"x": 1}}},
    }
    signal = one(parse_event("chargebee", s.dumps(s.chargebee_event("credit_note_created", content))))
    assert signal.metadata == {"reditus": "pay_cb_1"}


# ---- Lemon Squeezy -------------------------------------------------------------------------


def test_lemonsqueezy_full_and_partial():
    full = one(
        parse_event("lemonsqueezy", s.dumps(s.lemonsqueezy_order_event(1199, custom_data={"pid": "p1"})))
    )
    assert full.completeness == "full" and full.subject_id == full.payment_ids["order"] == "1"
    assert full.metadata == {"pid": "p1"}
    assert full.event_id == "order_refunded:1:1199" and full.refund_key == "1:1199"
    partial = one(parse_event("lemonsqueezy", s.dumps(s.lemonsqueezy_order_event(100))))
    assert partial.completeness == "partial" and partial.event_id == "order_refunded:1:100"


def test_lemonsqueezy_other_events_and_unrefunded_orders_are_ignored():
    parsed = parse_event("lemonsqueezy", s.dumps(s.lemonsqueezy_order_event(event_name="order_created")))
    assert parsed.ignored and parsed.event_type == "order_created"
    event = s.lemonsqueezy_order_event(0, status="paid")
    event["data"]["attributes"]["refunded"] = False
    assert parse_event("lemonsqueezy", s.dumps(event)).ignored


# ---- Polar ---------------------------------------------------------------------------------


def test_polar_order_refunded():
    signal = one(
        parse_event("polar", s.dumps(s.polar_event("order.refunded", s.polar_order(1000))), POLAR_HEADERS)
    )
    assert signal.event_id == "msg_2m3UnqPnXcVMLy0uSvcvMfkvPZG"
    assert signal.completeness == "full"
    assert signal.subject_id == signal.payment_ids["order"] == s.POLAR_ORDER_ID
    partial = s.polar_event("order.refunded", s.polar_order(300))
    assert one(parse_event("polar", s.dumps(partial), POLAR_HEADERS)).completeness == "partial"


def test_polar_refund_events():
    signal = one(
        parse_event("polar", s.dumps(s.polar_event("refund.created", s.polar_refund())), POLAR_HEADERS)
    )
    assert signal.completeness == "unknown"  # a Refund does not carry its order's total
    assert signal.refund_key == "3d2c1b0a-9f8e-4d7c-6b5a-493827161504"
    assert signal.subject_id == signal.payment_ids["order"] == s.POLAR_ORDER_ID
    for status in ("pending", "failed", "canceled"):
        event = s.polar_event("refund.updated", s.polar_refund(status=status))
        assert parse_event("polar", s.dumps(event), POLAR_HEADERS).ignored


def test_polar_needs_the_webhook_id_header():
    with pytest.raises(PayloadError, match="webhook-id"):
        parse_event("polar", s.dumps(s.polar_event("order.refunded", s.polar_order())), {})


# ---- every provider ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "doc", "headers"),
    [
        ("stripe", s.stripe_event("customer.created", {"id": "cus_1", "object": "customer"}), None),
        ("paddle", s.paddle_event("transaction.completed", {"id": "txn_1"}), None),
        ("chargebee", s.chargebee_event("subscription_created", {"subscription": {"id": "sub_1"}}), None),
        ("lemonsqueezy", s.lemonsqueezy_order_event(event_name="subscription_created"), None),
        ("polar", s.polar_event("checkout.created", {"id": "c1"}), POLAR_HEADERS),
    ],
)
def test_unknown_event_types_are_ignored(provider, doc, headers):
    parsed = parse_event(provider, s.dumps(doc), headers)
    assert parsed.ignored and "not a refund event" in (parsed.ignored_reason or "")
    assert parsed.event_id


def test_signals_are_frozen():
    signal = one(parse_event("stripe", s.dumps(s.stripe_event("charge.refunded", s.stripe_charge(1099)))))
    with pytest.raises(AttributeError):
        signal.subject_id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        signal.payment_ids["charge"] = "x"  # type: ignore[index]


# ---- hostile bodies ------------------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any], dict[str, str] | None]] = [
    (
        "stripe",
        s.stripe_event("charge.refunded", s.stripe_charge(500, refunds=[s.stripe_refund("re_1", 500, 1)])),
        None,
    ),
    ("stripe", s.stripe_event("charge.dispute.closed", s.stripe_dispute()), None),
    ("paddle", s.paddle_event("adjustment.updated", s.paddle_adjustment()), None),
    (
        "chargebee",
        s.chargebee_event(
            "credit_note_created",
            {
                "credit_note": s.chargebee_credit_note(),
                "invoice": s.chargebee_invoice(),
                "subscription": {"meta_data": {"k": "v"}},
            },
        ),
        None,
    ),
    (
        "chargebee",
        s.chargebee_event(
            "payment_refunded",
            {"transaction": s.chargebee_refund_transaction(), "invoice": s.chargebee_invoice()},
        ),
        None,
    ),
    ("lemonsqueezy", s.lemonsqueezy_order_event(100, custom_data={"k": "v"}), None),
    ("polar", s.polar_event("order.refunded", s.polar_order(300, metadata={"k": "v"})), POLAR_HEADERS),
    ("polar", s.polar_event("refund.created", s.polar_refund()), POLAR_HEADERS),
]

HOSTILE_VALUES: list[Any] = [None, [], {}, "", "x" * 300, 10**30, -1, 1.5, True, [{"id": 1}], "\u0000"]


def _paths(doc: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


def _replaced(doc: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(doc)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize(("provider", "doc", "headers"), VALID, ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_replaced_by_hostile_values_never_crashes(provider, doc, headers):
    parse_event(provider, s.dumps(doc), headers)  # the sample itself is fine
    checked = 0
    for path in _paths(doc):
        for value in HOSTILE_VALUES:
            body = json.dumps(_replaced(doc, path, value)).encode()
            try:
                result = parse_event(provider, body, headers)
            except PayloadError as err:
                assert err.reason and len(err.reason) < 200
            else:
                assert isinstance(result, ParsedEvent)
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("provider", ["stripe", "paddle", "chargebee", "lemonsqueezy", "polar"])
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe{}",
        b"[]",
        b"null",
        b'"text"',
        b"NaN",
        b'{"id": NaN}',
        b'{"amount": Infinity}',
        b"1" * 5000,
        b'{"data": ' + b"1" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"data": [], "content": [], "meta": [], "type": [], "id": {}}',
        b'{"id": null, "type": null, "event_id": null, "event_type": null, "meta": null, "data": null}',
    ],
)
def test_hostile_bodies_raise_payload_error_only(provider, body):
    with contextlib.suppress(PayloadError):
        parse_event(provider, body, POLAR_HEADERS)


@pytest.mark.parametrize(
    ("provider", "doc"),
    [
        ("stripe", s.stripe_event("charge.refunded", s.stripe_charge(10**20, amount=10**20))),
        ("stripe", s.stripe_event("charge.refunded", s.stripe_charge(1e300))),  # type: ignore[arg-type]
        ("stripe", s.stripe_event("charge.refunded", [s.stripe_charge(5)])),  # type: ignore[arg-type]
        ("paddle", s.paddle_event("adjustment.updated", s.paddle_adjustment(total="9" * 40))),
        ("lemonsqueezy", s.lemonsqueezy_order_event(refunded_amount=-5)),
    ],
)
def test_absurd_amounts_and_shapes_are_payload_errors(provider, doc):
    with pytest.raises(PayloadError):
        parse_event(provider, s.dumps(doc), POLAR_HEADERS)


def test_decode_rejects_non_json_constants():
    with pytest.raises(PayloadError, match="not JSON"):
        decode(b'{"a": -Infinity}')
    assert decode('{"a": 1}') == {"a": 1}


def test_unknown_provider_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown provider"):
        parse_event("mollie", b"{}")


def test_polar_status_decides_and_tax_is_counted():
    order = s.polar_order(1000, total=1200, status="refunded")
    order.update({"tax_amount": 200, "refunded_tax_amount": 200})
    signal = one(parse_event("polar", s.dumps(s.polar_event("order.refunded", order)), POLAR_HEADERS))
    assert (signal.completeness, signal.amount_refunded, signal.amount_total) == ("full", 1200, 1200)
    # Polar's status wins over amounts that do not add up (e.g. a payload without refunded_tax_amount).
    del order["refunded_tax_amount"]
    signal = one(parse_event("polar", s.dumps(s.polar_event("order.refunded", order)), POLAR_HEADERS))
    assert signal.completeness == "full"


def test_an_unanticipated_error_inside_a_parser_is_still_a_payload_error(monkeypatch):
    # Safety net for shapes the explicit checks miss: no fuzz case reaches it today.
    from reditus_webhooks import providers

    def explode(value, path):
        raise TypeError("boom")

    monkeypatch.setattr(providers, "_amount", explode)
    with pytest.raises(PayloadError, match="unreadable stripe event"):
        parse_event("stripe", s.dumps(s.stripe_event("charge.refunded", s.stripe_charge(5))))
