"""`make bench`: every figure in one run, printed as a table, written to bench/results.json.

python -m bench.run            # the full run (under ten minutes on a 2-core machine)
python -m bench.run --quick    # fewer rounds and refunds: checks the bench itself, not for figures
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from . import artifact
from .procs import ROOT

TOTAL_SECONDS = 570  # `make bench` stays under ten minutes


class Progress:
    def __init__(self, out: TextIO):
        self.out = out
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f} s] {text}", file=self.out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of the bench (figures not written)")
    args = parser.parse_args(argv)
    quick = args.quick
    out = sys.stdout
    # SIGTERM unwinds like Ctrl-C, so the child processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    say = Progress(sys.stderr)

    from . import aws

    # Never a real account: no profile, no endpoint of the caller's, fake credentials.
    clean = aws.clean_environ()
    os.environ.clear()
    os.environ.update({**clean, **aws.FAKE_CREDENTIALS})
    return _run(out, say, quick)


def _run(out: TextIO, say: Progress, quick: bool) -> int:
    from . import aws, procs
    from .events import payment_ids
    from .machine import load_average
    from .sink import LogSink

    load = load_average()

    say("starting the moto server and the Reditus simulator in their own processes")
    with procs.start_moto() as moto, procs.start_simulator(aws.API_KEY) as sim:
        stack = aws.make_stack(moto.url, sim.url)
        payments = payment_ids("bench", 3000)
        aws.add_payments(sim.url, payments)
        os.environ.update(stack.handler_env())
        env = dict(os.environ)
        logs = LogSink()
        history_proc: subprocess.Popen[str] | None = None
        history_err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in the finally below
        sys.stdout = logs  # the handlers' JSON logs and metrics: counted, not shown
        try:
            # Imported only now: Powertools' loggers bind to sys.stdout and read the environment.
            import reditus_refunds.handler as handler

            from . import batches, bulk, calls, memory, textbook, webhooks
            from .events import Feeder

            ours = (handler.lambda_handler, handler.service.dynamodb)
            textbook_handler, textbook_service = textbook.build()
            theirs = (textbook_handler, textbook_service.dynamodb)
            feeder = Feeder(
                aws.client("sqs", moto.url),
                aws.client("dynamodb", moto.url),
                stack.table,
                stack.queue_url,
                payments,
            )
            runner = batches.BatchRunner(stack, feeder, logs)
            say("batches of ten: ours and the textbook handler, Reditus at 0 ms and at 100 ms")
            batch_figures = batches.measure(runner, ours, theirs, *((4, 3) if quick else (16, 12)))

            say("history reads at 10k and 100k refunds (own process), and 1,000 refunds counted")
            history_proc = subprocess.Popen(
                [sys.executable, "-m", "bench.history"],
                cwd=ROOT,
                env=aws.clean_environ(),
                stdout=subprocess.PIPE,
                stderr=history_err,
                text=True,
            )
            call_payments = payment_ids("calls", 1000)
            aws.add_payments(sim.url, call_payments)
            call_figures = calls.measure(
                stack, handler.service, handler.lambda_handler, call_payments, logs, 100 if quick else 1000
            )
            say("webhook receiver: request units per refund event and per replay (in this process)")
            # The Lambda's part of a webhook's refund is the same claim and result as a console's, and
            # the same share of the counters' stream function: taken from the figures just measured.
            webhook_cost = webhooks.measure_cost(
                aws.make_stack(moto.url, sim.url, prefix="webhookcost"),
                lambda_wru=sum(u.wru + u.gsi_wru for u in call_figures.parts[1:]) / call_figures.priced,
                lambda_rru=sum(u.rru for u in call_figures.parts[1:]) / call_figures.priced,
                events=30 if quick else 200,
                replays=10 if quick else 50,
            )
            say("waiting for the history figures (nothing timed runs beside them)")
            history_out, _ = history_proc.communicate(timeout=600)
            if history_proc.returncode != 0:
                history_err.seek(0)
                raise RuntimeError(f"bench.history failed:\n{history_err.read()[-3000:]}")
            history_figures = json.loads(history_out.strip().splitlines()[-1])
            say("bulk: 10,000 CSV rows queued, product path against a raw loop (own process)")
            bulk_figures = bulk.run_alone(moto.url)
            say("peak memory of a fresh process handling one batch")
            memory_figures = memory.measure(stack, feeder, env, rounds=1 if quick else 3)
            say("webhook receiver: request to answer, one sender then 20 (own process, own table)")
            webhook_stack = aws.make_stack(moto.url, sim.url, prefix="webhook")
            webhook_latency = webhooks.measure_latency(
                {**aws.clean_environ(), **webhook_stack.handler_env()}, 60 if quick else 400
            )
        finally:
            sys.stdout = out
            if history_proc is not None and history_proc.poll() is None:
                history_proc.kill()
                history_proc.wait(10)
            history_err.close()
    from . import e2e, startup, webhooks
    from .machine import describe
    from .report import Figures

    with tempfile.TemporaryDirectory(prefix="bench-packages-") as packages:
        built = _build_packages(say, Path(packages))
        say("cold start: import and init in fresh processes")
        startup_figures = startup.measure(env, rounds=6 if quick else 15, built=built)
        say("webhook receiver cold start: import and init in fresh processes")
        webhook_init = webhooks.measure_init(env, rounds=6 if quick else 15, built=built)
    # Whatever time is left of the ten minutes (less start-up and shutdown), at least a minute.
    budget = max(60.0, TOTAL_SECONDS - (time.monotonic() - say.started) - 75)
    say(f"end to end through `reditus-refunds local up` (cut off after {budget:.0f} s)")
    e2e_figures = e2e.measure(refunds=100 if quick else 1000, timeout=60 if quick else budget)
    figures = Figures(
        machine=describe(load),
        batches=batch_figures,
        calls=call_figures,
        bulk=bulk_figures,
        memory=memory_figures,
        startup=startup_figures,
        history=history_figures,
        e2e=e2e_figures,
        webhook_init=webhook_init,
        webhook_latency=webhook_latency,
        webhook_cost=webhook_cost,
        seconds=time.monotonic() - say.started,
    )
    print(figures.table(), file=out, flush=True)
    if quick:
        say("--quick: results.json and docs/performance.md left as they were")
    else:
        figures.write()
        say("wrote bench/results.json and docs/performance.md")
    return 0


def _build_packages(say: Progress, workdir: Path) -> artifact.Built | None:
    """Both functions' packages for python3.12 (functions/Makefile), or None: the dev venv then."""
    python = artifact.runtime_python()
    if python is None:
        say(f"no python{artifact.RUNTIME} here: cold starts measured in the development venv instead")
        return None
    say(f"building both functions' packages for {python} (functions/Makefile, the locked dependencies)")
    try:
        return artifact.build(workdir, python)
    except (artifact.BuildFailed, OSError, subprocess.SubprocessError) as err:
        say(f"the build failed, cold starts measured in the development venv instead: {err}")
        return None


if __name__ == "__main__":
    sys.exit(main())
