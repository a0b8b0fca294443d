"""The count at the end of a soak: history items, dead letters and what the simulator saw.

`tally` turns them into the report fields the issue asks for:

* ``requests``  - refund requests (refund_ids) sent; ``messages_sent`` counts every copy;
* ``terminal``  - refund_ids whose history item holds a terminal outcome;
* ``dead_lettered`` - refund_ids recorded ``dead_lettered`` or with a message in the dead-letter queue;
* ``lost``      - refund_ids with neither a terminal history outcome nor a dead letter;
* ``duplicate_terminal`` - refund_ids whose history recorded a terminal result more than once (the
  attempt log holds more than one terminal entry), plus history items for requests never sent;
* ``duplicate_submissions`` - payments the simulator refunded more than once after an answer the
  client received. Each is explained when a worker was SIGKILLed in between (the one window the
  design leaves: Reditus answered, the outcome was not stored); ``..._unexplained`` must be 0;
* ``resubmitted_after_timeout`` - payments refunded again because the client never received the
  answer: a "slow" fault (applied, answered after the read timeout) or an answer that missed the
  timeout under load; the client cannot know, so it retries. Reported on their own (see `_again`);
* ``counters_match`` - the per-day counters, summed per outcome, equal the history items per outcome
  (an absent outcome is pending), counted once the queue AND the table's stream are drained: the
  counters are kept from the stream (reditus_refunds.counter_stream), every record counted once;
* ``pending_lists_match`` - every day counter lists only its day's pending refunds, and all of them
  when its list is as long as its pending count (what the History's Pending filter trusts);
* ``recheck_chains_max`` - the most 404 re-check chains any refund had live at once (must be 1 when
  there were chains; 0 without any). See `chain_report` for how it is derived;
* ``orphaned_dead_letters`` - dead letters whose refund_id has no history item, plus items recorded
  ``dead_lettered`` with no dead letter (an item that moved on to a later outcome is not one).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reditus_operators.dlq import DeadLetter
from reditus_refunds.contract import RefundRequest
from reditus_refunds.day_counts import listed_pending, pending_listed
from reditus_refunds.layout import COUNTER_PREFIX, HASH_KEY, PAYMENT_MARKER_PREFIX
from reditus_refunds.records import Outcome
from reditus_refunds.submitter import LEASE_MARGIN_SECONDS

from .system import Kill

TERMINAL = {o.value for o in Outcome if o.terminal}
# Attempt-log kinds that settle a refund. A 404 ("not_found") settles it only outside the grace
# window; inside, it schedules a re-check (see _settlements).
TERMINAL_KINDS = {"refunded", "rejected", "not_found", "failed", "invalid", "duplicate"}
EVIDENCE_LIMIT = 10


@dataclass(frozen=True)
class Planned:
    """One refund request and what it must end in."""

    request: RefundRequest
    # refunded | rejected | not_found | shared (one refund_id of the payment refunded) | late (404
    # for a while, inside the grace window, then refunded)
    expect: str


def _epoch(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


def _again(earlier: dict[str, Any], later: dict[str, Any], kill_times: Sequence[float]) -> str:
    """Why the simulator applied a payment's refund again: "timeout", "kill" or "unexplained".

    "timeout": the client never saw the earlier answer - a "slow" fault, or any answer followed by
    another call within LEASE_MARGIN_SECONDS, which only the same invocation's retry loop can make
    (another delivery must wait for the lease: the invocation's deadline plus that margin), and it
    retries only when it did not get the answer (a read timeout under load). "kill": a worker was
    SIGKILLed in between, after Reditus answered and before the outcome could be stored.
    """
    start, end = _epoch(earlier["received_at"]), _epoch(later["received_at"])
    if earlier.get("fault") == "slow" or end - start < LEASE_MARGIN_SECONDS:
        return "timeout"
    if any(start - 0.05 <= t <= end + 0.05 for t in kill_times):
        return "kill"
    return "unexplained"


def _settlements(item: dict[str, Any], grace_seconds: float) -> int:
    """How many attempts of the item's log settled it: every terminal kind, except a 404 answered
    inside the grace window (it scheduled a re-check); the last attempt of a settled item counts
    too (a 404 answered just before the window closed may have been decided just after)."""
    log = list(item.get("attempt_log", []))
    queued = _epoch(str(item["queued_at"])) if item.get("queued_at") else None
    settled: set[int] = set()
    for index, attempt in enumerate(log):
        kind = attempt.get("kind")
        if kind not in TERMINAL_KINDS:
            continue
        inside = (
            kind == "not_found"
            and grace_seconds > 0
            and queued is not None
            and attempt.get("at")
            and _epoch(str(attempt["at"])) - queued < grace_seconds
        )
        if not inside:
            settled.add(index)
    if log and str(item.get("outcome")) in TERMINAL and log[-1].get("kind") in TERMINAL_KINDS:
        settled.add(len(log) - 1)
    return len(settled)


def chain_report(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Live 404 re-check chains per refund, from what the workers reported (faulty_worker --events-dir).

    Method. Every re-check a delivery queues is reported with the chain token it carries and the
    token it was given by the delivery that sent it (``send``: parent -> token; none for the
    producer's own message). Following parents to the first token gives each re-check's chain:
    a redelivered batch or a second copy of the producer's message that starts a new chain gives a
    second first token. Every Reditus call is reported with the token of the delivery that made it
    (``call``). A chain is live from its first call to its last: a re-check that changed nothing
    (a superseded chain's, or a copy while another chain waits) made no call, so a chain whose
    messages were all turned away never counts, while two chains both still asking Reditus overlap.
    A chain's span starts when its first re-check was queued (by a delivery without a token, whose
    own call belongs to no chain), so a second chain started while the first was live overlaps it.
    ``recheck_chains_max`` is the most chains of one refund whose live spans overlap (a sweep over
    the spans' starts and ends); 0 when no re-check ever called.
    """
    parent: dict[str, str | None] = {}
    sent_at: dict[str, float] = {}
    calls: list[dict[str, Any]] = []
    deliveries = sent = overran = 0
    called_mids: set[str] = set()
    recheck_mids: set[str] = set()
    for event in events:
        kind = event.get("e")
        if kind == "send" and event.get("tok"):
            sent += 1
            parent[str(event["tok"])] = event.get("parent")
            sent_at[str(event["tok"])] = float(event["t"])
        elif kind == "call" and event.get("tok"):
            calls.append(event)
            called_mids.add(str(event.get("mid")))
        elif kind == "invocation" and event.get("over"):
            overran += 1
        elif kind == "deliver" and event.get("tok"):
            deliveries += 1
            recheck_mids.add(str(event.get("mid")))

    def first(token: str) -> str:
        seen = {token}
        while (up := parent.get(token)) is not None and up not in seen:
            token = up
            seen.add(token)
        return token

    spans: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for call in calls:
        chain = first(str(call["tok"]))
        # Live from the moment its first re-check was queued (the delivery that started it had no
        # token: its own call belongs to no chain), so a chain started beside a live one overlaps
        # it even if the live one makes its last call before the new one's first.
        start = min(sent_at.get(chain, float(call["t0"])), float(call["t0"]))
        span = spans[str(call["rid"])].setdefault(chain, [start, float(call["t1"])])
        span[0], span[1] = min(span[0], start), max(span[1], float(call["t1"]))
    most = 0
    worst: list[dict[str, Any]] = []
    for refund_id, chains in spans.items():
        edges = sorted([(a, 1) for a, _ in chains.values()] + [(b, -1) for _, b in chains.values()])
        live = peak = 0
        for _, step in edges:  # an end sorts before a start at the same instant: touching is not overlapping
            live += step
            peak = max(peak, live)
        if peak > 1:
            worst.append({"refund_id": refund_id, "chains": {k: v for k, v in chains.items()}})
        most = max(most, peak)
    return {
        "recheck_chains_max": most,
        "rechecks_sent": sent,
        "recheck_deliveries": deliveries,
        "recheck_messages_turned_away": len(recheck_mids - called_mids),
        "refunds_with_chains": len(spans),
        # Invocations that ran past their deadline (Lambda fails the whole batch): the settlement
        # at the end of an invocation retried for longer than the time left, for one.
        "invocations_past_deadline": overran,
        "evidence": worst[:EVIDENCE_LIMIT],
    }


def counted_outcome_of(item: dict[str, Any]) -> str:
    """The outcome a refund item is counted under: its outcome, pending when it has none."""
    return str(item.get("outcome") or Outcome.PENDING.value)


def counters_equal_items(items: Iterable[dict[str, Any]]) -> bool:
    """The day counters, summed per outcome, equal the refund items per outcome (what a drained
    stream must leave)."""
    counters: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for item in items:
        key = str(item[HASH_KEY])
        if key.startswith(COUNTER_PREFIX):
            for kind in Outcome:
                if kind.value in item:
                    counters[kind.value] += int(item[kind.value])
        elif "#" not in key and item.get("queued_day"):
            outcomes[counted_outcome_of(item)] += 1
    return {k: v for k, v in counters.items() if v} == dict(outcomes)


def pending_lists_match(counters: dict[str, dict[str, Any]], refunds: dict[str, dict[str, Any]]) -> bool:
    """Every counter item lists only that day's pending refunds, and all of them when it says its
    list is whole (day_counts.pending_listed): what the Pending filter trusts."""
    pending: dict[str, set[str]] = defaultdict(set)
    for refund_id, item in refunds.items():
        if (
            "#" not in refund_id
            and item.get("queued_day")
            and counted_outcome_of(item) == Outcome.PENDING.value
        ):
            pending[str(item["queued_day"])].add(refund_id)
    for day, counter in counters.items():
        if not set(listed_pending(counter)) <= pending[day]:
            return False
        whole = pending_listed(counter)
        if whole is not None and set(whole) != pending[day]:
            return False
    return True


def _item_summary(item: dict[str, Any] | None) -> dict[str, Any] | None:
    if item is None:
        return None
    keep = (
        "refund_id",
        "payment_id",
        "outcome",
        "http_status",
        "attempts",
        "detail",
        "error_kind",
        "lease_until",
        "queued_at",
        "completed_at",
        "attempt_log",
    )
    return {k: item[k] for k in keep if k in item}


def tally(
    planned: Sequence[Planned],
    items: Iterable[dict[str, Any]],
    dead_letters: Sequence[DeadLetter],
    sim_requests: Sequence[dict[str, Any]],
    kills: Sequence[Kill],
    *,
    messages_sent: int,
    timeouts: Sequence[Kill] = (),
    events: Sequence[dict[str, Any]] = (),
    grace_seconds: float = 0,
) -> dict[str, Any]:
    """The report of one scenario. `items` is the table once the queue and the stream are drained."""
    items = list(items)
    by_refund: dict[str, dict[str, Any]] = {}
    counters: Counter[str] = Counter()
    counter_items: dict[str, dict[str, Any]] = {}
    markers = 0
    for item in items:
        key = str(item[HASH_KEY])
        if key.startswith(COUNTER_PREFIX):
            counter_items[key.removeprefix(COUNTER_PREFIX)] = item
            for kind in Outcome:
                if kind.value in item:
                    counters[kind.value] += int(item[kind.value])
        elif key.startswith(PAYMENT_MARKER_PREFIX):
            markers += 1
        else:
            by_refund[key] = item
    wanted = {p.request.refund_id: p for p in planned}
    letters: dict[str, list[DeadLetter]] = defaultdict(list)
    for letter in dead_letters:
        letters[letter.refund_id or letter.message_id].append(letter)

    terminal: list[str] = []
    dead_lettered: list[str] = []
    lost: list[str] = []
    non_terminal: list[str] = []
    duplicate_terminal: list[str] = []
    wrong: list[dict[str, Any]] = []
    per_payment: dict[str, list[str]] = defaultdict(list)
    for refund_id, plan in wanted.items():
        found = by_refund.get(refund_id)
        outcome = None if found is None else str(found.get("outcome"))
        if outcome in TERMINAL:
            terminal.append(refund_id)
        elif found is not None:
            non_terminal.append(refund_id)
        if outcome == Outcome.DEAD_LETTERED.value or refund_id in letters:
            dead_lettered.append(refund_id)
        if outcome not in TERMINAL and refund_id not in letters:
            lost.append(refund_id)
        if found is not None and _settlements(found, grace_seconds) > 1:
            duplicate_terminal.append(refund_id)
        per_payment[plan.request.payment_id].append(refund_id)
        expected = "refunded" if plan.expect == "late" else plan.expect
        settled_as_planned = plan.expect == "shared" or outcome in (expected, Outcome.DEAD_LETTERED.value)
        if outcome in TERMINAL and not settled_as_planned:
            wrong.append({"refund_id": refund_id, "expected": plan.expect, "item": _item_summary(found)})
    # Several refund_ids for one payment: exactly one is refunded, the others are duplicates of it.
    for payment_id, refund_ids in per_payment.items():
        if len(refund_ids) < 2:
            continue
        shared = Counter(str((by_refund.get(r) or {}).get("outcome")) for r in refund_ids)
        settled = shared["refunded"] + shared["duplicate"] + shared["dead_lettered"]
        ok = shared["refunded"] <= 1 and (shared["refunded"] == 1 or shared["dead_lettered"] > 0)
        if settled == len(refund_ids) and not ok:
            wrong.append({"payment_id": payment_id, "outcomes": dict(shared)})
    strangers = sorted(set(by_refund) - set(wanted))
    duplicate_terminal += strangers

    # What the simulator saw, per payment, in the order it decided.
    applied: dict[str, list[dict[str, Any]]] = defaultdict(list)
    faults: Counter[str] = Counter()
    for record in sorted(sim_requests, key=lambda r: int(r["seq"])):
        faults[record.get("fault") or "none"] += 1
        paid = record.get("payment_id")
        if paid and record.get("applied"):
            applied[paid].append(record)
    # A Lambda timeout cuts an invocation as a kill does: between Reditus's answer and its record.
    kill_times = sorted(k.at for k in [*kills, *timeouts])
    explained: list[str] = []
    unexplained: list[str] = []
    after_timeout: list[str] = []
    for payment_id, records in applied.items():
        kinds = {_again(earlier, later, kill_times) for earlier, later in itertools.pairwise(records)}
        if "unexplained" in kinds:
            unexplained.append(payment_id)
        elif "kill" in kinds:
            explained.append(payment_id)
        elif kinds:
            after_timeout.append(payment_id)

    history = Counter(counted_outcome_of(item) for item in by_refund.values())
    counted = {k: v for k, v in counters.items() if v}
    chains = chain_report(events)
    # Orphans: a dead letter nobody's history knows, or a dead_lettered item with no dead letter.
    orphans = sorted(r for r in letters if r not in by_refund) + sorted(
        r
        for r, i in by_refund.items()
        if i.get("outcome") == Outcome.DEAD_LETTERED.value and r not in letters
    )
    report: dict[str, Any] = {
        "requests": len(wanted),
        "messages_sent": messages_sent,
        "terminal": len(terminal),
        "dead_lettered": len(dead_lettered),
        "dead_letter_messages": len(dead_letters),
        "lost": len(lost),
        "not_terminal": len(non_terminal),
        "duplicate_terminal": len(duplicate_terminal),
        "unexpected_outcomes": len(wrong),
        "duplicate_submissions": len(explained) + len(unexplained),
        "duplicate_submissions_explained_by_kills": len(explained),
        "duplicate_submissions_unexplained": len(unexplained),
        "resubmitted_after_timeout": len(after_timeout),
        "kills": len(kills),
        "timeouts": len(timeouts),
        "recheck_chains_max": chains["recheck_chains_max"],
        "orphaned_dead_letters": len(orphans),
        "counters_match": counted == dict(history),
        "pending_lists_match": pending_lists_match(counter_items, by_refund),
        "outcomes": dict(sorted(history.items())),
        "counters": dict(sorted(counted.items())),
        "payment_markers": markers,
        "simulator_requests": len(sim_requests),
        "simulator_answers": dict(sorted(faults.items())),
        "max_attempts": max((int(i.get("attempts", 0)) for i in by_refund.values()), default=0),
        "rechecks": {k: v for k, v in chains.items() if k not in ("recheck_chains_max", "evidence")},
    }
    evidence: dict[str, Any] = {}
    if lost:
        evidence["lost"] = [
            {"refund_id": r, "item": _item_summary(by_refund.get(r))} for r in lost[:EVIDENCE_LIMIT]
        ]
    if duplicate_terminal:
        evidence["duplicate_terminal"] = [
            {"refund_id": r, "item": _item_summary(by_refund.get(r))}
            for r in duplicate_terminal[:EVIDENCE_LIMIT]
        ]
    if wrong:
        evidence["unexpected_outcomes"] = wrong[:EVIDENCE_LIMIT]
    if unexplained:
        evidence["duplicate_submissions_unexplained"] = [
            {
                "payment_id": p,
                "refund_ids": per_payment.get(p, []),
                "items": [_item_summary(by_refund.get(r)) for r in per_payment.get(p, [])],
                "simulator": applied[p],
            }
            for p in unexplained[:EVIDENCE_LIMIT]
        ]
    if explained:
        evidence["duplicate_submissions_explained_by_kills"] = [
            {"payment_id": p, "applied_at": [r["received_at"] for r in applied[p]]} for p in explained
        ]
    if not report["counters_match"]:
        evidence["counters"] = {"counters": counted, "history": dict(history)}
    if chains["evidence"]:
        evidence["recheck_chains"] = chains["evidence"]
    if orphans:
        evidence["orphaned_dead_letters"] = [
            {"refund_id": r, "item": _item_summary(by_refund.get(r)), "dead_letters": len(letters.get(r, []))}
            for r in orphans[:EVIDENCE_LIMIT]
        ]
    if evidence:
        report["evidence"] = evidence
    return report


def problems(report: dict[str, Any], *, dead_letters_allowed: bool = True) -> list[str]:
    """What breaks the promise: nothing lost, nothing applied twice, counters true."""
    found = []
    for name in ("lost", "duplicate_terminal", "unexpected_outcomes", "duplicate_submissions_unexplained"):
        if report[name]:
            found.append(f"{name} = {report[name]}")
    if not report["counters_match"]:
        found.append("the day counters do not match the history items (a count lost or doubled)")
    if report.get("pending_lists_match") is False:
        found.append("a day counter lists a refund that is not pending, or claims a full list that is not")
    if report.get("counters_caught_up") is False:
        found.append("the workers did not apply the table's stream to the day counters in time")
    if report["recheck_chains_max"] > 1:
        found.append(f"recheck_chains_max = {report['recheck_chains_max']}")
    if report["orphaned_dead_letters"]:
        found.append(f"orphaned_dead_letters = {report['orphaned_dead_letters']}")
    if report["terminal"] + report["dead_lettered"] < report["requests"]:
        found.append("not every request reached a terminal outcome or the dead-letter queue")
    if not dead_letters_allowed and (report["dead_lettered"] or report["dead_letter_messages"]):
        found.append(
            f"dead_lettered = {report['dead_lettered']}, dead letters = {report['dead_letter_messages']}"
        )
    return found
