"""The webhook scenario: billing providers' events through the real receiver, into the refund pipeline.

The receiver runs as the local stack runs it (``python -m reditus_local.webhooks``: the real
handler behind a local Function URL), with the signing secrets in its environment, beside the
workers of one soak system. Several concurrent senders deliver a plan of provider events:

* **real refunds** of all five providers: full refunds, partial refunds completed by a later event
  (a partial below the threshold waits for review, one above it queues; the policy is
  ``threshold:50``), lost disputes (Stripe dispute, Paddle chargeback), one refund announced by two
  event types (Stripe refund + lost dispute, Paddle ``adjustment.created`` pending then
  ``adjustment.updated`` approved, Chargebee credit note + refund transaction, Polar
  ``refund.created`` + ``order.refunded``), a few events that are no refund (a won dispute: ignored)
  and a few partial refunds never completed (held for review: no refund request);
* **repeats** of valid events: a provider's redelivery (the same event, signed again when sent) or a
  replay (the very same request again, its signature included), later and in any order;
* **bad signatures**: forged events (payment ids no plan knows) with a tampered body, a wrong
  secret, a stale timestamp or no signature at all (Chargebee: a wrong password).

A sender retries as a provider does: on a 5xx or a connection error, with backoff, signing again.
Meanwhile workers are SIGKILLed while a batch is in flight (soak.scenarios.Killer) and the receiver
is SIGKILLed once and restarted on the same port.

The count (``webhook_tally``) checks each promise: every real refund (each refund_id the plan
derives, ``wh:<provider>:<payment object id>``) ends as exactly one history record in a terminal
outcome, no refund_id outside the plan, nothing left by a bad signature (no record, no message, no
call to Reditus), every event recorded once with a final decision and counted under it, and - from
count.tally - Reditus applied at most one refund per payment, the day counters equal the items.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from reditus_local.webhooks import READY as RECEIVER_READY
from reditus_local.webhooks import local_secrets
from reditus_refunds.contract import RefundRequest
from reditus_refunds.layout import HASH_KEY
from reditus_webhooks import PROVIDERS
from reditus_webhooks import samples as s
from reditus_webhooks.decide import CHARGEBEE_PASSWORD, CHARGEBEE_USERNAME, SECRET_VARIABLES
from reditus_webhooks.events import COUNT_PREFIX, EVENT_PREFIX, REVIEW_PREFIX, SOURCE_PREFIX
from reditus_webhooks.signatures import (
    sign_chargebee,
    sign_lemonsqueezy,
    sign_paddle,
    sign_polar,
    sign_stripe,
)

from .count import Planned, problems, tally
from .scenarios import Background, Killer
from .system import (
    Process,
    Servers,
    System,
    SystemSettings,
    _python,
    base_env,
    free_port,
    running,
    wait_until,
)

POLICY = "threshold:50"
WEBHOOK_PREFIXES = (EVENT_PREFIX, REVIEW_PREFIX, COUNT_PREFIX, SOURCE_PREFIX)
# Decisions an event record may end in (``received`` is the in-between state).
FINAL_DECISIONS = ("queued", "needs_review", "ignored", "unmappable", "unreadable", "duplicate_refund")
REFUND_DECISIONS = {"queued", "needs_review", "duplicate_refund"}
# What a provider does with an answer: 2xx is delivered, 4xx is final (refused), 5xx and connection
# errors are retried.
RETRY_STATUSES = range(500, 600)
EVIDENCE_LIMIT = 10
RESTART_TIMEOUT = 90.0  # the receiver's kill and restart, at most


# ---- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProviderEvent:
    """One event as a provider sends it; ``refund_id`` is the planned refund it is about (None: no refund)."""

    provider: str
    event_id: str
    event_type: str
    body: bytes
    refund_id: str | None
    forged: bool = False
    acts: bool = True  # False: an event the receiver must ignore (a won dispute, a pending adjustment)

    @property
    def key(self) -> str:
        return f"{EVENT_PREFIX}{self.provider}#{self.event_id}"


@dataclass(frozen=True)
class PlannedRefund:
    refund_id: str
    payment_id: str
    provider: str
    kind: str
    held: bool = False  # a partial refund never completed: waits for review, never requested


@dataclass(frozen=True)
class Delivery:
    seq: int
    event: ProviderEvent
    kind: str  # first | redelivery | replay | bad
    how: str = ""  # for bad: tampered | wrong_secret | stale | unsigned


@dataclass
class WebhookPlan:
    refunds: list[PlannedRefund]
    events: list[ProviderEvent]  # the valid ones
    forged: list[ProviderEvent]
    deliveries: list[Delivery]

    @property
    def expected(self) -> list[PlannedRefund]:
        return [r for r in self.refunds if not r.held]


def refund_id_of(provider: str, subject: str) -> str:
    """The documented derivation (docs/webhooks-providers.md), written out: not the product's function."""
    return f"wh:{provider}:{subject}"


class _Builder:
    """Makes each provider's events with ids of its own kind, unique within one plan."""

    def __init__(self, prefix: str, rng: random.Random):
        self.prefix = prefix
        self.rng = rng
        self.n = 0

    def token(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n:05d}"

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # Each returns the subject (the payment object's id, the default payment id) and its events.
    def stripe(self, kind: str, *, forged: bool = False) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
        charge = f"ch_{'forged' if forged else 'soak'}{self.token()}"

        def event(event_type: str, obj: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
            event_id = f"evt_{self.token()}"
            return event_id, event_type, s.stripe_event(event_type, obj, event_id)

        refund = "charge.refunded"
        if kind == "full":
            return charge, [event(refund, s.stripe_charge(1000, 1000, charge))]
        if kind == "partial_then_full":
            part = self.rng.choice((300, 600))  # below the threshold (review), or above it (queued)
            return charge, [
                event(refund, s.stripe_charge(part, 1000, charge)),
                event(refund, s.stripe_charge(1000, 1000, charge)),
            ]
        if kind == "held":
            return charge, [event(refund, s.stripe_charge(200, 1000, charge))]
        if kind == "dispute_lost":
            return charge, [event("charge.dispute.closed", s.stripe_dispute("lost", charge, 1000))]
        if kind == "refund_then_dispute":
            return charge, [
                event(refund, s.stripe_charge(1000, 1000, charge)),
                event("charge.dispute.closed", s.stripe_dispute("lost", charge, 1000)),
            ]
        assert kind == "dispute_won", kind
        return charge, [event("charge.dispute.closed", s.stripe_dispute("won", charge, 1000))]

    def paddle(self, kind: str, *, forged: bool = False) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
        txn = f"txn_{'forged' if forged else 'soak'}{self.token()}"
        adjustment = f"adj_{self.token()}"

        def event(event_type: str, data: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
            event_id = f"evt_{self.token()}"
            return event_id, event_type, s.paddle_event(event_type, data, event_id)

        def adj(status: str, action: str = "refund") -> dict[str, Any]:
            return s.paddle_adjustment(status, action, "full", "1100", adjustment, txn)

        if kind == "full":
            return txn, [event("adjustment.created", adj("approved"))]
        if kind == "pending_then_approved":
            return txn, [
                event("adjustment.created", adj("pending_approval")),
                event("adjustment.updated", adj("approved")),
            ]
        assert kind == "chargeback", kind
        return txn, [event("adjustment.created", adj("approved", "chargeback"))]

    def chargebee(
        self, kind: str, *, forged: bool = False
    ) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
        invoice = f"inv_{'forged' if forged else 'soak'}{self.token()}"

        def event(event_type: str, content: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
            event_id = f"ev_{self.token()}"
            return event_id, event_type, s.chargebee_event(event_type, content, event_id)

        note = {
            "credit_note": s.chargebee_credit_note(5000, reference_invoice_id=invoice),
            "invoice": s.chargebee_invoice(5000, invoice),
        }
        if kind == "full":
            return invoice, [event("credit_note_created", note)]
        assert kind == "note_and_refund", kind
        # The refund transaction alone cannot tell whether it is full (no invoice total): review,
        # unless the credit note's event came first.
        transaction = {"transaction": s.chargebee_refund_transaction(5000, invoice)}
        return invoice, [event("credit_note_created", note), event("payment_refunded", transaction)]

    def lemonsqueezy(
        self, kind: str, *, forged: bool = False
    ) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
        self.n += 1
        order = str((8 if forged else 5) * 10**8 + self.n)

        def event(refunded: int) -> tuple[str, str, dict[str, Any]]:
            # No event id exists: the receiver names the event by order and refunded amount.
            doc = s.lemonsqueezy_order_event(refunded_amount=refunded, total=1199, order_id=order)
            return f"order_refunded:{order}:{refunded}", "order_refunded", doc

        if kind == "full":
            return order, [event(1199)]
        if kind == "held":
            return order, [event(200)]
        assert kind == "partial_then_full", kind
        return order, [event(self.rng.choice((300, 700))), event(1199)]

    def polar(self, kind: str, *, forged: bool = False) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
        order = self.uuid()
        if forged:
            order = "f0f0f0f0" + order[8:]

        def event(event_type: str, data: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
            return f"msg_{self.token()}", event_type, s.polar_event(event_type, data)

        def order_doc(refunded: int) -> dict[str, Any]:
            return {**s.polar_order(refunded=refunded, total=1000), "id": order}

        if kind == "full":
            return order, [event("order.refunded", order_doc(1000))]
        if kind == "refund_and_order":
            return order, [
                event("refund.created", s.polar_refund(1000, "succeeded", order)),
                event("order.refunded", order_doc(1000)),
            ]
        assert kind == "partial_then_full", kind
        return order, [
            event("order.refunded", order_doc(self.rng.choice((300, 600)))),
            event("order.refunded", order_doc(1000)),
        ]


# Kinds per provider, with weights. Every kind but dispute_won and held is a refund Reditus must get.
KINDS: dict[str, list[tuple[str, float]]] = {
    "stripe": [
        ("full", 0.35),
        ("partial_then_full", 0.25),
        ("dispute_lost", 0.12),
        ("refund_then_dispute", 0.12),
        ("dispute_won", 0.08),
        ("held", 0.08),
    ],
    "paddle": [("full", 0.5), ("pending_then_approved", 0.3), ("chargeback", 0.2)],
    "chargebee": [("full", 0.5), ("note_and_refund", 0.5)],
    "lemonsqueezy": [("full", 0.55), ("partial_then_full", 0.35), ("held", 0.1)],
    "polar": [("full", 0.4), ("refund_and_order", 0.3), ("partial_then_full", 0.3)],
}
BAD_KINDS = ("tampered", "wrong_secret", "stale", "unsigned")


def _events(
    builder: _Builder, provider: str, kind: str, forged: bool = False
) -> tuple[str, list[ProviderEvent]]:
    subject, made = getattr(builder, provider)(kind, forged=forged)
    refund_id = None if kind == "dispute_won" else refund_id_of(provider, subject)
    return subject, [
        ProviderEvent(
            provider,
            event_id,
            event_type,
            s.dumps(doc),
            refund_id,
            forged,
            acts=kind != "dispute_won" and (doc.get("data") or {}).get("status") != "pending_approval",
        )
        for event_id, event_type, doc in made
    ]


def plan_webhooks(
    prefix: str, deliveries: int, rng: random.Random, *, repeats: float = 0.2, bad: float = 0.05
) -> WebhookPlan:
    """`deliveries` requests: (1 - repeats - bad) first deliveries of valid events, `repeats` of them
    sent again (redelivered or replayed, later), `bad` forged events with a bad signature."""
    builder = _Builder(prefix, rng)
    n_bad = round(deliveries * bad)
    n_repeats = round(deliveries * repeats)
    n_first = deliveries - n_bad - n_repeats
    refunds: list[PlannedRefund] = []
    events: list[ProviderEvent] = []
    at: dict[str, float] = {}  # event_id -> its place in the sending order (0..1)
    turn = 0
    while len(events) < n_first:
        provider = PROVIDERS[turn % len(PROVIDERS)]
        turn += 1
        names, weights = zip(*KINDS[provider], strict=True)
        kind = rng.choices(names, weights)[0]
        subject, made = _events(builder, provider, kind)
        if kind != "dispute_won":
            refunds.append(
                PlannedRefund(made[0].refund_id or "", subject, provider, kind, held=kind == "held")
            )
        first = rng.random()
        for index, event in enumerate(made):
            # A provider sends a refund's events in order, close together; one pair in five arrives
            # the other way round.
            at[event.event_id] = first + index * rng.uniform(0.0, 0.05) * (-1 if rng.random() < 0.2 else 1)
        events += made
    # The last refund's second event may pass the count of first deliveries: fewer repeats then.
    n_repeats = deliveries - n_bad - len(events)
    order: list[tuple[float, str, ProviderEvent, str]] = [(at[e.event_id], "first", e, "") for e in events]
    for _ in range(n_repeats):
        event = rng.choice(events)
        order.append(
            (at[event.event_id] + rng.uniform(0.0, 0.3), rng.choice(("redelivery", "replay")), event, "")
        )
    forged: list[ProviderEvent] = []
    for i in range(n_bad):
        provider = PROVIDERS[i % len(PROVIDERS)]
        kind = "full" if provider != "stripe" else rng.choice(("full", "dispute_lost"))
        _, made = _events(builder, provider, kind, forged=True)
        forged.append(made[0])
        how = "wrong_secret" if provider == "chargebee" else BAD_KINDS[i % len(BAD_KINDS)]
        if provider == "lemonsqueezy" and how == "stale":  # no timestamp to be stale
            how = "tampered"
        order.append((rng.random(), "bad", made[0], how))
    order.sort(key=lambda entry: entry[0])
    plan = [Delivery(seq, event, kind, how) for seq, (_, kind, event, how) in enumerate(order)]
    return WebhookPlan(refunds, events, forged, plan)


# ---- signing, as each provider does ---------------------------------------------------------------
def sign(event: ProviderEvent, secrets: Mapping[str, str], *, timestamp: int | None = None) -> dict[str, str]:
    body, provider = event.body, event.provider
    headers = {"content-type": "application/json"}
    if provider == "stripe":
        headers.update(sign_stripe(body, secrets[SECRET_VARIABLES["stripe"]], timestamp=timestamp))
    elif provider == "paddle":
        headers.update(sign_paddle(body, secrets[SECRET_VARIABLES["paddle"]], timestamp=timestamp))
    elif provider == "lemonsqueezy":
        headers.update(sign_lemonsqueezy(body, secrets[SECRET_VARIABLES["lemonsqueezy"]]))
    elif provider == "chargebee":
        headers.update(sign_chargebee(secrets[CHARGEBEE_USERNAME], secrets[CHARGEBEE_PASSWORD]))
    else:
        headers.update(
            sign_polar(
                body, secrets[SECRET_VARIABLES["polar"]], message_id=event.event_id, timestamp=timestamp
            )
        )
    return headers


def bad_request(
    event: ProviderEvent, how: str, secrets: Mapping[str, str], wrong: Mapping[str, str]
) -> tuple[bytes, dict[str, str]]:
    """A request that must be refused: the body and headers as sent."""
    if how == "wrong_secret":
        return event.body, sign(event, wrong)
    if how == "stale":  # signed an hour ago: outside every provider's 300 s window
        return event.body, sign(event, secrets, timestamp=int(time.time()) - 3600)
    if how == "unsigned":
        headers = sign(event, secrets)
        return event.body, {k: v for k, v in headers.items() if k == "content-type" or k == "webhook-id"}
    assert how == "tampered", how
    # Signed as sent by the provider, then changed on the way: a field added to the JSON.
    return event.body[:-1] + b',"tampered":true}', sign(event, secrets)


# ---- the receiver ----------------------------------------------------------------------------------
class Receiver:
    """The receiver's process, on a fixed loopback port so a restart answers at the same URL."""

    def __init__(self, system: System, secrets: Mapping[str, str], log_dir: Path, policy: str = POLICY):
        assert system.local.receiver is not None, "the template has no webhook receiver"
        self.port = free_port()
        env = base_env(system.servers.endpoint)
        env.update(
            {
                k: v
                for k, v in system.local.receiver.environment.items()
                # The secrets come from the environment here (as `make run` with them exported), not
                # from Secrets Manager: an ARN variable would override them.
                if not k.endswith("_SECRET_ARN")
            }
        )
        env.update(secrets)
        env.update(
            {
                "HISTORY_TABLE_NAME": system.table,
                "REFUND_QUEUE_URL": system.queue_url,
                "REDITUS_WEBHOOK_PARTIAL_REFUNDS": policy,
                "POWERTOOLS_LOG_LEVEL": "WARNING",
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "PYTHONWARNINGS": "ignore:No application metrics to publish",
            }
        )
        handler = system.local.receiver.handler
        argv = _python("reditus_local.webhooks", "--port", str(self.port), "--handler", handler)
        self.process = Process(f"{system.name}-receiver", argv, env, log_dir, RECEIVER_READY)
        self.url = f"http://127.0.0.1:{self.port}"
        self.kills: list[float] = []

    def start(self) -> None:
        line = self.process.start()
        assert line.split(RECEIVER_READY, 1)[1].strip() == self.url, line

    def kill_and_restart(self) -> None:
        self.kills.append(time.time())
        self.process.kill()
        self.start()

    def stop(self) -> None:
        self.process.stop()


# ---- the senders -----------------------------------------------------------------------------------
@dataclass
class Answer:
    """What one delivery ended in, after the sender's retries."""

    delivery: Delivery
    sent_as: str  # the kind actually sent (a replay whose original was not sent yet is a redelivery)
    status: int | None = None  # None: never answered (retries ran out)
    decision: str | None = None
    attempts: int = 0
    connection_errors: int = 0
    server_errors: int = 0


class Senders:
    """`threads` concurrent senders working through the deliveries in order, retrying as providers do."""

    def __init__(
        self,
        url: str,
        deliveries: Sequence[Delivery],
        secrets: Mapping[str, str],
        threads: int,
        *,
        give_up_after: float = 90.0,
        on_progress: Callable[[int], None] = lambda done: None,
    ):
        self.url = url
        self.deliveries = list(deliveries)
        self.secrets = dict(secrets)
        self.wrong = local_secrets()  # another stack's secrets: a sender with the wrong ones
        self.give_up_after = give_up_after
        self.on_progress = on_progress
        self.answers: list[Answer] = []
        self._next = 0
        self._lock = threading.Lock()
        self._sent: dict[str, tuple[float, dict[str, str]]] = {}  # event key -> when and how it was signed
        self.workers = [Background(f"sender{i}", self._work) for i in range(threads)]

    def join(self, timeout: float) -> list[Answer]:
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.join(max(1.0, deadline - time.monotonic()))
        assert all(w.done.is_set() for w in self.workers), "the senders did not finish"
        return self.answers

    @property
    def done(self) -> bool:
        return all(w.done.is_set() for w in self.workers)

    def _take(self) -> Delivery | None:
        with self._lock:
            if self._next >= len(self.deliveries):
                return None
            self._next += 1
            return self.deliveries[self._next - 1]

    def _work(self) -> None:
        session = requests.Session()
        while (delivery := self._take()) is not None:
            answer = self._deliver(session, delivery)
            with self._lock:
                self.answers.append(answer)
                done = len(self.answers)
            self.on_progress(done)

    def _request(self, delivery: Delivery, sent_as: str) -> tuple[bytes, dict[str, str]]:
        event = delivery.event
        if delivery.kind == "bad":
            return bad_request(event, delivery.how, self.secrets, self.wrong)
        if sent_as == "replay":
            with self._lock:
                _, headers = self._sent[event.key]
            return event.body, headers
        headers = sign(event, self.secrets)
        with self._lock:
            self._sent.setdefault(event.key, (time.time(), headers))
        return event.body, headers

    def _deliver(self, session: requests.Session, delivery: Delivery) -> Answer:
        sent_as = delivery.kind
        if sent_as == "replay":
            with self._lock:
                original = self._sent.get(delivery.event.key)
            # The very same request, while its signature is still inside the providers' 300 s window.
            if original is None or time.time() - original[0] > 240:
                sent_as = "redelivery"
        answer = Answer(delivery, sent_as)
        deadline = time.monotonic() + self.give_up_after
        url = f"{self.url}/{delivery.event.provider}"
        while True:
            answer.attempts += 1
            body, headers = self._request(delivery, sent_as)  # a provider signs each attempt anew
            try:
                response = session.post(url, data=body, headers=headers, timeout=10)
            except requests.RequestException:
                answer.connection_errors += 1
            else:
                if response.status_code not in RETRY_STATUSES:
                    answer.status = response.status_code
                    try:
                        answer.decision = str(response.json().get("status"))
                    except ValueError:
                        answer.decision = None
                    return answer
                answer.server_errors += 1
            if time.monotonic() > deadline:
                return answer
            # A provider's backoff, shortened: the receiver restarts within seconds.
            time.sleep(min(2.0, 0.05 * 2 ** min(answer.attempts, 6)))


# ---- the count ------------------------------------------------------------------------------------
def is_webhook_key(key: str) -> bool:
    return key.startswith(WEBHOOK_PREFIXES)


def webhook_tally(
    plan: WebhookPlan,
    answers: Sequence[Answer],
    items: Iterable[dict[str, Any]],
    sim_requests: Sequence[dict[str, Any]],
    kills: Sequence[Any],
    *,
    receiver_kills: int = 0,
) -> dict[str, Any]:
    """count.tally on the refunds the plan expects, and the webhook figures beside it."""
    items = list(items)
    refund_items = [i for i in items if not is_webhook_key(str(i[HASH_KEY]))]
    webhook_items = {str(i[HASH_KEY]): i for i in items if is_webhook_key(str(i[HASH_KEY]))}
    expected = plan.expected
    planned = [
        Planned(RefundRequest(payment_id=r.payment_id, refund_id=r.refund_id), "refunded") for r in expected
    ]
    events = [i for k, i in webhook_items.items() if k.startswith(EVENT_PREFIX)]
    queued_events = sum(1 for e in events if e.get("decision") == "queued")
    report = tally(
        planned,
        refund_items,
        [],
        sim_requests,
        kills,
        messages_sent=queued_events,
    )
    by_refund = {str(i[HASH_KEY]): i for i in refund_items if "#" not in str(i[HASH_KEY])}
    evidence: dict[str, Any] = dict(report.pop("evidence", {}))

    # A bad signature leaves nothing: no event record, no refund, no review, no call to Reditus.
    forged_refunds = {e.refund_id for e in plan.forged if e.refund_id}
    forged_payments = {r.split(":", 2)[2] for r in forged_refunds}
    forged_keys = {e.key for e in plan.forged}
    left_by_forgery = sorted(
        [k for k in webhook_items if k in forged_keys]
        + [r for r in by_refund if r in forged_refunds]
        + [
            k
            for k, i in webhook_items.items()
            if i.get("target_refund_id") in forged_refunds or i.get("target_payment_id") in forged_payments
        ]
        + [f"reditus:{r['payment_id']}" for r in sim_requests if r.get("payment_id") in forged_payments]
    )

    # Every valid event recorded once, with a final decision of the right kind.
    unrecorded: list[str] = []
    unfinished: list[str] = []
    wrong_decision: list[dict[str, Any]] = []
    decisions: Counter[str] = Counter()
    for event in plan.events:
        record = webhook_items.get(event.key)
        if record is None:
            unrecorded.append(event.key)
            continue
        decision = str(record.get("decision"))
        decisions[decision] += 1
        if decision not in FINAL_DECISIONS:
            unfinished.append(event.key)
        elif (decision in REFUND_DECISIONS) != event.acts or (not event.acts and decision != "ignored"):
            wrong_decision.append({"event": event.key, "decision": decision, "reason": record.get("reason")})
        elif event.refund_id is not None and record.get("target_refund_id") not in (None, event.refund_id):
            wrong_decision.append({"event": event.key, "refund_id": record.get("target_refund_id")})
    known_keys = {e.key for e in plan.events}
    stray_events = sorted(k for k in webhook_items if k.startswith(EVENT_PREFIX) and k not in known_keys)

    # The receiver's day counts equal its event records, decision by decision (written together).
    counted: Counter[str] = Counter()
    for key, item in webhook_items.items():
        if key.startswith(COUNT_PREFIX):
            for name in (*FINAL_DECISIONS, "duplicate", "bad_signature"):
                counted[name] += int(item.get(name, 0))
    recorded = Counter(str(e.get("decision")) for e in events)
    counts_match = all(counted[d] == recorded[d] for d in FINAL_DECISIONS)

    # Reviews: a refund held for review has one open; a requested refund none still open.
    reviews = {
        k.removeprefix(REVIEW_PREFIX): i for k, i in webhook_items.items() if k.startswith(REVIEW_PREFIX)
    }
    held = [r for r in plan.refunds if r.held]
    held_not_open = [
        r.refund_id for r in held if (reviews.get(r.refund_id) or {}).get("review_state") != "open"
    ]
    open_for_requested = sorted(
        r for r, i in reviews.items() if i.get("review_state") == "open" and r in by_refund
    )

    # The answers, by what was sent.
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    unanswered: list[int] = []
    unexpected: list[dict[str, Any]] = []
    for answer in answers:
        sent = answer.delivery.kind
        by_kind[answer.sent_as][f"{answer.status} {answer.decision}"] += 1
        if answer.status is None:
            unanswered.append(answer.delivery.seq)
        elif (sent == "bad") != (answer.status == 400) or (sent != "bad" and not 200 <= answer.status < 300):
            unexpected.append(
                {
                    "seq": answer.delivery.seq,
                    "kind": sent,
                    "event": answer.delivery.event.key,
                    "status": answer.status,
                }
            )
    bad = [a for a in answers if a.delivery.kind == "bad"]
    repeats = [a for a in answers if a.delivery.kind in ("redelivery", "replay")]
    terminal = [
        r.refund_id for r in expected if str((by_refund.get(r.refund_id) or {}).get("outcome")) == "refunded"
    ]
    report.update(
        {
            "webhook_events_sent": len(answers),
            "webhook_refunds_expected": len(expected),
            "webhook_refunds_terminal": len(terminal),
            "webhook_bad_signature_refused": sum(1 for a in bad if a.status == 400),
            "webhook_duplicates_answered": sum(
                1 for a in repeats if a.status is not None and 200 <= a.status < 300
            ),
            "webhook_queued_by_bad_signature": len(left_by_forgery),
            "webhook_plan": {
                "events": len(plan.events),
                "first_deliveries": sum(1 for d in plan.deliveries if d.kind == "first"),
                "repeats": len(repeats),
                "bad_signatures": len(bad),
                "bad_by_kind": dict(Counter(d.how for d in plan.deliveries if d.kind == "bad")),
                "refunds_by_kind": dict(Counter(f"{r.provider}:{r.kind}" for r in plan.refunds)),
                "held_for_review": len(held),
            },
            "webhook_answers": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
            "webhook_retries": sum(a.attempts - 1 for a in answers),
            "webhook_connection_errors": sum(a.connection_errors for a in answers),
            "webhook_server_errors": sum(a.server_errors for a in answers),
            "webhook_unanswered": len(unanswered),
            "webhook_unexpected_answers": len(unexpected),
            "webhook_decisions": dict(sorted(decisions.items())),
            "webhook_events_unrecorded": len(unrecorded),
            "webhook_events_unfinished": len(unfinished),
            "webhook_events_wrong_decision": len(wrong_decision),
            "webhook_stray_events": len(stray_events),
            "webhook_counts": dict(sorted((k, v) for k, v in counted.items() if v)),
            "webhook_counts_match": counts_match,
            "webhook_held_not_in_review": len(held_not_open),
            "webhook_reviews_open_for_requested_refunds": len(open_for_requested),
            "receiver_kills": receiver_kills,
        }
    )
    for name, found in (
        ("webhook_queued_by_bad_signature", left_by_forgery),
        ("webhook_unanswered", unanswered),
        ("webhook_unexpected_answers", unexpected),
        ("webhook_events_unrecorded", unrecorded),
        ("webhook_events_unfinished", unfinished),
        ("webhook_events_wrong_decision", wrong_decision),
        ("webhook_stray_events", stray_events),
        ("webhook_held_not_in_review", held_not_open),
        ("webhook_reviews_open_for_requested_refunds", open_for_requested),
    ):
        if found:
            evidence[name] = found[:EVIDENCE_LIMIT]
    if not counts_match:
        evidence["webhook_counts"] = {"counted": dict(counted), "recorded": dict(recorded)}
    if evidence:
        report["evidence"] = evidence
    return report


def webhook_problems(report: dict[str, Any]) -> list[str]:
    """count.problems, and the webhook promises."""
    found = problems(report)
    for name in (
        "webhook_queued_by_bad_signature",
        "webhook_unanswered",
        "webhook_unexpected_answers",
        "webhook_events_unrecorded",
        "webhook_events_unfinished",
        "webhook_events_wrong_decision",
        "webhook_stray_events",
        "webhook_held_not_in_review",
    ):
        if report[name]:
            found.append(f"{name} = {report[name]}")
    if report["webhook_refunds_terminal"] != report["webhook_refunds_expected"]:
        found.append(
            f"webhook_refunds_terminal = {report['webhook_refunds_terminal']} of "
            f"{report['webhook_refunds_expected']} expected"
        )
    if report["webhook_bad_signature_refused"] != report["webhook_plan"]["bad_signatures"]:
        found.append("not every bad signature was refused with 400")
    if not report["webhook_counts_match"]:
        found.append("the receiver's day counts do not match its event records")
    return found


# ---- the scenario ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookScenario:
    name: str
    deliveries: int
    settings: SystemSettings
    deadline: float  # seconds from the first delivery to a drained queue
    seed: int = 11
    repeats: float = 0.2
    bad: float = 0.05
    senders: int = 6
    worker_kills: int = 0
    kill_gap: tuple[float, float] = (1.0, 3.0)
    receiver_kill_at: float | None = 0.4  # share of deliveries answered when the receiver is killed
    notes: list[str] = field(default_factory=list)


@dataclass
class WebhookResult:
    report: dict[str, Any]
    system: System
    plan: WebhookPlan


def run_webhooks(servers: Servers, scenario: WebhookScenario, log_dir: Path) -> WebhookResult:
    rng = random.Random(scenario.seed)
    plan = plan_webhooks(scenario.name, scenario.deliveries, rng, repeats=scenario.repeats, bad=scenario.bad)
    system = System(servers, scenario.name, scenario.settings, log_dir)
    servers.reset()
    servers.configure(
        fault_rate=0.0,
        latency=0.0,
        outage=False,
        seed=scenario.seed,
        add_payments=sorted({r.payment_id for r in plan.expected}),
    )
    secrets = local_secrets()
    receiver = Receiver(system, secrets, log_dir)
    kill_now = threading.Event()
    cancelled = threading.Event()
    wanted = (
        None if scenario.receiver_kill_at is None else int(scenario.deliveries * scenario.receiver_kill_at)
    )

    def progress(done: int) -> None:
        if wanted is not None and done >= wanted:
            kill_now.set()

    def describe() -> str:
        return f"queue: {system.depth()}\n{receiver.process.output(tail=30)}\n" + "\n".join(
            w.output(tail=20) for w in system.workers
        )

    started = time.monotonic()
    receiver.start()
    try:
        with running(system):
            senders = Senders(receiver.url, plan.deliveries, secrets, scenario.senders, on_progress=progress)
            restarter = None
            if wanted is not None:

                def restart() -> None:
                    if kill_now.wait(scenario.deadline) and not cancelled.is_set():
                        receiver.kill_and_restart()

                restarter = Background("receiver killer", restart)
            killer = None
            if scenario.worker_kills:
                killer = Killer(
                    system,
                    scenario.worker_kills,
                    random.Random(scenario.seed + 1),
                    scenario.kill_gap,
                    finished=lambda: senders.done and system.drained(),
                )
            try:
                answers = senders.join(scenario.deadline)
                if restarter is not None:
                    restarter.join(RESTART_TIMEOUT)
                remaining = scenario.deadline - (time.monotonic() - started)
                wait_until(
                    lambda: (killer is None or killer.done) and system.drained(),
                    remaining,
                    f"{scenario.name}: every message to be settled",
                    describe,
                    interval=1.0,
                )
            finally:
                cancelled.set()
                kill_now.set()  # a restarter still waiting gives up
                if killer is not None:
                    killer.stop()
    finally:
        receiver.stop()
    duration = time.monotonic() - started
    counters = system.settle_counters()
    report = webhook_tally(
        plan,
        answers,
        system.scan(),
        servers.requests(),
        system.kills,
        receiver_kills=len(receiver.kills),
    )
    report["counters_caught_up"] = counters["caught_up"]
    report = {
        "scenario": scenario.name,
        **report,
        "duration_seconds": round(duration, 1),
        "settings": {
            **scenario.settings.describe(system.local),
            "partial_refunds_policy": POLICY,
            "senders": scenario.senders,
            "repeats": scenario.repeats,
            "bad_signatures": scenario.bad,
            "worker_kills_planned": scenario.worker_kills,
            "receiver_kill_at": scenario.receiver_kill_at,
            **({"notes": scenario.notes} if scenario.notes else {}),
        },
    }
    return WebhookResult(report, system, plan)
