"""Where the time goes, with torch.profiler: a training step driven by hand (:func:`profile_training`), the
Lightning fit's own steps (:class:`FitProfile`) and evaluation batches (:func:`profile_evaluation`).

Each report has the phases (wall time on the host, from labelled ranges), the ops by self time (host, and
device on CUDA) and the host synchronisations: every ``cudaStreamSynchronize`` (an ``.item()``, a copy to
the host, a ``nonzero`` or boolean index waiting for a count) located by the op and the Python line that
caused it, from a second, shorter pass that records Python frames (that tracing slows the host, so the timed
pass runs without it).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
log = logging.getLogger(__name__)
PHASE_PREFIXES = ("step: ", "fit: ", "eval: ")
# frames of our code (or Lightning's) name the line that waited; anything else is too deep to act on
OWN_FRAMES = ("twotower/", "serving/", "lightning/")  # lightning/ matches pytorch_lightning/ too


def synchronize() -> None:
    """Wait for the GPU's queued work (no-op without CUDA): timings end when the device's work does."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def first_queries(queries: Any, n: int) -> Any:
    """The first ``n`` evaluation queries (a torch Subset that keeps the collate of its dataset)."""
    subset = torch.utils.data.Subset(queries, range(min(n, len(queries))))
    subset.collate = queries.collate  # type: ignore[attr-defined]
    return subset


def activities(device: torch.device) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def phases(events: Any, steps: int) -> dict[str, float]:
    """ms per step of each labelled range (host wall time). On CUDA each label comes twice (host range,
    device range): the host one has the time."""
    out: dict[str, float] = {}
    for e in events:
        if e.key.startswith(PHASE_PREFIXES):
            out[e.key] = max(out.get(e.key, 0.0), e.cpu_time_total / 1e3 / steps)
    return out


def sync_sites(
    events: Iterable[Any], steps: int, calls: tuple[str, ...] = SYNC_CALLS, own: tuple[str, ...] = OWN_FRAMES
) -> list[str]:
    """Host synchronisations per step, by site: the outermost op that waited, the innermost call that did
    (``aten::index <- aten::nonzero``), the labelled phase and the first frame of our code above them.

    ``events``: a profile's FunctionEvents (``prof.events()``), recorded ``with_stack=True`` so that Python
    frames are among each event's parents. ``calls``: the runtime calls that wait; ``own``: the paths whose
    frames are reported."""
    events = list(events)
    # a phase by time as well as by nesting: on CUDA the backward runs on the autograd engine's own thread,
    # under none of the training thread's ranges, and Lightning's optimizer range crosses the fit's phases.
    # Host ranges only (a CUDA profile copies each label onto the device's lagging timeline), the latest first
    spans = sorted(
        ((e.time_range.start, e.time_range.end, e.name) for e in events
         if e.name.startswith(PHASE_PREFIXES) and getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU),
        reverse=True,
    )  # fmt: skip
    counts: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.name not in calls:
            continue
        chain, parent = [], event.cpu_parent
        while parent is not None:
            chain.append(parent.name)  # innermost first
            parent = parent.cpu_parent
        ops = [name for name in chain if name.startswith("aten::")]
        phase = next((name for name in chain if name.startswith(PHASE_PREFIXES)), None) or next(
            (name for start, end, name in spans if start <= event.time_range.start <= end), "(no phase)"
        )
        frame = next((name for name in chain if any(mine in name for mine in own)), "(no frame of ours)")
        op = " <- ".join(dict.fromkeys([ops[-1], ops[0]])) if ops else event.name
        counts[f"{phase} | {op} | {frame}"] += 1
    total = sum(counts.values())
    lines = [f"host synchronisations: {total / max(steps, 1):.2f} per step ({total} in {steps})"]
    lines += [f"{n / max(steps, 1):6.2f} per step  {site}" for site, n in counts.most_common()]
    return lines


def report(prof: Any, steps: int, head: str, wall_ms: float | None = None, sites: list[str] | None = None,
           device: torch.device | None = None, unit: str = "step") -> str:  # fmt: skip
    """The phases, the sync sites and the op tables of a profile over ``steps`` steps (or batches: ``unit``)."""
    events = prof.key_averages()
    spent = phases(events, steps)
    total = sum(spent.values()) or 1.0
    lines = [head]
    if wall_ms is not None:
        lines.append(f"{'wall per ' + unit:<40s} {wall_ms:10.1f} ms")
    lines += [f"{name:<40s} {ms:10.1f} ms/{unit} {100 * ms / total:5.1f}%" for name, ms in spent.items()]
    tables = [events.table(sort_by="self_cpu_time_total", row_limit=25)]
    if device is not None and device.type == "cuda":  # where the card's time goes too
        tables.append(events.table(sort_by="self_device_time_total", row_limit=25))
    return "\n".join([*lines, "", *(sites or ["host synchronisations: not located"]), "", *tables])


def profile_training(cfg: DictConfig, steps: int = 20, warmup: int = 3) -> str:
    """torch.profiler over ``steps`` training steps of ``cfg`` (after ``warmup``), driven by hand on the device
    the trainer would pick, the step's phases (batch, forward + loss, backward, optimizer) labelled; then
    ``min(steps, 5)`` steps more with Python frames for the sync sites."""
    import hydra

    from twotower.train import build_net, load_data

    data, split = load_data(cfg)
    datamodule = hydra.utils.instantiate(cfg.datamodule, _partial_=True)(
        data=data, split=split, max_len=cfg.model.net.max_len
    )
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    net = build_net(cfg.model.net, data)
    loss = hydra.utils.instantiate(cfg.model.loss)
    loss.set_item_frequencies(datamodule.target_counts())
    module_cfg = {k: v for k, v in cfg.model.items() if k not in ("net", "loss")}
    module = hydra.utils.instantiate(module_cfg, _partial_=True)(net=net, loss=loss).to(device).train()
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    loader = datamodule.train_dataloader()
    # epoch after epoch: a small log runs out of batches
    batches = (batch for _ in itertools.count() for batch in loader)
    # as Lightning's bf16-mixed: the forward under autocast
    bf16 = str(cfg.trainer.get("precision", "")).startswith("bf16")

    def step() -> None:
        with record_function("step: next batch (collate)"):
            host = next(batches)
            batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        with (
            record_function("step: forward + loss"),
            torch.autocast(device.type, torch.bfloat16, enabled=bf16),
        ):
            value = module._shared_step(batch)
        with record_function("step: backward"):
            value.backward()
        with record_function("step: optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    wall, prof = _timed(step, steps, device)
    _, traced = _timed(step, min(steps, 5), device, with_stack=True)
    head = f"{steps} steps on {device} ({'bf16 autocast' if bf16 else 'fp32'}), phases (wall on the host):"
    return report(prof, steps, head, wall, sync_sites(traced.events(), min(steps, 5)), device)


def _timed(
    run: Callable[[], None], steps: int, device: torch.device, with_stack: bool = False
) -> tuple[float, Any]:
    """``run`` called ``steps`` times under the profiler: (wall ms per step, the profile)."""
    synchronize()
    start = time.perf_counter()
    with profile(activities=activities(device), with_stack=with_stack) as prof:
        for _ in range(steps):
            run()
        synchronize()
    return (time.perf_counter() - start) * 1e3 / max(steps, 1), prof


class FitProfile(pl.Callback):
    """torch.profiler over the Lightning fit's own training steps (its loop, hooks, logging and batch transfer
    included): ``steps`` steps from the first at or after global step ``start`` timed, then ``traced`` steps
    with Python frames for the sync sites. A step runs from one ``on_train_batch_start`` to the next, so its
    phases cover the whole cycle: forward + loss (to the backward), backward, optimizer (to the callbacks'
    batch end), then the batch's end and the next batch (the module's own batch end, e.g. the EMA update,
    Lightning's logging, the loader and the transfer). Cut short by validation, the epoch's end, the fit's
    end or an exception. :attr:`text` holds the report (None until a profile ran) and :attr:`epochs` the
    epochs it slowed."""

    BATCH_END = "fit: batch end + next batch (EMA, logging, loader, transfer)"

    def __init__(self, start: int = 10, steps: int = 20, traced: int = 5) -> None:
        self.start, self.steps, self.traced = start, steps, traced
        self.text: str | None = None
        self.epochs: set[int] = set()
        self._stage = "waiting"  # -> timed -> traced -> done
        self._prof: Any = None
        self._range: Any = None
        self._count = self._targets = self._first = 0
        self._began = 0.0
        self._timed: tuple[Any, int, float, int] | None = None

    def _label(self, name: str | None) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None
        if name is not None and self._prof is not None:
            self._range = record_function(name)
            self._range.__enter__()

    def _begin(self, stage: str, trainer: pl.Trainer, device: torch.device) -> None:
        synchronize()
        self._stage, self._count, self._targets = stage, 0, 0
        self._first = self._first if stage == "traced" else trainer.global_step
        self.epochs.add(trainer.current_epoch)
        self._prof = profile(activities=activities(device), with_stack=stage == "traced")
        self._prof.__enter__()
        self._began = time.perf_counter()

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, go_on: bool = True) -> None:
        """Stop the running pass; after a full timed pass the traced one starts (``go_on``), else the report."""
        self._label(None)
        synchronize()
        wall = time.perf_counter() - self._began
        self._prof.__exit__(None, None, None)
        prof, self._prof = self._prof, None
        sites = None
        if self._stage == "timed":
            self._timed = (prof, self._count, wall, self._targets)
            if go_on and self._count >= self.steps:
                self._begin("traced", trainer, pl_module.device)
                return
        elif self._count:
            sites = sync_sites(prof.events(), self._count)
        self._stage = "done"
        if self._timed is not None and self._timed[1]:
            timed, count, seconds, targets = self._timed
            head = (f"{count} steps of the Lightning fit on {pl_module.device} ({trainer.precision}) from global step"
                    f" {self._first}: {targets / seconds:,.0f} targets/s; phases (wall on the host):")  # fmt: skip
            self.text = report(timed, count, head, seconds * 1e3 / count, sites, pl_module.device)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:  # fmt: skip
        if self._prof is not None and self._count >= (self.steps if self._stage == "timed" else self.traced):
            self._end(
                trainer, pl_module
            )  # the last step's cycle ends here (its batch end, this batch's fetch)
        if self._stage == "waiting" and trainer.global_step >= self.start:
            self._begin("timed", trainer, pl_module.device)
        self._label("fit: forward + loss")

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        self._label("fit: backward")

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._label("fit: optimizer")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        if self._prof is None:
            return
        self._count += 1
        self._targets += int(batch.get("n_targets", 0)) if isinstance(batch, dict) else 0
        self._label(self.BATCH_END)

    def _cut_short(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._prof is not None:  # a traced pass is not started inside validation or after the epoch
            self._end(trainer, pl_module, go_on=False)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cut_short(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cut_short(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._cut_short(trainer, pl_module)
        if self._stage == "waiting":
            log.warning("FitProfile: the fit ended before global step %d: nothing profiled", self.start)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """The profiler (and its Python tracer) stopped, without a report: the run failed."""
        with contextlib.suppress(Exception):
            self._label(None)
        if self._prof is not None:
            prof, self._prof = self._prof, None
            with contextlib.suppress(Exception):
                prof.__exit__(None, None, None)
        self._stage = "done"


def profile_evaluation(scorer: Any, queries: Any, settings: dict[str, Any], batches: int = 8) -> str:
    """torch.profiler over ``batches`` batches of :func:`~twotower.evaluate.evaluate_scorer` (its phases: the
    next batch, the ranking, the host's metrics), after one batch of warm-up; then two batches with Python
    frames for the sync sites. ``settings``: evaluate_scorer's keyword arguments (the ranker included)."""
    from twotower.evaluate import evaluate_scorer

    size = settings.get("batch_size", 256)
    batches = max(1, min(batches, -(-len(queries) // size)))

    device = torch.device(getattr(scorer, "device", "cpu"))
    evaluate_scorer(scorer, first_queries(queries, size), desc="eval profile warm-up", **settings)
    some, few = first_queries(queries, batches * size), first_queries(queries, 2 * size)
    wall, prof = _timed(lambda: evaluate_scorer(scorer, some, desc="eval profile", **settings), 1, device)
    _, traced = _timed(lambda: evaluate_scorer(scorer, few, desc="eval profile", **settings), 1, device, True)
    users = len(some)
    head = (f"{batches} evaluation batches of {size} users on {device} ({settings.get('ranker', 'torch')} ranker,"
            f" {settings.get('num_workers', 0)} loader workers): {users / (wall / 1e3):,.0f} users/s; phases:")  # fmt: skip
    sites = sync_sites(traced.events(), min(2, batches))
    return report(prof, batches, head, wall / batches, sites, device, unit="batch")
