"""Where the handler's stdout (JSON logs, EMF metrics) goes during the bench: counted, not shown."""

from __future__ import annotations

import collections
import io
import threading


class LogSink(io.TextIOBase):
    """A stdout stand-in: counts the bytes written (what CloudWatch Logs would ingest) and keeps
    the last lines for error reports."""

    def __init__(self) -> None:
        self.bytes = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self.bytes += len(text.encode("utf-8", "replace"))
            if text.strip():
                self._tail.append(text.rstrip("\n")[:2000])
        return len(text)

    def tail(self) -> str:
        with self._lock:
            return "\n".join(self._tail)
