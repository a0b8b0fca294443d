"""What to do with a refund signal: queue a refund request, ask an operator, ignore, or record.

Pure: no clock, no I/O. The receiver's settings are read from a mapping (the environment, or
whatever the Lambda assembled from Secrets Manager) into typed, validated objects.

refund_id derivation (see ``derive_refund_id``): ``wh:<provider>:<subject id>``, where the
subject is the provider's id of the refunded payment object (Stripe charge, Paddle transaction,
Chargebee invoice, Lemon Squeezy order, Polar order); an id that does not fit the contract's
pattern is replaced by ``sha256:`` and 40 hex digits of its hash. Why per payment and not per
refund: Reditus rejects a payment's whole commission, once, and takes no amount. So

- a redelivered or replayed event, and two events announcing one refund (Polar
  ``order.refunded`` + ``refund.created``; Chargebee ``credit_note_created`` +
  ``payment_refunded``), give the same refund_id: one request;
- a partial refund recorded as ``needs_review`` and the later event that completes it to 100%
  give the same refund_id: the completing event turns that very request into ``queue`` (the
  store must let a ``queue`` decision supersede a pending review of the same refund_id);
- a second partial refund, or a lost dispute after a refund, of an already rejected payment is
  a duplicate of the same request, not a second rejection Reditus would not understand.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

from reditus_refunds.contract import ContractError, RefundRequest, validate
from reditus_webhooks import PROVIDERS
from reditus_webhooks.providers import DEFAULT_PAYMENT_ID, ParsedEvent, RefundSignal

Action = Literal["queue", "needs_review", "ignored", "unmappable"]

# Lambda Function URLs accept at most 6 MB; providers' refund events are a few KB (a Chargebee
# event with a long invoice is the largest), so 1 MiB leaves room without inviting abuse.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_MAX_BODY_BYTES = 6 * 1000 * 1000
MIN_MAX_BODY_BYTES = 1024

# The subject fits the contract's refund_id pattern after the prefix; colons are excluded so a
# raw id can never look like the hashed form ``sha256:<hex>``.
_PLAIN_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

SECRET_VARIABLES = {
    "stripe": "STRIPE_WEBHOOK_SECRET",
    "paddle": "PADDLE_WEBHOOK_SECRET",
    "lemonsqueezy": "LEMONSQUEEZY_WEBHOOK_SECRET",
    "polar": "POLAR_WEBHOOK_SECRET",
}
CHARGEBEE_USERNAME = "CHARGEBEE_WEBHOOK_USERNAME"
CHARGEBEE_PASSWORD = "CHARGEBEE_WEBHOOK_PASSWORD"  # noqa: S105 - a variable name, not a password
# A second secret accepted while the provider rolls to a new one (``<NAME>_PREVIOUS``).
PREVIOUS_SUFFIX = "_PREVIOUS"
POLICY_VARIABLE = "REDITUS_WEBHOOK_PARTIAL_REFUNDS"
MAX_BODY_VARIABLE = "REDITUS_WEBHOOK_MAX_BODY_BYTES"


def mapping_variable(provider: str) -> str:
    return f"REDITUS_WEBHOOK_{provider.upper()}_PAYMENT_ID"


class SettingsError(ValueError):
    """The receiver's configuration is invalid; the message names each variable and problem."""


@dataclass(frozen=True)
class IdMapping:
    """Where the Reditus payment_id comes from: ``default``, ``id:<candidate>`` or ``metadata:<key>``."""

    source: Literal["default", "id", "metadata"] = "default"
    key: str | None = None

    @classmethod
    def parse(cls, text: str) -> IdMapping:
        text = text.strip()
        if text in ("", "default"):
            return cls()
        kind, sep, key = text.partition(":")
        key = key.strip()
        if sep and kind in ("metadata", "id") and key and len(key) <= 100:
            return cls("metadata" if kind == "metadata" else "id", key)
        raise SettingsError(
            f"payment id mapping {text[:60]!r} is not 'default', 'id:<name>' or 'metadata:<key>'"
        )

    def __str__(self) -> str:
        return "default" if self.source == "default" else f"{self.source}:{self.key}"


@dataclass(frozen=True)
class PartialPolicy:
    """``review`` (an operator decides), ``reject`` (any refund rejects) or ``threshold:<percent>``."""

    kind: Literal["review", "reject", "threshold"] = "review"
    percent: Decimal | None = None

    @classmethod
    def parse(cls, text: str) -> PartialPolicy:
        text = text.strip().lower()
        if text in ("", "review"):
            return cls()
        if text == "reject":
            return cls("reject")
        kind, sep, value = text.partition(":")
        if kind == "threshold" and sep:
            try:
                percent = Decimal(value.strip().rstrip("%"))
            except InvalidOperation:
                percent = Decimal("NaN")
            if percent.is_finite() and 0 < percent <= 100:
                return cls("threshold", percent)
            raise SettingsError(
                f"partial-refund threshold {value[:20]!r} must be a percent above 0, at most 100"
            )
        raise SettingsError(
            f"partial-refund policy {text[:40]!r} is not review, reject or threshold:<percent>"
        )

    def __str__(self) -> str:
        return f"threshold:{self.percent}" if self.kind == "threshold" else self.kind


@dataclass(frozen=True)
class ProviderSettings:
    name: str
    secrets: tuple[str, ...] = ()
    basic_auth: tuple[tuple[str, str], ...] = ()
    payment_id: IdMapping = field(default_factory=IdMapping)

    @property
    def configured(self) -> bool:
        return bool(self.basic_auth if self.name == "chargebee" else self.secrets)

    def __repr__(self) -> str:  # secrets never reach a log line through repr()
        return (
            f"ProviderSettings(name={self.name!r}, configured={self.configured}, "
            f"payment_id='{self.payment_id}')"
        )


@dataclass(frozen=True)
class WebhookSettings:
    providers: Mapping[str, ProviderSettings]
    partial_policy: PartialPolicy = field(default_factory=PartialPolicy)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings:
        """Read every setting; collect all problems into one SettingsError."""
        problems: list[str] = []
        providers: dict[str, ProviderSettings] = {}
        for name in PROVIDERS:
            try:
                mapping = IdMapping.parse(env.get(mapping_variable(name), ""))
            except SettingsError as err:
                problems.append(f"{mapping_variable(name)}: {err}")
                mapping = IdMapping()
            secrets: tuple[str, ...] = ()
            basic: tuple[tuple[str, str], ...] = ()
            if name == "chargebee":
                user = env.get(CHARGEBEE_USERNAME, "").strip()
                password = env.get(CHARGEBEE_PASSWORD, "")
                if bool(user) != bool(password):
                    problems.append(
                        f"{CHARGEBEE_USERNAME} and {CHARGEBEE_PASSWORD} must be set together (or neither)"
                    )
                elif user:
                    basic = ((user, password),)
            else:
                variable = SECRET_VARIABLES[name]
                current = env.get(variable, "").strip()
                previous = env.get(variable + PREVIOUS_SUFFIX, "").strip()
                if previous and not current:
                    problems.append(f"{variable + PREVIOUS_SUFFIX} is set but {variable} is not")
                secrets = tuple(s for s in (current, previous) if s)
            providers[name] = ProviderSettings(name, secrets, basic, mapping)
        try:
            policy = PartialPolicy.parse(env.get(POLICY_VARIABLE, ""))
        except SettingsError as err:
            problems.append(f"{POLICY_VARIABLE}: {err}")
            policy = PartialPolicy()
        max_body = DEFAULT_MAX_BODY_BYTES
        raw = env.get(MAX_BODY_VARIABLE, "").strip()
        if raw:
            if raw.isascii() and raw.isdigit() and MIN_MAX_BODY_BYTES <= int(raw) <= MAX_MAX_BODY_BYTES:
                max_body = int(raw)
            else:
                problems.append(
                    f"{MAX_BODY_VARIABLE}: {raw[:20]!r} is not a byte count between "
                    f"{MIN_MAX_BODY_BYTES} and {MAX_MAX_BODY_BYTES}"
                )
        if problems:
            raise SettingsError("invalid webhook settings: " + "; ".join(problems))
        return cls(providers, policy, max_body)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    provider: str
    event_id: str
    event_type: str
    refund_id: str | None = None
    payment_id: str | None = None
    # Built for ``queue`` and ``needs_review`` (what an operator's Submit would queue).
    request: RefundRequest | None = None
    signal: RefundSignal | None = None


def derive_refund_id(provider: str, subject_id: str) -> str:
    """The refund_id for every event about one refunded payment of ``provider`` (deterministic)."""
    if _PLAIN_SUBJECT.fullmatch(subject_id):
        return f"wh:{provider}:{subject_id}"
    digest = hashlib.sha256(f"{provider}\0{subject_id}".encode()).hexdigest()[:40]
    return f"wh:{provider}:sha256:{digest}"


def _payment_id(signal: RefundSignal, mapping: IdMapping) -> tuple[str | None, str]:
    """The payment id the mapping yields, or None and why not."""
    if mapping.source == "metadata":
        value = signal.metadata.get(mapping.key or "")
        if value is None or not value.strip():
            return None, f"the event's metadata has no {mapping.key!r}"
        return value.strip(), f"metadata {mapping.key!r}"
    name = DEFAULT_PAYMENT_ID[signal.provider] if mapping.source == "default" else mapping.key or ""
    value = signal.payment_ids.get(name)
    if not value:
        return None, f"the event carries no {name} id"
    return value, f"{name} id"


def source_event_id(event_id: str) -> str | None:
    """The event id as the contract's ``source_event_id``, or None if the contract refuses it.

    Provider ids are checked less strictly than the contract's (a format character, a Lemon
    Squeezy id built from long parts): such an event id is left out of the request, never a
    reason to drop the refund. The event record keeps it in any case.
    """
    try:
        return validate({"payment_id": "-", "source_event_id": event_id}).source_event_id
    except ContractError:
        return None


def _amounts(signal: RefundSignal) -> str:
    if signal.amount_refunded is None:
        return "amount unknown"
    total = "unknown" if signal.amount_total is None else str(signal.amount_total)
    currency = f" {signal.currency.lower()}" if signal.currency else ""
    return f"{signal.amount_refunded} of {total}{currency}"


def _reaches(signal: RefundSignal, percent: Decimal) -> bool | None:
    if signal.amount_refunded is None or not signal.amount_total:
        return None
    return Decimal(signal.amount_refunded) * 100 >= percent * Decimal(signal.amount_total)


def decide(signal: RefundSignal, mapping: IdMapping, policy: PartialPolicy) -> Decision:
    """The decision for one refund signal under a payment-id mapping and a partial-refund policy."""
    refund_id = derive_refund_id(signal.provider, signal.subject_id)

    def made(action: Action, reason: str, request: RefundRequest | None = None) -> Decision:
        return Decision(
            action=action,
            reason=reason,
            provider=signal.provider,
            event_id=signal.event_id,
            event_type=signal.event_type,
            refund_id=refund_id,
            payment_id=request.payment_id if request else None,
            request=request,
            signal=signal,
        )

    payment_id, found = _payment_id(signal, mapping)
    if payment_id is None:
        return made("unmappable", f"no payment id: {found}")
    if signal.completeness == "full":
        action: Action = "queue"
        why = f"full refund ({_amounts(signal)})"
    elif policy.kind == "reject":
        action, why = "queue", f"{signal.completeness} refund ({_amounts(signal)}); policy reject"
    elif policy.kind == "threshold" and policy.percent is not None:
        reaches = _reaches(signal, policy.percent)
        if reaches is None:
            action = "needs_review"
            why = (
                f"{signal.completeness} refund ({_amounts(signal)}): "
                f"threshold {policy.percent}% cannot be told"
            )
        elif reaches:
            action, why = "queue", f"partial refund ({_amounts(signal)}) reaches {policy.percent}%"
        else:
            action, why = "needs_review", f"partial refund ({_amounts(signal)}) below {policy.percent}%"
    else:
        action, why = "needs_review", f"{signal.completeness} refund ({_amounts(signal)}); policy review"
    note = f"{signal.provider} {signal.event_type} {signal.event_id}: {why}; refund {signal.refund_key}"
    try:
        request = validate(
            {
                "refund_id": refund_id,
                "payment_id": payment_id,
                "source": signal.provider,
                "requested_by": f"webhook:{signal.provider}",
                "note": note[:1000],
                "source_event_id": source_event_id(signal.event_id),
            }
        )
    except ContractError as err:
        return made("unmappable", f"{found} is not a valid payment id: {err.reason}")
    return made(action, why, request)


def decide_event(parsed: ParsedEvent, mapping: IdMapping, policy: PartialPolicy) -> tuple[Decision, ...]:
    """Decisions for a parsed event: one ``ignored`` for an event without refund signals."""
    if parsed.ignored:
        return (
            Decision(
                action="ignored",
                reason=parsed.ignored_reason or "no refund in this event",
                provider=parsed.provider,
                event_id=parsed.event_id,
                event_type=parsed.event_type,
            ),
        )
    return tuple(decide(signal, mapping, policy) for signal in parsed.signals)
