"""Nothing lost, nothing applied twice: the local system under injected faults, counted at the end.

Every scenario runs the real processes - the AWS server (moto), the Reditus simulator, and workers
running the real Lambda handler behind an emulated SQS event source mapping - and drives them from
outside: the producer side sends, a killer SIGKILLs workers, the simulator and DynamoDB fail on cue.
When the refund queue is drained, the history table is scanned, the dead-letter queue read and the
simulator asked what it saw; tests/soak/count.py turns that into the report.

* faults and duplicates - 20 % of Reditus calls fail transiently (429 with Retry-After, 500, 503,
  answers slower than the client's read timeout, dropped connections); every message is sent twice
  (same body, same refund_id); workers are SIGKILLed at random moments and restarted. 5 % of the
  payments are rejected (400), 5 % unknown (404) and a few asked for by two refund_ids.
* outage - the simulator answers 503 to everything for a while, with the shipped retry settings.
* store failure - DynamoDB writes fail for a while (botocore-level, tests/soak/faulty_worker.py).

Checked: every refund_id ends in exactly one terminal history outcome or a dead letter (none lost,
none settled twice); the simulator applied at most one successful refund per payment, except where a
kill fell between Reditus answering and the outcome being stored (reported on their own); the day
counters equal the history items.

`make test` runs the small version of each (about a minute together); `make soak` (``-m soak``) the
full ones - 2,000 requests, a 60 s outage with the shipped settings - and writes soak-report.json.

Time scaling. With the template's settings a killed invocation's messages come back after the
visibility timeout (360 s). The faults and store scenarios shorten it, keeping what correctness
needs: a lease (function timeout + 5 s, after the batching window of 1 s) must end before the
message comes back, so visibility > timeout + 6 s (small: 5 s timeout / 12 s visibility, store 8 / 15;
full: 12 / 20, store 20 / 30), and the Reditus client's timeouts are scaled with them (read 1 s and a
slow answer after 1.5 s; full: 2 s and 3 s). The outage scenario keeps every retry setting the
template ships (4 calls per delivery with 0.5-8 s backoff, 60 s function timeout, maxReceiveCount 5);
the full version also keeps the 360 s visibility timeout and a 60 s outage. The small version scales
only the visibility timeout (5 s) and makes the outage twice as long (10 s), i.e. 12 times harsher
than shipped (outage / visibility 2 instead of 1/6); a message could only dead-letter if the outage
outlasted (maxReceiveCount - 1) x visibility = 20 s.

Store failures. Each write-failure window is shorter than the function timeout minus a Reditus call,
so an invocation that got Reditus's answer could still store it by retrying until its deadline. The
small window fails every write with 500 InternalServerError for 3 s: botocore's own retries (25 ms
base for server errors) are used up within a second, so the refunds whose answer arrives in the
window find out whether the handler holds on to it. The full run adds throttling and answers lost
after the write was applied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from reditus_local.resources import moto_session
from reditus_operators.dlq import DeadLetter

from reditus_refunds.contract import RefundRequest
from tests.conftest import create_history_table
from tests.soak.count import Planned, problems, tally
from tests.soak.faulty_worker import WriteFaults
from tests.soak.scenarios import Result, Scenario, StoreWindow, run
from tests.soak.system import REPO_ROOT, Kill, Servers, StoreFaults, SystemSettings, dump, start_servers

API_KEY = "sk_soak_3b9e1c7a5f2d4e8b0a6c"
# What the template leaves to the shell, scaled for the faults scenario (see above).
SCALED_CLIENT = {
    "REDITUS_READ_TIMEOUT": "1",
    "REDITUS_CONNECT_TIMEOUT": "0.5",
    "REDITUS_BACKOFF_BASE": "0.05",
    "REDITUS_BACKOFF_CAP": "0.5",
}
# The full run keeps more room between an ordinary answer and a timeout: three workers share two cores.
SCALED_CLIENT_FULL = {**SCALED_CLIENT, "REDITUS_READ_TIMEOUT": "2", "REDITUS_CONNECT_TIMEOUT": "1"}
# No 404 grace window (a 404 is final at once); the handler logs warnings only.
PARAMETERS = {"NotFoundGraceSeconds": 0, "LogLevel": "WARNING"}
FULL = pytest.param(True, id="full", marks=[pytest.mark.soak, pytest.mark.timeout(1800)])
SMALL = pytest.param(False, id="small", marks=pytest.mark.timeout(150))


def faults_scenario(full: bool) -> Scenario:
    return Scenario(
        name="faults-full" if full else "faults",
        requests=2000 if full else 60,
        copies=2,
        fault_rate=0.2,
        slow_seconds=3 if full else 1.5,  # past the read timeout
        retry_after=1,
        rejected=0.05,
        unknown=0.05,
        shared=0.03,
        kills=12 if full else 2,
        kill_gap=(5.0, 20.0) if full else (0.5, 2.5),
        deadline=1200 if full else 100,
        settings=SystemSettings(
            visibility_timeout=20 if full else 12,
            function_timeout=12 if full else 5,
            workers=3 if full else 1,
            parameters=PARAMETERS,
            function_env=SCALED_CLIENT_FULL if full else SCALED_CLIENT,
        ),
        notes=[
            "visibility timeout and function timeout scaled down (shipped: 360 s and 60 s)",
            "Reditus client timeouts and backoff scaled with them (shipped: read 10 s, backoff 0.5-8 s)",
        ],
    )


def outage_scenario(full: bool) -> Scenario:
    return Scenario(
        name="outage-full" if full else "outage",
        requests=500 if full else 40,
        outage_seconds=60 if full else 10,
        start_after=0.25,
        deadline=1200 if full else 100,
        settings=SystemSettings(
            visibility_timeout=None if full else 5,  # None: the template's 360 s
            workers=2 if full else 1,
            parameters=PARAMETERS,
        ),
        notes=[
            "shipped retry settings: REDITUS_MAX_ATTEMPTS 4, backoff 0.5-8 s, function timeout 60 s, "
            "maxReceiveCount 5",
            *(
                []
                if full
                else [
                    "visibility timeout 5 s (shipped 360 s), 10 s outage: outage/visibility 2 (shipped 1/6)"
                ]
            ),
        ],
    )


def store_scenario(full: bool) -> Scenario:
    writes_fail = StoreWindow(10, ("throttle", "error")) if full else StoreWindow(3, ("error",))
    return Scenario(
        name="store-full" if full else "store",
        requests=1000 if full else 60,
        # Every Reditus call takes 0.5 s: a window opening finds refunds between the answer and its write.
        latency=0.5,
        start_after=0.25,
        store_windows=(writes_fail, StoreWindow(5, ("lost",))) if full else (writes_fail,),
        deadline=600 if full else 100,
        settings=SystemSettings(
            visibility_timeout=30 if full else 15,
            function_timeout=20 if full else 8,
            workers=2 if full else 1,
            parameters=PARAMETERS,
        ),
        notes=[
            "visibility timeout and function timeout scaled down (shipped: 360 s and 60 s); "
            "each write-failure window is shorter than the function timeout"
        ],
    )


# ---- the report (make soak) ---------------------------------------------------------------------------
REPORT_FIELDS = (
    "requests",
    "messages_sent",
    "terminal",
    "dead_lettered",
    "lost",
    "duplicate_terminal",
    "duplicate_submissions",
    "duplicate_submissions_explained_by_kills",
    "duplicate_submissions_unexplained",
    "resubmitted_after_timeout",
    "kills",
)
_scenarios: dict[str, dict[str, Any]] = {}


def report_path() -> Path:
    return Path(os.environ.get("SOAK_REPORT") or REPO_ROOT / "soak-report.json")


def record(report: dict[str, Any], found: list[str]) -> None:
    """Add one full scenario to soak-report.json (rewritten whole after each scenario)."""
    _scenarios[report["scenario"]] = {**report, "problems": found}
    scenarios = _scenarios.values()
    summary = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **{name: sum(int(s[name]) for s in scenarios) for name in REPORT_FIELDS},
        "counters_match": all(s["counters_match"] for s in scenarios),
        "passed": all(not s["problems"] for s in scenarios),
        "scenarios": _scenarios,
    }
    report_path().write_text(json.dumps(summary, indent=2, default=str) + "\n")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    running = start_servers(tmp_path_factory.mktemp("soak-logs"), API_KEY)
    try:
        yield running
    finally:
        running.stop()


def finish(result: Result, full: bool, checks: dict[str, bool], *, dead_letters_allowed: bool = True) -> None:
    """The promises (count.problems) and the scenario's own `checks`; recorded in the report when full."""
    report = result.report
    found = problems(report, dead_letters_allowed=dead_letters_allowed)
    found += [f"not so: {what}" for what, held in checks.items() if not held]
    if full:
        record(report, found)
    assert not found, f"{'; '.join(found)}\n{dump(report)}"


# ---- the scenarios ------------------------------------------------------------------------------------
@pytest.mark.parametrize("full", [SMALL, FULL])
def test_faults_duplicates_and_kills(servers: Servers, full: bool, tmp_path: Path) -> None:
    scenario = faults_scenario(full)
    result = run(servers, scenario, tmp_path)
    report = result.report
    answers = report["simulator_answers"]
    kinds = ("429", "500", "503", "slow", "drop")
    checks = {
        "the killer found a batch in flight for every kill": report["kills"] == scenario.kills,
        "every request was sent twice": report["messages_sent"] == 2 * scenario.requests,
        "about a fifth of the calls failed": sum(answers.get(k, 0) for k in kinds)
        >= 0.1 * report["simulator_requests"],
    }
    if full:  # enough draws for every kind to turn up
        checks["every kind of fault turned up"] = all(answers.get(kind) for kind in kinds)
    finish(result, full, checks)


@pytest.mark.parametrize("full", [SMALL, FULL])
def test_an_outage_only_delays(servers: Servers, full: bool, tmp_path: Path) -> None:
    scenario = outage_scenario(full)
    result = run(servers, scenario, tmp_path)
    report = result.report
    checks = {
        "the outage hit refunds in flight": report["outage"]["refunds_hit"] > 0,
        "every refund was refunded once the outage ended": report["outcomes"]
        == {"refunded": scenario.requests},
        "no refund was submitted twice": report["duplicate_submissions"] == 0,
    }
    finish(result, full, checks, dead_letters_allowed=False)


@pytest.mark.parametrize("full", [SMALL, FULL])
def test_store_failures_are_retried_not_lost_nor_resubmitted(
    servers: Servers, full: bool, tmp_path: Path
) -> None:
    scenario = store_scenario(full)
    result = run(servers, scenario, tmp_path)
    report = result.report
    checks = {
        "writes failed": report["store_faults"]["injected"] > 0,
        "every refund was refunded": report["outcomes"] == {"refunded": scenario.requests},
        # No worker was killed: a second successful refund of a payment has no excuse.
        "no refund was submitted twice": report["kills"] == 0 and report["duplicate_submissions"] == 0,
    }
    finish(result, full, checks)


# ---- the harness itself ------------------------------------------------------------------------------
def test_injected_store_faults_fail_writes_as_dynamodb_does(servers: Servers, tmp_path: Path) -> None:
    faults = StoreFaults(tmp_path / "faults.json", tmp_path / "faults.log")
    hook = WriteFaults(faults.flag, faults.stats, seed=3)
    retry_once = Config(retries={"mode": "standard", "total_max_attempts": 2})
    client = moto_session().client("dynamodb", endpoint_url=servers.endpoint, config=retry_once)
    client.meta.events.register("before-send.dynamodb", hook.before_send)  # type: ignore[arg-type]
    table = f"faults-{tmp_path.name}"
    create_history_table(client, table)

    def put(refund_id: str) -> None:
        client.put_item(TableName=table, Item={"refund_id": {"S": refund_id}})

    def stored(refund_id: str) -> bool:
        return "Item" in client.get_item(TableName=table, Key={"refund_id": {"S": refund_id}})

    faults.on(["throttle"])
    with pytest.raises(ClientError) as throttled:
        put("r1")
    assert throttled.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert not stored("r1")  # reads go through; the write did not happen
    faults.on(["lost"])
    with pytest.raises(ClientError) as lost:
        put("r2")
    assert lost.value.response["Error"]["Code"] == "InternalServerError"
    assert stored("r2")  # applied; only the answer was lost
    faults.off()
    put("r3")
    assert stored("r3")
    # botocore retried each failed call once (2 attempts): two faults per failed put.
    assert faults.injected() == [
        ["PutItem", kind, ANY, refund_id]
        for kind, refund_id in [("throttle", "r1")] * 2 + [("lost", "r2")] * 2
    ]


def test_the_count_finds_what_it_must() -> None:
    """tally() on made-up evidence: every kind of broken promise is seen, and told apart."""

    def planned(n: int, expect: str = "refunded") -> Planned:
        return Planned(RefundRequest(payment_id=f"p{n}", refund_id=f"r{n}"), expect)

    def item(n: int, outcome: str, *kinds: str) -> dict[str, Any]:
        log = [{"kind": kind} for kind in kinds]
        return {"refund_id": f"r{n}", "payment_id": f"p{n}", "outcome": outcome, "attempt_log": log}

    def applied(seq: int, n: int, at: float, fault: str | None = None) -> dict[str, Any]:
        when = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
        return {
            "seq": seq,
            "payment_id": f"p{n}",
            "applied": True,
            "status": 200,
            "fault": fault,
            "received_at": when,
        }

    t = 1_800_000_000.0
    items = [
        item(1, "refunded", "transient", "refunded"),
        item(2, "refunded", "refunded", "refunded"),  # settled twice
        item(3, "refunded", "refunded"),  # Reditus should have rejected it
        item(4, "pending"),  # nothing will ever move it: lost
        item(5, "retrying", "transient"),  # but its message is a dead letter
        item(6, "refunded", "refunded"),
        {"refund_id": "counter#2027-01-15", "refunded": 3, "pending": 1},  # counts 4 refunded
    ]
    letter = DeadLetter("m5", "{}", 5, 0, "p5", "r5", "h5")
    simulator = [
        applied(0, 1, t),
        applied(1, 1, t + 20),  # a kill in between: explained
        applied(2, 6, t + 30),
        applied(3, 6, t + 50),  # no kill in between: unexplained
        applied(4, 2, t, fault="slow"),
        applied(5, 2, t + 2),  # the client never saw the first answer
    ]
    report = tally(
        [planned(1), planned(2), planned(3, "rejected"), planned(4), planned(5), planned(6)],
        items,
        [letter],
        simulator,
        [Kill(t + 10, "worker0", 1)],
        messages_sent=6,
    )
    assert {
        k: report[k] for k in ("requests", "terminal", "dead_lettered", "lost", "duplicate_terminal")
    } == {
        "requests": 6,
        "terminal": 4,
        "dead_lettered": 1,
        "lost": 1,
        "duplicate_terminal": 1,
    }
    assert (
        report["unexpected_outcomes"] == 1
        and report["evidence"]["unexpected_outcomes"][0]["refund_id"] == "r3"
    )
    assert report["evidence"]["lost"][0]["refund_id"] == "r4"
    assert (
        report["duplicate_submissions_explained_by_kills"],
        report["duplicate_submissions_unexplained"],
    ) == (1, 1)
    assert report["evidence"]["duplicate_submissions_unexplained"][0]["payment_id"] == "p6"
    assert report["resubmitted_after_timeout"] == 1
    assert not report[
        "counters_match"
    ]  # 4 refunded and 1 pending counted; 4 refunded, 1 pending, 1 retrying held
    assert problems(report) == [
        "lost = 1",
        "duplicate_terminal = 1",
        "unexpected_outcomes = 1",
        "duplicate_submissions_unexplained = 1",
        "the day counters do not match the history items",
        "not every request reached a terminal outcome or the dead-letter queue",
    ]
