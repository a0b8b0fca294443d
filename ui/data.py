"""Everything the console reads or writes goes through here, and from here through the shared package.

Clients, the history store, the producer and the dead-letter queue are built once per system
(`st.cache_resource`); queries are cached for a few seconds (`st.cache_data`) and the caches are
cleared after every write. The plain functions (`read_history_page`, `read_headline`, ...) take a
store and hold no cache: the pages call them through the cached wrappers, the speed test directly.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlparse

import streamlit as st

from reditus_operators import actions
from reditus_operators.access import AccessDenied, Action, Actor
from reditus_operators.audit import AuditEntry, AuditPage, AuditReader, AuditWriter
from reditus_operators.config import ConfigError, SystemConfig, local_webhook_env, resolve, webhook_url
from reditus_operators.dlq import DeadLetter, DeadLetterQueue, original_refund_id
from reditus_operators.history import HistoryReader, Page
from reditus_operators.operations import HistoryMatch, build_request, payment_match
from reditus_operators.users import User, UserStore
from reditus_operators.webhooks import (
    ReviewError,
    Submitted,
    WebhookReader,
    provider_configured,
    provider_url,
)
from reditus_refunds.aws_errors import AwsError, BotoCoreError, ClientError, QueueError, StoreError, aws_error
from reditus_refunds.contract import RefundRequest
from reditus_refunds.history_writer import HistoryWriter
from reditus_refunds.producer import RefundProducer, SendReport
from reditus_refunds.records import REQUEUEABLE, HistoryRecord, Outcome, parse_iso
from reditus_webhooks import PROVIDERS
from reditus_webhooks.events import EventStore, Review

ENV_STACK_NAME = "REDITUS_STACK_NAME"
SOURCE = "console"
QUERY_TTL_SECONDS = 10
DEAD_LETTER_TTL_SECONDS = 15
PAGE_SIZES = (25, 50, 100)
DEFAULT_PAGE_SIZE = 50
EXPORT_PAGE_SIZE = 500
EXPORT_LIMIT = 50_000
DEAD_LETTER_PEEK_LIMIT = 500

# Everything AWS or our adapters raise that a page turns into a message instead of a traceback
# (the adapters map botocore's errors to AwsError; the raw ones are the last guard).
AWS_ERRORS: tuple[type[BaseException], ...] = (ConfigError, AwsError, BotoCoreError, ClientError)
# An operator's Submit or Dismiss of a review that is no longer open (the text says why).
REVIEW_ERRORS: tuple[type[BaseException], ...] = (ReviewError,)
# What a role may not do, refused server-side (the page shows the reason).
DENIED: tuple[type[BaseException], ...] = (AccessDenied,)


# ---- what went wrong, and what to check -----------------------------------------------------
@dataclass(frozen=True)
class Problem:
    what: str
    check: str


def explain(err: BaseException) -> Problem:
    """A sentence for the page: what failed (reditus_refunds.aws_errors says it) and what to check."""
    if isinstance(err, ConfigError):
        return Problem(
            f"The console does not know which system to use: {err}",
            f"Set {ENV_STACK_NAME} to a deployed stack's name, or HISTORY_TABLE_NAME and REFUND_QUEUE_URL "
            "(and DEAD_LETTER_QUEUE_URL), or start the local stack with `make run`.",
        )
    if not isinstance(err, AwsError):
        err = aws_error(err, AwsError, service="AWS", resource="an AWS resource", names_hint=ENV_STACK_NAME)
    what = (
        "The history table"
        if isinstance(err, StoreError)
        else "The queue"
        if isinstance(err, QueueError)
        else "AWS"
    )
    verb = "could not be reached" if err.code == "Unreachable" else "could not be used"
    return Problem(f"{what} {verb}: {err}.", err.hint or "See the console's log for details.")


# ---- the system and its adapters --------------------------------------------------------------
@dataclass(frozen=True)
class Services:
    config: SystemConfig
    store: HistoryReader
    producer: RefundProducer
    dead_letters: DeadLetterQueue | None

    @property
    def key(self) -> str:
        """Identifies the system in the query caches."""
        return config_key(self.config)


def config_key(config: SystemConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)


@st.cache_resource(ttl=3600, show_spinner="Looking up the stack…")
def _stack_config(stack_name: str, region: str, endpoint_url: str) -> SystemConfig:
    env = {"AWS_REGION": region, "AWS_ENDPOINT_URL": endpoint_url} if endpoint_url else {"AWS_REGION": region}
    return resolve(stack_name, env=env)


def current_config() -> SystemConfig:
    """REDITUS_STACK_NAME (CloudFormation outputs) > environment > the local stack's state file."""
    stack_name = os.environ.get(ENV_STACK_NAME, "").strip()
    if stack_name:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return _stack_config(stack_name, region, os.environ.get("AWS_ENDPOINT_URL", ""))
    return resolve()


@st.cache_resource(show_spinner=False, max_entries=8)
def _services(key: str, _config: SystemConfig) -> Services:
    dynamodb = _config.client("dynamodb")
    sqs = _config.client("sqs")
    store = HistoryReader(_config.table_name, dynamodb)
    producer = RefundProducer(sqs, _config.queue_url, HistoryWriter(_config.table_name, dynamodb))
    dead_letters = DeadLetterQueue(sqs, _config.dlq_url, _config.queue_url) if _config.dlq_url else None
    return Services(_config, store, producer, dead_letters)


def services() -> Services:
    config = current_config()
    return _services(config_key(config), config)


def describe_system(config: SystemConfig) -> str:
    """Which system the console works on, for the sidebar: local, a named stack, or AWS."""
    host = urlparse(config.endpoint_url).hostname if config.endpoint_url else None
    if config.local or host in ("127.0.0.1", "localhost", "::1"):
        return "local stack (moto)"
    if config.endpoint_url:
        return f"{config.origin} · {host}"
    return f"{config.origin} · {config.region}"


# ---- history ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryFilter:
    """What the History page shows: a period of UTC days and optional narrowing."""

    since: date
    until: date
    outcome: Outcome | None = None
    payment_id: str | None = None
    requested_by: str | None = None

    def window(self) -> tuple[datetime, datetime]:
        return datetime.combine(self.since, time.min, UTC), datetime.combine(self.until, time.max, UTC)

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1


def default_period(today: date | None = None, days: int = 7) -> tuple[date, date]:
    today = today or datetime.now(UTC).date()
    return today - timedelta(days=days - 1), today


def read_history_page(
    store: HistoryReader, history_filter: HistoryFilter, cursor: str | None = None, page_size: int = 50
) -> Page:
    """One page of the table, newest first, through the store's indexed queries (never a Scan)."""
    since, until = history_filter.window()
    return store.query(
        outcome=history_filter.outcome,
        payment_id=history_filter.payment_id,
        requested_by=history_filter.requested_by,
        since=since,
        until=until,
        limit=page_size,
        cursor=cursor,
    )


# The six headline figures and the outcomes each one adds up.
HEADLINE_FIGURES: tuple[tuple[str, tuple[Outcome, ...], str], ...] = (
    ("Refunded", (Outcome.REFUNDED,), "Reditus answered 200: the commission was rejected."),
    ("Rejected", (Outcome.REJECTED,), "Reditus answered 400 and refused the request."),
    ("Not found", (Outcome.NOT_FOUND,), "Reditus answered 404 after the grace window."),
    ("Invalid", (Outcome.INVALID,), "The request broke the message contract and was never sent."),
    ("Pending", (Outcome.PENDING, Outcome.RETRYING), "Queued or being retried; not settled yet."),
    (
        "Failed",
        (Outcome.FAILED, Outcome.DEAD_LETTERED),
        "An unexpected answer, or retries used up (dead-letter queue).",
    ),
)


@dataclass(frozen=True)
class Headline:
    """Outcome counts of a period, from the per-day counter items."""

    per_day: dict[str, dict[str, int]]

    def total(self, outcomes: Iterable[Outcome]) -> int:
        wanted = {o.value for o in outcomes}
        return sum(max(0, n) for day in self.per_day.values() for o, n in day.items() if o in wanted)

    @property
    def figures(self) -> list[tuple[str, int, str]]:
        return [(label, self.total(outcomes), help_text) for label, outcomes, help_text in HEADLINE_FIGURES]

    def chart_rows(self) -> list[dict[str, object]]:
        """One row per day and outcome with a count above zero (for the chart)."""
        return [
            {"day": day, "outcome": outcome, "count": count}
            for day, counts in sorted(self.per_day.items())
            for outcome, count in counts.items()
            if count > 0
        ]


def read_headline(store: HistoryReader, since: date, until: date) -> Headline:
    """The headline figures and the per-day chart: one counter item read per day of the period."""
    return Headline(store.daily_counts(since, until))


@st.cache_data(ttl=QUERY_TTL_SECONDS, show_spinner=False, max_entries=256)
def cached_history_page(
    services_key: str,
    history_filter: HistoryFilter,
    cursor: str | None,
    page_size: int,
    _store: HistoryReader,
) -> Page:
    return read_history_page(_store, history_filter, cursor, page_size)


@st.cache_data(ttl=QUERY_TTL_SECONDS, show_spinner=False, max_entries=64)
def cached_headline(services_key: str, since: date, until: date, _store: HistoryReader) -> Headline:
    return read_headline(_store, since, until)


def clear_query_caches() -> None:
    """After a write: the next read shows it."""
    cached_history_page.clear()
    cached_headline.clear()
    cached_dead_letters.clear()


def read_refund(store: HistoryReader, refund_id: str) -> HistoryRecord | None:
    """One refund, read consistently (never cached: the detail view watches it settle)."""
    refund_id = refund_id.strip()
    if not refund_id or len(refund_id) > 128:
        return None
    return store.get(refund_id)


# ---- export -----------------------------------------------------------------------------------
EXPORT_COLUMNS = (
    "refund_id",
    "payment_id",
    "outcome",
    "http_status",
    "queued_at",
    "completed_at",
    "attempts",
    "requested_by",
    "source",
    "source_event_id",
    "note",
    "force",
    "detail",
    "requeue_of",
    "duplicate_of",
    "latency_ms",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """Text that a spreadsheet would run as a formula is written with a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def export_csv(
    store: HistoryReader,
    history_filter: HistoryFilter,
    limit: int = EXPORT_LIMIT,
    ctx: actions.Acting | None = None,
) -> tuple[bytes, int, bool]:
    """Every row the filter matches (up to `limit`), as CSV; returns (data, rows, truncated).
    With `ctx` the export is checked against the role and audited with its refund ids."""
    if ctx is not None:
        actions.check_export(ctx, "history")
    exported: list[str] = []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    rows = 0
    cursor: str | None = None
    while rows < limit:
        page = read_history_page(store, history_filter, cursor, min(EXPORT_PAGE_SIZE, limit - rows))
        for record in page.records:
            data = record.to_dict()
            writer.writerow({name: spreadsheet_safe(data.get(name)) for name in EXPORT_COLUMNS})
            exported.append(record.refund_id)
            rows += 1
        cursor = page.cursor
        if cursor is None:
            break
    if ctx is not None:
        actions.record_export(
            ctx, "history", rows, exported, since=str(history_filter.since), until=str(history_filter.until)
        )
    return buffer.getvalue().encode("utf-8"), rows, cursor is not None


# ---- queueing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Refusal:
    """The request broke the message contract; nothing was sent. (Kept in the session across reruns,
    so it is defined here and not in a page, whose classes are new on every run.)"""

    reason: str


@dataclass(frozen=True)
class QueueResult:
    """What happened to one refund asked for on the Queue page."""

    request: RefundRequest
    match: HistoryMatch | None  # why the history says it needs force (None: it does not)
    sent: bool
    message_id: str | None = None

    @property
    def warning(self) -> str | None:
        return self.match.warning if self.match else None


def queue_refund(
    services: Services,
    *,
    payment_id: str,
    note: str | None,
    force: bool,
    requested_by: str,
    ctx: actions.Acting | None = None,
) -> QueueResult:
    """Validate (raises ContractError), look at the payment's history, and send unless it needs force.

    With `ctx` (the console always passes it) the role is checked and the action audited."""
    if ctx is not None:
        actions.authorize(ctx, Action.FORCE if force else Action.QUEUE, payment_id=payment_id)
        requested_by = ctx.actor.requested_by
    request = build_request(payment_id, note=note, requested_by=requested_by, source=SOURCE, force=force)
    match = payment_match(services.store, request.payment_id)
    if match and not force:
        return QueueResult(request, match, sent=False)
    if ctx is not None:
        message_id = actions.queue_one(ctx, services.producer, request)
    else:
        message_id = services.producer.send(request)
    clear_query_caches()
    return QueueResult(request, match, sent=True, message_id=message_id)


@dataclass
class RequeueResult:
    report: SendReport
    refused: list[tuple[str, str]] = field(default_factory=list)  # (refund_id, reason)


def requeue_refunds(services: Services, refund_ids: Sequence[str], ctx: actions.Acting) -> RequeueResult:
    """Requeue under new refund_ids, after reading each record again (it may have moved on)."""
    records: list[HistoryRecord] = []
    refused: list[tuple[str, str]] = []
    for refund_id in dict.fromkeys(refund_ids):
        record = services.store.get(refund_id)
        if record is None:
            refused.append((refund_id, "not found in the history"))
        elif record.outcome not in REQUEUEABLE:
            refused.append((refund_id, f"it is {record.outcome.value} now"))
        else:
            records.append(record)
    actions.authorize(ctx, Action.REQUEUE, list(refund_ids))
    report, more_refused = actions.requeue_records(ctx, services.producer, records, source=SOURCE)
    refused += [(record.refund_id, reason) for record, reason in more_refused]
    clear_query_caches()
    return RequeueResult(report, refused)


def send_batch(
    services: Services,
    requests: Sequence[RefundRequest],
    progress: Callable[[int, int], None] | None = None,
    into: SendReport | None = None,
    minted: bool = True,
) -> SendReport:
    """One chunk of a bulk upload (the page clears the query caches once, when all are sent);
    `into` is filled in as SQS answers, so what was queued is known when this raises. parse_csv
    mints every row's refund_id (the file has no refund_id column): `minted=False` only for the
    rest of a chunk that stopped (ui.bulk.BulkUpload.send)."""
    return services.producer.send_many(requests, progress=progress, minted_ids=minted, into=into)


# ---- dead letters -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadLetterRow:
    letter: DeadLetter
    outcome: str | None
    last_error: str


@dataclass(frozen=True)
class DeadLetters:
    rows: list[DeadLetterRow]
    approximate_count: int


def read_dead_letters(
    dead_letters: DeadLetterQueue, store: HistoryReader, limit: int = DEAD_LETTER_PEEK_LIMIT
) -> DeadLetters:
    """The messages in the dead-letter queue, each with the last error its history record holds."""
    letters = sorted(dead_letters.peek(limit), key=lambda letter: letter.sent_at_ms, reverse=True)
    count = dead_letters.count()
    records: dict[str, HistoryRecord | None] = {}
    rows: list[DeadLetterRow] = []
    for letter in letters:
        # A body without a valid refund_id went by its MessageId (kept when SQS dead-letters it).
        refund_id = original_refund_id(letter.message_id, letter.body)
        if refund_id not in records:
            records[refund_id] = read_refund(store, refund_id)
        record = records[refund_id]
        if record is None and letter.refund_id is None:
            rows.append(DeadLetterRow(letter, None, "the message is not a readable refund request"))
        elif record is None:
            rows.append(DeadLetterRow(letter, None, "no history record (the submitter never recorded it)"))
        else:
            rows.append(DeadLetterRow(letter, record.outcome.value, record.detail or record.error_kind or ""))
    return DeadLetters(rows, max(count, len(rows)))


@st.cache_data(ttl=DEAD_LETTER_TTL_SECONDS, show_spinner="Reading the dead-letter queue…", max_entries=8)
def cached_dead_letters(services_key: str, _services: Services) -> DeadLetters:
    assert _services.dead_letters is not None
    return read_dead_letters(_services.dead_letters, _services.store)


def redrive_dead_letters(
    services: Services, message_ids: Sequence[str] | None, ctx: actions.Acting
) -> list[str]:
    """Back to the refund queue: the chosen messages, or all of them when `message_ids` is None."""
    assert services.dead_letters is not None
    moved = actions.redrive(ctx, services.dead_letters, message_ids)
    clear_query_caches()
    return moved


def delete_dead_letters(services: Services, message_ids: Sequence[str], ctx: actions.Acting) -> list[str]:
    assert services.dead_letters is not None
    deleted = actions.delete_dead_letters(ctx, services.dead_letters, message_ids)
    clear_query_caches()
    return deleted


# ---- billing webhooks (the Sources page) --------------------------------------------------------
WEBHOOK_TTL_SECONDS = 10


@dataclass(frozen=True)
class WebhookServices:
    reader: WebhookReader
    events: EventStore


@st.cache_resource(show_spinner=False, max_entries=8)
def _webhook_services(key: str, _config: SystemConfig) -> WebhookServices:
    dynamodb = _config.client("dynamodb")
    return WebhookServices(
        WebhookReader(_config.table_name, dynamodb), EventStore(_config.table_name, dynamodb)
    )


def webhook_services(services: Services) -> WebhookServices:
    return _webhook_services(services.key, services.config)


@dataclass(frozen=True)
class SourceRow:
    """One provider on the Sources page."""

    provider: str
    url: str | None  # None: not deployed (no receiver URL known)
    configured: bool | None  # None: cannot be told from here (a deployed stack's secret)
    last: dict[str, object] | None
    counts: dict[str, int]


def read_sources(
    reader: WebhookReader, config: SystemConfig, since: date, until: date, env: dict[str, str] | None = None
) -> list[SourceRow]:
    """Per provider: URL, configured or not, last event, counts by decision over the period."""
    env = dict(os.environ) if env is None else env
    # A receiver on this machine (or the local stack's moto) is configured by this environment.
    local = config.local or any(
        urlparse(url or "").hostname in ("127.0.0.1", "localhost", "::1")
        for url in (config.endpoint_url, webhook_url(config, env))
    )
    if local:
        # The local stack's console gets the system's variables, not the signing secrets: its
        # state file says which it has.
        env = {**local_webhook_env(env), **env}
    base = webhook_url(config, env)
    counts = reader.counts(since, until)
    last = reader.last_events()
    return [
        SourceRow(
            provider=provider,
            url=provider_url(base, provider) if base else None,
            configured=provider_configured(provider, env) if local else None,
            last=last.get(provider),
            counts=counts.get(provider, {}),
        )
        for provider in PROVIDERS
    ]


@st.cache_data(ttl=WEBHOOK_TTL_SECONDS, show_spinner=False, max_entries=32)
def cached_sources(
    services_key: str, since: date, until: date, _reader: WebhookReader, _config: SystemConfig
) -> list[SourceRow]:
    return read_sources(_reader, _config, since, until)


@st.cache_data(ttl=WEBHOOK_TTL_SECONDS, show_spinner=False, max_entries=8)
def cached_open_reviews(services_key: str, _reader: WebhookReader) -> list[Review]:
    return _reader.open_reviews()


def clear_webhook_caches() -> None:
    cached_sources.clear()
    cached_open_reviews.clear()


def submit_partial_refund(services: Services, refund_id: str, ctx: actions.Acting) -> Submitted:
    """Submit: queue the reviewed refund as requested by the signed-in operator."""
    hooks = webhook_services(services)
    done = actions.submit(ctx, refund_id, events=hooks.events, producer=services.producer)
    clear_webhook_caches()
    clear_query_caches()
    return done


def dismiss_partial_refund(services: Services, refund_id: str, ctx: actions.Acting) -> Review:
    """Dismiss: close the review, queue nothing; the operator is recorded as the decider."""
    review = actions.dismiss(ctx, refund_id, events=webhook_services(services).events)
    clear_webhook_caches()
    return review


# ---- who acts, and the audit log ----------------------------------------------------------------
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def open_console_target_is_local() -> bool:
    """CONSOLE_OPEN is honoured only against the local stack (its state, or moto on this machine);
    a system we cannot even name is let through to the page that says so."""
    try:
        config = current_config()
    except AWS_ERRORS:
        return True
    host = urlparse(config.endpoint_url).hostname if config.endpoint_url else None
    return config.local or host in LOOPBACK


@st.cache_resource(show_spinner=False, max_entries=8)
def _audit(key: str, _config: SystemConfig) -> tuple[AuditWriter, AuditReader, UserStore]:
    dynamodb = _config.client("dynamodb")
    return (
        AuditWriter(_config.table_name, dynamodb),
        AuditReader(_config.table_name, dynamodb),
        UserStore(_config.table_name, dynamodb),
    )


def audit_parts() -> tuple[AuditWriter, AuditReader, UserStore]:
    config = current_config()
    return _audit(config_key(config), config)


def acting(identity: Any) -> actions.Acting:
    """The signed-in person as the operators' layer sees them (ui.access.Identity)."""
    actor = Actor(str(identity.requested_by), identity.role, "console")
    return actions.Acting(actor, audit_parts()[0])


def sign_in(name: str, password: str) -> User | None:
    """Password mode: the account, or None (wrong, unknown or locked; failures and lockouts audited)."""
    from reditus_operators.access import Role

    writer, _, users = audit_parts()
    result = users.sign_in(name, password)
    if result.user is not None:
        _account.clear()  # a "no such account" read a moment ago must not end the new session
        return result.user
    who = Actor(" ".join(name.split())[:100] or "(blank)", Role.VIEWER, "console")
    writer.record(
        who,
        Action.LOCKOUT if result.just_locked else Action.SIGN_IN_FAILED,
        result="refused",
        reason="account locked" if result.locked else "wrong account or password",
        details={"locked_until": result.locked_until} if result.locked_until else None,
    )
    return None


ACCOUNT_TTL_SECONDS = 5


@st.cache_data(ttl=ACCOUNT_TTL_SECONDS, show_spinner=False, max_entries=256)
def _account(key: str, name: str) -> User | None:
    return audit_parts()[2].get(name)


def current_account(name: str) -> User | None:
    """A signed-in account as stored now: one GetItem per account per few seconds per process, so a
    removed or locked account stops working within ACCOUNT_TTL_SECONDS, at a negligible cost."""
    return _account(config_key(current_config()), name)


def locked_now(user: User) -> bool:
    return bool(user.locked_until) and parse_iso(str(user.locked_until)) > datetime.now(UTC)


def show_sign_in_problem(err: BaseException) -> None:
    problem = explain(err)
    st.error(problem.what)
    st.caption(problem.check)


def read_audit(who: str | None, action: str | None, since: date, until: date, limit: int = 200) -> AuditPage:
    return audit_parts()[1].list(
        who=who,
        action=action,
        since=datetime.combine(since, time.min, UTC),
        until=datetime.combine(until, time.max, UTC),
        limit=limit,
    )


def refund_actions(refund_id: str) -> list[AuditEntry]:
    return audit_parts()[1].for_refund(refund_id)
