"""Nothing lost, nothing applied twice: the local system under injected faults, counted at the end.

Every scenario runs the real processes - the AWS server (moto), the Reditus simulator, and workers
running the real Lambda handler behind an emulated SQS event source mapping - and drives them from
outside: the producer side sends, a killer SIGKILLs workers, the simulator and DynamoDB fail on cue.
When the refund queue is drained, the history table is scanned, the dead-letter queue read and the
simulator asked what it saw; tests/soak/count.py turns that into the report.

* faults and duplicates - 30 % of Reditus calls fail transiently (429 with Retry-After, 500, 503,
  answers slower than the client's read timeout, dropped connections); every message is sent twice
  (same body, same refund_id); workers are SIGKILLed at random moments and restarted; a share of
  invocations time out mid-batch (abandoned while records are in flight, the environment reset:
  tests/soak/faulty_worker.py); the day counters' writes (the stream function each worker plays,
  several at once) fail for a while, a few times (throttling and 500s on the UpdateItems of counter
  items). The 404
  grace window is on (scaled): 5 % of the payments are rejected (400), 3 % unknown (404 until the
  window closes, re-checked meanwhile), 5 % "late" (404 for a while inside the window, then 200) and
  a few asked for by two refund_ids.
* outage - the simulator answers 503 to everything for a while, with the shipped retry settings.
* store failure - DynamoDB writes fail for a while (botocore-level, tests/soak/faulty_worker.py).
* webhooks - billing providers' events of all five providers through the real receiver (its own
  process, as the local stack runs it): 20 % of the deliveries are redeliveries or replays, 5 % forged
  with a bad signature, sent by concurrent senders that retry as providers do, while workers are
  SIGKILLed and the receiver is SIGKILLed once and restarted (tests/soak/webhooks.py). Checked: each
  real refund ends as exactly one history record in a terminal outcome, nothing forged leaves a
  record, a message or a call to Reditus, every event is recorded once with its final decision and
  the receiver's day counts equal its records.

Checked: every refund_id ends in exactly one terminal history outcome or a dead letter (none lost,
none settled twice); the simulator applied at most one successful refund per payment, except where a
kill or a timeout fell between Reditus answering and the outcome being stored (reported on their
own); once the queue and the table's stream are drained (the workers applied it within a deadline,
then the harness reads it all once more), the day counters equal the history items: every change
counted once, whoever applied it, however often it was delivered; no refund ever had two live 404
re-check chains (``recheck_chains_max``, see count.chain_report); no dead letter is orphaned
(``orphaned_dead_letters``).

`make test` runs the small version of each (about a minute together, carrying every fault above;
the webhooks' 100 deliveries about 25 s more); `make soak` (``-m soak``) the full ones - 10,000
requests under faults, a 60 s outage with the shipped settings, 2,000 webhook deliveries - and writes
soak-report.json.

Time scaling. With the template's settings a killed invocation's messages come back after the
visibility timeout (360 s). The faults and store scenarios shorten it, keeping what correctness
needs: a lease (function timeout + 5 s, after the batching window of 1 s) must end before the
message comes back, so visibility > timeout + 6 s (small: 5 s timeout / 12 s visibility, store 8 / 15;
full: 12 / 20, store 20 / 30), and the Reditus client's timeouts are scaled with them (read 1 s and a
slow answer after 1.5 s; full: 2 s and 3 s). The 404 grace window and re-check delay (shipped 900 s
and 60 s) become 60 s and 6 s (small: 16 s and 3 s): longer than the visibility timeout, so a
redelivered batch meets a live chain. Timeouts: every 200th invocation (small: every 8th) is
abandoned 0.05-1.5 s in. The outage scenario keeps every retry setting the
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
import random
import threading
from collections import Counter
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
from reditus_refunds.counter_stream import CounterStream, DayCounterStore
from reditus_refunds.errors import StoreError
from tests.conftest import create_history_table
from tests.soak.count import Planned, chain_report, pending_lists_match, problems, tally
from tests.soak.faulty_worker import TIMED_OUT, Events, Timeouts, WriteFaults
from tests.soak.scenarios import Result, Scenario, SettleWindow, StoreWindow, run
from tests.soak.system import REPO_ROOT, Kill, Servers, StoreFaults, SystemSettings, dump, start_servers
from tests.soak.webhooks import (
    Answer,
    WebhookResult,
    WebhookScenario,
    plan_webhooks,
    run_webhooks,
    webhook_problems,
    webhook_tally,
)

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
# The faults scenario keeps the grace window on, scaled (shipped: 900 s, a re-check every 60 s, i.e.
# 15 re-checks): longer than the visibility timeout, so a redelivered batch or a copy meets a live
# re-check chain, and a few re-checks per window.
GRACE = {"NotFoundGraceSeconds": 60, "NotFoundRecheckDelaySeconds": 6}
# Small: the window is ten re-check delays long, so that a machine busy enough to hold a re-check
# back for several delays (a CI run next to other work) still sees one chain ask Reditus before
# the window closes; with 16 s, a late re-check found the payment already refunded by the
# producer's second copy, made after the window, and no chain ever called (a failed run).
GRACE_SMALL = {"NotFoundGraceSeconds": 30, "NotFoundRecheckDelaySeconds": 3}
FULL = pytest.param(True, id="full", marks=[pytest.mark.soak, pytest.mark.timeout(1800)])
SMALL = pytest.param(False, id="small", marks=pytest.mark.timeout(150))


def faults_scenario(full: bool) -> Scenario:
    grace = GRACE if full else GRACE_SMALL
    return Scenario(
        name="faults-full" if full else "faults",
        requests=10_000 if full else 60,
        copies=2,
        fault_rate=0.3,
        slow_seconds=3 if full else 1.5,  # past the read timeout
        retry_after=1,
        rejected=0.05,
        unknown=0.03 if full else 0.05,
        late=0.05 if full else 0.1,
        late_after=(2.0, 30.0) if full else (3.0, 12.0),  # inside the grace window
        send_rate=12 if full else 6,  # about what the workers drain: no backlog outlasting the window
        shared=0.03,
        kills=15 if full else 2,
        kill_gap=(20.0, 60.0) if full else (0.5, 2.5),
        # The day counters' writes fail for a while, a few times (throttling and 500s, botocore's
        # retries used up), while everything else goes on.
        settle_windows=(
            tuple(SettleWindow(at, 8) for at in (0.1, 0.35, 0.6, 0.85)) if full else (SettleWindow(0.3, 3),)
        ),
        deadline=1500 if full else 110,
        settings=SystemSettings(
            visibility_timeout=20 if full else 12,
            function_timeout=12 if full else 5,
            # Ten instances (the template's ReservedConcurrency; its MaximumConcurrency is 5 by default):
            # an invocation lasts as long as its slowest record (a 429's Retry-After, a read timeout),
            # about 3 s here, so throughput comes from instances.
            workers=10 if full else 1,
            parameters={**PARAMETERS, **grace},
            function_env=SCALED_CLIENT_FULL if full else SCALED_CLIENT,
            events=True,
            # Lambda timeouts mid-batch: every 200th invocation (full; every 8th small) is abandoned
            # while its records are in flight.
            timeout_rate=0.005 if full else 0.125,
            timeout_cut=(0.05, 1.5),
        ),
        notes=[
            "visibility timeout and function timeout scaled down (shipped: 360 s and 60 s)",
            "Reditus client timeouts and backoff scaled with them (shipped: read 10 s, backoff 0.5-8 s)",
            f"404 grace window and re-check delay scaled down (shipped: 900 s and 60 s): {grace}",
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


def webhook_scenario(full: bool) -> WebhookScenario:
    return WebhookScenario(
        name="webhooks-full" if full else "webhooks",
        deliveries=2000 if full else 100,
        senders=8 if full else 4,
        worker_kills=6 if full else 2,
        kill_gap=(5.0, 15.0) if full else (0.5, 2.0),
        deadline=600 if full else 100,
        settings=SystemSettings(visibility_timeout=12, function_timeout=5, workers=2, parameters=PARAMETERS),
        notes=["visibility timeout and function timeout scaled down (shipped: 360 s and 60 s)"],
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
    "timeouts",
    "orphaned_dead_letters",
)
# The webhook scenario's own figures (summed over the scenarios that have them).
WEBHOOK_FIELDS = (
    "webhook_events_sent",
    "webhook_refunds_expected",
    "webhook_refunds_terminal",
    "webhook_bad_signature_refused",
    "webhook_duplicates_answered",
    "webhook_queued_by_bad_signature",
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
        **{
            name: sum(int(s[name]) for s in scenarios if name in s)
            for name in WEBHOOK_FIELDS
            if any(name in s for s in scenarios)
        },
        "counters_match": all(s["counters_match"] for s in scenarios),
        "pending_lists_match": all(s.get("pending_lists_match", True) for s in scenarios),
        "counters_caught_up": all(s.get("counters_caught_up", True) for s in scenarios),
        "recheck_chains_max": max(int(s["recheck_chains_max"]) for s in scenarios),
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


def finish(
    result: Result | WebhookResult,
    full: bool,
    checks: dict[str, bool],
    *,
    dead_letters_allowed: bool = True,
) -> None:
    """The promises (count.problems) and the scenario's own `checks`; recorded in the report when full."""
    report = result.report
    if isinstance(result, WebhookResult):
        found = webhook_problems(report)
    else:
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
        "about 30 % of the calls failed": sum(answers.get(k, 0) for k in kinds)
        >= 0.2 * report["simulator_requests"],
        "invocations timed out mid-batch": report["timeouts"] > 0,
        "the day counters' writes failed": report["settle_faults"]["injected"] > 0,
        "404s inside the grace window were re-checked": report["rechecks"]["rechecks_sent"] > 0,
        "late payments were refunded after a 404 inside the window": report["late_payments"][
            "refunded_after_a_404"
        ]
        > 0,
        # Two promises, told apart when one fails: never two chains of one refund asking Reditus
        # at once, and the grace window at work (some chain asked Reditus again).
        "no refund had two re-check chains live at once": report["recheck_chains_max"] <= 1,
        "a re-check chain asked Reditus": report["recheck_chains_max"] >= 1,
        "no orphaned dead letter": report["orphaned_dead_letters"] == 0,
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


@pytest.mark.parametrize("full", [SMALL, FULL])
def test_webhook_events_become_one_refund_each(servers: Servers, full: bool, tmp_path: Path) -> None:
    """Provider events of all five providers, repeated, replayed and forged, while workers and the
    receiver are SIGKILLed: each real refund ends as exactly one history record, nothing forged
    leaves a trace (tests/soak/webhooks.py)."""
    scenario = webhook_scenario(full)
    result = run_webhooks(servers, scenario, tmp_path)
    report = result.report
    checks = {
        "every delivery was sent": report["webhook_events_sent"] == scenario.deliveries,
        "the killer found a batch in flight for every kill": report["kills"] == scenario.worker_kills,
        "the receiver was killed and restarted once": report["receiver_kills"] == 1,
        "senders retried through the receiver's restart": report["webhook_retries"] > 0,
        "repeats were answered 2xx": report["webhook_duplicates_answered"]
        == report["webhook_plan"]["repeats"],
        "nothing was queued by a bad signature": report["webhook_queued_by_bad_signature"] == 0,
        "events were ignored, held for review and found duplicate": all(
            report["webhook_decisions"].get(d)
            for d in ("ignored", "needs_review", "duplicate_refund", "queued")
        ),
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


@pytest.mark.parametrize(
    ("counter", "match"),
    [
        ({"pending": 1, "pending#r1": "t"}, True),
        ({"pending": 2, "pending#r1": "t"}, True),  # short of its count: not whole, nothing wrong listed
        ({"pending": 2}, True),  # a counter from before the list
        ({"pending": 1, "pending#r2": "t"}, False),  # r2 has a result
        ({"pending": 1, "pending#r9": "t"}, False),  # nobody's refund
        ({"pending": 0}, False),  # says it is whole (nothing pending) while r1 is
        ({"pending": 2, "pending#r1": "t", "pending#r3": "t"}, False),  # r3 is another day's
    ],
)
def test_the_count_checks_the_counters_lists_of_pending_refunds(counter: dict[str, Any], match: bool) -> None:
    refunds = {
        "r1": {"queued_day": "2027-01-15"},
        "r2": {"queued_day": "2027-01-15", "outcome": "refunded"},
        "r3": {"queued_day": "2027-01-16"},
    }
    assert pending_lists_match({"2027-01-15": counter, "2027-01-16": {"pending": 1}}, refunds) is match


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
        "the day counters do not match the history items (a count lost or doubled)",
        "not every request reached a terminal outcome or the dead-letter queue",
    ]


def test_counter_faults_fail_only_the_day_counters_writes(servers: Servers, tmp_path: Path) -> None:
    """target "counters": a write to a day-counter item (the stream function's) fails; other writes
    go through, and the retried batch counts once."""
    faults = StoreFaults(tmp_path / "faults.json", tmp_path / "faults.log")
    hook = WriteFaults(faults.flag, faults.stats, seed=5)
    no_retry = Config(retries={"mode": "standard", "total_max_attempts": 1})
    client = moto_session().client("dynamodb", endpoint_url=servers.endpoint, config=no_retry)
    client.meta.events.register("before-send.dynamodb", hook.before_send)  # type: ignore[arg-type]
    table = f"counters-{tmp_path.name}"
    create_history_table(client, table)
    stream = CounterStream(DayCounterStore(table, client))
    image = {"refund_id": {"S": "r1"}, "queued_day": {"S": "2027-01-15"}, "outcome": {"S": "refunded"}}
    batch = [{"dynamodb": {"Keys": {"refund_id": {"S": "r1"}}, "NewImage": image, "SequenceNumber": "7"}}]

    faults.on(["throttle"], target="counters")
    client.put_item(TableName=table, Item=image)  # not a counter: goes through
    with pytest.raises(StoreError, match="throttling"):
        stream.apply("shard-1", batch)
    faults.on(["lost"], target="counters")
    with pytest.raises(StoreError):
        stream.apply("shard-1", batch)  # written, the answer lost: Lambda retries the batch
    faults.off()
    assert stream.apply("shard-1", batch).writes == 0  # the retry finds it applied
    assert [f[:2] for f in faults.injected()] == [["UpdateItem", "throttle"], ["UpdateItem", "lost"]]
    counter = client.get_item(TableName=table, Key={"refund_id": {"S": "counter#2027-01-15"}})["Item"]
    assert counter["refunded"] == {"N": "1"}


def test_an_abandoned_invocation_stops_at_its_cut(tmp_path: Path) -> None:
    """Timeouts cut every 1/rate-th invocation while its records are in flight, and say so."""
    events = Events(tmp_path / "events")
    stopped: list[int] = []
    cuts = [threading.Event(), threading.Event()]

    def stop(code: int) -> None:  # stands in for os._exit: the handler's threads stop here
        cuts[len(stopped)].set()
        stopped.append(code)

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["cut"]:
            assert cuts[0].wait(10), "the cut never came"
        else:  # runs past where a cut would come (0.1 s at most): none comes
            assert not cuts[1].wait(0.5), "an invocation that was not to be cut was cut"
        return {"batchItemFailures": []}

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 5000

    wrapped = Timeouts(0.5, (0.05, 0.1), events, seed=1, stop=stop).wrap(handler)
    assert wrapped({"Records": [{}], "cut": True}, Context()) == {"batchItemFailures": []}
    assert stopped == [TIMED_OUT]
    wrapped({"Records": [{}], "cut": False}, Context())  # rate 0.5: the next one runs to its end
    assert stopped == [TIMED_OUT]
    lines = [json.loads(line) for f in (tmp_path / "events").iterdir() for line in f.read_text().splitlines()]
    assert [line["e"] for line in lines] == ["timeout", "invocation", "invocation"]
    assert 0.05 <= lines[0]["after"] <= 0.1 and lines[0]["records"] == 1


def test_the_count_sees_chains_orphans_and_counts_lost() -> None:
    """chain_report, orphaned dead letters and the counters against the items, on made-up evidence."""
    t = 1_800_000_000.0

    def call(refund_id: str, token: str, at: float) -> dict[str, Any]:
        return {
            "e": "call",
            "rid": refund_id,
            "tok": token,
            "mid": f"m-{token}-{at}",
            "t0": at,
            "t1": at + 0.1,
        }

    def sent(refund_id: str, parent: str | None, token: str, at: float) -> dict[str, Any]:
        return {"e": "send", "rid": refund_id, "parent": parent, "tok": token, "t": at}

    single = [
        sent("r1", None, "a1", t),
        call("r1", "a1", t + 6),
        sent("r1", "a1", "a2", t + 6.1),
        call("r1", "a2", t + 12),
        # A redelivered batch started a second chain (b1), which was turned away: never called.
        sent("r1", None, "b1", t + 7),
        {
            "e": "deliver",
            "rid": "r1",
            "tok": "b1",
            "mid": "m-b1",
            "t0": t + 13,
            "t1": t + 13,
            "res": "retrying",
        },
    ]
    assert chain_report(single)["recheck_chains_max"] == 1
    assert chain_report(single)["recheck_messages_turned_away"] == 1
    # The same, but the second chain asked Reditus while the first still did: two live chains.
    double = [*single, call("r1", "b1", t + 10), sent("r1", "b1", "b2", t + 10.1), call("r1", "b2", t + 16)]
    report = chain_report(double)
    assert report["recheck_chains_max"] == 2
    assert report["evidence"][0]["refund_id"] == "r1" and set(report["evidence"][0]["chains"]) == {"a1", "b1"}
    # One chain after the other (the first ended before the second began) is not two at once.
    one_then_other = [sent("r2", None, "c1", t - 6), call("r2", "c1", t)]
    one_then_other += [sent("r2", None, "d1", t + 0.5), call("r2", "d1", t + 6)]
    assert chain_report(one_then_other)["recheck_chains_max"] == 1
    # A second chain started (by a copy) while the first waited for its last call: two at once,
    # though the first's last call comes before the second's first.
    beside = [sent("r3", None, "e1", t), call("r3", "e1", t + 6), sent("r3", None, "f1", t + 5)]
    beside += [call("r3", "f1", t + 11)]
    assert chain_report(beside)["recheck_chains_max"] == 2
    assert chain_report([])["recheck_chains_max"] == 0

    def planned(n: int, expect: str = "refunded") -> Planned:
        return Planned(RefundRequest(payment_id=f"p{n}", refund_id=f"r{n}"), expect)

    def at(seconds: float) -> str:
        return datetime.fromtimestamp(t + seconds, UTC).isoformat().replace("+00:00", "Z")

    def item(n: int, outcome: str | None, *log: tuple[str, float]) -> dict[str, Any]:
        return {
            "refund_id": f"r{n}",
            "payment_id": f"p{n}",
            **({} if outcome is None else {"outcome": outcome}),
            "queued_at": at(0),
            "attempt_log": [{"kind": kind, "at": at(s)} for kind, s in log],
        }

    items = [
        # Two 404s inside a 60 s window, then one after it: one settlement, not three.
        item(1, "not_found", ("not_found", 1), ("not_found", 30), ("not_found", 61)),
        item(2, "refunded", ("not_found", 1), ("refunded", 7)),  # a late payment
        item(3, "dead_lettered", ("transient", 1)),  # no dead letter: orphaned
        item(4, None),  # pending: no outcome yet
        {"refund_id": "counter#2027-01-15", "refunded": 1, "pending": 1, "not_found": 1, "dead_lettered": 1},
    ]
    letters = [DeadLetter("m9", "{}", 5, 0, "p9", "r9", "h9")]  # nobody's history knows r9
    report = tally(
        [planned(1, "not_found"), planned(2, "late"), planned(3), planned(4)],
        items,
        letters,
        [],
        [],
        messages_sent=4,
        grace_seconds=60,
    )
    assert report["duplicate_terminal"] == 0 and report["unexpected_outcomes"] == 0
    assert report["orphaned_dead_letters"] == 2
    assert {e["refund_id"] for e in report["evidence"]["orphaned_dead_letters"]} == {"r3", "r9"}
    # The counters hold what the items say; an absent outcome is pending.
    assert report["counters_match"] and report["outcomes"]["pending"] == 1
    # Without the window, the three 404s would be three settlements.
    assert tally([planned(1, "not_found")], items[:1], [], [], [], messages_sent=1)["duplicate_terminal"] == 1
    # A count lost (the counter says nothing of r1's not_found).
    lost = [*items[:4], {"refund_id": "counter#2027-01-15", "refunded": 1, "pending": 1, "dead_lettered": 1}]
    broken = tally([planned(1, "not_found")], lost, [], [], [], messages_sent=1, grace_seconds=60)
    assert not broken["counters_match"]
    assert "the day counters do not match the history items (a count lost or doubled)" in problems(broken)
    # And one doubled.
    doubled = [*items[:4], {"refund_id": "counter#2027-01-15", "refunded": 2, "pending": 1, "not_found": 1}]
    doubled.append({"refund_id": "counter#2027-01-16", "dead_lettered": 1})
    assert not tally([planned(1, "not_found")], doubled, [], [], [], messages_sent=1)["counters_match"]
    # Workers that did not apply the stream in time are a problem even if the harness's drain did.
    assert "the workers did not apply the table's stream to the day counters in time" in problems(
        {**report, "counters_caught_up": False}
    )


def test_the_webhook_count_finds_what_it_must() -> None:
    """webhook_tally() on made-up evidence: a world that kept every promise, then each one broken."""
    plan = plan_webhooks("t", 60, random.Random(3))
    held = [r for r in plan.refunds if r.held]
    assert plan.forged and plan.expected and held, "the plan must hold forged events and held refunds"
    day = "2027-01-15"

    def refund_item(refund_id: str, payment_id: str) -> dict[str, Any]:
        return {
            "refund_id": refund_id,
            "payment_id": payment_id,
            "outcome": "refunded",
            "queued_day": day,
            "attempt_log": [{"kind": "refunded"}],
        }

    def world() -> tuple[list[dict[str, Any]], list[Answer]]:
        items = [refund_item(r.refund_id, r.payment_id) for r in plan.expected]
        items.append({"refund_id": f"counter#{day}", "refunded": len(plan.expected)})
        decided: Counter[str] = Counter()
        requested: set[str] = set()
        for event in plan.events:
            if not event.acts:
                decision = "ignored"
            elif event.refund_id in {r.refund_id for r in held}:
                decision = "needs_review"
            elif event.refund_id in requested:
                decision = "duplicate_refund"
            else:
                decision = "queued"
                requested.add(str(event.refund_id))
            decided[decision] += 1
            items.append({"refund_id": event.key, "decision": decision, "target_refund_id": event.refund_id})
        items += [{"refund_id": f"webhook_review#{r.refund_id}", "review_state": "open"} for r in held]
        items.append({"refund_id": f"webhook_count#stripe#{day}", **decided})
        answers = [
            Answer(d, d.kind, 400 if d.kind == "bad" else 200, "rejected" if d.kind == "bad" else "queued")
            for d in plan.deliveries
        ]
        return items, answers

    def found(items: list[dict[str, Any]], answers: list[Answer]) -> list[str]:
        return webhook_problems(webhook_tally(plan, answers, items, [], []))

    items, answers = world()
    report = webhook_tally(plan, answers, items, [], [])
    assert webhook_problems(report) == []
    assert report["webhook_refunds_terminal"] == report["webhook_refunds_expected"] == len(plan.expected)
    assert report["webhook_bad_signature_refused"] == len(plan.forged)

    # A forged event was let through: its refund and its event record are found, and it is a stranger.
    forged = plan.forged[0]
    assert forged.refund_id is not None
    payment = forged.refund_id.split(":", 2)[2]
    leaked = [*items, refund_item(forged.refund_id, payment)]
    leaked.append({"refund_id": forged.key, "decision": "queued", "target_refund_id": forged.refund_id})
    accepted = [
        Answer(a.delivery, a.sent_as, 200, "queued") if a.delivery.event is forged else a for a in answers
    ]
    broken = webhook_tally(plan, accepted, leaked, [{"seq": 0, "payment_id": payment, "applied": True}], [])
    assert broken["webhook_queued_by_bad_signature"] == 4  # event record (twice: key, target), refund, call
    assert set(webhook_problems(broken)) >= {
        "webhook_queued_by_bad_signature = 4",
        "duplicate_terminal = 1",
        "webhook_unexpected_answers = 1",
        "not every bad signature was refused with 400",
        "webhook_stray_events = 1",
    }
    # Dedupe off: a second refund_id for one real refund (a stranger), settled and counted.
    stranger = refund_item(plan.expected[0].refund_id + "-again", plan.expected[0].payment_id)
    assert "duplicate_terminal = 1" in found([*items, stranger], answers)
    # A refund lost, an event left half-done, a count gone astray, a held refund requested anyway.
    lost = [i for i in items if i["refund_id"] != plan.expected[0].refund_id]
    assert "lost = 1" in found(lost, answers)
    first = next(e for e in plan.events if e.acts)
    half_done = [{**i, "decision": "received"} if i["refund_id"] == first.key else i for i in items]
    problems_found = found(half_done, answers)
    assert "webhook_events_unfinished = 1" in problems_found
    assert "the receiver's day counts do not match its event records" in problems_found
    requested = [*items, refund_item(held[0].refund_id, held[0].payment_id)]
    requested = [
        {**i, "review_state": "completed"} if i["refund_id"] == f"webhook_review#{held[0].refund_id}" else i
        for i in requested
    ]
    assert {"duplicate_terminal = 1", "webhook_held_not_in_review = 1"} <= set(found(requested, answers))
    # A delivery never answered (the sender gave up), a repeat refused.
    gave_up = [Answer(a.delivery, a.sent_as) if a is answers[0] else a for a in answers]
    assert "webhook_unanswered = 1" in found(items, gave_up)
