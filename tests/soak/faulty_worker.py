"""The local worker with DynamoDB write failures injected at the botocore level (moto cannot throttle).

    python -m tests.soak.faulty_worker --fault-file PATH --stats-file PATH -- WORKER ARGS...

While ``--fault-file`` exists, DynamoDB write calls (TransactWriteItems, UpdateItem, PutItem,
DeleteItem, BatchWriteItem) of every DynamoDB client in the process fail, as DynamoDB fails. The
file says how, as JSON: ``{"kinds": [...], "rate": 1.0}`` (``rate``: the share of write calls that
fail; each failure draws one of the ``kinds``):

* ``throttle`` - 400 ProvisionedThroughputExceededException; nothing was written;
* ``error``    - 500 InternalServerError; nothing was written;
* ``lost``     - the write is applied, then 500 InternalServerError: the answer was lost.

The fault is a fake HTTP answer returned from botocore's ``before-send`` event, so everything above
the wire behaves as against DynamoDB: botocore's standard retry mode retries with backoff (and its
retry quota), then raises ClientError to the store, which turns it into StoreError. Each injected
fault is appended to ``--stats-file`` as ``<operation> <kind> <time> <refund_id>``. Reads never fail.

Then it runs ``reditus_local.worker.main`` with the remaining arguments: the real handler,
imported after the patch, so its clients (created at import, as in Lambda) carry the hook.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import urllib3
from botocore.awsrequest import AWSResponse, HTTPHeaders

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.faulty_worker")
    parser.add_argument("--fault-file", type=Path, required=True, help="writes fail while this file exists")
    parser.add_argument("--stats-file", type=Path, required=True, help="one line per injected fault")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    worker_args = args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args
    install(WriteFaults(args.fault_file, args.stats_file, args.seed))
    from reditus_local.worker import main as worker_main

    return worker_main(worker_args)


if __name__ == "__main__":
    sys.exit(main())
