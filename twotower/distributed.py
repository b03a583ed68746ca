"""Data-parallel training helpers over ``torch.distributed`` (no Lightning: the loss uses them too).

- :class:`DistributedLengthGroupedBatches` and :class:`RankShard`: each rank's share of the training windows
  (the same number of batches on every rank) and of the validation queries;
- :func:`gather_rows`, :func:`gather_uneven`, :func:`gather_stats`: collectives that accept a different number
  of rows per rank (padded, then trimmed), :func:`gather_rows` keeping the autograd graph;
- :func:`data_fingerprint` and :func:`check_ranks_agree`: every rank loaded the same data, or every rank fails
  with a message naming the ranks and what differs (rather than hanging in the first mismatched collective).

Outside a process group every function is the single-process identity.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from twotower.data.schema import EncodedLog
from twotower.data.sequences import LengthGroupedBatches

log = logging.getLogger(__name__)

# environment variables a launcher (Lightning's, torchrun, SLURM's srun) sets to a process's rank
_RANK_KEYS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK")


class RankMismatchError(RuntimeError):
    """The ranks of a distributed run do not hold the same data or settings."""


def active() -> bool:
    """A process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(this process's global rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_as_rank_zero() -> bool:
    """Before the process group exists: whether no launcher variable names this process a non-zero rank
    (the process that writes the run's files)."""
    return all(int(os.environ.get(key, "0") or 0) == 0 for key in _RANK_KEYS)


class DistributedLengthGroupedBatches(LengthGroupedBatches):
    """:class:`LengthGroupedBatches` for one rank of ``num_replicas``: every rank draws the same global batch
    order (from ``seed`` and the epoch) and takes batches ``rank, rank + W, ...``; the ranks short of
    ``ceil(n_batches / W)`` repeat batches from the start of the order, so that every rank steps the same
    number of times (an uneven count leaves one rank waiting for a gradient all-reduce forever)."""

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        num_replicas: int,
        rank: int,
        pool: int = 50,
        seed: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        super().__init__(lengths, batch_size, pool=pool, seed=seed)
        self.num_replicas, self.rank = num_replicas, rank

    def global_batches(self) -> int:
        return super().__len__()

    def __len__(self) -> int:
        return -(-self.global_batches() // self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before every epoch: epoch e draws the same batches on every rank."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(super().__iter__())  # the same order on every rank (advances self.epoch)
        for step in range(len(self)):
            yield batches[(self.rank + step * self.num_replicas) % len(batches)]


class RankShard(Sampler[int]):
    """Indices ``rank, rank + W, ...`` of ``n``: every item on exactly one rank, none repeated (evaluation,
    where the ranks need not step together and a padded repeat would count a query twice)."""

    def __init__(self, n: int, num_replicas: int, rank: int) -> None:
        self.n, self.num_replicas, self.rank = n, num_replicas, rank

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))


def gather_stats(values: list[float], device: torch.device) -> torch.Tensor:
    """(W, K) float64: every rank's ``values`` (K numbers), one collective; (1, K) outside a process group."""
    local = torch.tensor(values, dtype=torch.float64, device=device)  # (K,)
    if not active():
        return local.unsqueeze(0)
    out = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return torch.stack(out)  # (W, K)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if len(x) == rows:
        return x
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


def gather_rows(x: torch.Tensor, max_rows: int, with_grad: bool = False) -> torch.Tensor:
    """(n_r, ...) on each rank -> (W * max_rows, ...): every rank's rows padded with zeros to ``max_rows``
    (the largest n_r, known from :func:`gather_stats`). ``with_grad`` keeps the autograd graph: the gradient
    of a gathered row flows back to the rank that owns it."""
    if not active():
        return x
    padded = _pad_rows(x, max_rows)  # (max_rows, ...)
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(padded))  # (W * max_rows, ...)
    out = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(out, padded.contiguous())
    return torch.cat(out)


def gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """(n_r, ...) on each rank -> (sum n_r, ...) in rank order, no gradient (e.g. validation ranks)."""
    if not active():
        return x
    sizes = gather_stats([float(len(x))], x.device)[:, 0].long().tolist()
    rows = gather_rows(x, max(sizes)).reshape(len(sizes), max(sizes), *x.shape[1:])
    return torch.cat([rows[r, :n] for r, n in enumerate(sizes)])


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks (no gradient)."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def _digest(values: Any) -> str:
    h = hashlib.sha256()
    if isinstance(values, np.ndarray):
        h.update(np.ascontiguousarray(values).tobytes())
    else:
        for value in values:
            h.update(str(value).encode())
            h.update(b"\0")
    return h.hexdigest()[:16]


def data_fingerprint(data: EncodedLog, **extra: Any) -> dict[str, Any]:
    """What every rank must agree on: the log's sizes and a hash of its id vocabularies and events."""
    return {
        "users": data.n_users,
        "items": data.n_items,
        "event_types": data.n_events,
        "interactions": data.n_interactions,
        "user_ids": _digest(data.user_ids),
        "item_ids": _digest(data.item_ids),
        "events": _digest(data.items) + _digest(data.users),
        **extra,
    }


def check_ranks_agree(
    fingerprint: Mapping[str, Any], what: str = "data", hints: Mapping[str, str] | None = None
) -> None:
    """Compare ``fingerprint`` across the ranks (one collective); on a difference raise
    :class:`RankMismatchError` on every rank, naming each field that differs and every rank's value (and
    ``hints[field]``, what to do about it, when given)."""
    if not active():
        return
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, dict(fingerprint))
    diffs = []
    for key in fingerprint:
        values = [f.get(key) for f in every]
        if any(v != values[0] for v in values):
            hint = f" ({hints[key]})" if hints and key in hints else ""
            diffs.append(f"{key}: " + ", ".join(f"rank {r}={v!r}" for r, v in enumerate(values)) + hint)
    if diffs:
        raise RankMismatchError(
            f"the {len(every)} ranks of this run loaded different {what} (every rank must read the same log "
            "with the same settings): " + "; ".join(diffs)
        )
    if dist.get_rank() == 0:
        log.info("all %d ranks agree on the %s: %s", len(every), what, dict(fingerprint))
