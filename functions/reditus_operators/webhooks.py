"""The billing webhooks as operators see them (the console's Sources page and `reditus-refunds webhooks`).

Reads: received events over a period (the ``by_webhook_day`` index, newest first, paged; never a
Scan), counts by decision per provider (one item per provider and day), each provider's last
event, and the partial refunds awaiting a decision (the ``by_open_review`` index). Decisions:
Submit and Dismiss, thin calls of ``reditus_webhooks.review`` recording the operator. And a signed
sample event posted to a receiver, for demos and for trying a payment-id mapping.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from reditus_refunds.layout import from_item, to_attr
from reditus_refunds.producer import RefundProducer
from reditus_refunds.records import iso, utc_now
from reditus_refunds.table import HistoryTable
from reditus_webhooks import PROVIDERS
from reditus_webhooks.decide import CHARGEBEE_PASSWORD, CHARGEBEE_USERNAME, SECRET_VARIABLES
from reditus_webhooks.events import (
    BAD_SIGNATURE,
    DUPLICATE,
    DUPLICATE_REFUND,
    EVENT_DAY_ATTRIBUTE,
    EVENT_DAY_INDEX,
    EVENT_TIME_ATTRIBUTE,
    IGNORED,
    NEEDS_REVIEW,
    OPEN_REVIEW_INDEX,
    QUEUED,
    REVIEW_OPEN_ATTRIBUTE,
    UNMAPPABLE,
    UNREADABLE,
    EventStore,
    Review,
    WebhookEvent,
    event_from_item,
    review_from_item,
)
from reditus_webhooks.review import ReviewError, Submitted, dismiss_reviewed, submit_reviewed
from reditus_webhooks.samples import Sample, sample_event
from reditus_webhooks.signatures import (
    sign_chargebee,
    sign_lemonsqueezy,
    sign_paddle,
    sign_polar,
    sign_stripe,
)

from .config import WEBHOOK_URL_ENV
from .paging import IndexQuery, page_days

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
else:
    DynamoDBClient = Any

# What the console and `webhooks --decision` offer, in the order the console shows them.
DECISION_COLUMNS: tuple[tuple[str, str], ...] = (
    (QUEUED, "Queued"),
    (NEEDS_REVIEW, "Needs review"),
    (IGNORED, "Ignored"),
    (DUPLICATE, "Duplicate"),
    (DUPLICATE_REFUND, "Duplicate refund"),
    (BAD_SIGNATURE, "Bad signature"),
    (UNMAPPABLE, "Unmappable"),
    (UNREADABLE, "Unreadable"),
)
# Decisions an event record can hold (a replay and a bad signature are counted, never recorded).
RECORDED_DECISIONS = ("received", QUEUED, NEEDS_REVIEW, IGNORED, UNMAPPABLE, UNREADABLE, DUPLICATE_REFUND)
MAX_PERIOD_DAYS = 366
SEND_TIMEOUT_SECONDS = 10

__all__ = [
    "DECISION_COLUMNS",
    "WEBHOOK_URL_ENV",
    "EventPage",
    "ReviewError",
    "SampleError",
    "SentSample",
    "Submitted",
    "WebhookReader",
    "dismiss_review",
    "provider_configured",
    "send_sample",
    "signed_sample",
    "submit_review",
]


@dataclass
class EventPage:
    events: list[WebhookEvent]
    cursor: str | None


def period_days(since: date, until: date) -> list[str]:
    if until < since:
        raise ValueError(f"the period ends ({until}) before it starts ({since})")
    if (until - since).days >= MAX_PERIOD_DAYS:
        raise ValueError(f"a period is at most {MAX_PERIOD_DAYS} days")
    return [(since + timedelta(days=n)).isoformat() for n in range((until - since).days + 1)]


class WebhookReader:
    """The receiver's records, read through their own indexes and keys (never a Scan)."""

    def __init__(self, table_name: str, client: DynamoDBClient, clock: Callable[[], datetime] = utc_now):
        self.table = HistoryTable(table_name, client)
        self.store = EventStore(table_name, client)
        self.clock = clock

    # ---- events ---------------------------------------------------------------------------
    def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        provider: str | None = None,
        decision: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> EventPage:
        """Received events, newest first, one page: one index query per UTC day, walking backwards."""
        if provider is not None and provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
        if decision is not None and decision not in RECORDED_DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; use one of {', '.join(RECORDED_DECISIONS)}")
        until = until or self.clock()
        since = since or (until - timedelta(days=7))
        filters, values = [], {}
        if provider:
            filters.append("provider = :provider")
            values[":provider"] = provider
        if decision:
            filters.append("decision = :decision")
            values[":decision"] = decision
        query = IndexQuery(
            self.table,
            EVENT_DAY_INDEX,
            EVENT_DAY_ATTRIBUTE,
            EVENT_TIME_ATTRIBUTE,
            iso(since),
            iso(until),
            filter_expression=" AND ".join(filters) or None,
            filter_values=values,
        )
        paged = page_days(query, event_from_item, limit=limit, cursor=cursor)
        return EventPage(paged.items, paged.cursor)

    # ---- counts and last events -----------------------------------------------------------
    def counts(self, since: date, until: date) -> dict[str, dict[str, int]]:
        """Per provider, counts by decision over the period's UTC days (one read per provider)."""
        days = period_days(since, until)
        totals: dict[str, dict[str, int]] = {}
        for provider in PROVIDERS:
            summed: dict[str, int] = {}
            for chunk_start in range(0, len(days), 100):  # BatchGetItem's limit
                per_day = self.store.counts(provider, days[chunk_start : chunk_start + 100])
                for counts in per_day.values():
                    for name, count in counts.items():
                        summed[name] = summed.get(name, 0) + count
            totals[provider] = summed
        return totals

    def last_events(self) -> dict[str, dict[str, Any] | None]:
        """Each provider's last event (received at, id, type, decision), None before the first."""
        return {provider: self.store.source(provider) for provider in PROVIDERS}

    # ---- reviews --------------------------------------------------------------------------
    def open_reviews(self, provider: str | None = None) -> list[Review]:
        """Partial refunds awaiting a decision, oldest first (the index holds open ones only)."""
        reviews: list[Review] = []
        for name in [provider] if provider else PROVIDERS:
            query: dict[str, Any] = {
                "IndexName": OPEN_REVIEW_INDEX,
                "KeyConditionExpression": "#open = :provider",
                "ExpressionAttributeNames": {"#open": REVIEW_OPEN_ATTRIBUTE},
                "ExpressionAttributeValues": {":provider": to_attr(name)},
                "ScanIndexForward": True,
            }
            while True:
                response = self.table.query(query)
                reviews += [review_from_item(from_item(item)) for item in response.get("Items", [])]
                lek = response.get("LastEvaluatedKey")
                if not lek:
                    break
                query["ExclusiveStartKey"] = lek
        return sorted(reviews, key=lambda r: (r.opened_at, r.refund_id))


# ---- Submit and Dismiss ------------------------------------------------------------------------
def submit_review(
    refund_id: str, *, events: EventStore, producer: RefundProducer, operator: str
) -> Submitted:
    """Queue the reviewed refund, requested by ``operator`` (raises ReviewError if not open)."""
    return submit_reviewed(refund_id.strip(), events=events, producer=producer, operator=operator)


def dismiss_review(refund_id: str, *, events: EventStore, operator: str) -> Review:
    """Close the review without queueing anything, recording ``operator`` as the decider."""
    return dismiss_reviewed(refund_id.strip(), events=events, operator=operator)


# ---- configuration as the local stack knows it -------------------------------------------------
def secret_variables(provider: str) -> tuple[str, ...]:
    """The environment variables that configure a provider's signing secret (local stack)."""
    if provider == "chargebee":
        return (CHARGEBEE_USERNAME, CHARGEBEE_PASSWORD)
    return (SECRET_VARIABLES[provider],)


def provider_configured(provider: str, env: Mapping[str, str]) -> bool:
    return all(env.get(name, "").strip() for name in secret_variables(provider))


# ---- a signed sample event ---------------------------------------------------------------------
class SampleError(ValueError):
    """The sample cannot be sent as asked (no URL, no secret); the text says what to set."""


@dataclass(frozen=True)
class SentSample:
    sample: Sample
    url: str
    status: int
    answer: dict[str, Any]


def signed_sample(
    provider: str,
    env: Mapping[str, str],
    *,
    partial: bool = False,
    payment_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[Sample, dict[str, str]]:
    """A sample event of ``provider`` and the headers that sign it with the secret from ``env``."""
    if provider not in PROVIDERS:
        raise SampleError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    missing = [name for name in secret_variables(provider) if not env.get(name, "").strip()]
    if missing:
        raise SampleError(
            f"{' and '.join(missing)} not set: the sample is signed with the receiver's secret "
            '(for the local stack: eval "$(reditus-refunds local env)")'
        )
    if payment_id is not None and not payment_id.strip():
        raise SampleError("--payment-id is blank")
    sample = sample_event(provider, partial=partial, payment_id=payment_id.strip() if payment_id else None)
    body = sample.body
    headers = {"content-type": "application/json"}
    if provider == "stripe":
        headers |= sign_stripe(body, env[SECRET_VARIABLES["stripe"]].strip(), timestamp=timestamp)
    elif provider == "paddle":
        headers |= sign_paddle(body, env[SECRET_VARIABLES["paddle"]].strip(), timestamp=timestamp)
    elif provider == "lemonsqueezy":
        headers |= sign_lemonsqueezy(body, env[SECRET_VARIABLES["lemonsqueezy"]].strip())
    elif provider == "polar":
        try:
            headers |= sign_polar(
                body, env[SECRET_VARIABLES["polar"]].strip(), message_id=sample.event_id, timestamp=timestamp
            )
        except ValueError as err:
            raise SampleError(f"{SECRET_VARIABLES['polar']}: {err}") from None
    else:
        headers |= sign_chargebee(env[CHARGEBEE_USERNAME].strip(), env[CHARGEBEE_PASSWORD])
    return sample, headers


def provider_url(base_url: str, provider: str) -> str:
    return base_url.rstrip("/") + "/" + provider


def send_sample(
    provider: str,
    base_url: str,
    env: Mapping[str, str],
    *,
    partial: bool = False,
    payment_id: str | None = None,
) -> SentSample:
    """Post a signed sample to ``base_url``/<provider>; the receiver's answer, whatever its status."""
    if not base_url.startswith(("http://", "https://")):
        raise SampleError(f"the webhook URL must start with http:// or https://, not {base_url[:40]!r}")
    sample, headers = signed_sample(provider, env, partial=partial, payment_id=payment_id)
    url = provider_url(base_url, provider)
    request = urllib.request.Request(url, data=sample.body, headers=headers, method="POST")  # noqa: S310
    try:
        # nosec B310: the scheme is checked above (http or https only, never file: or custom ones).
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_SECONDS) as response:  # noqa: S310  # nosec B310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:  # a 4xx/5xx is an answer: show it
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SampleError(f"the receiver at {url} could not be reached: {reason}") from None
    try:
        answer = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, ValueError):
        answer = {"body": raw[:200].decode("utf-8", "replace")}
    if not isinstance(answer, dict):
        answer = {"body": answer}
    return SentSample(sample, url, status, answer)


def utc_today() -> date:
    return datetime.now(UTC).date()


def recent_days(days: int, today: date | None = None) -> tuple[date, date]:
    today = today or utc_today()
    return today - timedelta(days=max(1, days) - 1), today


def flatten_counts(counts: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """One row per provider with a column per decision (the console's table, the CLI's)."""
    return [
        {"provider": provider, **{name: int(per.get(name, 0)) for name, _ in DECISION_COLUMNS}}
        for provider, per in counts.items()
    ]
