"""The Reditus API simulator: contract answers, faults, late payments, control API and CLI.

Real HTTP on 127.0.0.1; no sleeping as synchronisation (the simulator's clock is a fake one).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from reditus_local.simulator import (
    DEMO_INVALID,
    DEMO_LATE,
    DEMO_REFUNDABLE,
    DEMO_UNKNOWN,
    DETAIL_BLANK,
    DETAIL_INVALID,
    DETAIL_NOT_FOUND,
    DETAIL_UNAUTHORIZED,
    ECHO_FORMS,
    FAULT_KINDS,
    PortInUseError,
    ReditusSimulator,
    echo_forms,
)

KEY = "sim-test-key-7f3a9c"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 5
FUNCTIONS_DIR = Path(__file__).resolve().parents[1] / "functions"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[ReditusSimulator]:
    simulator = ReditusSimulator(
        KEY, payments=("pay_ok", "pay_ok_2"), invalid=("pay_bad",), late=(), clock=clock, slow_seconds=30
    )
    with simulator:
        yield simulator


def refund(
    sim: ReditusSimulator, payment_id: Any = None, headers: dict[str, str] | None = None, **kw: Any
) -> requests.Response:
    body = {} if payment_id is None else {"payment_id": payment_id}
    return requests.post(
        sim.url, json=body, headers=AUTH if headers is None else headers, timeout=TIMEOUT, **kw
    )


def errors(title: str, details: str) -> dict[str, Any]:
    return {"errors": [{"title": title, "details": details}]}


# -- the contract ---------------------------------------------------------------------------------


def test_known_payment_is_refunded(sim: ReditusSimulator, clock: FakeClock) -> None:
    assert sim.base_url.startswith("http://127.0.0.1:")
    assert sim.url == sim.base_url + "/v1/refunds"
    response = refund(sim, "pay_ok")
    assert response.status_code == 200
    assert response.json() == {"message": "ok"}
    assert response.headers["Content-Type"].startswith("application/json")
    [record] = sim.records()
    assert (record.method, record.path, record.payment_id) == ("POST", "/v1/refunds", "pay_ok")
    assert (record.auth_ok, record.status, record.fault, record.applied) == (True, 200, None, True)
    assert record.at == clock.now
    assert sim.applied_count("pay_ok") == 1
    assert sim.successful_refunds() == ["pay_ok"]


@pytest.mark.parametrize("body", [{}, {"payment_id": ""}, {"payment_id": "   "}, {"payment_id": None}, []])
def test_blank_payment_id_is_400(sim: ReditusSimulator, body: Any) -> None:
    response = requests.post(sim.url, json=body, headers=AUTH, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.json() == errors("Bad Request", DETAIL_BLANK)
    assert sim.records()[0].applied is False


def test_configured_invalid_payment_is_400(sim: ReditusSimulator) -> None:
    response = refund(sim, "pay_bad")
    assert response.status_code == 400
    assert response.json() == errors("Bad Request", DETAIL_INVALID)
    sim.add_invalid("pay_other_bad")
    assert refund(sim, "pay_other_bad").json() == errors("Bad Request", DETAIL_INVALID)
    assert refund(sim, {"an": "object"}).status_code == 400
    assert sim.successful_refunds() == []


def test_bad_json_is_400(sim: ReditusSimulator) -> None:
    response = requests.post(
        sim.url, data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["title"] == "Bad Request"
    assert sim.records()[0].payment_id is None


@pytest.mark.parametrize(
    "body", [b'{"payment_id": ' + b"1" * 5_000 + b"}", b"[" * 5_000 + b"]" * 5_000, b"\xff{}"]
)
def test_a_body_json_cannot_read_is_400_not_a_hang_up(sim: ReditusSimulator, body: bytes) -> None:
    """Python's json raises ValueError (not JSONDecodeError) for a 5,000-digit number."""
    response = requests.post(sim.url, data=body, headers=AUTH, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.json()["errors"][0]["details"] == "Invalid JSON body"


def test_unknown_payment_is_404(sim: ReditusSimulator) -> None:
    response = refund(sim, "pay_nope")
    assert response.status_code == 404
    assert response.json() == errors("Not Found", DETAIL_NOT_FOUND)
    assert sim.records()[0].applied is False
    sim.add_payment("pay_nope")
    assert refund(sim, "pay_nope").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong-key", "wrong-scheme", "empty"],
)
def test_missing_or_wrong_key_is_401(sim: ReditusSimulator, headers: dict[str, str]) -> None:
    response = refund(sim, "pay_ok", headers=headers)
    assert response.status_code == 401
    assert response.json()["errors"][0]["title"] == "Unauthorized"
    [record] = sim.records()
    assert (record.auth_ok, record.status, record.applied) == (False, 401, False)
    assert sim.applied_count("pay_ok") == 0
    # Authentication comes before validation.
    assert refund(sim, "", headers=headers).status_code == 401


def test_bearer_scheme_is_case_insensitive(sim: ReditusSimulator) -> None:
    assert refund(sim, "pay_ok", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_second_refund_of_the_same_payment_answers_200_again(sim: ReditusSimulator) -> None:
    assert refund(sim, "pay_ok").status_code == 200
    second = refund(sim, "pay_ok")
    assert second.status_code == 200
    assert second.json() == {"message": "ok"}
    assert sim.applied_count("pay_ok") == 2  # every 200 counts: duplicates are visible to tests
    assert sim.successful_refunds() == ["pay_ok"]


def test_wrong_route_is_404_and_recorded(sim: ReditusSimulator) -> None:
    response = requests.get(sim.url, headers=AUTH, timeout=TIMEOUT)
    assert response.status_code == 404
    response = requests.post(sim.root_url + "/v2/refunds", json={"payment_id": "pay_ok"}, timeout=TIMEOUT)
    assert response.status_code == 404
    assert [r.status for r in sim.records()] == [404, 404]
    assert sim.successful_refunds() == []


def test_path_prefix() -> None:
    with ReditusSimulator(KEY, path_prefix="api/", payments=("pay_ok",)) as sim:
        assert sim.base_url.endswith("/api")
        assert sim.url.endswith("/api/v1/refunds")
        assert refund(sim, "pay_ok").status_code == 200
        unprefixed = requests.post(sim.root_url + "/v1/refunds", json={"payment_id": "pay_ok"}, headers=AUTH)
        assert unprefixed.status_code == 404
        assert requests.get(sim.control_url + "/health", timeout=TIMEOUT).status_code == 200


def test_keep_alive_connections_stay_in_step(sim: ReditusSimulator) -> None:
    with requests.Session() as session:
        statuses = [
            session.post(sim.url, json={"payment_id": pid}, headers=headers, timeout=TIMEOUT).status_code
            for pid, headers in [("pay_ok", {}), ("pay_ok", AUTH), ("", AUTH), ("pay_nope", AUTH)]
        ]
    assert statuses == [401, 200, 400, 404]


def test_concurrent_requests_are_all_recorded(sim: ReditusSimulator) -> None:
    ids = [f"pay_c{i}" for i in range(20)]
    for payment_id in ids:
        sim.add_payment(payment_id)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda pid: refund(sim, pid).status_code, ids))
    assert statuses == [200] * 20
    assert len(sim.records()) == 20
    assert sorted(sim.successful_refunds()) == sorted(ids)


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [0, 7])
def test_fault_429_has_retry_after(sim: ReditusSimulator, retry_after: int) -> None:
    sim.configure(fault_rate=1.0, faults=["429"], retry_after=retry_after)
    response = refund(sim, "pay_ok")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == str(retry_after)
    [record] = sim.records()
    assert (record.status, record.fault, record.applied) == (429, "429", False)
    assert sim.applied_count("pay_ok") == 0


@pytest.mark.parametrize("status", [500, 503])
def test_fault_5xx(sim: ReditusSimulator, status: int) -> None:
    sim.configure(fault_rate=1.0, faults=[str(status)])
    response = refund(sim, "pay_ok")
    assert response.status_code == status
    assert "errors" in response.json()
    [record] = sim.records()
    assert (record.status, record.fault, record.applied) == (status, str(status), False)


def test_fault_slow_times_out_the_client_but_applies_the_refund(sim: ReditusSimulator) -> None:
    sim.configure(fault_rate=1.0, faults=["slow"], slow_seconds=30)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(sim.url, json={"payment_id": "pay_ok"}, headers=AUTH, timeout=(TIMEOUT, 0.3))
    [record] = sim.wait_for_records(1)
    assert (record.status, record.fault, record.applied) == (200, "slow", True)
    assert sim.applied_count("pay_ok") == 1
    assert sim.successful_refunds() == ["pay_ok"]
    # The fixture's stop() does not wait the 30 s out.


def test_fault_slow_answers_eventually(sim: ReditusSimulator) -> None:
    sim.configure(fault_rate=1.0, faults=["slow"], slow_seconds=0.05)
    response = refund(sim, "pay_ok")
    assert response.status_code == 200
    assert sim.records()[0].fault == "slow"


@pytest.mark.parametrize("drop_applies", [False, True])
def test_fault_drop_closes_the_connection(sim: ReditusSimulator, drop_applies: bool) -> None:
    sim.configure(fault_rate=1.0, faults=["drop"], drop_applies=drop_applies)
    with pytest.raises(requests.exceptions.ConnectionError):
        refund(sim, "pay_ok")
    [record] = sim.records()
    assert (record.status, record.fault, record.applied) == (None, "drop", drop_applies)
    assert sim.applied_count("pay_ok") == int(drop_applies)


def test_faults_are_reproducible_from_the_seed() -> None:
    def run(seed: int) -> list[str | None]:
        with ReditusSimulator(
            KEY, payments=("pay_ok",), fault_rate=0.5, faults=["429", "500", "503"], seed=seed
        ) as sim:
            with requests.Session() as session:
                for _ in range(30):
                    session.post(sim.url, json={"payment_id": "pay_ok"}, headers=AUTH, timeout=TIMEOUT)
            return [r.fault for r in sim.records()]

    first, again, other = run(42), run(42), run(43)
    assert first == again
    assert first != other
    assert None in first and len(set(first)) > 2


def test_fault_rate_zero_and_no_kinds_mean_no_faults(sim: ReditusSimulator) -> None:
    sim.configure(fault_rate=1.0, faults=[])
    assert refund(sim, "pay_ok").status_code == 200
    with pytest.raises(ValueError, match="fault_rate"):
        sim.configure(fault_rate=1.5)
    with pytest.raises(ValueError, match="unknown fault"):
        sim.configure(faults=["teapot"])


# -- late payments (the 404 grace window) ---------------------------------------------------------


def test_late_payment_is_404_until_it_arrives(sim: ReditusSimulator, clock: FakeClock) -> None:
    sim.add_late_payment("pay_late", 30)
    assert refund(sim, "pay_late").status_code == 404
    clock.advance(29.9)
    assert refund(sim, "pay_late").status_code == 404
    clock.advance(0.1)
    assert refund(sim, "pay_late").status_code == 200
    assert [r.applied for r in sim.records()] == [False, False, True]


def test_late_payment_from_the_constructor_counts_from_start(clock: FakeClock) -> None:
    simulator = ReditusSimulator(KEY, payments=(), late={"pay_late": 10}, clock=clock)
    clock.advance(100)  # time before start() does not count
    with simulator as sim:
        assert refund(sim, "pay_late").status_code == 404
        clock.advance(10)
        assert refund(sim, "pay_late").status_code == 200


# -- outage and the control API -------------------------------------------------------------------


def test_outage_toggled_through_the_control_api(sim: ReditusSimulator) -> None:
    config = sim.control_url + "/config"
    assert requests.post(config, json={"outage": True}, timeout=TIMEOUT).json()["outage"] is True
    response = refund(sim, "pay_ok")
    assert response.status_code == 503
    assert refund(sim, "pay_ok", headers={}).status_code == 503  # before authentication

    requests.post(config, json={"outage_mode": "drop"}, timeout=TIMEOUT).raise_for_status()
    with pytest.raises(requests.exceptions.ConnectionError):
        refund(sim, "pay_ok")

    requests.post(config, json={"outage": False}, timeout=TIMEOUT).raise_for_status()
    assert refund(sim, "pay_ok").status_code == 200
    assert [(r.status, r.fault, r.applied) for r in sim.records()] == [
        (503, "outage", False),
        (503, "outage", False),
        (None, "outage", False),
        (200, None, True),
    ]


def test_set_outage_in_process(sim: ReditusSimulator) -> None:
    sim.set_outage(True)
    assert refund(sim, "pay_ok").status_code == 503
    sim.set_outage(True, mode="drop")
    with pytest.raises(requests.exceptions.ConnectionError):
        refund(sim, "pay_ok")
    sim.set_outage(False)
    assert (sim.knobs.outage, sim.knobs.outage_mode) == (False, "drop")
    assert refund(sim, "pay_ok").status_code == 200


def test_control_api_records_and_refunds(sim: ReditusSimulator) -> None:
    refund(sim, "pay_ok")
    refund(sim, "pay_nope")
    refund(sim, "pay_ok", headers={})
    records = requests.get(sim.control_url + "/requests", timeout=TIMEOUT).json()
    assert [(r["payment_id"], r["status"], r["auth_ok"], r["applied"]) for r in records] == [
        ("pay_ok", 200, True, True),
        ("pay_nope", 404, True, False),
        ("pay_ok", 401, False, False),
    ]
    assert set(records[0]) == {
        "seq",
        "at",
        "received_at",
        "method",
        "path",
        "payment_id",
        "auth_ok",
        "status",
        "fault",
        "applied",
    }
    later = requests.get(sim.control_url + "/requests", params={"since": 1}, timeout=TIMEOUT).json()
    assert [r["seq"] for r in later] == [1, 2]
    only = requests.get(
        sim.control_url + "/requests", params={"payment_id": "pay_ok"}, timeout=TIMEOUT
    ).json()
    assert [r["status"] for r in only] == [200, 401]
    refunds = requests.get(sim.control_url + "/refunds", timeout=TIMEOUT).json()
    assert refunds == {"applied": {"pay_ok": 1}, "successful": ["pay_ok"]}
    health = requests.get(sim.control_url + "/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["requests"] == 3 and health["base_url"] == sim.base_url


def test_control_api_config_adds_payments(sim: ReditusSimulator, clock: FakeClock) -> None:
    response = requests.post(
        sim.control_url + "/config",
        json={
            "fault_rate": 0.0,
            "latency": 0.0,
            "add_payments": ["pay_new"],
            "add_invalid": ["pay_new_bad"],
            "add_late": {"pay_new_late": 5},
        },
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    config = response.json()
    assert "pay_new" in config["payments"] and "pay_new_bad" in config["invalid"]
    assert config["late"]["pay_new_late"]["known"] is False
    assert refund(sim, "pay_new").status_code == 200
    assert refund(sim, "pay_new_bad").status_code == 400
    assert refund(sim, "pay_new_late").status_code == 404
    clock.advance(5)
    assert refund(sim, "pay_new_late").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"fault_rate": 2},
        {"faults": ["teapot"]},
        {"nonsense": 1},
        {"add_payments": "pay"},
        {"latency": -1},
        {"echo_key": ["rot13"]},
        [1],
    ],
)
def test_control_api_rejects_bad_config(sim: ReditusSimulator, body: Any) -> None:
    before = sim.config()
    response = requests.post(sim.control_url + "/config", json=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.json()["error"]
    assert sim.config() == before


def test_control_api_reset(sim: ReditusSimulator) -> None:
    sim.add_payment("pay_extra")
    refund(sim, "pay_ok")
    sim.configure(outage=True)
    response = requests.post(sim.control_url + "/reset", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["outage"] is False
    assert sim.records() == []
    assert sim.successful_refunds() == []
    assert refund(sim, "pay_extra").status_code == 404
    assert refund(sim, "pay_ok").status_code == 200


def test_control_api_can_be_switched_off() -> None:
    with ReditusSimulator(KEY, control_api=False) as sim:
        assert requests.get(sim.control_url + "/health", timeout=TIMEOUT).status_code == 404


# -- lifecycle, safety ----------------------------------------------------------------------------


def test_demo_payments_are_seeded() -> None:
    with ReditusSimulator(KEY) as sim:
        assert refund(sim, DEMO_REFUNDABLE[0]).status_code == 200
        assert refund(sim, DEMO_INVALID[0]).status_code == 400
        assert refund(sim, DEMO_UNKNOWN[0]).status_code == 404
        assert refund(sim, DEMO_LATE[0][0]).status_code == 404
    assert set(DEMO_REFUNDABLE).isdisjoint(DEMO_INVALID + DEMO_UNKNOWN)
    assert set(FAULT_KINDS) == {"429", "500", "503", "slow", "drop"}


def test_binds_loopback_and_names_a_taken_port() -> None:
    with ReditusSimulator(KEY) as sim:
        assert sim.host == "127.0.0.1"
        other = ReditusSimulator(KEY, port=sim.port)
        with pytest.raises(PortInUseError, match=str(sim.port)):
            other.start()
    assert not sim.running
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(sim.url, json={"payment_id": "pay_demo_1001"}, headers=AUTH, timeout=TIMEOUT)


def test_stop_hangs_up_kept_alive_connections() -> None:
    sim = ReditusSimulator(KEY).start()
    url = sim.url
    with requests.Session() as session:
        assert session.post(url, json={"payment_id": DEMO_REFUNDABLE[0]}, headers=AUTH).status_code == 200
        sim.stop()
        with pytest.raises(requests.exceptions.ConnectionError):
            session.post(url, json={"payment_id": DEMO_REFUNDABLE[0]}, headers=AUTH, timeout=TIMEOUT)
    assert len(sim.records()) == 1


def test_the_key_is_never_logged_or_shown(sim: ReditusSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    refund(sim, "pay_ok")
    refund(sim, "pay_ok", headers={"Authorization": "Bearer wrong"})
    assert caplog.records, "the simulator logs requests at debug level"
    shown = [caplog.text, repr(sim), str(sim.config()), str([r.to_dict() for r in sim.records()])]
    shown.append(requests.get(sim.control_url + "/config", timeout=TIMEOUT).text)
    assert not [text for text in shown if KEY in text]


# -- the echo_key knob: a careless API repeating the key it was sent ------------------------------


def test_echo_forms_are_all_different_and_all_hold_the_key() -> None:
    key = "rk_live/0123456789abcdef0123456789"
    forms = echo_forms(key)
    assert tuple(forms) == ECHO_FORMS
    assert len(set(forms.values())) == len(forms)
    assert forms["json"].startswith("\\u0072\\u006b") and forms["json_first"].startswith("\\u0072k_live")
    assert forms["slashes"] == "rk_live\\/0123456789abcdef0123456789"
    assert forms["url"].startswith("%72%6B%5F") and forms["masked"] == "rk_live/01" + "*" * 20 + "6789"


def test_echo_key_is_off_by_default(sim: ReditusSimulator) -> None:
    response = refund(sim, "pay_unknown")
    assert response.json() == errors("Not Found", DETAIL_NOT_FOUND)
    assert sim.config()["echo_key"] == []


def test_echo_key_repeats_the_presented_key_in_every_error_body(clock: FakeClock) -> None:
    with ReditusSimulator(KEY, payments=("pay_ok",), late=(), clock=clock, echo_key="all") as sim:
        wrong = "wrong-key-0123456789"
        unauthorized = refund(sim, "pay_ok", headers={"Authorization": f"Bearer {wrong}"})
        not_found = refund(sim, "pay_unknown")
        ok = refund(sim, "pay_ok")
        sim.configure(fault_rate=1.0, faults=("503",))
        unavailable = refund(sim, "pay_ok")
        no_key = refund(sim, "pay_ok", headers={})
        config = sim.config()
    echoes = {
        wrong: unauthorized.json()["errors"][0]["details"],
        KEY: not_found.json()["errors"][0]["details"],
    }
    assert echoes[wrong].startswith(DETAIL_UNAUTHORIZED + " (key received: ")
    for key, details in echoes.items():
        assert all(form in details for form in echo_forms(key).values()), details
    assert all(form in unavailable.json()["errors"][0]["details"] for form in echo_forms(KEY).values())
    assert ok.json() == {"message": "ok"}  # a success body is left alone
    assert "key received" not in no_key.text  # nothing presented, nothing to echo
    assert config["echo_key"] == list(ECHO_FORMS) and KEY not in str(config)


def test_echo_key_through_the_control_api(sim: ReditusSimulator) -> None:
    answer = requests.post(sim.control_url + "/config", json={"echo_key": "upper,url"}, timeout=TIMEOUT)
    assert answer.json()["echo_key"] == ["upper", "url"]
    details = refund(sim, "pay_unknown").json()["errors"][0]["details"]
    assert details == f"{DETAIL_NOT_FOUND} (key received: {KEY.upper()}, {echo_forms(KEY)['url']})"
    sim.configure(echo_key=())
    assert refund(sim, "pay_unknown").json() == errors("Not Found", DETAIL_NOT_FOUND)


def test_needs_a_key() -> None:
    with pytest.raises(ValueError, match="API key"):
        ReditusSimulator("")


# -- as its own process ---------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDITUS_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FUNCTIONS_DIR), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _first_line(proc: subprocess.Popen[str], timeout: float = 15) -> str:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def test_runs_as_a_process_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "reditus_local.simulator", "--port", "0"]
    command += ["--late", "pay_cli_late:0", "--payment", "pay_cli"]
    proc = subprocess.Popen(
        command,
        env=_env(REDITUS_API_KEY=KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _first_line(proc)
        assert line.startswith("Reditus simulator ready: http://127.0.0.1:")
        base_url = line.split(": ", 1)[1].strip()
        assert requests.post(f"{base_url}/v1/refunds", json={"payment_id": "pay_cli"}, headers=AUTH).ok
        late = requests.post(f"{base_url}/v1/refunds", json={"payment_id": "pay_cli_late"}, headers=AUTH)
        assert late.status_code == 200
        assert (
            requests.post(f"{base_url}/v1/refunds", json={"payment_id": "pay_demo_1001"}).status_code == 401
        )
        records = requests.get(f"{base_url}/_sim/requests", timeout=TIMEOUT).json()
        assert [r["status"] for r in records] == [200, 200, 401]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert KEY not in line + out + err


def test_the_echo_key_flag() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reditus_local.simulator", "--port", "0", "--echo-key", "base64,masked"],
        env=_env(REDITUS_API_KEY=KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = _first_line(proc).split(": ", 1)[1].strip()
        answer = requests.post(f"{base_url}/v1/refunds", json={"payment_id": "pay_nope"}, headers=AUTH)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    forms = echo_forms(KEY)
    assert answer.json()["errors"][0]["details"].endswith(
        f"(key received: {forms['base64']}, {forms['masked']})"
    )
    refused = subprocess.run(
        [sys.executable, "-m", "reditus_local.simulator", "--echo-key", "rot13"],
        env=_env(REDITUS_API_KEY=KEY),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "unknown form(s) ['rot13']" in refused.stderr


def test_process_refuses_to_start_without_a_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reditus_local.simulator", "--port", "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "REDITUS_API_KEY" in result.stderr
