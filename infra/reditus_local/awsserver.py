"""The local stack's AWS: the project's moto server, saving its state when it is told to stop.

Run by `reditus-refunds local up` as its own process::

    python -m reditus_local.awsserver --port 5005 --snapshot .local-data/snapshot.json

On SIGTERM or SIGINT it writes the snapshot (see snapshot.py) while still serving, then stops.
Prints ``moto server ready: <url>`` once it listens.

A snapshot found here at start is restored by the stack, which then moves it aside. If it is still
here, unchanged, when the server stops, the restore failed (or never ran): this server holds at most
part of it, so it is not written over; it is kept as it was, with a copy nothing overwrites.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import snapshot
from .child import watch_parent
from .motoserver import build_server
from .resources import LOCAL_REGION

READY = "moto server ready:"
NOT_RESTORED = 3  # exit code: the state was not saved because the snapshot was never restored


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


def keep_unrestored(path: Path) -> Path:
    """A copy of a snapshot that could not be restored, named by its time, that no later run replaces
    (--fresh moves snapshot.json to snapshot.previous.json, which the next start overwrites)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(path.stat().st_mtime))
    copy = path.with_name(f"{path.stem}.unrestored-{stamp}{path.suffix}")
    if not copy.exists():
        tmp = copy.with_suffix(".tmp")
        shutil.copy2(path, tmp)
        os.replace(tmp, copy)
    return copy


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reditus_local.awsserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--region", default=LOCAL_REGION, help="region of the tables to save")
    parser.add_argument("--snapshot", type=Path, help="save the state here when stopping")
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    pending = _identity(args.snapshot) if args.snapshot else None  # to be restored by the stack
    # One log line per AWS request drowns everything else out.
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        server = build_server(args.host, args.port)
    except OSError as err:
        print(f"cannot listen on {args.host}:{args.port}: {err.strerror}", file=sys.stderr, flush=True)
        return 2
    endpoint = f"http://{args.host}:{server.port}"
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.parent_pid:
        watch_parent(args.parent_pid, stop.set)
    serving = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
    serving.start()
    print(f"{READY} {endpoint}", flush=True)
    stop.wait()
    code = 0
    if args.snapshot and pending is not None and _identity(args.snapshot) == pending:
        try:
            copy = keep_unrestored(args.snapshot)
            kept = f"kept as it was, with a copy in {copy}"
        except OSError as err:
            kept = f"kept as it was (no copy: {err.strerror})"
        print(
            f"not saving the state: {args.snapshot} was not restored, so it is {kept}. Fix what the "
            "restore error says and start again, or start empty with `reditus-refunds local up --fresh` "
            "(`make run ARGS=--fresh`), which moves it to snapshot.previous.json",
            file=sys.stderr,
            flush=True,
        )
        code = NOT_RESTORED
    elif args.snapshot:
        try:
            state = snapshot.collect(endpoint, args.region)
            snapshot.write(state, args.snapshot)
            items, messages = snapshot.summary(state)
            print(f"saved {items} items and {messages} messages to {args.snapshot}", flush=True)
        except Exception as err:  # stopping must go on; say what was not saved
            print(f"could not save the state to {args.snapshot}: {err}", file=sys.stderr, flush=True)
            code = 1
    server.shutdown()
    server.server_close()
    return code


if __name__ == "__main__":
    sys.exit(main())
