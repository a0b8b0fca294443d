"""Turn a verified provider event into refund signals, or say why it is ignored.

Each provider announces refunds differently; this module reduces them to one shape,
``RefundSignal``, and never raises anything but ``PayloadError`` on a body it cannot read
(lists where objects belong, nulls for ids, absurd numbers), so the receiver can record the
event instead of crashing.

Two ids matter per signal:

- ``refund_key``: the provider's id for this refund movement (a Stripe refund ``re_...``, a
  dispute, a Paddle adjustment, a Chargebee credit note or refund transaction, a Polar refund;
  Lemon Squeezy and Stripe-without-expanded-refunds have none, so the order/charge id plus the
  cumulative refunded amount stands in). It is recorded for the audit trail.
- ``subject_id``: the provider's id of the refunded *payment object* (Stripe charge, Paddle
  transaction, Chargebee invoice, Lemon Squeezy order, Polar order). Reditus rejects the whole
  commission of a payment once and knows no amounts, so the refund request is per payment:
  ``decide.derive_refund_id`` derives the refund_id from the subject. That is what makes
  Polar ``order.refunded`` + ``refund.created``, Chargebee ``credit_note_created`` +
  ``payment_refunded``, a Stripe partial refund later completed, or a refund followed by a
  lost dispute all one refund request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from reditus_webhooks import PROVIDERS
from reditus_webhooks.signatures import header

Completeness = Literal["full", "partial", "unknown"]

# The id Reditus most likely knows a payment by, per provider (see docs/webhooks-providers.md);
# the receiver's mapping setting may pick another candidate or a metadata key instead.
DEFAULT_PAYMENT_ID = {
    "stripe": "charge",
    "paddle": "transaction",
    "chargebee": "invoice",
    "lemonsqueezy": "order",
    "polar": "order",
}

MAX_ID = 255
# Minor units; a bigger figure is no amount any provider sends (and bounds the arithmetic).
MAX_AMOUNT = 10**15


class PayloadError(ValueError):
    """The body is not an event this provider sends; ``reason`` says what is wrong."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RefundSignal:
    provider: str
    event_id: str
    event_type: str
    refund_key: str
    subject_id: str
    completeness: Completeness
    amount_refunded: int | None = None
    amount_total: int | None = None
    currency: str | None = None
    # Named candidates for the Reditus payment_id, e.g. {"charge": "ch_...", "payment_intent": ...}.
    payment_ids: Mapping[str, str] = field(default_factory=dict)
    # The provider's metadata / custom data, string values only, for a ``metadata:<key>`` mapping.
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen means frozen: callers must not be able to edit the candidates afterwards.
        object.__setattr__(self, "payment_ids", MappingProxyType(dict(self.payment_ids)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


@dataclass(frozen=True)
class ParsedEvent:
    provider: str
    event_id: str
    event_type: str
    signals: tuple[RefundSignal, ...] = ()
    ignored_reason: str | None = None  # set when the event announces no refund to act on

    @property
    def ignored(self) -> bool:
        return not self.signals


# ---- reading JSON defensively -------------------------------------------------------------


def _where(path: str) -> str:
    return path or "the event"


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{_where(path)} must be an object")
    return value


def _opt_obj(parent: dict[str, Any], name: str, path: str) -> dict[str, Any] | None:
    value = parent.get(name)
    if value is None:
        return None
    return _obj(value, f"{path}.{name}" if path else name)


def _id(value: Any, path: str) -> str:
    # Ids are strings; Lemon Squeezy's JSON:API ids and some numeric ids may come as integers.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(f"{path} must be an id string")
    text = str(value).strip()
    if not text or len(text) > MAX_ID or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise PayloadError(f"{path} is not a usable id")
    return text


def _req_id(parent: dict[str, Any], name: str, path: str) -> str:
    return _id(parent.get(name), f"{path}.{name}" if path else name)


def _opt_id(parent: dict[str, Any], name: str, path: str) -> str | None:
    value = parent.get(name)
    if value is None or value == "":
        return None
    return _id(value, f"{path}.{name}" if path else name)


def _amount(value: Any, path: str) -> int | None:
    """An amount in minor units; Paddle sends them as digit strings."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{path} must be an amount in minor units")
    if not 0 <= value <= MAX_AMOUNT:
        raise PayloadError(f"{path} is out of range")
    return value


def _text(parent: dict[str, Any], name: str, path: str) -> str | None:
    value = parent.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{path}.{name} must be a string")
    return value


def _metadata(value: Any, path: str) -> dict[str, str]:
    """String-valued entries only (numbers become text); nested values cannot be a payment id."""
    if value is None or value == []:  # PHP-backed APIs send an empty object as []
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{path} must be an object")
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            continue
        if isinstance(item, str):
            out[str(key)] = item
        elif isinstance(item, int) and abs(item) <= MAX_AMOUNT:
            out[str(key)] = str(item)
    return out


def _ids(**candidates: str | None) -> dict[str, str]:
    return {name: value for name, value in candidates.items() if value}


def _completeness(refunded: int | None, total: int | None) -> Completeness:
    if refunded is None or total is None or total <= 0:
        return "unknown"
    return "full" if refunded >= total else "partial"


def decode(body: bytes | str) -> Any:
    """The JSON document of a body, or PayloadError (non-UTF-8, non-JSON, NaN, too deep, huge ints)."""
    if isinstance(body, bytes | bytearray):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("the body is not valid UTF-8") from None

    def _no_constants(name: str) -> Any:
        raise PayloadError(f"the body contains {name}, which is not JSON")

    try:
        return json.loads(body, parse_constant=_no_constants)
    except PayloadError:
        raise
    except (ValueError, RecursionError) as err:  # JSONDecodeError, int digit limit, nesting
        detail = err.msg if isinstance(err, json.JSONDecodeError) else "unreadable number or nesting"
        raise PayloadError(f"the body is not JSON ({detail})") from None


# ---- Stripe -------------------------------------------------------------------------------


def _stripe(doc: dict[str, Any]) -> ParsedEvent:
    event_id = _req_id(doc, "id", "")
    event_type = _text(doc, "type", "") or ""
    data = _obj(doc.get("data"), "data")
    obj = _obj(data.get("object"), "data.object")
    if event_type == "charge.refunded":
        charge_id = _req_id(obj, "id", "data.object")
        amount = _amount(obj.get("amount"), "data.object.amount")
        refunded = _amount(obj.get("amount_refunded"), "data.object.amount_refunded")
        if not refunded:
            return ParsedEvent("stripe", event_id, event_type, ignored_reason="charge has nothing refunded")
        # Since API version 2022-11-15 the Charge carries ``refunds`` only when expanded. With it,
        # the newest refund's id names this movement; without it, the charge id and the
        # cumulative refunded amount do (each partial refund raises it, a redelivery repeats it).
        refund_key = f"{charge_id}:{refunded}"
        refunds = _opt_obj(obj, "refunds", "data.object")
        if refunds is not None:
            items = refunds.get("data")
            if not isinstance(items, list):
                raise PayloadError("data.object.refunds.data must be an array")
            newest: tuple[int, str] | None = None
            for i, item in enumerate(items):
                entry = _obj(item, f"data.object.refunds.data[{i}]")
                created = _amount(entry.get("created"), f"data.object.refunds.data[{i}].created") or 0
                rid = _req_id(entry, "id", f"data.object.refunds.data[{i}]")
                if newest is None or created > newest[0]:
                    newest = (created, rid)
            if newest is not None:
                refund_key = newest[1]
        completeness = _completeness(refunded, amount)
        if obj.get("refunded") is True:  # Stripe's own "fully refunded" flag
            completeness = "full"
        signal = RefundSignal(
            provider="stripe",
            event_id=event_id,
            event_type=event_type,
            refund_key=refund_key,
            subject_id=charge_id,
            completeness=completeness,
            amount_refunded=refunded,
            amount_total=amount,
            currency=_text(obj, "currency", "data.object"),
            payment_ids=_ids(
                charge=charge_id,
                payment_intent=_opt_id(obj, "payment_intent", "data.object"),
                # Gone from Charges since API version 2025-03-31.basil; used when present.
                invoice=_opt_id(obj, "invoice", "data.object"),
            ),
            metadata=_metadata(obj.get("metadata"), "data.object.metadata"),
        )
        return ParsedEvent("stripe", event_id, event_type, (signal,))
    if event_type == "charge.dispute.closed":
        dispute_id = _req_id(obj, "id", "data.object")
        status = _text(obj, "status", "data.object")
        if status != "lost":
            return ParsedEvent("stripe", event_id, event_type, ignored_reason=f"dispute closed as {status}")
        disputed_charge = _opt_id(obj, "charge", "data.object")
        signal = RefundSignal(
            provider="stripe",
            event_id=event_id,
            event_type=event_type,
            refund_key=dispute_id,
            # The charge, so a refund and a lost dispute of one charge are one request.
            subject_id=disputed_charge or dispute_id,
            # A lost dispute returns the disputed funds to the cardholder: the payment is gone.
            completeness="full",
            amount_refunded=_amount(obj.get("amount"), "data.object.amount"),
            currency=_text(obj, "currency", "data.object"),
            payment_ids=_ids(
                charge=disputed_charge, payment_intent=_opt_id(obj, "payment_intent", "data.object")
            ),
            # The dispute's own metadata: the charge's is not in this event.
            metadata=_metadata(obj.get("metadata"), "data.object.metadata"),
        )
        return ParsedEvent("stripe", event_id, event_type, (signal,))
    return ParsedEvent("stripe", event_id, event_type, ignored_reason=_not_refund(event_type))


# ---- Paddle Billing -----------------------------------------------------------------------


def _paddle(doc: dict[str, Any]) -> ParsedEvent:
    event_id = _req_id(doc, "event_id", "")
    event_type = _text(doc, "event_type", "") or ""
    if event_type not in ("adjustment.created", "adjustment.updated"):
        return ParsedEvent("paddle", event_id, event_type, ignored_reason=_not_refund(event_type))
    data = _obj(doc.get("data"), "data")
    adjustment_id = _req_id(data, "id", "data")
    action = _text(data, "action", "data")
    status = _text(data, "status", "data")
    if action not in ("refund", "chargeback"):
        return ParsedEvent("paddle", event_id, event_type, ignored_reason=f"adjustment action {action}")
    if status != "approved":
        # Refunds start pending_approval; only an approved one has returned money.
        return ParsedEvent(
            "paddle", event_id, event_type, ignored_reason=f"{action} adjustment is {status}, not approved"
        )
    transaction_id = _opt_id(data, "transaction_id", "data")
    totals = _opt_obj(data, "totals", "data") or {}
    kind = _text(data, "type", "data")
    # An adjustment says itself whether it is full; it carries no transaction total. A
    # chargeback claws back the whole payment. Older adjustments have type null: unknown.
    completeness: Completeness = (
        "full"
        if kind == "full" or action == "chargeback"
        else ("partial" if kind == "partial" else "unknown")
    )
    signal = RefundSignal(
        provider="paddle",
        event_id=event_id,
        event_type=event_type,
        refund_key=adjustment_id,
        subject_id=transaction_id or adjustment_id,
        completeness=completeness,
        amount_refunded=_amount(totals.get("total"), "data.totals.total"),
        currency=_text(data, "currency_code", "data"),
        payment_ids=_ids(transaction=transaction_id, subscription=_opt_id(data, "subscription_id", "data")),
        # Adjustments have no custom_data of their own (the transaction does); read it if sent.
        metadata=_metadata(data.get("custom_data"), "data.custom_data"),
    )
    return ParsedEvent("paddle", event_id, event_type, (signal,))


# ---- Chargebee ----------------------------------------------------------------------------


def _chargebee_invoice(content: dict[str, Any], invoice_id: str | None) -> tuple[str | None, int | None]:
    """The invoice id and its total, when the event carries the invoice itself."""
    invoice = _opt_obj(content, "invoice", "content")
    if invoice is None:
        return invoice_id, None
    own_id = _opt_id(invoice, "id", "content.invoice")
    if invoice_id is None:
        invoice_id = own_id
    total = _amount(invoice.get("total"), "content.invoice.total") if own_id == invoice_id else None
    return invoice_id, total


def _chargebee_metadata(content: dict[str, Any]) -> dict[str, str]:
    # Credit notes, transactions and invoices have no metadata; a subscription's meta_data is
    # the only customer-defined data Chargebee events may carry.
    subscription = _opt_obj(content, "subscription", "content")
    if subscription is None:
        return {}
    return _metadata(subscription.get("meta_data"), "content.subscription.meta_data")


def _chargebee(doc: dict[str, Any]) -> ParsedEvent:
    event_id = _req_id(doc, "id", "")
    event_type = _text(doc, "event_type", "") or ""
    if event_type not in ("credit_note_created", "payment_refunded"):
        return ParsedEvent("chargebee", event_id, event_type, ignored_reason=_not_refund(event_type))
    content = _obj(doc.get("content"), "content")
    if event_type == "credit_note_created":
        note = _obj(content.get("credit_note"), "content.credit_note")
        note_id = _req_id(note, "id", "content.credit_note")
        kind = _text(note, "type", "content.credit_note")
        if kind == "adjustment":
            # An adjustment note lowers what is still due on an unpaid invoice: no money paid
            # (and no commission earned on it) is given back.
            return ParsedEvent(
                "chargebee", event_id, event_type, ignored_reason="adjustment credit note: nothing paid back"
            )
        if _text(note, "status", "content.credit_note") == "voided":
            return ParsedEvent("chargebee", event_id, event_type, ignored_reason="credit note is voided")
        invoice_id, invoice_total = _chargebee_invoice(
            content, _opt_id(note, "reference_invoice_id", "content.credit_note")
        )
        amount = _amount(note.get("total"), "content.credit_note.total")
        refunds = note.get("linked_refunds")
        first_refund = None
        if isinstance(refunds, list) and refunds:
            first_refund = _opt_id(
                _obj(refunds[0], "content.credit_note.linked_refunds[0]"),
                "txn_id",
                "content.credit_note.linked_refunds[0]",
            )
        signal = RefundSignal(
            provider="chargebee",
            event_id=event_id,
            event_type=event_type,
            refund_key=note_id,
            subject_id=invoice_id or note_id,
            # Full only when the note covers the whole invoice; without the invoice's total the
            # note cannot tell, and "unknown" lets the partial-refund policy decide.
            completeness=_completeness(amount, invoice_total),
            amount_refunded=amount,
            amount_total=invoice_total,
            currency=_text(note, "currency_code", "content.credit_note"),
            payment_ids=_ids(invoice=invoice_id, credit_note=note_id, refund_transaction=first_refund),
            metadata=_chargebee_metadata(content),
        )
        return ParsedEvent("chargebee", event_id, event_type, (signal,))
    txn = _obj(content.get("transaction"), "content.transaction")
    txn_id = _req_id(txn, "id", "content.transaction")
    status = _text(txn, "status", "content.transaction")
    if status not in (None, "success"):
        return ParsedEvent(
            "chargebee", event_id, event_type, ignored_reason=f"refund transaction is {status}"
        )
    linked_invoice: str | None = None
    linked_total: int | None = None
    links_with_invoice = (
        ("linked_credit_notes", "cn_reference_invoice_id"),
        ("linked_invoices", "invoice_id"),
    )
    for name, id_field in links_with_invoice:
        links = txn.get(name)
        if links is None:
            continue
        if not isinstance(links, list):
            raise PayloadError(f"content.transaction.{name} must be an array")
        for i, link in enumerate(links):
            entry = _obj(link, f"content.transaction.{name}[{i}]")
            found = _opt_id(entry, id_field, f"content.transaction.{name}[{i}]")
            if found and linked_invoice is None:
                linked_invoice = found
                if name == "linked_invoices":
                    linked_total = _amount(entry.get("invoice_total"), f"content.transaction.{name}[{i}]")
    txn_invoice, invoice_total = _chargebee_invoice(content, linked_invoice)
    total = invoice_total if invoice_total is not None else linked_total
    amount = _amount(txn.get("amount"), "content.transaction.amount")
    signal = RefundSignal(
        provider="chargebee",
        event_id=event_id,
        event_type=event_type,
        refund_key=txn_id,
        subject_id=txn_invoice or txn_id,
        completeness=_completeness(amount, total),
        amount_refunded=amount,
        amount_total=total,
        currency=_text(txn, "currency_code", "content.transaction"),
        payment_ids=_ids(
            invoice=txn_invoice,
            refund_transaction=txn_id,
            payment_transaction=_opt_id(txn, "refunded_txn_id", "content.transaction")
            or _opt_id(txn, "reference_transaction_id", "content.transaction"),
        ),
        metadata=_chargebee_metadata(content),
    )
    return ParsedEvent("chargebee", event_id, event_type, (signal,))


# ---- Lemon Squeezy ------------------------------------------------------------------------


def _lemonsqueezy(doc: dict[str, Any]) -> ParsedEvent:
    meta = _obj(doc.get("meta"), "meta")
    event_type = _text(meta, "event_name", "meta") or ""
    data = _obj(doc.get("data"), "data")
    order_id = _req_id(data, "id", "data")
    attributes = _obj(data.get("attributes"), "data.attributes")
    refunded = _amount(attributes.get("refunded_amount"), "data.attributes.refunded_amount")
    total = _amount(attributes.get("total"), "data.attributes.total")
    # No event id exists: the order and its cumulative refunded amount name this state, so a
    # redelivery gets the same id and a further partial refund a new one.
    event_id = f"{event_type or 'event'}:{order_id}:{refunded if refunded is not None else '-'}"
    if event_type != "order_refunded":
        return ParsedEvent("lemonsqueezy", event_id, event_type, ignored_reason=_not_refund(event_type))
    status = _text(attributes, "status", "data.attributes")
    if not refunded and attributes.get("refunded") is not True:
        return ParsedEvent("lemonsqueezy", event_id, event_type, ignored_reason="order has nothing refunded")
    completeness = _completeness(refunded, total)
    if status == "refunded":
        completeness = "full"
    elif status == "partial_refund":
        completeness = "partial"
    signal = RefundSignal(
        provider="lemonsqueezy",
        event_id=event_id,
        event_type=event_type,
        refund_key=f"{order_id}:{refunded if refunded is not None else 'full'}",
        subject_id=order_id,
        completeness=completeness,
        amount_refunded=refunded,
        amount_total=total,
        currency=_text(attributes, "currency", "data.attributes"),
        payment_ids=_ids(
            order=order_id,
            identifier=_opt_id(attributes, "identifier", "data.attributes"),
            order_number=_opt_id(attributes, "order_number", "data.attributes"),
        ),
        metadata=_metadata(meta.get("custom_data"), "meta.custom_data"),
    )
    return ParsedEvent("lemonsqueezy", event_id, event_type, (signal,))


# ---- Polar --------------------------------------------------------------------------------


def _polar(doc: dict[str, Any], headers: Mapping[str, str]) -> ParsedEvent:
    raw_id = header(headers, "webhook-id")
    event_id = _id(raw_id, "the webhook-id header")
    event_type = _text(doc, "type", "") or ""
    if event_type == "order.refunded":
        order = _obj(doc.get("data"), "data")
        order_id = _req_id(order, "id", "data")
        status = _text(order, "status", "data")
        refunded = _amount(order.get("refunded_amount"), "data.refunded_amount")
        refunded_tax = _amount(order.get("refunded_tax_amount"), "data.refunded_tax_amount")
        total = _amount(order.get("total_amount"), "data.total_amount")
        if refunded is not None and refunded_tax is not None:
            # total_amount includes tax while refunded_amount does not: compare like with like.
            refunded += refunded_tax
        completeness: Completeness
        if status == "refunded":
            completeness = "full"
        elif status == "partially_refunded":
            completeness = "partial"
        else:
            completeness = _completeness(refunded, total)
        signal = RefundSignal(
            provider="polar",
            event_id=event_id,
            event_type=event_type,
            # Polar's order carries no refund id: the order and its cumulative refund name it.
            refund_key=f"{order_id}:{refunded if refunded is not None else status}",
            subject_id=order_id,
            completeness=completeness,
            amount_refunded=refunded,
            amount_total=total,
            currency=_text(order, "currency", "data"),
            payment_ids=_ids(
                order=order_id,
                checkout=_opt_id(order, "checkout_id", "data"),
                subscription=_opt_id(order, "subscription_id", "data"),
            ),
            metadata=_metadata(order.get("metadata"), "data.metadata"),
        )
        return ParsedEvent("polar", event_id, event_type, (signal,))
    if event_type in ("refund.created", "refund.updated"):
        refund = _obj(doc.get("data"), "data")
        refund_id = _req_id(refund, "id", "data")
        status = _text(refund, "status", "data")
        if status != "succeeded":
            return ParsedEvent(
                "polar", event_id, event_type, ignored_reason=f"refund is {status}, not succeeded"
            )
        refunded_order = _opt_id(refund, "order_id", "data")
        amount = _amount(refund.get("amount"), "data.amount")
        tax = _amount(refund.get("tax_amount"), "data.tax_amount")
        signal = RefundSignal(
            provider="polar",
            event_id=event_id,
            event_type=event_type,
            refund_key=refund_id,
            subject_id=refunded_order or refund_id,
            # A Refund does not carry its order's total: whether it is full cannot be told here
            # (the order.refunded event that Polar also sends does tell, for the same request).
            completeness="unknown",
            amount_refunded=None if amount is None else amount + (tax or 0),
            currency=_text(refund, "currency", "data"),
            payment_ids=_ids(
                order=refunded_order,
                refund=refund_id,
                subscription=_opt_id(refund, "subscription_id", "data"),
            ),
            # The refund's own metadata, not the order's.
            metadata=_metadata(refund.get("metadata"), "data.metadata"),
        )
        return ParsedEvent("polar", event_id, event_type, (signal,))
    return ParsedEvent("polar", event_id, event_type, ignored_reason=_not_refund(event_type))


def _not_refund(event_type: str) -> str:
    return f"event type {event_type[:80] or '(none)'} is not a refund event"


def parse_event(provider: str, body: bytes | str, headers: Mapping[str, str] | None = None) -> ParsedEvent:
    """Parse a verified event body of ``provider``; raise PayloadError if it cannot be read.

    ``headers`` are needed for Polar, whose event id is the ``webhook-id`` header.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}")
    doc = _obj(decode(body), "")
    try:
        if provider == "stripe":
            return _stripe(doc)
        if provider == "paddle":
            return _paddle(doc)
        if provider == "chargebee":
            return _chargebee(doc)
        if provider == "lemonsqueezy":
            return _lemonsqueezy(doc)
        return _polar(doc, headers or {})
    except PayloadError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError, OverflowError) as err:
        # A shape nobody anticipated must still be a clean 4xx and a record, never a crash.
        raise PayloadError(f"unreadable {provider} event ({type(err).__name__})") from None
