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
* ``counters_match`` - the per-day counters, summed per outcome, equal the history items per outcome.
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
from reditus_refunds.layout import COUNTER_PREFIX, HASH_KEY, PAYMENT_MARKER_PREFIX
from reditus_refunds.records import Outcome
from reditus_refunds.submitter import LEASE_MARGIN_SECONDS

from .system import Kill

TERMINAL = {o.value for o in Outcome if o.terminal}
# Attempt-log kinds that settle a refund (404 is final: the soak runs without the grace window).
TERMINAL_KINDS = {"refunded", "rejected", "not_found", "failed", "invalid", "duplicate"}
EVIDENCE_LIMIT = 10


@dataclass(frozen=True)
class Planned:
    """One refund request and what it must end in."""

    request: RefundRequest
    expect: str  # refunded | rejected | not_found | shared (one refund_id of the payment refunded)


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


def _item_summary(item: dict[str, Any] | None) -> dict[str, Any] | None:
    if item is None:
        return None
    keep = (
        "refund_id",
        "payment_id",
        "outcome",
        "counted_outcome",
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
) -> dict[str, Any]:
    by_refund: dict[str, dict[str, Any]] = {}
    counters: Counter[str] = Counter()
    markers = 0
    for item in items:
        key = str(item[HASH_KEY])
        if key.startswith(COUNTER_PREFIX):
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
        if found is not None:
            settlements = [a for a in found.get("attempt_log", []) if a.get("kind") in TERMINAL_KINDS]
            if len(settlements) > 1:
                duplicate_terminal.append(refund_id)
        per_payment[plan.request.payment_id].append(refund_id)
        settled_as_planned = plan.expect == "shared" or outcome in (plan.expect, Outcome.DEAD_LETTERED.value)
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
    kill_times = sorted(k.at for k in kills)
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

    history = Counter(str(item.get("outcome")) for item in by_refund.values())
    counted = {k: v for k, v in counters.items() if v}
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
        "counters_match": counted == dict(history),
        "outcomes": dict(sorted(history.items())),
        "counters": dict(sorted(counted.items())),
        "payment_markers": markers,
        "simulator_requests": len(sim_requests),
        "simulator_answers": dict(sorted(faults.items())),
        "max_attempts": max((int(i.get("attempts", 0)) for i in by_refund.values()), default=0),
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
        found.append("the day counters do not match the history items")
    if report["terminal"] + report["dead_lettered"] < report["requests"]:
        found.append("not every request reached a terminal outcome or the dead-letter queue")
    if not dead_letters_allowed and (report["dead_lettered"] or report["dead_letter_messages"]):
        found.append(
            f"dead_lettered = {report['dead_lettered']}, dead letters = {report['dead_letter_messages']}"
        )
    return found
