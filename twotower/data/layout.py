"""Where a training batch's targets are, located on the host: what the training step would otherwise count
on the device, each count a read back that waits for the device (``nonzero``, boolean indexing, ``unique``)."""

from __future__ import annotations

import torch


def target_layout(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A host batch's targets: ``target_index`` (M,) flat positions of the targets in (B, L),
    ``target_unique`` (P,) their distinct items and ``target_inverse`` (M,) each target's place among them;
    with ``start_targets`` (user features) the same with suffix ``_start`` for the (B, S + L) layout.

    :class:`~twotower.data.sequences.TrainWindows` adds them when it collates (in the loader's workers, off
    the process that drives the device); the training module's transfer hook adds them to a batch without."""
    targets = batch["targets"]  # (B, L)
    layouts = {"": targets}
    if "start_targets" in batch:
        layouts["_start"] = torch.cat([batch["start_targets"].reshape(len(targets), -1), targets], 1)
    out = {}
    for suffix, layout in layouts.items():
        flat = layout.reshape(-1)  # (B * L',)
        index = (flat > 0).nonzero().squeeze(1)  # (M,)
        unique, inverse = torch.unique(flat[index], return_inverse=True)  # (P,), (M,)
        out |= {f"target_index{suffix}": index, f"target_unique{suffix}": unique,
                f"target_inverse{suffix}": inverse}  # fmt: skip
    return out
