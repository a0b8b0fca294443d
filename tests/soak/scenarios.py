"""The three reliability scenarios, at any scale: faults and duplicates, outage, store failure.

Each builds its own system (resources under its own stack name) on shared servers, drives it from
outside - the producer side sends, a killer SIGKILLs workers, the simulator and the store fail on
cue - waits until the refund queue is drained, then counts (count.tally).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from reditus_refunds.contract import RefundRequest
from reditus_refunds.producer import RefundProducer

from .count import Planned, tally
from .system import Servers, StoreFaults, System, SystemSettings, running, wait_until

ALL_FAULTS = ["429", "500", "503", "slow", "drop"]


def plan_requests(
    prefix: str,
    count: int,
    rng: random.Random,
    *,
    rejected: float = 0.0,
    unknown: float = 0.0,
    shared: float = 0.0,
    late: float = 0.0,
) -> list[Planned]:
    """`count` refund requests, each its own refund_id: mostly refundable payments, some the simulator
    rejects (400) or does not know (404), some it knows only a while after the request is sent (404,
    then 200: "late"), and some for a payment an earlier request already asked for."""
    planned: list[Planned] = []
    refundable: list[str] = []
    for n in range(count):
        refund_id = f"{prefix}-r{n:05d}"
        draw = rng.random()
        if refundable and draw < shared:
            payment_id, expect = rng.choice(refundable), "shared"
        elif draw < shared + rejected:
            payment_id, expect = f"{prefix}-bad{n:05d}", "rejected"
        elif draw < shared + rejected + unknown:
            payment_id, expect = f"{prefix}-unknown{n:05d}", "not_found"
        elif draw < shared + rejected + unknown + late:
            payment_id, expect = f"{prefix}-late{n:05d}", "late"
        else:
            payment_id, expect = f"{prefix}-pay{n:05d}", "refunded"
            refundable.append(payment_id)
        request = RefundRequest(
            payment_id=payment_id, refund_id=refund_id, requested_by="soak", source="soak"
        )
        planned.append(Planned(request, expect))
    # Every refund_id of a payment asked for twice is "shared": one of them is refunded.
    counts = Counter(p.request.payment_id for p in planned)
    return [Planned(p.request, "shared") if counts[p.request.payment_id] > 1 else p for p in planned]


def simulator_payments(planned: Sequence[Planned]) -> dict[str, list[str]]:
    refundable = sorted({p.request.payment_id for p in planned if p.expect in ("refunded", "shared")})
    invalid = sorted({p.request.payment_id for p in planned if p.expect == "rejected"})
    return {"add_payments": refundable, "add_invalid": invalid}


def send(
    system: System,
    planned: Sequence[Planned],
    copies: int,
    rng: random.Random,
    before: Callable[[Sequence[Planned]], None] | None = None,
) -> int:
    """Ten at a time: once as the console and CLI do (recorded pending), then `copies - 1` more times
    with the same body as a raw SendMessageBatch, in another order. `before` is called with each ten
    before they go. Returns the messages sent."""
    producer = RefundProducer(system.sqs, system.queue_url, system.writer)
    sent = 0
    for start in range(0, len(planned), 10):
        if before is not None:
            before(planned[start : start + 10])
        chunk = [p.request for p in planned[start : start + 10]]
        report = producer.send_many(chunk)
        assert not report.failed, report.failed
        sent += len(report.sent)
        for _ in range(copies - 1):
            again = list(chunk)
            rng.shuffle(again)
            entries = [{"Id": str(i), "MessageBody": r.to_body()} for i, r in enumerate(again)]
            response = system.sqs.send_message_batch(QueueUrl=system.queue_url, Entries=entries)
            assert not response.get("Failed"), response.get("Failed")
            sent += len(response.get("Successful", []))
    return sent


class Background:
    """A function on a thread whose exception is raised again by join()."""

    def __init__(self, name: str, target: Callable[[], Any]):
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = target()
            except BaseException as err:  # handed to join()
                self.error = err
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


class Killer:
    """SIGKILLs a random worker at random moments while a batch is in flight, then restarts it.

    Gives up early once `finished()` says there is nothing left to interrupt."""

    def __init__(
        self,
        system: System,
        count: int,
        rng: random.Random,
        gap: tuple[float, float],
        finished: Callable[[], bool],
    ):
        self.system = system
        self.count = count
        self.rng = rng
        self.gap = gap
        self.finished = finished
        self.stopping = threading.Event()
        self.background = Background("killer", self._run)

    def _run(self) -> int:
        for _ in range(self.count):
            if self.stopping.wait(self.rng.uniform(*self.gap)):
                break
            while not self.stopping.is_set() and self.system.in_flight() == 0:
                if self.finished():
                    return len(self.system.kills)
                self.stopping.wait(0.5)  # polling for a moment when a batch is in hand
            if self.stopping.is_set():
                break
            self.system.kill_and_restart(self.rng.randrange(len(self.system.workers)))
        return len(self.system.kills)

    @property
    def done(self) -> bool:
        return self.background.done.is_set()

    def stop(self) -> int:
        self.stopping.set()
        result: int = self.background.join(120)
        return result


@dataclass(frozen=True)
class StoreWindow:
    """A while during which DynamoDB writes fail (see tests/soak/faulty_worker.py for the kinds)."""

    seconds: float
    kinds: tuple[str, ...] = ("throttle", "error")
    rate: float = 1.0
    target: str = "writes"  # or "counters": only the day counters' writes fail


@dataclass(frozen=True)
class SettleWindow:
    """A while during which the day counters' writes fail (the stream function the workers play),
    opening once `at` of the requests were submitted to Reditus (a share of the planned requests,
    counted at the simulator)."""

    at: float
    seconds: float
    kinds: tuple[str, ...] = ("throttle", "error")


@dataclass(frozen=True)
class Scenario:
    name: str
    requests: int
    settings: SystemSettings
    deadline: float  # seconds from the first message to a drained queue
    seed: int = 7
    copies: int = 1
    fault_rate: float = 0.0
    faults: list[str] = field(default_factory=lambda: list(ALL_FAULTS))
    slow_seconds: float = 12.0
    latency: float = 0.0  # seconds every simulator answer takes
    retry_after: int = 1
    rejected: float = 0.0
    unknown: float = 0.0
    shared: float = 0.0
    kills: int = 0
    kill_gap: tuple[float, float] = (1.0, 3.0)
    outage_seconds: float = 0.0
    store_windows: tuple[StoreWindow, ...] = ()
    start_after: float = 0.25  # the outage or store failure starts once this share was submitted
    late: float = 0.0  # share of payments the simulator knows only `late_after` seconds after sending
    late_after: tuple[float, float] = (1.0, 5.0)
    settle_windows: tuple[SettleWindow, ...] = ()  # alongside everything else, from a thread
    # Requests per second the producer sends at (0: as fast as it can). Paced about as fast as the
    # workers drain, refunds reach Reditus soon after they are queued, as they do in production,
    # rather than after a backlog longer than the 404 grace window.
    send_rate: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def grace_seconds(self) -> float:
        return float(self.settings.parameters.get("NotFoundGraceSeconds", 0))


@dataclass
class Result:
    report: dict[str, Any]
    system: System
    planned: list[Planned]


def _describe(system: System) -> Callable[[], str]:
    def describe() -> str:
        try:
            depth = str(system.depth())
        except Exception as err:  # only for the failure message
            depth = repr(err)
        return f"queue: {depth}\n" + "\n".join(w.output(tail=30) for w in system.workers)

    return describe


def run(servers: Servers, scenario: Scenario, log_dir: Path) -> Result:
    """Run one scenario to a drained queue and count."""
    rng = random.Random(scenario.seed)
    planned = plan_requests(
        scenario.name,
        scenario.requests,
        rng,
        rejected=scenario.rejected,
        unknown=scenario.unknown,
        shared=scenario.shared,
        late=scenario.late,
    )
    if scenario.late:
        assert scenario.late_after[1] < scenario.grace_seconds, "a late payment must come inside the window"
    store_faults = None
    if scenario.store_windows or scenario.settle_windows:
        store_faults = StoreFaults(
            log_dir / f"{scenario.name}.store-faults.json", log_dir / f"{scenario.name}.store-faults.log"
        )
        store_faults.off()
    system = System(servers, scenario.name, scenario.settings, log_dir, store_faults=store_faults)
    servers.reset()
    servers.configure(
        fault_rate=scenario.fault_rate,
        faults=scenario.faults,
        slow_seconds=scenario.slow_seconds,
        latency=scenario.latency,
        retry_after=scenario.retry_after,
        seed=scenario.seed,
        outage=False,
        **simulator_payments(planned),
    )
    describe = _describe(system)
    started = time.monotonic()
    outage: dict[str, Any] = {}
    windows: list[dict[str, Any]] = []
    late_rng = random.Random(scenario.seed + 2)

    paced: list[float] = []

    def before_sending(chunk: Sequence[Planned]) -> None:
        if scenario.send_rate:
            paced.append(paced[-1] + len(chunk) / scenario.send_rate if paced else time.monotonic())
            time.sleep(max(0.0, paced[-1] - time.monotonic()))  # the producer's pace, a scenario knob
        # Counted from now, just before the request is sent: 404 until then, 200 after.
        late = {
            p.request.payment_id: late_rng.uniform(*scenario.late_after) for p in chunk if p.expect == "late"
        }
        if late:
            servers.configure(add_late=late)

    settled_windows: list[dict[str, Any]] = []
    with running(system):
        producer = Background(
            "producer",
            lambda: send(
                system,
                planned,
                scenario.copies,
                rng,
                before_sending if scenario.late or scenario.send_rate else None,
            ),
        )
        settle_faults = None
        if scenario.settle_windows:
            assert store_faults is not None
            settle_faults = Background(
                "settle faults",
                lambda: _settle_windows(servers, scenario, store_faults, settled_windows, describe),
            )
        killer = None
        if scenario.kills:
            killer = Killer(
                system,
                scenario.kills,
                random.Random(scenario.seed + 1),
                scenario.kill_gap,
                finished=lambda: producer.done.is_set() and system.drained(),
            )
        try:
            if scenario.outage_seconds or scenario.store_windows:
                wanted = max(1, int(scenario.requests * scenario.start_after))
                wait_until(
                    lambda: servers.request_count() >= wanted,
                    scenario.deadline,
                    "the first submissions",
                    describe,
                )
                if scenario.outage_seconds:
                    servers.configure(outage=True)
                    outage["started"] = time.time()
                    # The outage itself lasts this long: a scenario parameter, not a synchronisation.
                    time.sleep(scenario.outage_seconds)
                    servers.configure(outage=False)
                    outage["ended"] = time.time()
                for window in scenario.store_windows:
                    assert store_faults is not None
                    store_faults.on(window.kinds, window.rate)
                    opened = time.time()
                    time.sleep(window.seconds)  # the failure window itself
                    store_faults.off()
                    windows.append(
                        {"kinds": list(window.kinds), "rate": window.rate, "from": opened, "to": time.time()}
                    )
                    if window is not scenario.store_windows[-1]:
                        # The next window once writes went through again for a moment.
                        time.sleep(min(2.0, window.seconds))
            remaining = scenario.deadline - (time.monotonic() - started)
            wait_until(
                lambda: (
                    producer.done.is_set()
                    and (killer is None or killer.done)
                    and (settle_faults is None or settle_faults.done.is_set())
                    and system.drained()
                ),
                remaining,
                f"{scenario.name}: every message to be settled",
                describe,
                interval=1.0,  # each look counts every message in moto: no need to look more often
            )
            messages_sent = producer.join()
            if settle_faults is not None:
                settle_faults.join()
        finally:
            if killer is not None:
                killer.stop()
            if store_faults is not None:
                store_faults.off()
            if scenario.outage_seconds and "ended" not in outage:
                servers.configure(outage=False)
    duration = time.monotonic() - started
    drained = system.scan()
    # The day counters come from the table's stream: counted once the workers applied all of it.
    counters = system.settle_counters()
    report = tally(
        planned,
        system.scan(),
        system.dead_letters(),
        servers.requests(),
        system.kills,
        messages_sent=messages_sent,
        timeouts=system.timeouts(),
        events=system.events(),
        grace_seconds=scenario.grace_seconds,
    )
    report["counters_caught_up"] = counters["caught_up"]
    report["counters_settled_seconds"] = counters["seconds"]
    if scenario.late:
        late_ids = {p.request.refund_id for p in planned if p.expect == "late"}
        late_items = [i for i in drained if i["refund_id"] in late_ids]
        report["late_payments"] = {
            "requests": len(late_ids),
            "refunded_after_a_404": sum(
                1
                for i in late_items
                if i.get("outcome") == "refunded"
                and any(a.get("kind") == "not_found" for a in i.get("attempt_log", []))
            ),
        }
    report = {
        "scenario": scenario.name,
        **report,
        "duration_seconds": round(duration, 1),
        "settings": {
            **scenario.settings.describe(system.local),
            "fault_rate": scenario.fault_rate,
            "faults": scenario.faults if scenario.fault_rate else [],
            "slow_seconds": scenario.slow_seconds if scenario.fault_rate else None,
            "reditus_latency": scenario.latency,
            "copies_per_request": scenario.copies,
            "kills_planned": scenario.kills,
            "outage_seconds": scenario.outage_seconds,
            "store_windows": [
                {"seconds": w.seconds, "kinds": list(w.kinds), "rate": w.rate} for w in scenario.store_windows
            ],
            "send_rate": scenario.send_rate or None,
            "late_payments": scenario.late,
            "late_after_seconds": list(scenario.late_after) if scenario.late else None,
            "settle_windows": [
                {"at": w.at, "seconds": w.seconds, "kinds": list(w.kinds)} for w in scenario.settle_windows
            ],
        },
    }
    if scenario.settle_windows:
        report["settle_faults"] = {"windows": settled_windows}
    if system.settings.timeout_rate:
        report["timeouts_detail"] = {
            "workers_restarted": len(system.restarts_after_timeout),
            "cut_at_seconds": [round(float(e["after"]), 2) for e in system.events() if e["e"] == "timeout"],
        }
    if scenario.notes:
        report["settings"]["notes"] = scenario.notes
    if scenario.outage_seconds:
        records = servers.requests()
        report["outage"] = {
            "seconds": round(outage["ended"] - outage["started"], 1),
            "requests_refused": sum(1 for r in records if r.get("fault") == "outage"),
            "refunds_hit": _hit_by(system, lambda a: a.get("http_status") == 503),
        }
    if store_faults is not None and scenario.settle_windows:
        injected = store_faults.injected()
        for done in settled_windows:
            done["injected"] = sum(1 for f in injected if done["from"] <= float(f[2]) <= done["to"] + 1)
        report["settle_faults"]["injected"] = len(injected)
        report["settle_faults"]["by_kind"] = dict(Counter(f[1] for f in injected))
    elif store_faults is not None:
        injected = store_faults.injected()
        report["store_faults"] = {
            "windows": [
                {
                    "seconds": round(w["to"] - w["from"], 1),
                    "kinds": w["kinds"],
                    "injected": sum(1 for f in injected if w["from"] <= float(f[2]) <= w["to"] + 1),
                }
                for w in windows
            ],
            "injected": len(injected),
            "by_kind": dict(Counter(f[1] for f in injected)),
            "by_operation": dict(Counter(f[0] for f in injected)),
            "refunds_attempted_more_than_once": sum(
                1 for i in system.scan() if "#" not in str(i["refund_id"]) and int(i.get("attempts", 0)) > 1
            ),
        }
    return Result(report, system, planned)


def _submitted(servers: Servers, wanted: int) -> bool:
    return servers.request_count() >= wanted


def _settle_windows(
    servers: Servers,
    scenario: Scenario,
    faults: StoreFaults,
    done: list[dict[str, Any]],
    describe: Callable[[], str],
) -> None:
    """Open each day-counter write failure window once its share of the requests was submitted."""
    for window in scenario.settle_windows:
        wanted = max(1, int(scenario.requests * window.at))
        wait_until(
            partial(_submitted, servers, wanted),
            scenario.deadline,
            f"{wanted} submissions",
            describe,
            interval=0.5,
        )
        faults.on(window.kinds, 1.0, target="counters")
        opened = time.time()
        try:
            time.sleep(window.seconds)  # the failure window itself
        finally:
            faults.off()
        done.append({"kinds": list(window.kinds), "from": opened, "to": time.time()})


def _hit_by(system: System, attempt_matches: Callable[[dict[str, Any]], bool]) -> int:
    return sum(
        1
        for item in system.scan()
        if "#" not in str(item["refund_id"]) and any(attempt_matches(a) for a in item.get("attempt_log", []))
    )
