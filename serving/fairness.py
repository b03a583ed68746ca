"""Writes before reads: a gate that keeps a burst of recommendations from starving the writes behind them.

Recommendations are CPU work in the thread pool; a write (an event, a catalog change, an erasure) is a short
transaction whose client waits for the commit. Python threads share one interpreter lock, so with many
recommendations running a write waits its turn for it again and again. The gate bounds how many
recommendations run at once and lets none start while a write is in flight: a write then waits at most for
the few already running. Threads waiting at the gate hold no lock. A read waits for writes no longer than
``max_read_wait_s``, so a stream of writes cannot starve reads either. Waiting reads are woken one per free
slot, oldest first (Python's condition variables queue their waiters), not all at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class FairGate:
    """At most ``readers`` reads at once, and no new read while a write is in flight."""

    def __init__(self, readers: int, max_read_wait_s: float = 0.05) -> None:
        if readers < 1:
            raise ValueError(f"readers must be at least 1, got {readers}")
        self.readers, self.max_read_wait_s = readers, max_read_wait_s
        self._cond = threading.Condition()
        self._reading = 0
        self._writing = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        deadline = time.monotonic() + self.max_read_wait_s
        with self._cond:
            # writes first, but only for so long; the bound on concurrent reads always holds
            while True:
                yielding = self._writing and (left := deadline - time.monotonic()) > 0
                if self._reading < self.readers and not yielding:
                    break
                self._cond.wait(left if yielding else None)
            self._reading += 1
        try:
            yield
        finally:
            with self._cond:
                self._reading -= 1
                if not self._writing:
                    self._cond.notify()  # the longest-waiting read takes the freed slot

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writing += 1
        try:
            yield
        finally:
            with self._cond:
                self._writing -= 1
                if not self._writing:  # as many waiting reads as there are free slots, oldest first
                    self._cond.notify(self.readers - self._reading)
