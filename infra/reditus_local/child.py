"""Children of the local stack stop when the stack's supervisor goes away.

The supervisor starts each part in its own session (so Ctrl-C reaches only the supervisor, which
then stops the parts in order). If the supervisor is killed outright it cannot do that, so each
child watches it: once its parent is gone, the child is sent SIGTERM, and exits for sure a little
later. Our own processes call :func:`watch_parent`; others (the simulator, Streamlit) are run
through this module::

    python -m reditus_local.child --parent-pid PID MODULE [ARGS...]
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import threading
from collections.abc import Callable, Sequence

GRACE_SECONDS = 15.0


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(
    parent_pid: int, on_orphaned: Callable[[], None] = _terminate_self, interval: float = 1.0
) -> threading.Thread:
    """Call `on_orphaned` (default: SIGTERM to this process) once `parent_pid` is no longer our parent."""

    def watch() -> None:
        stop = threading.Event()
        while os.getppid() == parent_pid:
            stop.wait(interval)
        # Nobody reads our output any more: writing it would fail (EPIPE) and break the shutdown.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        on_orphaned()
        # Whatever the child does with the signal, it does not outlive its supervisor for long.
        stop.wait(GRACE_SECONDS)
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reditus_local.child")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    watch_parent(args.parent_pid)
    sys.argv = [args.module, *args.args]
    try:
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
