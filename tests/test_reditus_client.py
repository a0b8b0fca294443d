"""ReditusClient: classification, retries inside a deadline, the key handled as a secret."""

from __future__ import annotations

import json
import random
import time

import pytest
from reditus_local.simulator import DEMO_REFUNDABLE, ReditusSimulator

from reditus_refunds import USER_AGENT
from reditus_refunds.reditus import RateLimiter, ReditusClient, Verdict, classify

from .conftest import API_KEY

BLANK = "Validation failed: payment_id can't be blank"


@pytest.mark.parametrize(
    ("status", "body", "verdict", "detail"),
    [
        (200, '{"message": "ok"}', Verdict.REFUNDED, "ok"),
        (200, "<html>", Verdict.REFUNDED, "unexpected body: <html>"),
        (
            400,
            json.dumps({"errors": [{"title": "Bad Request", "details": BLANK}]}),
            Verdict.REJECTED,
            BLANK,
        ),
        (
            404,
            '{"errors": [{"title": "Not Found", "details": "Payment not found"}]}',
            Verdict.NOT_FOUND,
            "Payment not found",
        ),
        (401, "", Verdict.AUTH_ERROR, "Reditus refused our API key (HTTP 401): no body"),
        (
            403,
            '{"errors": [{"title": "Forbidden"}]}',
            Verdict.AUTH_ERROR,
            "Reditus refused our API key (HTTP 403): Forbidden",
        ),
        (429, "slow down", Verdict.TRANSIENT, "HTTP 429: slow down"),
        (500, "", Verdict.TRANSIENT, "HTTP 500: no body"),
        (502, "<html>bad gateway</html>", Verdict.TRANSIENT, "HTTP 502: <html>bad gateway</html>"),
        (
            409,
            '{"errors": [{"details": "already refunded"}]}',
            Verdict.FAILED,
            "unexpected HTTP 409: already refunded",
        ),
        (422, "nope", Verdict.FAILED, "unexpected HTTP 422: nope"),
        (302, "", Verdict.FAILED, "unexpected HTTP 302: no body"),
    ],
)
def test_classification(status: int, body: str, verdict: Verdict, detail: str) -> None:
    answer = classify(status, body, None, 5, 1)
    assert (answer.verdict, answer.http_status, answer.detail) == (verdict, status, detail)


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert classify(429, "", "7", 1, 1).retry_after == 7.0
    assert classify(503, "", "Wed, 21 Oct 2015 07:28:00 GMT", 1, 1).retry_after == 0.0  # in the past
    assert classify(429, "", "soon", 1, 1).retry_after is None


def test_an_echoed_key_is_redacted_from_details() -> None:
    answer = classify(401, f'{{"errors": [{{"details": "bad key {API_KEY}"}}]}}', None, 1, 1, secret=API_KEY)
    assert API_KEY not in answer.detail and "[redacted]" in answer.detail


def test_backoff_is_capped_full_jitter() -> None:
    client = ReditusClient(
        "http://127.0.0.1:9", lambda _: API_KEY, backoff_base=0.5, backoff_cap=4.0, rng=random.Random(1)
    )
    for attempt in range(8):
        values = [client.backoff(attempt) for _ in range(200)]
        bound = min(4.0, 0.5 * 2**attempt)
        assert all(0 <= v <= bound for v in values)
        assert max(values) > bound * 0.8  # spread over the whole range, not a fixed delay


@pytest.fixture
def sim() -> ReditusSimulator:
    with ReditusSimulator(API_KEY) as simulator:
        yield simulator


def test_request_shape(sim: ReditusSimulator) -> None:
    seen: list[dict] = []
    client = ReditusClient(sim.base_url, lambda _: API_KEY)
    original = client.session.post

    def spy(url, **kwargs):
        seen.append({"url": url, **kwargs})
        return original(url, **kwargs)

    client.session.post = spy  # type: ignore[method-assign]
    answer = client.refund(DEMO_REFUNDABLE[0], time.monotonic() + 30)
    assert answer.verdict is Verdict.REFUNDED and answer.attempts == 1
    call = seen[0]
    assert call["url"] == sim.base_url + "/v1/refunds"
    assert call["json"] == {"payment_id": DEMO_REFUNDABLE[0]}
    assert call["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert call["timeout"] == (3.05, 10.0) and call["allow_redirects"] is False
    assert client.session.headers["User-Agent"] == USER_AGENT
    assert sim.records()[0].auth_ok


def test_one_session_is_reused(sim: ReditusSimulator) -> None:
    client = ReditusClient(sim.base_url, lambda _: API_KEY)
    session = client.session
    for payment in DEMO_REFUNDABLE[:3]:
        client.refund(payment, time.monotonic() + 30)
    assert client.session is session


def test_a_rejected_key_is_fetched_again_once(sim: ReditusSimulator) -> None:
    asked: list[bool] = []

    def key(force: bool) -> str:
        asked.append(force)
        return API_KEY if force else "stale-key"

    answer = ReditusClient(sim.base_url, key).refund(DEMO_REFUNDABLE[0], time.monotonic() + 30)
    assert answer.verdict is Verdict.REFUNDED and asked == [False, True]


def test_a_wrong_key_stays_an_auth_error(sim: ReditusSimulator) -> None:
    answer = ReditusClient(sim.base_url, lambda _: "wrong").refund(DEMO_REFUNDABLE[0], time.monotonic() + 30)
    assert answer.verdict is Verdict.AUTH_ERROR and answer.attempts == 2
    assert "wrong" not in answer.detail


def test_transient_then_success_inside_one_call(sim: ReditusSimulator) -> None:
    sim.configure(fault_rate=1.0, faults=("503",))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        sim.configure(fault_rate=0.0)  # Reditus recovers while we back off

    client = ReditusClient(sim.base_url, lambda _: API_KEY, sleep=sleep, backoff_base=0.2)
    answer = client.refund(DEMO_REFUNDABLE[0], time.monotonic() + 30)
    assert answer.verdict is Verdict.REFUNDED and answer.attempts == 2
    assert len(slept) == 1 and 0 <= slept[0] <= 0.2


def test_retry_after_overrides_a_shorter_backoff(sim: ReditusSimulator) -> None:
    sim.configure(fault_rate=1.0, faults=("429",), retry_after=3)
    slept: list[float] = []
    client = ReditusClient(
        sim.base_url, lambda _: API_KEY, sleep=slept.append, max_attempts=3, backoff_base=0.01
    )
    answer = client.refund(DEMO_REFUNDABLE[0], time.monotonic() + 60)
    assert answer.verdict is Verdict.TRANSIENT and answer.http_status == 429
    assert slept == [3.0, 3.0]


def test_no_retry_that_would_pass_the_deadline(sim: ReditusSimulator) -> None:
    sim.configure(fault_rate=1.0, faults=("429",), retry_after=20)
    slept: list[float] = []
    client = ReditusClient(sim.base_url, lambda _: API_KEY, sleep=slept.append)
    answer = client.refund(DEMO_REFUNDABLE[0], time.monotonic() + 10)
    assert answer.verdict is Verdict.TRANSIENT and answer.attempts == 1 and slept == []


def test_no_call_at_all_without_time_left(sim: ReditusSimulator) -> None:
    answer = ReditusClient(sim.base_url, lambda _: API_KEY).refund(DEMO_REFUNDABLE[0], time.monotonic() - 1)
    assert answer.verdict is Verdict.TRANSIENT and answer.attempts == 0
    assert sim.records() == []


def test_rate_limiter_spaces_requests() -> None:
    now = [100.0]
    limiter = RateLimiter(per_second=2.0, clock=lambda: now[0])
    assert limiter.wait(deadline=1000)  # first slot: now
    # The next two slots are 0.5 s and 1.0 s later; one past the deadline is refused.
    assert not limiter.wait(deadline=100.2)
    assert RateLimiter(0).wait(deadline=0)
