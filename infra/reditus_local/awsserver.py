"""The local stack's AWS: the project's moto server, saving its state when it is told to stop.

Run by `reditus-refunds local up` as its own process::

    python -m reditus_local.awsserver --port 5005 --snapshot .local-data/snapshot.json

On SIGTERM or SIGINT it writes the snapshot (see snapshot.py) while still serving, then stops.
Prints ``moto server ready: <url>`` once it listens.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import snapshot
from .child import watch_parent
from .motoserver import build_server
from .resources import LOCAL_REGION

READY = "moto server ready:"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reditus_local.awsserver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--region", default=LOCAL_REGION, help="region of the tables to save")
    parser.add_argument("--snapshot", type=Path, help="save the state here when stopping")
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
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
    if args.snapshot:
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
