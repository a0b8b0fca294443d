"""Child processes of the bench (moto server, simulator, ...), each started and stopped by its pid."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]


class Child:
    """A process that prints '<ready text> <url>' once it serves; its output is kept for errors."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        ready: str,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
    ):
        self.name = name
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        self.url = self._wait_ready(ready, timeout)

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            del self.lines[:-200]
            self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self, ready: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.lines[-20:])
                raise RuntimeError(f"{self.name} did not start:\n{tail}")
            if line.startswith(ready):
                return line[len(ready) :].strip()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def start_moto() -> Child:
    """The project's moto server (reditus_local.motoserver) in its own process."""
    return Child("moto server", python("-m", "reditus_local.motoserver", "--port", "0"), "moto server ready:")


def start_simulator(api_key: str, latency: float = 0.0) -> Child:
    """The Reditus simulator in its own process, without the demo payments."""
    env = {**os.environ, "REDITUS_API_KEY": api_key}
    argv = python("-m", "reditus_local.simulator", "--port", "0", "--no-demo", "--latency", str(latency))
    return Child("Reditus simulator", argv, "Reditus simulator ready:", env=env)
