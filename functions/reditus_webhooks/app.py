"""The receiver: one Function URL request in, one answer out (the Lambda handler only wires it).

Order of checks, cheapest and least trusting first: method (405), path (404), size (413),
authentication (400, counted and never recorded under the unauthenticated body's ids), body
(400), then the decision and its writes.

Writes, ordered so that no failure or crash between them loses a refund:

1. the event is recorded ``received`` under ``webhook#<provider>#<event id>`` (conditional: a
   replay of a finished event stops here, answered ``duplicate``);
2. a ``queue`` decision sends the refund request (RefundProducer, which records it pending);
   a ``needs_review`` one records the review an operator decides on;
3. the event record becomes its decision, in one transaction with its counts.

A failure after 1 answers 5xx and leaves the record ``received``: the provider's retry finds it
so and does 2 and 3 again (the same refund_id, so a second message is harmless: the submitter
claims each refund_id once). A second event for a refund already in the history is recorded as
``duplicate_refund`` and not sent again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from reditus_refunds.aws_errors import AwsError
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer
from reditus_webhooks import PROVIDERS
from reditus_webhooks.credentials import Credentials, secret_ids
from reditus_webhooks.decide import Decision, ProviderSettings, SettingsError, WebhookSettings, decide_event
from reditus_webhooks.events import (
    BAD_SIGNATURE,
    DUPLICATE,
    DUPLICATE_REFUND,
    IGNORED,
    NEEDS_REVIEW,
    QUEUED,
    RECEIVED,
    REVIEW_COMPLETED,
    UNMAPPABLE,
    UNREADABLE,
    EventFacts,
    EventStore,
    event_key,
)
from reditus_webhooks.providers import PayloadError, parse_event
from reditus_webhooks.signatures import SignatureError, verify

logger = logging.getLogger(__name__)

# Metric names (template.yaml alarms on a burst of WebhookBadSignature).
METRICS = {
    QUEUED: "WebhookQueued",
    NEEDS_REVIEW: "WebhookNeedsReview",
    IGNORED: "WebhookIgnored",
    UNMAPPABLE: "WebhookUnmappable",
    UNREADABLE: "WebhookUnreadable",
    DUPLICATE: "WebhookDuplicate",
    DUPLICATE_REFUND: "WebhookDuplicateRefund",
    BAD_SIGNATURE: "WebhookBadSignature",
    "not_configured": "WebhookNotConfigured",
    "unavailable": "WebhookUnavailable",
    "error": "WebhookError",
}
BAD_SIGNATURE_METRIC = METRICS[BAD_SIGNATURE]
DEFAULT_SECRET_CACHE_SECONDS = 300


class Telemetry(Protocol):
    def count(self, metric: str) -> None: ...


class NoTelemetry:
    def count(self, metric: str) -> None:
        return None


@dataclass(frozen=True)
class Response:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)

    def to_function_url(self) -> dict[str, Any]:
        return {
            "statusCode": self.status,
            "headers": {"content-type": "application/json", **self.headers},
            "body": json.dumps(dict(self.body), separators=(",", ":")),
        }


def _answer(status: int, state: str, reason: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"status": state}
    if reason:
        body["reason"] = reason
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(status, body)


UNAVAILABLE = "temporarily unavailable; retry later"


class Unavailable(Exception):
    """A store, queue or secret could not be used: 503, so the provider retries."""


@dataclass(frozen=True)
class ReceiverConfig:
    history_table_name: str
    refund_queue_url: str
    secret_cache_seconds: int = DEFAULT_SECRET_CACHE_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReceiverConfig:
        problems = [
            f"{name} is not set"
            for name in ("HISTORY_TABLE_NAME", "REFUND_QUEUE_URL")
            if not env.get(name, "").strip()
        ]
        raw = env.get("REDITUS_WEBHOOK_SECRET_CACHE_SECONDS", "").strip()
        cache = DEFAULT_SECRET_CACHE_SECONDS
        if raw:
            if raw.isascii() and raw.isdigit() and int(raw) <= 86_400:
                cache = int(raw)
            else:
                problems.append("REDITUS_WEBHOOK_SECRET_CACHE_SECONDS must be seconds, at most 86400")
        if problems:
            raise SettingsError("invalid webhook receiver settings: " + "; ".join(problems))
        return cls(env["HISTORY_TABLE_NAME"].strip(), env["REFUND_QUEUE_URL"].strip(), cache)


class PowertoolsSecrets:
    """Secrets Manager values through Powertools Parameters (cached ``max_age`` seconds).

    Built on the first fetch, not at cold start: the parameters utility and the Secrets Manager
    client cost start-up time, and a deployment reading secrets from the environment never
    needs them.
    """

    def __init__(self, client_factory: Callable[[], Any], max_age: int):
        self._client_factory = client_factory
        self._max_age = max_age
        self._provider: Any = None
        self._lock = threading.Lock()

    def __call__(self, secret_id: str, refresh: bool = False) -> str:
        with self._lock:
            if self._provider is None:
                from aws_lambda_powertools.utilities.parameters import SecretsProvider

                self._provider = SecretsProvider(boto3_client=self._client_factory())
            value = self._provider.get(secret_id, max_age=self._max_age, force_fetch=refresh)
        return value.decode() if isinstance(value, bytes) else str(value)


class WebhookReceiver:
    def __init__(
        self,
        settings: WebhookSettings,
        credentials: Credentials,
        events: EventStore,
        producer: RefundProducer,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.credentials = credentials
        self.events = events
        self.producer = producer
        self.telemetry: Telemetry = telemetry or NoTelemetry()
        self.clock = clock

    # ---- the Function URL event -------------------------------------------------------------
    def handle(self, event: Mapping[str, Any]) -> Response:
        """A Lambda Function URL event (payload format 2.0) in, the answer out; never raises."""
        try:
            http = (event.get("requestContext") or {}).get("http") or {}
            method = str(http.get("method", "")).upper()
            path = str(event.get("rawPath") or http.get("path") or "")
            headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
            raw = event.get("body") or ""
            if not isinstance(raw, str):
                return _answer(400, "rejected", "the body is not text")
            limit = self.settings.max_body_bytes
            if event.get("isBase64Encoded"):
                if len(raw) > (limit + 2) // 3 * 4 + 4:  # cheap bound before decoding
                    return self._too_large(method, path)
                try:
                    body = base64.b64decode(raw, validate=True)
                except (binascii.Error, ValueError):
                    return _answer(400, "rejected", "the body is not valid base64")
            else:
                if len(raw) > limit:  # every character is at least one byte
                    return self._too_large(method, path)
                try:
                    body = raw.encode("utf-8")
                except UnicodeEncodeError:
                    return _answer(400, "rejected", "the body is not valid UTF-8")
            return self.receive(method, path, headers, body)
        except Exception:
            # Logged without the event: its headers and body may hold credentials.
            logger.exception("webhook request failed unexpectedly")
            self.telemetry.count(METRICS["error"])
            return _answer(500, "error", "internal error; retry later")

    def _too_large(self, method: str, path: str) -> Response:
        early = self._route(method, path)
        if isinstance(early, Response):
            return early
        return _answer(413, "rejected", f"the body is larger than {self.settings.max_body_bytes} bytes")

    def _route(self, method: str, path: str) -> str | Response:
        if method != "POST":
            return Response(405, {"status": "rejected", "reason": "use POST"}, {"allow": "POST"})
        provider = path.strip("/")
        if provider not in PROVIDERS or path.rstrip("/") != "/" + provider:
            return _answer(404, "rejected", "unknown path; use /" + ", /".join(PROVIDERS))
        return provider

    # ---- one request ------------------------------------------------------------------------
    def receive(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        routed = self._route(method, path)
        if isinstance(routed, Response):
            return routed
        provider = routed
        if len(body) > self.settings.max_body_bytes:
            return _answer(413, "rejected", f"the body is larger than {self.settings.max_body_bytes} bytes")
        try:
            self._authenticate(provider, body, headers)
        except Unavailable:
            return _answer(503, "error", UNAVAILABLE)
        except SignatureError as err:
            return self._refused(provider, err)
        try:
            parsed = parse_event(provider, body, headers)
        except PayloadError as err:
            return self._unreadable(provider, body, err.reason)
        mapping = self.settings.providers[provider].payment_id
        decisions = decide_event(parsed, mapping, self.settings.partial_policy)
        answers: list[dict[str, Any]] = []
        try:
            for index, decision in enumerate(decisions):
                answers.append(self._apply(decision, event_key(provider, parsed.event_id, index)))
        except (AwsError, Unavailable) as err:
            logger.error(
                "webhook not handled; the provider will retry",
                extra={"provider": provider, "event_id": parsed.event_id, "error": str(err)},
            )
            self.telemetry.count(METRICS["unavailable"])
            return _answer(503, "error", UNAVAILABLE)
        if len(answers) == 1:
            return Response(200, answers[0])
        return Response(200, {"status": "handled", "results": answers})

    def _authenticate(self, provider: str, body: bytes, headers: Mapping[str, str]) -> None:
        settings = self._provider_settings(provider)
        now = self.clock()
        try:
            verify(provider, body, headers, secrets=settings.secrets, basic_auth=settings.basic_auth, now=now)
        except SignatureError as err:
            # A secret rolled in Secrets Manager reaches us only when the cache expires: on a
            # mismatch, read it again once (rate-limited) before refusing.
            if err.code != "bad_signature" or not self.credentials.may_refresh(provider):
                raise
            settings = self._provider_settings(provider, refresh=True)
            verify(provider, body, headers, secrets=settings.secrets, basic_auth=settings.basic_auth, now=now)

    def _provider_settings(self, provider: str, refresh: bool = False) -> ProviderSettings:
        try:
            return self.credentials.get(provider, refresh=refresh)
        except Exception as err:
            # The type only: a malformed secret's message never holds its value, but a
            # library's error might quote what it was given.
            logger.error(
                "the provider's webhook secret cannot be read",
                extra={"provider": provider, "error_type": type(err).__name__},
            )
            self.telemetry.count(METRICS["unavailable"])
            raise Unavailable(provider) from None

    def _refused(self, provider: str, err: SignatureError) -> Response:
        metric = METRICS["not_configured"] if err.code == "not_configured" else BAD_SIGNATURE_METRIC
        self.telemetry.count(metric)
        logger.warning(
            "webhook refused", extra={"provider": provider, "code": err.code, "reason": err.reason}
        )
        with contextlib.suppress(AwsError):  # the count is for the console; the answer stands
            self.events.count(provider, BAD_SIGNATURE)
        return _answer(400, "rejected", err.reason)

    def _unreadable(self, provider: str, body: bytes, reason: str) -> Response:
        """An authenticated body that is no event of this provider: recorded under its hash."""
        digest = hashlib.sha256(body).hexdigest()[:40]
        event_id = f"sha256:{digest}"
        facts = EventFacts(provider, event_id, "", event_key(provider, event_id), reason=reason)
        self.telemetry.count(METRICS[UNREADABLE])
        try:
            self.events.record(facts, UNREADABLE)
        except AwsError as err:
            logger.warning("unreadable webhook not recorded", extra={"provider": provider, "error": str(err)})
        return _answer(400, "rejected", reason)

    def _apply(self, decision: Decision, key: str) -> dict[str, Any]:
        signal = decision.signal
        facts = EventFacts(
            provider=decision.provider,
            event_id=decision.event_id,
            event_type=decision.event_type,
            key=key,
            refund_id=decision.refund_id,
            payment_id=decision.payment_id,
            refund_key=None if signal is None else signal.refund_key,
            reason=decision.reason,
        )
        log = {"provider": facts.provider, "event_id": facts.event_id, "refund_id": facts.refund_id}
        if decision.action in ("ignored", "unmappable") or decision.request is None:
            final = IGNORED if decision.action == "ignored" else UNMAPPABLE
            if self.events.record(facts, final) is not None:
                return self._duplicate(log)
            return self._done(final, facts, log)
        request = decision.request
        existing = self.events.begin(facts)
        if existing is not None and existing.decision != RECEIVED:
            return self._duplicate(log)
        retry = existing is not None
        by = f"webhook:{facts.provider} {facts.event_id}"
        requested, review_open = self.events.requested_and_review_open(request.refund_id)
        if requested:
            if retry and decision.action == "queue":
                # This event's own earlier attempt most likely sent it (then failed to finish).
                final, why = QUEUED, decision.reason + "; sent by an earlier delivery"
            else:
                final, why = DUPLICATE_REFUND, f"refund {request.refund_id} was already requested"
            if decision.action == "queue" and review_open:
                self.events.close_review(request.refund_id, REVIEW_COMPLETED, by)
            facts = replace(facts, reason=why)
        elif decision.action == "queue":
            self.producer.send(request)
            # After the send: a crash here, or a review opened by another event of this refund
            # since the read, leaves the review open (an operator's Submit would then be a
            # duplicate of the same refund_id, which is harmless).
            if review_open:
                self.events.close_review(request.refund_id, REVIEW_COMPLETED, by)
            final = QUEUED
        elif self.events.open_review(facts, request):
            final = NEEDS_REVIEW
        else:
            final = DUPLICATE_REFUND
            facts = replace(facts, reason=f"refund {request.refund_id} was already submitted")
        if not self.events.finish(facts, final):
            return self._duplicate(log)  # a concurrent delivery of this event finished first
        return self._done(final, facts, log)

    def _done(self, final: str, facts: EventFacts, log: dict[str, Any]) -> dict[str, Any]:
        self.telemetry.count(METRICS[final])
        logger.info("webhook handled", extra={**log, "decision": final})
        answer: dict[str, Any] = {"status": final}
        if facts.refund_id and final != IGNORED:
            answer["refund_id"] = facts.refund_id
        if final in (UNMAPPABLE, DUPLICATE_REFUND, NEEDS_REVIEW):
            answer["reason"] = facts.reason
        return answer

    def _duplicate(self, log: dict[str, Any]) -> dict[str, Any]:
        self.telemetry.count(METRICS[DUPLICATE])
        logger.info("webhook already handled", extra={**log, "decision": DUPLICATE})
        with contextlib.suppress(AwsError):  # a count for the console only
            self.events.count(str(log["provider"]), DUPLICATE)
        return {"status": DUPLICATE}


def build_receiver(
    env: Mapping[str, str],
    *,
    dynamodb: Any,
    sqs: Any,
    secretsmanager: Callable[[], Any] | None = None,
    telemetry: Telemetry | None = None,
    clock: Callable[[], float] = time.time,
) -> WebhookReceiver:
    """The receiver from its environment; ``secretsmanager`` makes the client on first use."""
    config = ReceiverConfig.from_env(env)
    settings = WebhookSettings.from_env(env)
    ids = secret_ids(env)
    fetch = None
    if ids:
        if secretsmanager is None:
            raise SettingsError("webhook secrets are in Secrets Manager but no client was given")
        fetch = PowertoolsSecrets(secretsmanager, config.secret_cache_seconds)
    store = EventStore(config.history_table_name, dynamodb)
    writer = HistoryWriter(config.history_table_name, dynamodb)
    producer = RefundProducer(sqs, config.refund_queue_url, writer)
    return WebhookReceiver(settings, Credentials(settings, ids, fetch), store, producer, telemetry, clock)
