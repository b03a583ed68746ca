"""The gate between recommendations and writes: a bound on concurrent reads, writes first, no starvation."""

from __future__ import annotations

import threading
import time

import pytest

from serving.fairness import FairGate


def test_concurrent_reads_never_exceed_the_bound():
    gate, running, peak, lock = FairGate(readers=2), [0], [0], threading.Lock()

    def read() -> None:
        with gate.read():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.01)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2


def test_no_read_starts_while_a_write_is_in_flight_and_reads_resume_after():
    gate, order = FairGate(readers=4, max_read_wait_s=5.0), []
    writing, release = threading.Event(), threading.Event()

    def write() -> None:
        with gate.write():
            writing.set()
            release.wait(5)
            order.append("write done")

    def read() -> None:
        with gate.read():
            order.append("read")

    writer = threading.Thread(target=write)
    writer.start()
    writing.wait(5)
    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)
    assert order == []  # the read waits for the write
    release.set()
    writer.join()
    reader.join()
    assert order == ["write done", "read"]


def test_a_stream_of_writes_cannot_starve_a_read():
    gate, stop = FairGate(readers=1, max_read_wait_s=0.02), threading.Event()

    def writes() -> None:
        while not stop.is_set():
            with gate.write():
                time.sleep(0.005)

    writers = [threading.Thread(target=writes) for _ in range(2)]
    for w in writers:
        w.start()
    try:
        start = time.monotonic()
        with gate.read():
            waited = time.monotonic() - start
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert 0.015 <= waited < 1.0


def test_a_gate_needs_at_least_one_reader():
    with pytest.raises(ValueError, match="readers must be at least 1"):
        FairGate(readers=0)
