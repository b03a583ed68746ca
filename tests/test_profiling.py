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
    began on the host (not the device's lagging copy of an earlier label). (A CPU profile records no such
    thread, so the events are built by hand, shaped as the profiler's.)"""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, start, end, parent=None, device=DeviceType.CPU):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), cpu_parent=parent,
                               device_type=device)  # fmt: skip

    item = event("aten::item", 14, 16)
    scalar = event("aten::_local_scalar_dense", 14, 16, item)
    events = [
        event("fit: forward + loss", 3, 10),  # the training thread's phases, one after the other
        event("fit: forward + loss", 4, 17, device=DeviceType.CUDA),  # the same label on the device's timeline
        event("fit: backward", 10, 20),
        item, scalar, event("cudaStreamSynchronize", 15, 16, scalar),  # the engine thread's wait, inside it
        event("cudaStreamSynchronize", 30, 31, event("aten::copy_", 30, 31, event("aten::to", 30, 31))),
    ]  # fmt: skip
    assert sync_sites(events, 2) == [
        "host synchronisations: 1.00 per step (2 in 2)",
        "  0.50 per step  fit: backward | aten::item <- aten::_local_scalar_dense | (no frame of ours)",
        "  0.50 per step  (no phase) | aten::to <- aten::copy_ | (no frame of ours)",
    ]


def test_fit_profile_stops_the_profiler_when_the_fit_fails():
    """On an exception Lightning calls neither the epoch's nor the fit's end: the profiler (with its Python
    tracer in the traced pass) must not outlive the failed run, nor its open phase."""
    from types import SimpleNamespace

    from twotower.benchmarks.profiling import FitProfile

    fit = FitProfile(start=0, steps=2, traced=1)
    trainer = SimpleNamespace(global_step=0, current_epoch=0, precision="32-true")
    module = SimpleNamespace(device=torch.device("cpu"))
    fit.on_train_batch_start(trainer, module, {}, 0)
    assert torch.autograd._profiler_enabled() and fit.epochs == {0}
    fit.on_exception(trainer, module, RuntimeError("the step failed"))
    assert not torch.autograd._profiler_enabled() and fit.text is None
    fit.on_fit_end(trainer, module)  # nothing left to stop
