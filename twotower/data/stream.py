"""Training from sequence shards (``data=parquet`` with a streamed log): an IterableDataset split by rank, then
by DataLoader worker, and the LightningDataModule around it.

Every DDP rank must run the same number of steps (a rank with one more batch waits forever in its gradient
all-reduce). The shards' window counts are in the cache index, which every rank reads, so each rank computes
the same plan without talking to the others: shards are dealt to ranks (largest first, to the rank with the
fewest batches), then to the rank's workers the same way; every rank stops at the smallest rank's batch
count, its workers' quotas trimmed (from the fullest worker) to sum to it. A batch never mixes shards; the
windows a trimmed rank leaves out change from epoch to epoch with the shuffled order.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from twotower import distributed
from twotower.data.parquet.store import StreamLog
from twotower.data.sequences import (
    EvalQueries,
    LengthGroupedBatches,
    SequenceArrays,
    TrainWindows,
    event_weight_table,
)
from twotower.data.splits import Split

log = logging.getLogger(__name__)


def deal(sizes: list[int], n_bins: int) -> list[list[int]]:
    """Indices of ``sizes`` dealt into ``n_bins`` bins, largest first to the lightest bin (deterministic)."""
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    totals = [0] * n_bins
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        target = min(range(n_bins), key=lambda b: (totals[b], b))
        bins[target].append(index)
        totals[target] += sizes[index]
    return bins


def plan(
    batches: list[int], world_size: int, workers: int
) -> tuple[list[list[list[int]]], list[list[int]], int]:
    """Shards per (rank, worker), batch quota per (rank, worker) and the batches every rank runs."""
    shards, quotas = [], []
    for rank_shards in deal(batches, world_size):
        split = deal([batches[s] for s in rank_shards], workers)
        shards.append([[rank_shards[i] for i in worker] for worker in split])
        quotas.append([sum(batches[rank_shards[i]] for i in worker) for worker in split])
    per_rank = min(sum(q) for q in quotas)
    for q in quotas:  # trim each rank to the common count, from its fullest worker
        while sum(q) > per_rank:
            q[q.index(max(q))] -= 1
    return shards, quotas, per_rank


class ShardWindows(TrainWindows):
    """One shard's windows with :class:`TrainWindows`' collate (same batches as the in-memory path)."""

    def __init__(self, arrays: SequenceArrays, windows: np.ndarray, ts: np.ndarray | None, seed) -> None:
        self.arrays, self.windows, self.ts = arrays, windows, ts
        self.rng = np.random.default_rng(seed)
        self.n_targets = int(self.lengths.sum()) if len(windows) else 0


class ShardStream(IterableDataset):
    """Collated training batches from a streamed log's shards; ``epoch`` picks the epoch's shuffle."""

    def __init__(
        self,
        data: StreamLog,
        batch_size: int,
        event_weights: dict[str, float] | None = None,
        group_by_length: bool = True,
        shuffle_ties: bool = True,
        seed: int = 0,
        workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.entry, self.shards = data.entry, data.index["shards"]
        self.batch_size, self.group_by_length, self.seed = batch_size, group_by_length, seed
        self.shuffle_ties = shuffle_ties and data.has_time
        self.weights = event_weight_table(event_weights, data.event_names)
        found_rank, found_world = distributed.rank_and_world()
        self.rank = found_rank if rank is None else rank
        self.world_size = found_world if world_size is None else world_size
        self.workers = max(1, workers)
        if len(self.shards) < self.world_size:
            raise ValueError(
                f"{len(self.shards)} shards for {self.world_size} ranks: raise data.min_partitions"
            )
        self.batches = [-(-s["windows"] // batch_size) for s in self.shards]  # a shard's batches (ceil)
        self.plan, self.quotas, self.per_rank = plan(self.batches, self.world_size, self.workers)
        self.n_targets = sum(s["targets"] for s in self.shards)  # the whole log, every rank together
        self.epoch = 0

    def __len__(self) -> int:
        """Batches this rank runs per epoch (the same on every rank)."""
        return self.per_rank

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"planned for {self.workers} workers, running {info.num_workers}")
        shard_ids = list(self.plan[self.rank][worker])
        quota = self.quotas[self.rank][worker]
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, worker))
        rng.shuffle(shard_ids)
        for shard_id in shard_ids:
            if quota <= 0:
                return
            windows, batches = self._batches(shard_id, rng)
            for batch in batches[:quota]:
                yield windows.collate([windows[i] for i in batch])
            quota -= min(quota, len(batches))

    def _batches(self, shard_id: int, rng: np.random.Generator) -> tuple[ShardWindows, list[list[int]]]:
        folder = self.entry / self.shards[shard_id]["path"]
        load = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in ("items", "events", "dwell", "gaps")}
        events = np.asarray(load["events"])
        weights = self.weights[events] if self.weights is not None else np.ones(len(events), np.float32)
        arrays = SequenceArrays(load["items"], events, load["dwell"], load["gaps"], weights)
        ts = np.load(folder / "ts.npy", mmap_mode="r") if self.shuffle_ties else None
        windows = ShardWindows(arrays, np.load(folder / "windows.npy"), ts, rng.integers(2**63))
        if self.group_by_length:
            sampler = LengthGroupedBatches(windows.lengths, self.batch_size, seed=int(rng.integers(2**31)))
            return windows, list(sampler)
        order = rng.permutation(len(windows))
        return windows, [
            order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)
        ]


def epoch_to_run(trainer: pl.Trainer) -> int:
    """The epoch whose batches the loader is asked for. Lightning asks before it settles the epoch counter of
    a resumed run (``current_epoch`` still names the epoch the checkpoint ended, then marked processed but
    not completed), so the epoch is read from the fit loop's progress: the larger of processed and completed."""
    progress = trainer.fit_loop.epoch_progress.current
    return max(int(progress.processed), int(progress.completed))


class _EpochLoader(DataLoader):
    """Sets the dataset's epoch (the trainer's, so a resumed run draws the same order) before workers start."""

    def __init__(self, dataset: ShardStream, module: pl.LightningDataModule, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._module, self._epochs = module, 0

    def __iter__(self):
        trainer = getattr(self._module, "trainer", None)
        self.dataset.epoch = self._epochs if trainer is None else epoch_to_run(trainer)
        self._epochs += 1
        log.debug("training batches of epoch %d", self.dataset.epoch)
        return super().__iter__()


class StreamDataModule(pl.LightningDataModule):
    """The twin of :class:`twotower.datamodule.TwoTowerDataModule` for a :class:`StreamLog` (same arguments):
    training batches from the shards, validation and test queries from the sampled users in memory."""

    def __init__(
        self,
        data: StreamLog,
        split: Split,
        max_len: int = 50,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        event_weights: dict[str, float] | None = None,
        val_max_users: int | None = 10000,
        group_by_length: bool = True,
        shuffle_ties: bool = True,
        seed: int = 0,
        pin_memory: bool = False,
        start_targets: int = 1,  # the same arguments; unused: the shards carry no user features
    ) -> None:
        super().__init__()
        if data.index["settings"]["max_len"] != max_len:
            raise ValueError(
                f"shards were cut for max_len={data.index['settings']['max_len']}, model wants {max_len}"
            )
        self.data, self.split, self.max_len, self.seed = data, split, max_len, seed
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers
        self.pin_memory = pin_memory  # page-locked batches, as TwoTowerDataModule's (datamodule=gpu)
        weights = self.event_weights = dict(event_weights) if event_weights else None
        self.arrays = SequenceArrays.from_log(data, weights)
        self.train_set = ShardStream(
            data, batch_size, weights, group_by_length, shuffle_ties, seed, num_workers
        )
        self.val_set = self.queries("val", max_users=val_max_users)
        if len(self.train_set) == 0:
            raise ValueError("no training batches: every user needs at least 2 training events")

    def setup(self, stage: str | None = None) -> None:
        rank, world = distributed.rank_and_world()  # DDP starts after __init__: plan for this rank
        if world > 1:  # every rank must read the same shards, or all fail now (not hang at a collective)
            distributed.check_ranks_agree(distributed.data_fingerprint(
                self.data, batches=self.train_set.batches, max_len=self.max_len,
                seed=self.seed))  # fmt: skip
        if (rank, world) != (self.train_set.rank, self.train_set.world_size):
            self.train_set = ShardStream(self.data, self.train_set.batch_size, self.event_weights, self.train_set.group_by_length,
                                         self.train_set.shuffle_ties, self.seed, self.num_workers)  # fmt: skip
            log.info("rank %d of %d: %d batches per epoch", rank, world, len(self.train_set))

    def queries(self, stage: str, max_users: int | None = None) -> EvalQueries:
        return EvalQueries(self.data, self.split, stage, self.arrays, self.max_len, max_users, self.seed)

    def item_counts(self) -> torch.Tensor:
        return self.data.counts("item")

    def target_counts(self) -> torch.Tensor:
        return self.data.counts("target")

    def train_dataloader(self) -> DataLoader:
        return _EpochLoader(self.train_set, self, num_workers=self.num_workers, persistent_workers=False,
                            pin_memory=self.pin_memory)  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        rank, world = distributed.rank_and_world()
        shard = distributed.RankShard(len(self.val_set), world, rank) if world > 1 else None
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, shuffle=False, sampler=shard,
                          collate_fn=self.val_set.collate, num_workers=self.num_workers,
                          pin_memory=self.pin_memory)  # fmt: skip
