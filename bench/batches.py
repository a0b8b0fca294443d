"""Handler wall time for batches of ten: ours (concurrent) against the limit and the textbook one.

Every batch runs against an empty table (reset between batches, untimed), so the figures do not
drift with the table's size; only the handler call is timed. Ours and the textbook handler are
interleaved round by round, so both see the same machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import aws
from .counting import CallTimer
from .events import Feeder, LambdaContext

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class Samples:
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    ddb_calls: list[int] = field(default_factory=list)
    ddb_ms: list[float] = field(default_factory=list)  # summed over the calls (they may overlap)

    @property
    def median(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def ddb_ms_per_call(self) -> float:
        return sum(self.ddb_ms) / max(1, sum(self.ddb_calls))

    @property
    def ddb_calls_per_batch(self) -> float:
        return sum(self.ddb_calls) / max(1, len(self.ddb_calls))


@dataclass
class BatchFigures:
    ours_0: Samples
    textbook_0: Samples
    ours_100: Samples
    textbook_100: Samples

    @property
    def overhead_ms(self) -> float:
        return self.ours_0.median

    @property
    def vs_limit(self) -> float:
        return self.ours_100.median / (100.0 + self.overhead_ms)

    @property
    def vs_sequential(self) -> float:
        return self.textbook_100.median / self.ours_100.median


class BatchRunner:
    def __init__(self, stack: aws.Stack, feeder: Feeder, logs: Any):
        self.stack = stack
        self.feeder = feeder
        self.logs = logs
        self.dynamodb = aws.client("dynamodb", stack.endpoint)

    def run(
        self,
        handler: Handler,
        samples: Samples | None = None,
        reset: bool = True,
        timer: CallTimer | None = None,
    ) -> None:
        if reset:
            aws.reset_table(self.dynamodb, self.stack.table)
        event = self.feeder.event(10)
        context = LambdaContext()
        if timer is not None:
            timer.reset()
        cpu = time.process_time()
        started = time.perf_counter()
        response = handler(event, context)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        failures = self.feeder.settle(event, response)
        if failures:
            raise RuntimeError(f"{failures} of 10 records failed in a common-case batch:\n{self.logs.tail()}")
        if samples is not None:
            samples.wall_ms.append(wall * 1000)
            samples.cpu_ms.append(cpu * 1000)
            if timer is not None:
                samples.ddb_calls.append(timer.calls)
                samples.ddb_ms.append(timer.seconds * 1000)


def measure(
    runner: BatchRunner,
    ours: tuple[Handler, Any],
    textbook: tuple[Handler, Any],
    rounds_0: int = 20,
    rounds_100: int = 15,
) -> BatchFigures:
    """`ours` and `textbook`: (handler, the DynamoDB client its service uses)."""
    figures = BatchFigures(Samples(), Samples(), Samples(), Samples())
    timers = {id(h): CallTimer("dynamodb").attach(client) for h, client in (ours, textbook)}
    try:
        _rounds(runner, ours[0], textbook[0], figures, timers, rounds_0, rounds_100)
    finally:
        for handler, client in (ours, textbook):
            timers[id(handler)].detach(client)
    return figures


def _rounds(
    runner: BatchRunner,
    ours: Handler,
    textbook: Handler,
    figures: BatchFigures,
    timers: dict[int, CallTimer],
    rounds_0: int,
    rounds_100: int,
) -> None:
    aws.set_latency(runner.stack.sim_url, 0.0)
    for _ in range(3):  # warm-up: the key from Secrets Manager, connections, the cold-start metric
        runner.run(ours)
        runner.run(textbook)
    for latency, rounds, mine, theirs in (
        (0.0, rounds_0, figures.ours_0, figures.textbook_0),
        (0.1, rounds_100, figures.ours_100, figures.textbook_100),
    ):
        aws.set_latency(runner.stack.sim_url, latency)
        for i in range(rounds):
            pair = [(ours, mine), (textbook, theirs)]
            for handler, samples in pair if i % 2 == 0 else reversed(pair):
                runner.run(handler, samples, timer=timers[id(handler)])
    aws.set_latency(runner.stack.sim_url, 0.0)
