"""twotower.benchmarks.profiling: host synchronisations located by op, phase and line of our code."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from twotower.benchmarks.profiling import sync_sites


def waits_twice(x: torch.Tensor) -> float:
    return x.sum().item() + x.max().item()  # two reads back: on CUDA each waits for the device


def test_sync_sites_count_each_wait_under_its_phase_op_and_line():
    """On a CPU nothing synchronises, so the op that would (``_local_scalar_dense``, under ``.item()``)
    stands in for the runtime call; the site names the phase, the op that called it and this file's frame."""
    x = torch.randn(64)
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        for _ in range(3):
            with record_function("step: probe"):
                waits_twice(x)
            (x > 0).nonzero()  # outside the phase, not a counted call
    lines = sync_sites(prof.events(), 3, calls=("aten::_local_scalar_dense",), own=("test_profiling.py",))
    assert lines[0] == "host synchronisations: 2.00 per step (6 in 3)"
    assert len(lines) == 2, lines
    assert lines[1].startswith("  2.00 per step  step: probe | aten::item |")  # the op that called it
    assert "test_profiling.py" in lines[1] and "waits_twice" in lines[1]


def test_sync_sites_with_no_waits_say_so():
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        torch.randn(8).exp()
    assert sync_sites(prof.events(), 4) == ["host synchronisations: 0.00 per step (0 in 4)"]


def test_sync_sites_place_a_wait_on_another_thread_in_the_phase_open_at_its_time():
    """On CUDA the backward runs on the autograd engine's own thread, outside every range the training
    thread opened, so a wait there has no phase among its parents: it is placed in the phase open when it
    began. (A CPU profile records no such thread, so the events are built by hand, shaped as the profiler's.)"""
    from types import SimpleNamespace

    def event(name, start, end, parent=None):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), cpu_parent=parent)

    item = event("aten::item", 14, 16)
    scalar = event("aten::_local_scalar_dense", 14, 16, item)
    events = [
        event("fit: backward", 10, 20),  # the training thread's phase
        item, scalar, event("cudaStreamSynchronize", 15, 16, scalar),  # the engine thread's wait, inside it
        event("cudaStreamSynchronize", 30, 31, event("aten::copy_", 30, 31, event("aten::to", 30, 31))),
    ]  # fmt: skip
    assert sync_sites(events, 2) == [
        "host synchronisations: 1.00 per step (2 in 2)",
        "  0.50 per step  fit: backward | aten::item <- aten::_local_scalar_dense | (no frame of ours)",
        "  0.50 per step  (no phase) | aten::to <- aten::copy_ | (no frame of ours)",
    ]
