"""ReditusClient: classification, retries inside a deadline, the key handled as a secret."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from reditus_local.simulator import DEMO_REFUNDABLE, ECHO_FORMS, ReditusSimulator, echo_forms
from reditus_refunds import USER_AGENT, reditus
from reditus_refunds.reditus import RateLimiter, ReditusClient, Verdict, classify, redact

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


# ---- the key's redaction ------------------------------------------------------------------------------
# Slashes, so the escaped-slash form differs from the plain one.
ECHO_KEY = "rk_live/2f9c41d07be85a36/c1e0f7a4b9d2"
WRONG_KEY = "rk_live/9a8b7c6d5e4f3a2b/1c0d9e8f7a6b"


def fragments(key: str) -> dict[str, str]:
    """What a detail must not hold, by echo form: the form's text, or for the cut and masked forms the
    part of the key they show. Written from the simulator's texts, not from the redaction's rules."""
    forms = echo_forms(key)
    third = len(key) * 2 // 3
    return {**forms, "prefix": key[:third], "suffix": key[-third:], "masked": key[:10]}


def shown(detail: str, key: str) -> list[str]:
    """The forms of the key a detail shows, even in part (either half of a form's text)."""
    found = []
    for form, text in fragments(key).items():
        half = len(text) // 2
        if any(part in detail for part in (text, text[:half], text[half:])):
            found.append(form)
    if key.lower() in detail.lower():
        found.append("any case")
    return found


@pytest.fixture
def echoing() -> Iterator[ReditusSimulator]:
    with ReditusSimulator(ECHO_KEY, late=()) as simulator:
        yield simulator


def _details_through_the_client(sim: ReditusSimulator) -> dict[str, tuple[str, str]]:
    """Three error answers, each through the real client: {what: (detail, the key the client sent)}."""
    deadline = time.monotonic() + 30
    right = ReditusClient(sim.base_url, lambda _: ECHO_KEY, max_attempts=1)
    wrong = ReditusClient(sim.base_url, lambda _: WRONG_KEY, max_attempts=1)
    answers = {"401": (wrong.refund(DEMO_REFUNDABLE[0], deadline), WRONG_KEY)}
    answers["404"] = (right.refund("pay_unknown", deadline), ECHO_KEY)
    sim.configure(fault_rate=1.0, faults=("503",))
    answers["503"] = (right.refund(DEMO_REFUNDABLE[0], deadline), ECHO_KEY)
    sim.configure(fault_rate=0.0)
    assert [a.http_status for a, _ in answers.values()] == [401, 404, 503]
    return {what: (answer.detail, key) for what, (answer, key) in answers.items()}


@pytest.mark.parametrize("form", ECHO_FORMS)
def test_an_echoed_key_never_reaches_the_detail_in_any_form(echoing: ReditusSimulator, form: str) -> None:
    echoing.configure(echo_key=(form,))
    for what, (detail, key) in _details_through_the_client(echoing).items():
        assert "(key received: " in detail and "[redacted]" in detail, (what, detail)  # still told
        assert not shown(detail, key), (what, form, detail)


@pytest.mark.parametrize("form", ECHO_FORMS)
def test_control_without_redaction_the_test_sees_the_key(
    echoing: ReditusSimulator, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same answers with the redaction switched off: the search above finds every form."""
    monkeypatch.setattr(reditus, "redact", lambda text, secret: text)
    echoing.configure(echo_key=(form,))
    for what, (detail, key) in _details_through_the_client(echoing).items():
        assert form in shown(detail, key), (what, detail)


def test_the_old_exact_match_redaction_misses_most_forms(
    echoing: ReditusSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the review found: replacing only the exact key lets the other forms through."""
    monkeypatch.setattr(reditus, "redact", lambda text, secret: text.replace(secret, "[redacted]"))
    echoing.configure(echo_key="all")
    detail, key = _details_through_the_client(echoing)["404"]
    assert key not in detail
    assert set(ECHO_FORMS) - {"plain"} <= set(shown(detail, key))


KEY = API_KEY  # "sk_test_7f3a9c2e1b8d4f6a0c5e9b2d7a1f3c8e"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"bad key {KEY}!", "bad key [redacted]!"),
        (f"bad key {KEY.upper()}", "bad key [redacted]"),
        (f"Bearer {KEY.title()}", "Bearer [redacted]"),
        ("k=" + "".join(f"\\u{ord(c):04X}" for c in KEY), "k=[redacted]"),
        ("k=\\u0073" + KEY[1:], "k=[redacted]"),
        ("k=" + "".join(f"\\x{ord(c):02x}" for c in KEY), "k=[redacted]"),
        ("k=" + urllib.parse.quote(KEY, safe=""), "k=[redacted]"),
        ("k=" + "".join(f"%{ord(c):02x}" for c in KEY), "k=[redacted]"),
        ("k=" + "".join(f"%5Cu{ord(c):04x}" for c in KEY), "k=[redacted]"),  # two layers
        ("k=" + "".join(f"&#{ord(c)};" for c in KEY), "k=[redacted]"),
        ("k=" + "".join(f"&#x{ord(c):x};" for c in KEY), "k=[redacted]"),
        ("k=" + base64.b64encode(KEY.encode()).decode(), "k=[redacted]"),
        ("k=" + base64.b64encode(f"Bearer {KEY}".encode()).decode(), "k=[redacted]"),
        ("k=" + base64.urlsafe_b64encode(f"u:{KEY}".encode()).decode().rstrip("="), "k=[redacted]"),
        ("k=" + KEY.encode().hex(), "k=[redacted]"),
        ("k=" + KEY.encode().hex().upper(), "k=[redacted]"),
        (f"k={KEY[:12]}...", "k=[redacted]..."),
        (f"k=...{KEY[-12:]}", "k=...[redacted]"),
        (f"k={KEY[:8]}{'*' * 24}{KEY[-4:]}", f"k=[redacted]{'*' * 24}{KEY[-4:]}"),
        (json.dumps(json.dumps({"d": KEY})), json.dumps(json.dumps({"d": "[redacted]"}))),
        (f"{KEY} and {KEY[5:20]}", "[redacted] and [redacted]"),
        # Fewer than 8 characters of the key are not the key; ordinary text is left as it is.
        (f"key ending {KEY[-7:]}", f"key ending {KEY[-7:]}"),
        ("Payment not found", "Payment not found"),
        ("Validation failed: payment_id can't be blank", "Validation failed: payment_id can't be blank"),
        ("", ""),
    ],
)
def test_the_redaction_rule(text: str, expected: str) -> None:
    assert redact(text, KEY) == expected
    assert redact(text, "") == text


def test_a_long_body_is_redacted_in_the_part_that_is_kept() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    body = "x" * 900 + escaped + "y" * 100_000
    detail = classify(502, body, None, 1, 1, secret=KEY).detail
    assert detail == "HTTP 502: " + "x" * 900 + "[redacted]" + "y" * 80


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


class FakeTime:
    """A clock that only moves when something sleeps on it: spacing is seen without waiting for it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds


def test_rate_limiter_spaces_requests() -> None:
    fake = FakeTime()
    limiter = RateLimiter(per_second=2.0, clock=fake.clock, sleep=fake.sleep)
    sent = []
    for _ in range(5):
        assert limiter.wait(deadline=1000)
        sent.append(fake.now)
    assert sent == [100.0, 100.5, 101.0, 101.5, 102.0]  # one every 0.5 s, the first at once
    assert fake.slept == [0.5] * 4
    fake.now += 10  # idle time is not made up for with a burst, nor slept again
    assert limiter.wait(deadline=1000) and fake.now == 112.0 and len(fake.slept) == 4
    # The next slot (112.5) is past this deadline: refused, without sleeping or taking the slot.
    assert not limiter.wait(deadline=112.2)
    assert len(fake.slept) == 4
    assert limiter.wait(deadline=1000) and fake.now == 112.5
    assert RateLimiter(0, clock=fake.clock, sleep=fake.sleep).wait(deadline=0)
    assert len(fake.slept) == 5


def test_rate_limiter_is_shared_by_threads() -> None:
    """Eight threads at the same instant get eight different slots: the reservation is atomic."""
    fake = FakeTime()
    limiter = RateLimiter(per_second=4.0, clock=lambda: 100.0, sleep=fake.sleep)
    start = threading.Barrier(8)

    def go() -> bool:
        start.wait(timeout=10)
        return limiter.wait(deadline=1000)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda _: go(), range(8)))
    assert sorted(fake.slept) == [0.25 * k for k in range(1, 8)]


def test_the_client_waits_for_the_limiter_before_each_call(sim: ReditusSimulator) -> None:
    fake = FakeTime(time.monotonic())
    limiter = RateLimiter(per_second=1.0, clock=fake.clock, sleep=fake.sleep)
    client = ReditusClient(sim.base_url, lambda _: API_KEY, rate_limiter=limiter)
    for payment in DEMO_REFUNDABLE[:3]:
        assert client.refund(payment, time.monotonic() + 30).verdict is Verdict.REFUNDED
    assert fake.slept == [1.0, 1.0] and len(sim.records()) == 3
