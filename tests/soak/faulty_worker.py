"""The local worker with faults a real Lambda meets that moto and the plain worker cannot make.

    python -m tests.soak.faulty_worker --fault-file PATH --stats-file PATH [--events-dir DIR]
        [--timeout-rate R --timeout-cut MIN:MAX] [--seed N] -- WORKER ARGS...

**DynamoDB failures** (moto cannot throttle). While ``--fault-file`` exists, DynamoDB write calls
(TransactWriteItems, UpdateItem, PutItem, DeleteItem, BatchWriteItem) of every DynamoDB client in
the process fail, as DynamoDB fails. The file says how, as JSON: ``{"kinds": [...], "rate": 1.0,
"target": "writes"}`` (``rate``: the share of write calls that fail; each failure draws one of the
``kinds``; ``target``: ``"writes"``, every write call, or ``"counters"``, only the writes to a
day-counter item, i.e. the day counters' stream function applying a batch, which the worker plays):

* ``throttle`` - 400 ProvisionedThroughputExceededException; nothing was written;
* ``error``    - 500 InternalServerError; nothing was written;
* ``lost``     - the write is applied, then 500 InternalServerError: the answer was lost.

The fault is a fake HTTP answer returned from botocore's ``before-send`` event, so everything above
the wire behaves as against DynamoDB: botocore's standard retry mode retries with backoff (and its
retry quota), then raises ClientError to the store, which turns it into StoreError. Each injected
fault is appended to ``--stats-file`` as ``<operation> <kind> <time> <refund_id>``. Reads never fail.

**Lambda timeouts mid-batch** (``--timeout-rate``): that share of invocations (every 1/rate-th) is
abandoned after a
number of seconds drawn from ``--timeout-cut`` (shorter than the function timeout, so records are in
flight: claimed, calling Reditus, storing), as Lambda ends an invocation whose deadline passed:
the process stops at once (exit status 75, ``TIMED_OUT``) - nothing after that moment reaches
Reditus, DynamoDB or SQS, and what the execution environment held in memory is gone, as after
Lambda resets an environment that timed out. The harness (tests/soak/system.py) starts it again, a
cold start; the batch's messages come back after the visibility timeout.

**What each delivery did** (``--events-dir``): one JSON line per event, in ``events.<pid>.jsonl``,
written as it happens (a SIGKILL loses at most the line being written): ``deliver`` (a record
handled: its message id, refund_id, re-check token, receive count, result), ``call`` (the record
asked Reditus: its token, the verdict), ``send`` (the record queued a 404 re-check: the token it
carried and the new one), ``timeout`` (the invocation was abandoned) and ``invocation`` (how long
it took, and whether past the deadline its context gave it: Lambda would fail that whole batch).
tests/soak/count.py reads them to count live re-check chains. They come from wrapping the
service's public parts (its ``handle``, its submitter's Reditus client and re-check sender), not
from changing the product.

Then it runs ``reditus_local.worker.main`` with the remaining arguments: the real handler,
imported after the patch, so its clients (created at import, as in Lambda) carry the hook.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import boto3
import urllib3
from botocore.awsrequest import AWSResponse, HTTPHeaders

TIMED_OUT = 75  # the exit status of an abandoned invocation: the harness starts the worker again
COUNTER_PREFIX = "counter#"  # reditus_refunds.layout's; not imported, so the patch loads no product code
WRITE_OPERATIONS = ("TransactWriteItems", "UpdateItem", "PutItem", "DeleteItem", "BatchWriteItem")
FAULTS = {
    "throttle": (
        400,
        "ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded (injected by the soak)",
    ),
    "error": (500, "InternalServerError", "Internal server error (injected by the soak)"),
    "lost": (500, "InternalServerError", "Internal server error (injected by the soak, after the write)"),
}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _first_key(body: bytes | str | None) -> str:
    """The refund_id (or other key) the write is about, for the stats line."""
    try:
        data = json.loads(body or "{}")
        action = data["TransactItems"][0] if "TransactItems" in data else data
        inner = next(iter(action.values())) if "TransactItems" in data else action
        return str((inner.get("Key") or inner["Item"])["refund_id"]["S"])
    except (ValueError, KeyError, TypeError, StopIteration):
        return "-"


def _touches_counters(body: bytes | str | None) -> bool:
    """A write to a day-counter item: the stream function's UpdateItem (or any transaction with one)."""
    try:
        data = json.loads(body or "{}")
        writes = [next(iter(action.values())) for action in data.get("TransactItems", [])] or [data]
        return any(
            str(write.get("Key", {}).get("refund_id", {}).get("S", "")).startswith(COUNTER_PREFIX)
            for write in writes
        )
    except (ValueError, AttributeError, TypeError, StopIteration):
        return False


class _Body:
    """What botocore reads an AWSResponse's body from."""

    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.data


class WriteFaults:
    def __init__(self, flag: Path, stats: Path, seed: int | None = None):
        self.flag = flag
        self.stats = stats
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.http = urllib3.PoolManager(maxsize=32)

    def before_send(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        operation = _text(request.headers.get("X-Amz-Target", "")).rpartition(".")[2]
        if operation not in WRITE_OPERATIONS:
            return None
        try:
            window = json.loads(self.flag.read_text() or "{}")
        except (OSError, ValueError):
            return None  # no window (or one being written): the write goes through
        if window.get("target") == "counters" and not _touches_counters(request.body):
            return None
        kinds = [k for k in window.get("kinds", list(FAULTS)) if k in FAULTS] or list(FAULTS)
        with self.lock:
            if self.rng.random() >= float(window.get("rate", 1.0)):
                return None
            kind = self.rng.choice(kinds)
            with self.stats.open("a") as out:
                out.write(f"{operation} {kind} {time.time():.3f} {_first_key(request.body)}\n")
        if kind == "lost":
            # Applied for real; only the answer is lost.
            self.http.request(
                request.method,
                request.url,
                body=request.body,
                headers={k: _text(v) for k, v in request.headers.items()},
                retries=False,
            )
        status, code, message = FAULTS[kind]
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message})
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/x-amz-json-1.0"
        headers["x-amzn-RequestId"] = uuid.uuid4().hex
        headers["Content-Length"] = str(len(body))
        return AWSResponse(request.url, status, headers, _Body(body.encode()))


class Events:
    """One JSON line per event, to this process's own file (several workers share the folder)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self._out: IO[str] = (folder / f"events.{os.getpid()}.jsonl").open("a", buffering=1)
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"e": event, **fields}, default=str)
        with self._lock:
            self._out.write(line + "\n")  # line-buffered: one write per event


@contextlib.contextmanager
def _delivering(current: threading.local, **fields: Any) -> Iterator[None]:
    current.delivery = fields
    try:
        yield
    finally:
        current.delivery = None


def _delivery(current: threading.local) -> dict[str, Any]:
    found: dict[str, Any] | None = getattr(current, "delivery", None)
    return found or {}


class _Reditus:
    """The submitter's Reditus client, reporting each call with the delivery that made it."""

    def __init__(self, real: Any, events: Events, current: threading.local):
        self._real, self._events, self._current = real, events, current

    def refund(self, payment_id: str, deadline: float) -> Any:
        started = time.time()
        answer = self._real.refund(payment_id, deadline)
        delivery = _delivery(self._current)
        self._events.write(
            "call",
            t0=started,
            t1=time.time(),
            rid=delivery.get("rid"),
            tok=delivery.get("tok"),
            mid=delivery.get("mid"),
            pay=payment_id,
            v=str(answer.verdict),
        )
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _Requeue:
    """The submitter's re-check sender, reporting each re-check queued and the chain it came from."""

    def __init__(self, real: Any, events: Events, current: threading.local, token_attribute: str):
        self._real, self._events, self._current = real, events, current
        self._attribute = token_attribute

    def send(self, request: Any, delay_seconds: int = 0, attributes: Mapping[str, str] | None = None) -> str:
        message_id: str = self._real.send(request, delay_seconds=delay_seconds, attributes=attributes)
        self._events.write(
            "send",
            t=time.time(),
            rid=request.refund_id,
            parent=_delivery(self._current).get("tok"),
            tok=(attributes or {}).get(self._attribute),
            delay=delay_seconds,
            mid=message_id,
        )
        return message_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _refund_id(body: str | None) -> str | None:
    try:
        data = json.loads(body or "")
    except ValueError:
        return None
    value = data.get("refund_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def observe(service: Any, events: Events) -> None:
    """Report every delivery the service handles, and the Reditus calls and re-checks it makes."""
    from reditus_refunds.outcomes import RECHECK_ATTRIBUTE

    current = threading.local()
    real_handle = service.handle
    submitter = service.submitter
    submitter.reditus = _Reditus(submitter.reditus, events, current)
    if submitter.requeue is not None:
        submitter.requeue = _Requeue(submitter.requeue, events, current, RECHECK_ATTRIBUTE)

    def handle(message: Any) -> Any:
        fields = {
            "mid": message.message_id,
            "rid": message.redrive_refund_id or _refund_id(message.body) or message.message_id,
            "tok": message.recheck_token,
            "rc": message.receive_count,
        }
        started = time.time()
        result = "error"
        try:
            with _delivering(current, **fields):
                outcome = real_handle(message)
            result = str(outcome.value)
            return outcome
        except Exception as err:
            result = "retry" if type(err).__name__ == "RetryLater" else f"error:{type(err).__name__}"
            raise
        finally:
            events.write("deliver", t0=started, t1=time.time(), res=result, **fields)

    service.handle = handle


class Timeouts:
    """Abandons a share of invocations part-way, as Lambda does when an invocation's deadline passes."""

    def __init__(
        self,
        rate: float,
        cut: tuple[float, float],
        events: Events | None,
        seed: int | None = None,
        stop: Callable[[int], None] = os._exit,
    ):
        self.rate = rate
        self.cut = cut
        self.events = events
        self.rng = random.Random(seed)
        self.stop = stop
        self.credit = 0.5  # the first cut after half a period

    def wrap(self, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def lambda_handler(event: Any, context: Any) -> Any:
            records = len(event.get("Records", []))
            allowed = context.get_remaining_time_in_millis() / 1000
            started = time.time()
            timer = None
            # Every 1/rate-th invocation, not a random draw: a short run still meets its share. An
            # invocation that ends before its cut leaves the credit for the next one: the cut must
            # find records in flight.
            self.credit = min(self.credit + self.rate, 1.0)
            if self.credit >= 1:
                after = self.rng.uniform(*self.cut)
                timer = threading.Timer(after, self._time_out, args=(after, records))
                timer.daemon = True
                timer.start()
            try:
                return handler(event, context)
            finally:
                if timer is not None:
                    timer.cancel()
                if self.events is not None:
                    took = time.time() - started
                    # Past its deadline, Lambda would have failed the whole batch (the worker does too).
                    self.events.write(
                        "invocation", t0=started, took=took, records=records, over=took > allowed
                    )

        return lambda_handler

    def _time_out(self, after: float, records: int) -> None:
        self.credit -= 1
        if self.events is not None:
            self.events.write("timeout", t=time.time(), after=after, records=records, pid=os.getpid())
        print(f"Task timed out after {after:.2f} seconds (injected by the soak)", flush=True)
        self.stop(TIMED_OUT)  # at once, threads and all: no record stores anything after this


def install(faults: WriteFaults) -> None:
    """Every DynamoDB client made through boto3 from now on carries the hook."""
    original = boto3.session.Session.client

    def client(self: boto3.session.Session, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)
        service = args[0] if args else kwargs.get("service_name")
        if service == "dynamodb":
            made.meta.events.register("before-send.dynamodb", faults.before_send)
        return made

    boto3.session.Session.client = client  # type: ignore[method-assign]


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    bounds = (float(low), float(high or low))
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX seconds with 0 < MIN <= MAX, got {text!r}")
    return bounds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.faulty_worker")
    parser.add_argument("--fault-file", type=Path, help="writes fail while this file exists")
    parser.add_argument("--stats-file", type=Path, help="one line per injected fault")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--events-dir", type=Path, help="one JSON line per delivery, call, re-check")
    parser.add_argument("--timeout-rate", type=float, default=0.0, help="share of invocations cut short")
    parser.add_argument(
        "--timeout-cut", type=_seconds_range, default=(0.1, 1.0), help="MIN:MAX seconds into the invocation"
    )
    parser.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    worker_args = args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args
    seed = None if args.seed is None else args.seed + os.getpid()  # restarted workers draw anew
    if args.fault_file is not None:
        if args.stats_file is None:
            parser.error("--fault-file needs --stats-file")
        install(WriteFaults(args.fault_file, args.stats_file, seed))
    events = Events(args.events_dir) if args.events_dir else None
    if events is not None or args.timeout_rate > 0:
        # The handler module is the cold start (its clients carry the hook: installed above); the
        # worker loads the same module object, with the wrapped function.
        import reditus_refunds.handler as lambda_module

        if events is not None:
            observe(lambda_module.service, events)
        timeouts = Timeouts(args.timeout_rate, args.timeout_cut, events, seed)
        lambda_module.lambda_handler = timeouts.wrap(lambda_module.lambda_handler)
    from reditus_local.worker import main as worker_main

    return worker_main(worker_args)


if __name__ == "__main__":
    sys.exit(main())
