"""Realistic provider events, for demos, for trying a payment-id mapping, and for the tests.

``reditus-refunds webhooks send-sample`` posts one of them, signed, to a receiver; the tests
(tests/webhooks) build every case from the same builders. Shapes follow the providers' own
references and SDK fixtures (trimmed to the fields that matter, field names unchanged): Stripe's
Event/Charge/Refund/Dispute objects; Paddle's adjustment fixture from paddle-python-sdk
(tests/Unit/Entities/_fixtures/notification/entity/adjustment.created.json) and its event
envelope; Chargebee's event, credit_note, transaction and invoice resources (chargebee-python
models); Lemon Squeezy's order object as its "Issue a Refund" reference returns it; Polar's Order
and Refund (polar-python models). They include the personal data the providers send (names,
e-mails), which the receiver must never store.

Not imported by the Lambda handler.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from reditus_webhooks import PROVIDERS

NOW = 1_764_500_000  # the events' own "created" times; signatures carry the sending time


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# ---- Stripe --------------------------------------------------------------------------------


def stripe_event(
    event_type: str, obj: dict[str, Any], event_id: str = "evt_3QxyZ2LkdIwHu7ix1a2b3c4d"
) -> dict:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": NOW - 5,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": "req_8fGh2kLm3nOp", "idempotency_key": "b1c2d3e4-0000-4000-8000-000000000001"},
        "type": event_type,
    }


def stripe_refund(
    refund_id: str, amount: int, created: int, charge: str = "ch_3MmlLrLkdIwHu7ix0snN0B15"
) -> dict:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "charge": charge,
        "created": created,
        "currency": "usd",
        "metadata": {},
        "payment_intent": "pi_3MmlLrLkdIwHu7ix0uke3Ezy",
        "reason": "requested_by_customer",
        "status": "succeeded",
    }


def stripe_charge(
    amount_refunded: int,
    amount: int = 1099,
    charge_id: str = "ch_3MmlLrLkdIwHu7ix0snN0B15",
    refunds: list[dict] | None = None,
    metadata: dict | None = None,
) -> dict:
    charge: dict[str, Any] = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "balance_transaction": "txn_3MmlLrLkdIwHu7ix0uke3Ezy",
        "billing_details": {"email": "jenny.rosen@example.com", "name": "Jenny Rosen"},
        "captured": True,
        "created": NOW - 86_400,
        "currency": "usd",
        "customer": "cus_NffrFeUfNV2Hib",
        "disputed": False,
        "livemode": False,
        "metadata": metadata if metadata is not None else {},
        "paid": True,
        "payment_intent": "pi_3MmlLrLkdIwHu7ix0uke3Ezy",
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }
    if refunds is not None:  # only when the endpoint expands data.object.refunds
        charge["refunds"] = {
            "object": "list",
            "data": refunds,
            "has_more": False,
            "total_count": len(refunds),
            "url": f"/v1/charges/{charge_id}/refunds",
        }
    return charge


def stripe_dispute(
    status: str = "lost", charge: str = "ch_3MmlLrLkdIwHu7ix0snN0B15", amount: int = 1099
) -> dict:
    return {
        "id": "dp_1MtJUT2eZvKYlo2CNaw2HvEv",
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge,
        "created": NOW - 3600,
        "currency": "usd",
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": "pi_3MmlLrLkdIwHu7ix0uke3Ezy",
        "reason": "fraudulent",
        "status": status,
    }


# ---- Paddle Billing ------------------------------------------------------------------------


def paddle_adjustment(
    status: str = "approved",
    action: str = "refund",
    kind: str | None = "full",
    total: str = "1100",
    adjustment_id: str = "adj_01hvgf2s84dr6reszzg29zbvcm",
    transaction_id: str = "txn_01hvcc93znj3mpqt1tenkjb04y",
) -> dict:
    return {
        "id": adjustment_id,
        "items": [
            {
                "id": "adjitm_01hvgf2s84dr6reszzg2gx70gj",
                "type": kind or "partial",
                "amount": total,
                "totals": {"tax": "0", "total": total, "subtotal": total},
                "item_id": "txnitm_01hvcc94b7qgz60qmrqmbm19zw",
                "proration": None,
            }
        ],
        "action": action,
        "reason": "error",
        "status": status,
        "totals": {
            "fee": "5",
            "tax": "0",
            "total": total,
            "earnings": "87",
            "subtotal": total,
            "currency_code": "USD",
            "retained_fee": "0",
        },
        "created_at": "2024-04-15T08:48:20.239695Z",
        "updated_at": "2024-04-15T08:54:10.646377Z",
        "customer_id": "ctm_01hv6y1jedq4p1n0yqn5ba3ky4",
        "currency_code": "USD",
        "transaction_id": transaction_id,
        "subscription_id": "sub_01hvccbx32q2gb40sqx7n42430",
        "credit_applied_to_balance": None,
        "tax_rates_used": None,
        "type": kind,
    }


def paddle_event(event_type: str, data: dict, event_id: str = "evt_01hvgf2sb8g6f2a4m0qj1n2p3q") -> dict:
    return {
        "data": data,
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": "2024-04-15T08:54:10.646377Z",
        "notification_id": "ntf_01hvgf2sd0ktk7fj4p5r6s7t8v",
    }


# ---- Chargebee -----------------------------------------------------------------------------


def chargebee_event(event_type: str, content: dict, event_id: str = "ev_16BPgETyVrQbiGhA") -> dict:
    return {
        "id": event_id,
        "occurred_at": NOW - 10,
        "source": "admin_console",
        "user": "ops@example.com",
        "object": "event",
        "api_version": "v2",
        "content": content,
        "event_type": event_type,
        "webhook_status": "not_configured",
    }


def chargebee_invoice(total: int = 5000, invoice_id: str = "inv_1042") -> dict:
    return {
        "id": invoice_id,
        "customer_id": "16BPgETyVrQVHGh1",
        "subscription_id": "16BPgETyVrQVHGh1",
        "status": "paid",
        "price_type": "tax_exclusive",
        "total": total,
        "amount_paid": total,
        "currency_code": "USD",
        "object": "invoice",
    }


def chargebee_credit_note(
    total: int = 5000, kind: str = "refundable", reference_invoice_id: str | None = "inv_1042"
) -> dict:
    note: dict[str, Any] = {
        "id": "CN-17",
        "customer_id": "16BPgETyVrQVHGh1",
        "subscription_id": "16BPgETyVrQVHGh1",
        "type": kind,
        "reason_code": "product_unsatisfactory",
        "status": "refunded",
        "date": NOW - 10,
        "price_type": "tax_exclusive",
        "currency_code": "USD",
        "total": total,
        "amount_allocated": 0,
        "amount_refunded": total,
        "amount_available": 0,
        "refunded_at": NOW - 10,
        "resource_version": 1517505985000,
        "object": "credit_note",
        "linked_refunds": [
            {
                "txn_id": "txn_16BPgETyVrQcmqh9",
                "applied_amount": total,
                "applied_at": NOW - 10,
                "txn_status": "success",
                "txn_date": NOW - 10,
                "txn_amount": total,
            }
        ],
        "allocations": [],
    }
    if reference_invoice_id is not None:
        note["reference_invoice_id"] = reference_invoice_id
    return note


def chargebee_refund_transaction(amount: int = 5000, invoice_id: str = "inv_1042") -> dict:
    return {
        "id": "txn_16BPgETyVrQcmqh9",
        "customer_id": "16BPgETyVrQVHGh1",
        "subscription_id": "16BPgETyVrQVHGh1",
        "payment_method": "card",
        "gateway": "stripe",
        "type": "refund",
        "date": NOW - 10,
        "currency_code": "USD",
        "amount": amount,
        "id_at_gateway": "re_1BqY8h2eZvKYlo2C",
        "status": "success",
        "refunded_txn_id": "txn_16BPgETyVrQY3Wh4",
        "linked_credit_notes": [
            {
                "cn_id": "CN-17",
                "applied_amount": amount,
                "applied_at": NOW - 10,
                "cn_reason_code": "product_unsatisfactory",
                "cn_date": NOW - 10,
                "cn_total": amount,
                "cn_status": "refunded",
                "cn_reference_invoice_id": invoice_id,
            }
        ],
        "object": "transaction",
    }


# ---- Lemon Squeezy -------------------------------------------------------------------------


def lemonsqueezy_order_event(
    refunded_amount: int = 1199,
    total: int = 1199,
    status: str | None = None,
    custom_data: dict | None = None,
    event_name: str = "order_refunded",
    order_id: str = "1",
) -> dict:
    full = refunded_amount >= total
    meta: dict[str, Any] = {"test_mode": True, "event_name": event_name, "webhook_id": "a1b2c3d4-webhook"}
    if custom_data is not None:
        meta["custom_data"] = custom_data
    return {
        "meta": meta,
        "data": {
            "type": "orders",
            "id": order_id,
            "attributes": {
                "store_id": 1,
                "customer_id": 1,
                "identifier": "104e18a2-d755-4d4b-80c4-a6c1dcbe1c10",
                "order_number": 1,
                "user_name": "John Doe",
                "user_email": "johndoe@example.com",
                "currency": "USD",
                "currency_rate": "1.0000",
                "subtotal": 999,
                "discount_total": 0,
                "tax": 200,
                "total": total,
                "refunded_amount": refunded_amount,
                "total_usd": total,
                "refunded_amount_usd": refunded_amount,
                "status": status or ("refunded" if full else "partial_refund"),
                "status_formatted": "Refunded" if full else "Partial refund",
                "refunded": full,
                "refunded_at": "2026-11-29T10:00:00.000000Z",
                "created_at": "2026-11-01T10:00:00.000000Z",
                "updated_at": "2026-11-29T10:00:00.000000Z",
            },
            "links": {"self": f"https://api.lemonsqueezy.com/v1/orders/{order_id}"},
        },
    }


# ---- Polar ---------------------------------------------------------------------------------

POLAR_ORDER_ID = "6f5d3c1a-2b4e-4c8d-9a7f-0e1d2c3b4a59"


def polar_order(
    refunded: int = 1000, total: int = 1000, status: str | None = None, metadata: dict | None = None
) -> dict:
    return {
        "id": POLAR_ORDER_ID,
        "created_at": "2026-11-01T10:00:00Z",
        "modified_at": "2026-11-29T10:00:00Z",
        "status": status or ("refunded" if refunded >= total else "partially_refunded"),
        "paid": True,
        "subtotal_amount": total,
        "discount_amount": 0,
        "net_amount": total,
        "tax_amount": 0,
        "total_amount": total,
        "applied_balance_amount": 0,
        "due_amount": 0,
        "refunded_amount": refunded,
        "refunded_tax_amount": 0,
        "currency": "usd",
        "billing_reason": "purchase",
        "billing_name": None,
        "billing_address": None,
        "customer_id": "0c9b8a7f-6e5d-4c3b-2a19-f8e7d6c5b4a3",
        "product_id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "discount_id": None,
        "subscription_id": None,
        "checkout_id": "9e8d7c6b-5a4f-4e3d-2c1b-0a9f8e7d6c5b",
        "metadata": metadata if metadata is not None else {},
        "platform_fee_amount": 0,
        "items": [],
        "description": "Pro plan",
        "refundable_amount": total - refunded,
        "refundable_tax_amount": 0,
    }


def polar_refund(
    amount: int = 1000, status: str = "succeeded", order_id: str | None = POLAR_ORDER_ID
) -> dict:
    return {
        "created_at": "2026-11-29T10:00:00Z",
        "modified_at": None,
        "id": "3d2c1b0a-9f8e-4d7c-6b5a-493827161504",
        "metadata": {},
        "status": status,
        "reason": "customer_request",
        "amount": amount,
        "tax_amount": 0,
        "currency": "usd",
        "organization_id": "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d",
        "order_id": order_id,
        "subscription_id": None,
        "customer_id": "0c9b8a7f-6e5d-4c3b-2a19-f8e7d6c5b4a3",
        "revoke_benefits": False,
        "dispute": None,
    }


def polar_event(event_type: str, data: dict) -> dict:
    return {"type": event_type, "timestamp": "2026-11-29T10:00:01Z", "data": data}


# ---- one sample per provider, full or partial --------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """A refund event as ``provider`` would send it (the body; the signature is made when sent)."""

    provider: str
    event_type: str
    event_id: str  # for Polar the ``webhook-id`` header; Lemon Squeezy has none (see providers.py)
    payment_id: str  # what the default payment-id mapping takes from it
    partial: bool
    body: bytes


def _token() -> str:
    return secrets.token_hex(8)


def sample_event(provider: str, *, partial: bool = False, payment_id: str | None = None) -> Sample:
    """A refund of a new payment (or of ``payment_id``): all of it, or half of it with ``partial``.

    Each call is a new event (a fresh event id), so repeated demos are not replays; the same
    ``payment_id`` twice is the same refund (the second is a duplicate refund).
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    token = _token()
    if provider == "stripe":
        charge = payment_id or f"ch_sample{token}"
        event_id = f"evt_sample{token}"
        doc = stripe_event(
            "charge.refunded", stripe_charge(550 if partial else 1099, charge_id=charge), event_id
        )
        return Sample(provider, "charge.refunded", event_id, charge, partial, dumps(doc))
    if provider == "paddle":
        txn = payment_id or f"txn_sample{token}"
        event_id = f"evt_sample{token}"
        adjustment = paddle_adjustment(
            kind="partial" if partial else "full",
            total="550" if partial else "1100",
            adjustment_id=f"adj_sample{token}",
            transaction_id=txn,
        )
        doc = paddle_event("adjustment.created", adjustment, event_id)
        return Sample(provider, "adjustment.created", event_id, txn, partial, dumps(doc))
    if provider == "chargebee":
        invoice = payment_id or f"inv_sample{token}"
        event_id = f"ev_sample{token}"
        note = chargebee_credit_note(total=2500 if partial else 5000, reference_invoice_id=invoice)
        content = {"credit_note": note, "invoice": chargebee_invoice(5000, invoice)}
        doc = chargebee_event("credit_note_created", content, event_id)
        return Sample(provider, "credit_note_created", event_id, invoice, partial, dumps(doc))
    if provider == "lemonsqueezy":
        order = payment_id or str(int(token, 16) % 10**9)
        refunded = 600 if partial else 1199
        doc = lemonsqueezy_order_event(refunded_amount=refunded, total=1199, order_id=order)
        return Sample(
            provider, "order_refunded", f"order_refunded:{order}:{refunded}", order, partial, dumps(doc)
        )
    order = payment_id or POLAR_ORDER_ID[:-12] + token[:12]
    event_id = f"msg_sample{token}"
    doc = polar_event("order.refunded", {**polar_order(refunded=500 if partial else 1000), "id": order})
    return Sample(provider, "order.refunded", event_id, order, partial, dumps(doc))
