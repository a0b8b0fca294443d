"""Composition root: builds the adapters and the submitter from Settings.

Every adapter can be handed in, so tests pass moto-backed clients or fakes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import boto3
from botocore.config import Config

from .history_writer import HistoryWriter
from .producer import RefundProducer
from .records import Outcome, iso
from .reditus import RateLimiter, ReditusClient
from .settings import Settings
from .submitter import (
    InboundMessage,
    NoTelemetry,
    RefundAnswer,
    RefundSubmitter,
    SubmitterConfig,
    Telemetry,
)

if TYPE_CHECKING:
    from aws_lambda_powertools import Metrics, Tracer

    from .contract import RefundRequest

logger = logging.getLogger(__name__)

# Standard retry mode: botocore backs off on throttling and transient AWS errors.
AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)


class SecretKeyProvider:
    """The Reditus API key from Secrets Manager, cached for `max_age` seconds (0: never cached).

    Our own dozen lines rather than Powertools Parameters' SecretsProvider, which did exactly this
    (GetSecretValue, SecretString else SecretBinary, a max-age cache, a forced fetch): importing
    `aws_lambda_powertools.utilities.parameters` imports every provider it has (AppConfig, DynamoDB
    with boto3's conditions, SSM), about 3 ms of CPU of every cold start for one call.
    """

    def __init__(self, secret_id: str, client: Any, max_age: int):
        self._client = client
        self._secret_id = secret_id
        self._max_age = max_age
        self._value: str | None = None
        self._expires = 0.0
        # The records of a batch start together: without it, each would fetch the key at a cold
        # start (or when the cache expires), one Secrets Manager call per record instead of one.
        self._lock = threading.Lock()

    def __call__(self, force_refresh: bool = False) -> str:
        with self._lock:
            if force_refresh or self._value is None or time.monotonic() >= self._expires:
                answer = self._client.get_secret_value(SecretId=self._secret_id)
                value = answer["SecretString"] if "SecretString" in answer else answer["SecretBinary"]
                text = value.decode() if isinstance(value, bytes) else str(value)
                self._value = text.strip()
                self._expires = time.monotonic() + self._max_age
            return self._value

    def __repr__(self) -> str:
        return f"SecretKeyProvider({self._secret_id!r})"


class StaticKeyProvider:
    def __init__(self, key: str):
        self._key = key

    def __call__(self, force_refresh: bool = False) -> str:
        return self._key

    def __repr__(self) -> str:
        return "StaticKeyProvider(<redacted>)"


AUTH_ERROR_METRIC = "ReditusAuthError"  # template.yaml's ReditusAuthErrorAlarm watches it


class PowertoolsTelemetry:
    """Metrics for the domain's events and X-Ray subsegments around its Reditus and store calls.

    Records are handled on several threads: metrics take a lock, and each record's thread adopts
    the handler's trace entity (`trace_parent` / `adopt_trace_parent`), because the X-Ray SDK keeps
    one trace context per thread and would otherwise hang the record's subsegments off a
    per-thread copy of the function's segment instead of under the handler's subsegment.
    """

    def __init__(self, metrics: Metrics, tracer: Tracer | None = None):
        from aws_lambda_powertools.metrics import MetricUnit

        self._metrics = metrics
        self._unit = MetricUnit
        self._lock = threading.Lock()
        # The X-Ray recorder (Powertools' default provider); None while tracing is off.
        self._xray: Any = tracer.provider if tracer is not None and not tracer.disabled else None

    def span(self, name: str) -> AbstractContextManager[object]:
        if self._xray is None:
            return nullcontext()
        return cast("AbstractContextManager[object]", self._xray.in_subsegment(name=name))

    def trace_parent(self) -> object | None:
        """The calling thread's current trace entity (None when tracing is off)."""
        return None if self._xray is None else self._xray.get_trace_entity()

    def adopt_trace_parent(self, parent: object | None) -> None:
        if self._xray is not None and parent is not None:
            self._xray.set_trace_entity(parent)

    def outcome(self, outcome: Outcome) -> None:
        with self._lock:
            self._metrics.add_metric(name=f"Outcome_{outcome.value}", unit=self._unit.Count, value=1)

    def reditus_call(self, answer: RefundAnswer) -> None:
        with self._lock:
            self._metrics.add_metric(
                name="ReditusLatency", unit=self._unit.Milliseconds, value=answer.latency_ms
            )
            if answer.attempts > 1:
                self._metrics.add_metric(
                    name="ReditusRetries", unit=self._unit.Count, value=answer.attempts - 1
                )

    def auth_error(self) -> None:
        with self._lock:
            self._metrics.add_metric(name=AUTH_ERROR_METRIC, unit=self._unit.Count, value=1)

    def unidentified_invalid(self) -> None:
        with self._lock:
            self._metrics.add_metric(name="UnrecordedInvalidMessage", unit=self._unit.Count, value=1)


class RecheckSender:
    """Queues the 404 re-checks (submitter.DelayedSender) through the service's SQS client, which
    is made at the first one."""

    def __init__(self, service: SubmitterService, queue_url: str):
        self._service = service
        self._queue_url = queue_url

    def send(
        self, request: RefundRequest, delay_seconds: int = 0, attributes: Mapping[str, str] | None = None
    ) -> str:
        return RefundProducer(self._service.sqs, self._queue_url).send(request, delay_seconds, attributes)


class Invocation:
    """One Lambda invocation: its deadline.

    A plain class: a dataclass is compiled at import, about 0.4 ms of every cold start."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: float):
        self.deadline = deadline


class SubmitterService:
    """The long-lived pieces of the Lambda (built once per execution environment)."""

    def __init__(
        self,
        settings: Settings,
        *,
        dynamodb: Any = None,
        sqs: Any = None,
        secrets: Any = None,
        telemetry: Telemetry | None = None,
        reditus: Any = None,
    ):
        self.settings = settings
        self.telemetry: Telemetry = telemetry or NoTelemetry()
        session = boto3.session.Session()
        self.dynamodb = dynamodb or session.client("dynamodb", config=AWS_CONFIG)
        # SQS is only called for a 404 re-check (a 404 inside the grace window): the client is made
        # at the first one, not at every cold start (about 6 ms of CPU; most first invocations
        # never send one). Made under a lock: the records of a batch run on several threads.
        self._session = session
        self._sqs = sqs
        self._sqs_lock = threading.Lock()
        if settings.reditus_api_key_secret:
            secrets = secrets or session.client("secretsmanager", config=AWS_CONFIG)
            key_provider: Any = SecretKeyProvider(
                settings.reditus_api_key_secret, secrets, settings.api_key_cache_seconds
            )
        else:
            key_provider = StaticKeyProvider(settings.reditus_api_key)
        self.store = HistoryWriter(settings.history_table_name, self.dynamodb)
        self.reditus = reditus or ReditusClient(
            settings.reditus_api_base_url,
            key_provider,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_attempts=settings.max_attempts,
            backoff_base=settings.backoff_base,
            backoff_cap=settings.backoff_cap,
            pool_size=settings.max_concurrency,
            rate_limiter=RateLimiter(settings.max_requests_per_second),
        )
        requeue = RecheckSender(self, settings.refund_queue_url) if settings.refund_queue_url else None
        self.submitter = RefundSubmitter(
            self.store,
            self.reditus,
            requeue,
            SubmitterConfig(
                not_found_grace_seconds=settings.not_found_grace_seconds,
                not_found_recheck_delay_seconds=settings.not_found_recheck_delay_seconds,
                max_receive_count=settings.max_receive_count,
            ),
            telemetry=self.telemetry,
        )
        self.executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="refund")
        self.current: Invocation | None = None

    @property
    def sqs(self) -> Any:
        """The SQS client, made at first use (see __init__)."""
        with self._sqs_lock:
            if self._sqs is None:
                self._sqs = self._session.client("sqs", config=AWS_CONFIG)
            return self._sqs

    @contextmanager
    def invocation(self, remaining_ms: int) -> Iterator[Invocation]:
        """One Lambda invocation: its deadline. (The day counters follow the table's stream in a
        function of their own, counter_stream.py: nothing is owed at the invocation's end.)"""
        current = Invocation(deadline=time.monotonic() + remaining_ms / 1000.0)
        self.current = current
        try:
            yield current
        finally:
            self.current = None

    def handle(self, message: InboundMessage) -> Outcome:
        current = self.current
        if current is None:
            raise RuntimeError("handle() called outside an invocation")
        return self.submitter.process(message, current.deadline)


def inbound_from_record(record: dict[str, Any]) -> InboundMessage:
    """Translate a Lambda SQS record (a dict, as in the event) into the domain's message."""
    attributes = record.get("attributes") or {}
    sent_at = None
    sent = attributes.get("SentTimestamp")
    if sent:
        sent_at = iso(datetime.fromtimestamp(int(sent) / 1000, tz=UTC))
    try:
        receive_count = int(attributes.get("ApproximateReceiveCount", "1"))
    except ValueError:
        receive_count = 1
    # Lambda's shape: {"name": {"stringValue": "...", "dataType": "String"}}; only strings count.
    message_attributes = {
        str(name): value["stringValue"]
        for name, value in (record.get("messageAttributes") or {}).items()
        if isinstance(value, dict) and isinstance(value.get("stringValue"), str)
    }
    return InboundMessage(
        message_id=str(record.get("messageId")),
        body=record.get("body"),
        receive_count=receive_count,
        sent_at=sent_at,
        attributes=message_attributes,
    )
